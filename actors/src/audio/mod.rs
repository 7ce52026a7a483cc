//! Audio formats and the per-stream DSP that turns client PCM into pipeline audio.
//!
//! Nothing in here is an actor: these are plain, allocation-free-on-the-hot-path building
//! blocks that the pipeline's `Resampler` actor owns, so they can be tested and
//! benchmarked without a runtime. [`AudioBlock`] is what processors receive.

mod block;
mod decode;
mod resample;

pub use block::{AudioBlock, MAX_BLOCK_SAMPLES};
pub use decode::{decode_to_mono, Encoding, InputFormat};
pub use resample::{ResamplerKind, StreamResampler};

/// Sample rate of pipeline audio: what every processor receives.
pub const PIPELINE_RATE: u32 = 16_000;
