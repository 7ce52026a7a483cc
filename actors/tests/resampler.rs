//! The streaming resampler's contract (see `src/audio/resample.rs`) and the public decode path.
//!
//! Everything here is deterministic: signals are synthesised and "random" chunk sizes and noise
//! come from a fixed-seed xorshift generator. Run with
//! `cargo test --release -p voxrt-actors --test resampler` (about a second; a debug build
//! takes about a minute).

use std::f64::consts::PI;
use voxrt_actors::audio::{
    decode_to_mono, Encoding, InputFormat, ResamplerKind, StreamResampler, PIPELINE_RATE,
};

const OUT_RATE: f64 = PIPELINE_RATE as f64;

/// Every common client rate plus two odd ones that need the sinc path.
const RATES: [u32; 11] = [
    8000, 11025, 16000, 22050, 37800, 44100, 48000, 96000, 192000, 8001, 44101,
];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// xorshift64*: a tiny deterministic PRNG, so no dev-dependency is needed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Uniform in `[-1, 1)`.
    fn bipolar(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `frames` samples of `amp * sin(2 pi freq t)` at `rate` Hz, starting at t = 0.
fn tone(rate: u32, freq: f64, amp: f64, frames: usize) -> Vec<f32> {
    (0..frames)
        .map(|n| (amp * (2.0 * PI * freq * n as f64 / f64::from(rate)).sin()) as f32)
        .collect()
}

/// A broadband test signal: three sines plus white noise, peak below 0.7.
fn test_signal(rate: u32, frames: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let parts = [(440.0, 0.3), (1234.5, 0.2), (3100.0, 0.1)];
    (0..frames)
        .map(|n| {
            let t = n as f64 / f64::from(rate);
            let sines: f64 = parts
                .iter()
                .map(|(f, a)| a * (2.0 * PI * f * t).sin())
                .sum();
            sines as f32 + 0.05 * rng.bipolar()
        })
        .collect()
}

/// Seconds of input as a frame count.
fn frames_for(rate: u32, seconds: f64) -> usize {
    (f64::from(rate) * seconds).round() as usize
}

/// `round(frames * 16000 / rate)`, computed independently of the implementation.
fn expected_len(frames: usize, rate: u32) -> usize {
    (frames as f64 * OUT_RATE / f64::from(rate)).round() as usize
}

/// Resamples `input` fed in chunks whose sizes `next_chunk` picks, then flushes.
fn resample_chunked(rate: u32, input: &[f32], mut next_chunk: impl FnMut() -> usize) -> Vec<f32> {
    let mut r = StreamResampler::new(rate).expect("resampler builds");
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(next_chunk().min(rest.len()));
        r.process(chunk, &mut out).expect("process");
        rest = tail;
    }
    r.flush(&mut out).expect("flush");
    out
}

/// Resamples `input` in one piece, then flushes.
fn resample(rate: u32, input: &[f32]) -> Vec<f32> {
    resample_chunked(rate, input, || usize::MAX)
}

