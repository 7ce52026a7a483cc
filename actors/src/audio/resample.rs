//! One stateful resampler per stream: any input rate, mono, to [`PIPELINE_RATE`].
//!
//! Contract (tested in `tests/resampler.rs`):
//! - Feeding a stream in chunks of any size gives exactly the same samples as feeding it in
//!   one piece: input is staged in a fixed-size block, so chunk boundaries never reach rubato.
//! - Output is aligned with input: the filter delay is trimmed, so pipeline sample `k` is
//!   input time `k / 16000` s.
//! - [`StreamResampler::flush`] pumps the filter tail so the total output since the last flush
//!   is exactly `round(input_frames * 16000 / rate)`, then resets for the next stretch.
//! - Buffers are sized at construction; `process` allocates only when the caller's `out`
//!   needs to grow.

use super::PIPELINE_RATE;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, Fft, FixedAsync, FixedSync, Indexing, ResampleError, ResamplerConstructionError,
    SincInterpolationParameters, SincInterpolationType, WindowFunction,
};

/// Output block size (in 16 kHz frames) the FFT resampler aims for: 10 ms. Smaller blocks
/// lower the anti-aliasing cutoff (rubato's `Fft` with 1024-frame chunks at 48 -> 16 kHz cuts
/// off at 6.7 kHz); 160 keeps the passband flat to 7 kHz with a 5 ms filter delay.
const FFT_TARGET_OUT: usize = 160;
/// Largest FFT output block accepted before falling back to sinc. Rates whose ratio to
/// 16 kHz reduces badly (e.g. 8001 Hz) would need blocks of up to a second.
const FFT_MAX_OUT: usize = 640;
/// Input block for the sinc fallback, in milliseconds of input.
const SINC_BLOCK_MS: usize = 10;

/// Which algorithm a stream uses; chosen from the input rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResamplerKind {
    /// Input is already 16 kHz: samples pass through untouched.
    Passthrough,
    /// rubato `Fft`: synchronous, fastest and cleanest when the rate ratio reduces to small
    /// integers (all common rates).
    Fft,
    /// rubato `Async` sinc (256 taps, Blackman-Harris²): any other rate.
    Sinc,
}

