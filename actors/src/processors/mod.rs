//! Processors: what runs on pipeline audio (16 kHz mono `f32`), one actor each.
//!
//! A [`Processor`] is plain synchronous code; the `ProcessorStage` (in `pipeline`) actor
//! gives it a bounded mailbox and delivers its events to the session. Built-ins are `level`
//! and `vad`; users register their own in a [`ProcessorCatalog`] under a name and list that
//! name in `pipeline.processors`.
//!
//! ```
//! use voxrt_actors::processors::{Processor, ProcessorCatalog, ProcessorContext};
//! use voxrt_actors::{AudioBlock, ServerEvent};
//!
//! /// Counts clipped samples and reports them at flush.
//! struct ClipCounter { clipped: u64 }
//!
//! impl Processor for ClipCounter {
//!     fn process(&mut self, block: &AudioBlock, _events: &mut Vec<ServerEvent>) {
//!         self.clipped += block.samples.iter().filter(|s| s.abs() >= 0.999).count() as u64;
//!     }
//!     fn flush(&mut self, end_sample: u64, events: &mut Vec<ServerEvent>) {
//!         events.push(ServerEvent::Custom(serde_json::json!({
//!             "type": "clipping", "t_ms": end_sample / 16, "samples": self.clipped,
//!         })));
//!     }
//! }
//!
//! let mut catalog = ProcessorCatalog::with_builtins();
//! catalog.register("clipping", |_ctx: &ProcessorContext| Box::new(ClipCounter { clipped: 0 }));
//! assert!(catalog.contains("clipping"));
//! ```

mod level;
mod vad;

pub use level::LevelProcessor;
pub use vad::VadProcessor;

use crate::audio::AudioBlock;
use crate::audio::InputFormat;
use crate::protocol::ServerEvent;
use crate::settings::{LevelSettings, VadSettings};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// Code that runs on a session's pipeline audio.
///
/// Contract: `process` is called with consecutive blocks (each at most 100 ms, 16 kHz mono,
/// samples in -1.0..=1.0 for in-range input) in order; `block.start` is the pipeline sample
/// index of the block's first sample, so `start / 16` is its time in ms on the input audio
/// timeline. `flush` is called when the client flushes or the session ends, after the last
/// block before it; close anything open (a speech segment, a partial interval) there.
/// Both run on the session's actor thread: they must not block. Push events in order.
pub trait Processor: Send + 'static {
    /// Handles one block of audio.
    fn process(&mut self, block: &AudioBlock, events: &mut Vec<ServerEvent>);
    /// Everything up to `end_sample` has been delivered; emit what is still open.
    fn flush(&mut self, end_sample: u64, events: &mut Vec<ServerEvent>);
}

/// What a processor factory knows about the session it builds for.
#[derive(Debug, Clone)]
pub struct ProcessorContext {
    /// The session's id.
    pub session_id: Uuid,
    /// What the client sends (before resampling).
    pub input: InputFormat,
    /// VAD tunables after the client's overrides.
    pub vad: VadSettings,
    /// Level settings.
    pub level: LevelSettings,
}

/// Builds a fresh processor for one session.
pub type ProcessorFactory = Arc<dyn Fn(&ProcessorContext) -> Box<dyn Processor> + Send + Sync>;

/// The processors a server can run, by name. Cheap to clone (factories are shared).
#[derive(Clone)]
pub struct ProcessorCatalog {
    factories: BTreeMap<String, ProcessorFactory>,
}

impl std::fmt::Debug for ProcessorCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}

impl ProcessorCatalog {
    /// A catalog holding `level` and `vad`.
    pub fn with_builtins() -> Self {
        let mut catalog = Self {
            factories: BTreeMap::new(),
        };
        catalog.register("level", |ctx: &ProcessorContext| {
            Box::new(LevelProcessor::new(ctx.level))
        });
        catalog.register("vad", |ctx: &ProcessorContext| {
            Box::new(VadProcessor::new(ctx.vad))
        });
        catalog
    }

    /// Adds (or replaces) the processor called `name`.
    pub fn register<F>(&mut self, name: impl Into<String>, factory: F)
    where
        F: Fn(&ProcessorContext) -> Box<dyn Processor> + Send + Sync + 'static,
    {
        self.factories.insert(name.into(), Arc::new(factory));
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds the processor called `name`, if registered.
    pub fn build(&self, name: &str, ctx: &ProcessorContext) -> Option<Box<dyn Processor>> {
        self.factories.get(name).map(|f| f(ctx))
    }

    /// The factory of `name` (a stage keeps it to rebuild its processor after a panic).
    pub fn factory(&self, name: &str) -> Option<ProcessorFactory> {
        self.factories.get(name).cloned()
    }
}

/// Pipeline samples per millisecond.
pub(crate) const SAMPLES_PER_MS: u64 = 16;

/// Converts a linear amplitude to dBFS, floored at -120.
pub(crate) fn to_dbfs(amplitude: f64) -> f32 {
    if amplitude <= 1e-6 {
        -120.0
    } else {
        (20.0 * amplitude.log10()).max(-120.0) as f32
    }
}
