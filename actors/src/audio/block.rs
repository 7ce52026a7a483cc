//! Pipeline audio as processors receive it.

use std::sync::Arc;
use std::time::Instant;

/// A block of pipeline audio: 16 kHz mono, at most [`MAX_BLOCK_SAMPLES`] samples, shared
/// (not copied) by every processor of a session.
#[derive(Debug, Clone)]
pub struct AudioBlock {
    /// Samples, nominally in -1.0..=1.0.
    pub samples: Arc<[f32]>,
    /// Pipeline sample index of `samples[0]` (divide by 16 for ms on the input timeline).
    pub start: u64,
    /// When the client chunk this block came from was received (event latency); `None` for
    /// the filter tail emitted at flush.
    pub received: Option<Instant>,
}

/// Largest block sent to processors, in 16 kHz samples (100 ms). Bounding the block bounds
/// what each processor mailbox can hold: `(mailbox_capacity + 1) * 6400` bytes.
pub const MAX_BLOCK_SAMPLES: usize = 1_600;