/// A streaming mono resampler to 16 kHz; see the module docs for the contract.
pub struct StreamResampler {
    kind: ResamplerKind,
    input_rate: u32,
    inner: Option<Box<dyn rubato::Resampler<f32>>>,
    /// Staged input, `block_in` frames when full.
    staged: Vec<f32>,
    block_in: usize,
    /// rubato writes here, then the aligned part is copied to the caller.
    scratch: Vec<f32>,
    /// Zero frames staged at the start of every stretch (see `new`).
    pad: usize,
    /// Output frames of filter delay at the start of every stretch.
    delay: usize,
    /// Output frames still to discard as filter delay.
    delay_left: usize,
    frames_in: u64,
    frames_out: u64,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("kind", &self.kind)
            .field("input_rate", &self.input_rate)
            .field("block_in", &self.block_in)
            .finish()
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl StreamResampler {
    /// Builds the resampler for `input_rate` Hz mono input.
    pub fn new(input_rate: u32) -> Result<Self, ResamplerConstructionError> {
        let rate = input_rate as usize;
        let out_rate = PIPELINE_RATE as usize;
        if rate == out_rate {
            return Ok(Self::with(
                ResamplerKind::Passthrough,
                input_rate,
                None,
                0,
                0,
                0,
            ));
        }
        let g = gcd(rate, out_rate);
        let (min_in, min_out) = (rate / g, out_rate / g);
        let blocks = FFT_TARGET_OUT.div_ceil(min_out);
        if blocks * min_out <= FFT_MAX_OUT {
            let block_in = blocks * min_in;
            let fft = Fft::<f32>::new_custom(
                rate,
                out_rate,
                block_in,
                1,
                1,
                WindowFunction::BlackmanHarris2,
                FixedSync::Input,
            )?;
            // rubato centres the filter floor(block_in / 2) input frames in, but reports
            // fft_size_out / 2 as the delay, which is half an input frame off for odd blocks
            // (441 at 44.1 kHz). Staging `pad` zeros first makes the true delay a whole number
            // of output frames, so trimming it aligns output to input exactly.
            let half = block_in / 2;
            let pad = (min_in - half % min_in) % min_in;
            let delay = (half + pad) / min_in * min_out;
            return Ok(Self::with(
                ResamplerKind::Fft,
                input_rate,
                Some(Box::new(fft)),
                block_in,
                pad,
                delay,
            ));
        }
        let block_in = rate * SINC_BLOCK_MS / 1000;
        let params = SincInterpolationParameters {
            sinc_len: 256,
            f_cutoff: None,
            oversampling_factor: 256,
            interpolation: SincInterpolationType::Cubic,
            window: WindowFunction::BlackmanHarris2,
        };
        let sinc = Async::<f32>::new_sinc(
            out_rate as f64 / rate as f64,
            1.0,
            &params,
            block_in,
            1,
            FixedAsync::Input,
        )?;
        // rubato reports floor(sinc_len * ratio / 2) but the filter's true delay is one
        // output frame less (measured over many rates); round the true value.
        let delay =
            (params.sinc_len as f64 * out_rate as f64 / rate as f64 / 2.0 - 1.0).round() as usize;
        Ok(Self::with(
            ResamplerKind::Sinc,
            input_rate,
            Some(Box::new(sinc)),
            block_in,
            0,
            delay,
        ))
    }

    fn with(
        kind: ResamplerKind,
        input_rate: u32,
        inner: Option<Box<dyn rubato::Resampler<f32>>>,
        block_in: usize,
        pad: usize,
        delay: usize,
    ) -> Self {
        let scratch_len = inner.as_ref().map_or(0, |r| r.output_frames_max());
        let mut staged = Vec::with_capacity(block_in);
        staged.resize(pad, 0.0);
        Self {
            kind,
            input_rate,
            inner,
            staged,
            block_in,
            scratch: vec![0.0; scratch_len],
            pad,
            delay,
            delay_left: delay,
            frames_in: 0,
            frames_out: 0,
        }
    }

    /// The algorithm in use.
    pub fn kind(&self) -> ResamplerKind {
        self.kind
    }

    /// Input frames per internal block: the most input held back before output appears.
    pub fn block_frames(&self) -> usize {
        self.block_in
    }

    /// The filter delay trimmed from the output, in milliseconds: output up to input time `t`
    /// needs input up to `t` plus this (and the rest of the block holding it).
    pub fn delay_ms(&self) -> f64 {
        self.delay as f64 * 1000.0 / f64::from(PIPELINE_RATE)
    }

    /// Resamples `input` (mono, input rate), appending 16 kHz output to `out`.
    pub fn process(&mut self, mut input: &[f32], out: &mut Vec<f32>) -> Result<(), ResampleError> {
        self.frames_in += input.len() as u64;
        if self.inner.is_none() {
            out.extend_from_slice(input);
            self.frames_out += input.len() as u64;
            return Ok(());
        }
        while !input.is_empty() {
            let take = (self.block_in - self.staged.len()).min(input.len());
            self.staged.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.staged.len() == self.block_in {
                self.run_block(None, out, u64::MAX)?;
                self.staged.clear();
            }
        }
        Ok(())
    }

    /// Emits everything still inside the filter so that the output since the last flush is
    /// exactly `round(frames_in * 16000 / rate)` frames, then resets for a new stretch.
    pub fn flush(&mut self, out: &mut Vec<f32>) -> Result<(), ResampleError> {
        let expected = (self.frames_in * u64::from(PIPELINE_RATE) + u64::from(self.input_rate) / 2)
            / u64::from(self.input_rate);
        if self.inner.is_some() {
            let partial = self.staged.len();
            if partial > 0 {
                self.run_block(Some(partial), out, expected)?;
                self.staged.clear();
            }
            while self.frames_out < expected {
                self.run_block(Some(0), out, expected)?;
            }
        }
        self.reset();
        Ok(())
    }

    /// Forgets all state, as if newly built.
    pub fn reset(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            inner.reset();
        }
        self.delay_left = self.delay;
        self.staged.clear();
        self.staged.resize(self.pad, 0.0);
        self.frames_in = 0;
        self.frames_out = 0;
    }

    /// Runs one block through rubato, trims delay and appends at most up to `limit` total
    /// output frames.
    fn run_block(
        &mut self,
        partial: Option<usize>,
        out: &mut Vec<f32>,
        limit: u64,
    ) -> Result<(), ResampleError> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(());
        };
        if partial.is_none() || partial == Some(self.block_in) {
            // Full block: no zero padding needed.
        } else {
            // rubato reads `block_in` frames even with `partial_len`; keep the staged buffer
            // that long (capacity is already there, so this does not allocate).
            self.staged.resize(self.block_in, 0.0);
        }
        let input = InterleavedSlice::new(&self.staged[..], 1, self.block_in).map_err(|_| {
            ResampleError::InsufficientInputBufferSize {
                expected: self.block_in,
                actual: self.staged.len(),
            }
        })?;
        let frames = self.scratch.len();
        let mut output =
            InterleavedSlice::new_mut(&mut self.scratch[..], 1, frames).map_err(|_| {
                ResampleError::InsufficientOutputBufferSize {
                    expected: frames,
                    actual: frames,
                }
            })?;
        let indexing = partial.map(|p| Indexing::new().partial_len(p));
        let (_, produced) = inner.process_into_buffer(&input, &mut output, indexing.as_ref())?;
        let skip = self.delay_left.min(produced);
        self.delay_left -= skip;
        let room = limit.saturating_sub(self.frames_out) as usize;
        let keep = (produced - skip).min(room);
        out.extend_from_slice(&self.scratch[skip..skip + keep]);
        self.frames_out += keep as u64;
        Ok(())
    }
}
