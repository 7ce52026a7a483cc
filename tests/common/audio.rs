//! Real and synthetic audio for tests: the Debian alsa-utils speech recordings, tones, pink
//! noise, offline resampling, and PCM encoding.
#![allow(dead_code)]

use rubato::{audioadapter_buffers::direct::InterleavedSlice, Fft, FixedSync, Resampler};

/// A recording of human speech, 48 kHz mono, from Debian's alsa-utils.
pub const SPEECH: &str = "/usr/share/sounds/alsa/Front_Center.wav";
/// Another speaker/recording.
pub const SPEECH_2: &str = "/usr/share/sounds/alsa/Rear_Right.wav";

/// Reads a WAV as mono f32 (channels averaged) and its sample rate.
pub fn read_wav(path: &str) -> (Vec<f32>, u32) {
    let mut reader = hound::WavReader::open(path).unwrap_or_else(|e| {
        panic!("{path}: {e} (is alsa-utils installed? scripts/test installs it)")
    });
    let spec = reader.spec();
    let ch = spec.channels as usize;
    let raw: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u32 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.expect("sample") as f32 * scale)
                .collect()
        }
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .map(|s| s.expect("sample"))
            .collect(),
    };
    let mono = raw
        .chunks_exact(ch)
        .map(|f| f.iter().sum::<f32>() / ch as f32)
        .collect();
    (mono, spec.sample_rate)
}

/// `secs` of silence at `rate`.
pub fn silence(rate: u32, secs: f64) -> Vec<f32> {
    vec![0.0; (rate as f64 * secs).round() as usize]
}

/// A sine of `freq` Hz at amplitude `amp`.
pub fn tone(rate: u32, freq: f64, amp: f32, secs: f64) -> Vec<f32> {
    let n = (rate as f64 * secs).round() as usize;
    (0..n)
        .map(|i| amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin() as f32)
        .collect()
}

/// Deterministic pink noise (Paul Kellet's filter on xorshift white noise), scaled so its
/// RMS is `rms_dbfs`.
pub fn pink_noise(rate: u32, secs: f64, rms_dbfs: f64, seed: u64) -> Vec<f32> {
    let n = (rate as f64 * secs).round() as usize;
    let mut state = seed | 1;
    let mut b = [0f64; 7];
    let mut out: Vec<f64> = Vec::with_capacity(n);
    for _ in 0..n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let white = (state as f64 / u64::MAX as f64) * 2.0 - 1.0;
        b[0] = 0.99886 * b[0] + white * 0.0555179;
        b[1] = 0.99332 * b[1] + white * 0.0750759;
        b[2] = 0.96900 * b[2] + white * 0.1538520;
        b[3] = 0.86650 * b[3] + white * 0.3104856;
        b[4] = 0.55000 * b[4] + white * 0.5329522;
        b[5] = -0.7616 * b[5] - white * 0.0168980;
        out.push(b[0] + b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + white * 0.5362);
        b[6] = white * 0.115926;
    }
    let rms = (out.iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt();
    let gain = 10f64.powf(rms_dbfs / 20.0) / rms;
    out.into_iter().map(|v| (v * gain) as f32).collect()
}

/// Resamples mono audio offline (rubato, whole clip, delay trimmed).
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to {
        return input.to_vec();
    }
    let mut r = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input)
        .expect("offline resampler");
    let adapter = InterleavedSlice::new(input, 1, input.len()).expect("adapter");
    r.process_all(&adapter, input.len(), None)
        .expect("offline resample")
        .take_data()
}

/// Adds `b` to `a` sample by sample (lengths may differ; the result has `a`'s length).
pub fn mix(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter()
        .enumerate()
        .map(|(i, x)| x + b.get(i).copied().unwrap_or(0.0))
        .collect()
}