/// `out` without its first and last `skip_s` seconds (at 16 kHz): the filter's edge transients.
fn middle(out: &[f32], skip_s: f64) -> &[f32] {
    let skip = (skip_s * OUT_RATE).round() as usize;
    &out[skip..out.len() - skip]
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

fn db(ratio: f64) -> f64 {
    20.0 * ratio.log10()
}

/// The index and value of the first sample where `a` and `b` differ bit-for-bit, if any.
fn first_difference(a: &[f32], b: &[f32]) -> Option<(usize, f32, f32)> {
    a.iter()
        .zip(b)
        .enumerate()
        .find(|(_, (x, y))| x.to_bits() != y.to_bits())
        .map(|(i, (&x, &y))| (i, x, y))
}

// ---------------------------------------------------------------------------------------------
// Algorithm choice
// ---------------------------------------------------------------------------------------------

/// 16 kHz passes through, rates with a small reduced ratio use FFT, and odd rates use sinc.
#[test]
fn kind_is_chosen_from_the_input_rate() {
    let kind = |rate| StreamResampler::new(rate).unwrap().kind();
    assert_eq!(kind(16000), ResamplerKind::Passthrough);
    for rate in [
        8000, 11025, 22050, 32000, 37800, 44100, 48000, 88200, 96000, 192000,
    ] {
        assert_eq!(kind(rate), ResamplerKind::Fft, "{rate} Hz");
    }
    for rate in [8001, 44101, 12345] {
        assert_eq!(kind(rate), ResamplerKind::Sinc, "{rate} Hz");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Chunking invariance
// ---------------------------------------------------------------------------------------------

/// Random chunk sizes (1..=rate/5 frames, many tiny, some empty calls) give bit-identical output
/// to one-piece processing, for every rate and all three algorithms.
#[test]
fn random_chunking_gives_bit_identical_output() {
    for rate in RATES {
        let input = test_signal(rate, frames_for(rate, 1.3), u64::from(rate));
        let whole = resample(rate, &input);
        for seed in 1..=3u64 {
            let mut rng = Rng::new(seed * 0x9E37_79B9 + u64::from(rate));
            // Every third chunk is tiny (1..=16 frames) to hammer block staging.
            let chunked = resample_chunked(rate, &input, || {
                let max = if rng.range(0, 2) == 0 {
                    16
                } else {
                    rate as usize / 5
                };
                rng.range(1, max)
            });
            assert_eq!(chunked.len(), whole.len(), "{rate} Hz seed {seed}: length");
            assert_eq!(
                first_difference(&chunked, &whole),
                None,
                "{rate} Hz seed {seed}: first differing sample (index, chunked, whole)"
            );
        }
    }
}

/// Feeding one frame at a time, with empty `process` calls in between, matches one piece exactly.
#[test]
fn single_frame_chunks_give_bit_identical_output() {
    for rate in [44100, 48000, 8001] {
        let input = test_signal(rate, frames_for(rate, 0.3), 7);
        let whole = resample(rate, &input);
        let mut r = StreamResampler::new(rate).unwrap();
        let mut out = Vec::new();
        for frame in input.chunks(1) {
            r.process(&[], &mut out).unwrap();
            r.process(frame, &mut out).unwrap();
        }
        r.flush(&mut out).unwrap();
        assert_eq!(first_difference(&out, &whole), None, "{rate} Hz");
        assert_eq!(out.len(), whole.len(), "{rate} Hz");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Output length and flush
// ---------------------------------------------------------------------------------------------

/// After `flush`, total output is exactly `round(frames * 16000 / rate)` for lengths from 0
/// through tiny, around the internal block size, and long non-multiples of it.
#[test]
fn flush_makes_output_length_exactly_the_rounded_ratio() {
    for rate in RATES {
        let block = StreamResampler::new(rate).unwrap().block_frames().max(1);
        let mut lengths = vec![0, 1, 2, 3, 5, 7, 11, 100, 1000, 12_345];
        lengths.extend([block - 1, block, block + 1, 2 * block + 3, 7 * block - 1]);
        lengths.extend([rate as usize, rate as usize + 17, frames_for(rate, 1.3)]);
        for frames in lengths {
            let input = test_signal(rate, frames, 3);
            let out = resample(rate, &input);
            assert_eq!(
                out.len(),
                expected_len(frames, rate),
                "{rate} Hz, {frames} frames in"
            );
        }
    }
}

/// The exact length also holds when the same input arrives in random chunks.
#[test]
fn chunked_output_length_is_exact() {
    let mut rng = Rng::new(42);
    for rate in RATES {
        for _ in 0..20 {
            let frames = rng.range(0, rate as usize / 2);
            let input = test_signal(rate, frames, 5);
            let out = resample_chunked(rate, &input, || rng.range(1, 1000));
            assert_eq!(
                out.len(),
                expected_len(frames, rate),
                "{rate} Hz, {frames} frames"
            );
        }
    }
}

/// `flush` resets: a second stretch fed after a flush yields exactly what a fresh resampler
/// yields for it, with its own exact length; a flush with no new input emits nothing.
#[test]
fn second_stretch_after_flush_matches_a_fresh_resampler() {
    for rate in RATES {
        let first = test_signal(rate, frames_for(rate, 0.37) + 3, 11);
        let second = test_signal(rate, frames_for(rate, 0.51) + 1, 12);

        let mut r = StreamResampler::new(rate).unwrap();
        let mut out = Vec::new();
        r.process(&first, &mut out).unwrap();
        r.flush(&mut out).unwrap();
        assert_eq!(
            out.len(),
            expected_len(first.len(), rate),
            "{rate} Hz first"
        );

        r.flush(&mut out).unwrap();
        assert_eq!(
            out.len(),
            expected_len(first.len(), rate),
            "{rate} Hz idle flush"
        );

        let mut out2 = Vec::new();
        r.process(&second, &mut out2).unwrap();
        r.flush(&mut out2).unwrap();
        let fresh = resample(rate, &second);
        assert_eq!(
            out2.len(),
            expected_len(second.len(), rate),
            "{rate} Hz second"
        );
        assert_eq!(
            first_difference(&out2, &fresh),
            None,
            "{rate} Hz second stretch"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Alignment
// ---------------------------------------------------------------------------------------------

/// A unit impulse at input frame `p` peaks in the output at `p * 16000 / rate`, within one
/// output sample: the filter delay is trimmed.
#[test]
fn impulse_peaks_at_its_input_time() {
    let mut failures = Vec::new();
    for rate in RATES {
        let frames = frames_for(rate, 1.0);
        for p in [
            rate as usize / 2,
            rate as usize / 2 + 1,
            rate as usize / 3 + 5,
        ] {
            let mut input = vec![0.0f32; frames];
            input[p] = 1.0;
            let out = resample(rate, &input);
            let peak = (0..out.len())
                .max_by(|&a, &b| out[a].abs().total_cmp(&out[b].abs()))
                .unwrap();
            let want = p as f64 * OUT_RATE / f64::from(rate);
            if (peak as f64 - want).abs() > 1.0 {
                failures.push(format!(
                    "{rate} Hz: impulse at frame {p} peaks at output {peak}, want {want:.2}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "impulse misplaced:\n{}",
        failures.join("\n")
    );
}

/// Residual delay (in 16 kHz samples) of a resampled `freq` tone, from the phase of a
/// least-squares sine/cosine fit over the middle of the output. Positive means the output
/// lags the input.
fn tone_delay(rate: u32, freq: f64, seconds: f64) -> f64 {
    let out = resample(rate, &tone(rate, freq, 0.5, frames_for(rate, seconds)));
    let skip = (0.1 * OUT_RATE) as usize;
    let (mut s, mut c) = (0.0, 0.0);
    let span = skip..out.len() - skip;
    let n = span.len() as f64;
    for k in span {
        let w = 2.0 * PI * freq * k as f64 / OUT_RATE;
        s += f64::from(out[k]) * w.sin();
        c += f64::from(out[k]) * w.cos();
    }
    let (a, b) = (2.0 * s / n, 2.0 * c / n);
    let phase = b.atan2(a);
    -phase / (2.0 * PI * freq) * OUT_RATE
}

/// A resampled 1 kHz tone is in phase with the ideal 16 kHz tone to within half an output
/// sample (31 us), the best that trimming whole output samples can guarantee for any rate.
#[test]
fn tone_phase_is_aligned_to_the_nearest_output_sample() {
    let mut failures = Vec::new();
    for rate in RATES {
        let delay = tone_delay(rate, 1000.0, 1.0);
        if delay.abs() > 0.5 {
            failures.push(format!(
                "{rate} Hz: residual delay {delay:+.4} output samples"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "misaligned output:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Anti-aliasing
// ---------------------------------------------------------------------------------------------

/// Level in dB of the resampled `bad` tone relative to the resampled 1 kHz tone (both 0.5
/// amplitude, 1.3 s), measured over the output without its first and last 50 ms.
fn alias_level_db(rate: u32, bad: f64) -> f64 {
    let frames = frames_for(rate, 1.3);
    let good = resample(rate, &tone(rate, 1000.0, 0.5, frames));
    let alias = resample(rate, &tone(rate, bad, 0.5, frames));
    db(rms(middle(&alias, 0.05)) / rms(middle(&good, 0.05)))
}

/// At 48 kHz a 20 kHz tone (which would alias to 4 kHz) is at least 90 dB below a 1 kHz tone.
// Measured with rubato 5.0.1: -147.4 dB.
#[test]
fn out_of_band_tone_at_48k_is_90_db_down() {
    let level = alias_level_db(48000, 20_000.0);
    assert!(level <= -90.0, "48 kHz, 20 kHz tone: {level:.1} dB");
}

/// Tones that would alias into the band (15 kHz at 44.1 kHz FFT and 44.101 kHz sinc, 9 kHz
/// just above the output Nyquist at 48 kHz) are at least 80 dB below a 1 kHz tone.
// Measured with rubato 5.0.1: 44.1 kHz/15 kHz -143.5 dB, 44.101 kHz/15 kHz -142.8 dB,
// 48 kHz/9 kHz -148.5 dB.
#[test]
fn aliasing_tones_are_80_db_down() {
    for (rate, bad) in [(44100, 15_000.0), (44101, 15_000.0), (48000, 9_000.0)] {
        let level = alias_level_db(rate, bad);
        assert!(level <= -80.0, "{rate} Hz, {bad} Hz tone: {level:.1} dB");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Passband
// ---------------------------------------------------------------------------------------------

/// Tones at 100 Hz, 1, 3, 5 and 7 kHz (those below the input Nyquist) keep their level within
/// 0.5 dB at every rate.
// Measured with rubato 5.0.1: worst is 7 kHz at -0.136 dB (FFT rates from 37.8 kHz up);
// 3 kHz at 8 kHz input is -0.133 dB, 7 kHz at 44.101 kHz (sinc) -0.115 dB, the rest ~0 dB.
#[test]
fn passband_is_flat_within_half_a_db_to_7k() {
    let mut failures = Vec::new();
    for rate in RATES {
        for freq in [100.0, 1000.0, 3000.0, 5000.0, 7000.0] {
            if freq >= f64::from(rate) / 2.0 {
                continue;
            }
            let out = resample(rate, &tone(rate, freq, 0.5, frames_for(rate, 1.0)));
            // 0.1 s skipped each side leaves 0.8 s: whole cycles of every test tone.
            let gain = db(rms(middle(&out, 0.1)) / (0.5 / 2f64.sqrt()));
            if gain.abs() > 0.5 {
                failures.push(format!("{rate} Hz input, {freq} Hz tone: {gain:+.2} dB"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "passband off by more than 0.5 dB:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Decoding
// ---------------------------------------------------------------------------------------------

/// `decode_to_mono` averages the channels for both encodings and 1..=8 channels, appends to
/// `out`, and ignores a trailing partial frame.
#[test]
fn decode_averages_channels_and_appends() {
    let mut rng = Rng::new(9);
    for encoding in [Encoding::PcmS16le, Encoding::PcmF32le] {
        for channels in 1..=8u16 {
            let format = InputFormat {
                sample_rate: 48000,
                channels,
                encoding,
            };
            let frames = 50;
            let mut data = Vec::new();
            let mut want = vec![-0.125f32];
            for _ in 0..frames {
                let mut sum = 0.0f64;
                for _ in 0..channels {
                    match encoding {
                        Encoding::PcmS16le => {
                            let v = (rng.next_u64() >> 48) as u16 as i16;
                            data.extend_from_slice(&v.to_le_bytes());
                            sum += f64::from(v) / 32768.0;
                        }
                        Encoding::PcmF32le => {
                            let v = rng.bipolar();
                            data.extend_from_slice(&v.to_le_bytes());
                            sum += f64::from(v);
                        }
                    }
                }
                want.push((sum / f64::from(channels)) as f32);
            }
            // A trailing partial frame: one sample short of a whole one.
            data.extend(std::iter::repeat_n(0x7f, format.frame_bytes() - 1));

            let mut out = vec![-0.125f32];
            decode_to_mono(&format, &data, &mut out);
            assert_eq!(out.len(), want.len(), "{encoding} x{channels}: length");
            for (i, (got, want)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (got - want).abs() <= 1e-6,
                    "{encoding} x{channels} frame {i}: got {got}, want {want}"
                );
            }
        }
    }
}

/// Identical channels downmix to the channel itself, so a 6-channel f32 stream resamples to
/// exactly what its mono source does.
#[test]
fn identical_channels_downmix_to_the_mono_signal() {
    let rate = 48000;
    let mono = test_signal(rate, frames_for(rate, 0.2), 21);
    let format = InputFormat {
        sample_rate: rate,
        channels: 6,
        encoding: Encoding::PcmF32le,
    };
    let mut data = Vec::with_capacity(mono.len() * format.frame_bytes());
    for v in &mono {
        for _ in 0..6 {
            data.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut decoded = Vec::new();
    decode_to_mono(&format, &data, &mut decoded);
    let max_err = decoded
        .iter()
        .zip(&mono)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max_err <= 1e-6, "downmix error {max_err}");
    let a = resample(rate, &decoded);
    let b = resample(rate, &mono);
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff <= 1e-5, "resampled downmix differs by {diff}");
}
