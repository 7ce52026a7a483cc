//! earshot's recurrent network behind a handle, so the gate can step it without the
//! detector's front end.
//!
//! `earshot::Detector<P>` is generic over its `Predictor`: the detector owns the front end
//! (pre-emphasis, FFT, mel bands, the last 3 frames of features) and hands the features to
//! `P::predict`, which owns the recurrent state. The detector gives no access to `P` once it
//! owns it, so both the detector and [`VadProcessor`](super::VadProcessor) hold a
//! [`SharedNetwork`]: the detector for ordinary frames, the gate for [`repeat`].
//!
//! The `Predictor` methods are public but marked unstable by earshot; Cargo.lock pins the
//! version, and tests/vad_gate.rs compares results with and without the gate.
//!
//! [`repeat`]: SharedNetwork::repeat

use earshot::{DefaultPredictor, Predictor};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Scratch space `DefaultPredictor::predict` works in: the size of the detector's own
/// buffer (1,026 `f32`).
const SCRATCH: usize = 1026;

struct Network {
    inner: DefaultPredictor,
    /// The features of the last `predict` call (3 frames x 40 mel bands, normalised).
    last: Vec<f32>,
    /// Scratch for [`SharedNetwork::repeat`] (4 KiB, allocated on its first call).
    scratch: Option<Box<[f32; SCRATCH]>>,
}

/// earshot's default network plus the features it last saw; one per detector. Only the
/// session's processor thread uses it: the mutex is never contended, it only makes the
/// handle `Send`.
#[derive(Clone)]
pub(super) struct SharedNetwork(Arc<Mutex<Network>>);

impl SharedNetwork {
    pub(super) fn new() -> Self {
        Self(Arc::new(Mutex::new(Network {
            inner: DefaultPredictor::new(),
            last: Vec::with_capacity(120),
            scratch: None,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Network> {
        // `predict` does not panic; a poisoned lock would still hold a whole state.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Steps the recurrent state with the features of the last frame again and returns the
    /// score: exactly what the detector would do for a frame whose features equal the last
    /// frame's (the gate's contract).
    pub(super) fn repeat(&self) -> f32 {
        let mut guard = self.lock();
        let Network {
            inner,
            last,
            scratch,
        } = &mut *guard;
        let scratch = scratch.get_or_insert_with(|| Box::new([0.0; SCRATCH]));
        inner.predict(last, &mut scratch[..])
    }
}

impl Predictor for SharedNetwork {
    fn reset(&mut self) {
        let mut network = self.lock();
        network.inner.reset();
        network.last.clear();
    }

    fn normalize(&self, features: &mut [f32]) {
        self.lock().inner.normalize(features);
    }

    fn predict(&mut self, features: &[f32], buffer: &mut [f32]) -> f32 {
        let mut network = self.lock();
        network.last.clear();
        network.last.extend_from_slice(features);
        network.inner.predict(features, buffer)
    }
}