/// Mono audio as interleaved `channels`-channel pcm_s16le (every channel the same).
pub fn s16le(mono: &[f32], channels: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(mono.len() * channels * 2);
    for &s in mono {
        let v = (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
        for _ in 0..channels {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Mono audio as interleaved `channels`-channel pcm_f32le.
pub fn f32le(mono: &[f32], channels: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(mono.len() * channels * 4);
    for &s in mono {
        for _ in 0..channels {
            out.extend_from_slice(&s.to_le_bytes());
        }
    }
    out
}

/// Decodes pcm_s16le mono (what `return_audio` sends) to f32.
pub fn from_s16le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
        .collect()
}

/// Speech boundaries of a clean recording from its energy envelope: the first and last
/// 10 ms window whose RMS is within `below_peak_db` of the loudest window, in ms.
pub fn speech_bounds(mono: &[f32], rate: u32, below_peak_db: f64) -> (u64, u64) {
    let win = (rate / 100) as usize;
    let rms: Vec<f64> = mono
        .chunks(win)
        .map(|w| (w.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt())
        .collect();
    let peak = rms.iter().cloned().fold(0.0, f64::max);
    let floor = peak * 10f64.powf(-below_peak_db / 20.0);
    let first = rms
        .iter()
        .position(|&r| r >= floor)
        .expect("speech present");
    let last = rms
        .iter()
        .rposition(|&r| r >= floor)
        .expect("speech present");
    (first as u64 * 10, (last as u64 + 1) * 10)
}

/// RMS in dBFS.
pub fn rms_dbfs(x: &[f32]) -> f64 {
    let rms = (x.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt();
    20.0 * rms.max(1e-12).log10()
}

/// Every speech recording in alsa-utils (all but `Noise.wav`), 48 kHz mono.
pub const SPEECH_FILES: [&str; 8] = [
    "/usr/share/sounds/alsa/Front_Center.wav",
    "/usr/share/sounds/alsa/Front_Left.wav",
    "/usr/share/sounds/alsa/Front_Right.wav",
    "/usr/share/sounds/alsa/Rear_Center.wav",
    "/usr/share/sounds/alsa/Rear_Left.wav",
    "/usr/share/sounds/alsa/Rear_Right.wav",
    "/usr/share/sounds/alsa/Side_Left.wav",
    "/usr/share/sounds/alsa/Side_Right.wav",
];

/// `mono` with `before_s` seconds of digital silence before it and `after_s` after it.
pub fn padded(mono: &[f32], rate: u32, before_s: f64, after_s: f64) -> Vec<f32> {
    let mut out = silence(rate, before_s);
    out.extend_from_slice(mono);
    out.extend(silence(rate, after_s));
    out
}

/// The file name without directory and extension, for messages.
pub fn short_name(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.strip_suffix(".wav").unwrap_or(name)
}

/// A tiny deterministic PRNG (xorshift64*) for fixed-seed test data such as chunk sizes.
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    /// A generator with this seed (any value; 0 is remapped).
    pub fn new(seed: u64) -> Self {
        Prng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0.0..1.0`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform integer in `lo..=hi` (`1 <= lo <= hi`): small and large values alike.
    pub fn log_uniform(&mut self, lo: usize, hi: usize) -> usize {
        let (l, h) = ((lo as f64).ln(), ((hi + 1) as f64).ln());
        ((l + (h - l) * self.unit()).exp() as usize).clamp(lo, hi)
    }
}

/// Sign changes (from `< 0` to `>= 0` and back) in `x`.
pub fn zero_crossings(x: &[f32]) -> usize {
    x.windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count()
}

/// Least-squares fit of `a*sin(wt) + b*cos(wt)` at `freq` Hz to `x`, with `t = (offset + i) /
/// rate`: returns `(amplitude, phase_rad, residual_db)` where the phase is relative to
/// `sin` and the residual is the RMS of what the sinusoid does not explain, relative to the
/// RMS of `x`, in dB. Exact over whole periods; close enough over many periods.
pub fn fit_sine(x: &[f32], rate: u32, freq: f64, offset: usize) -> (f64, f64, f64) {
    let w = 2.0 * std::f64::consts::PI * freq / rate as f64;
    let (mut ss, mut sc, mut cc, mut xs, mut xc) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, &v) in x.iter().enumerate() {
        let (s, c) = (w * (offset + i) as f64).sin_cos();
        ss += s * s;
        sc += s * c;
        cc += c * c;
        xs += v as f64 * s;
        xc += v as f64 * c;
    }
    let det = ss * cc - sc * sc;
    let a = (xs * cc - xc * sc) / det;
    let b = (xc * ss - xs * sc) / det;
    let mut resid = 0.0;
    let mut total = 0.0;
    for (i, &v) in x.iter().enumerate() {
        let (s, c) = (w * (offset + i) as f64).sin_cos();
        let e = v as f64 - a * s - b * c;
        resid += e * e;
        total += (v as f64) * (v as f64);
    }
    let residual_db = 10.0 * (resid.max(1e-30) / total.max(1e-30)).log10();
    ((a * a + b * b).sqrt(), b.atan2(a), residual_db)
}
