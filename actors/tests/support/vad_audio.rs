//! Audio for the VAD tests, at the pipeline's 16 kHz: the alsa-utils speech recordings
//! (through the server's own resampler), pink noise, silence and mixes.

use voxrt_actors::audio::StreamResampler;

/// Where Debian's alsa-utils installs its recordings (48 kHz mono 16-bit).
pub const RECORDINGS_DIR: &str = "/usr/share/sounds/alsa";
/// The recordings: eight spoken channel names and a noise burst.
pub const RECORDINGS: [&str; 9] = [
    "Front_Center",
    "Front_Left",
    "Front_Right",
    "Noise",
    "Rear_Center",
    "Rear_Left",
    "Rear_Right",
    "Side_Left",
    "Side_Right",
];
/// Pipeline rate.
pub const RATE: u32 = 16_000;

/// A recording at 16 kHz, resampled the way the server does (its `StreamResampler`, flushed).
pub fn recording(name: &str) -> Vec<f32> {
    let path = format!("{RECORDINGS_DIR}/{name}.wav");
    let bytes =
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (apt-get install alsa-utils)"));
    let rate = u32::from_le_bytes(bytes[24..28].try_into().expect("WAV header"));
    let channels = usize::from(u16::from_le_bytes([bytes[22], bytes[23]]));
    let data = bytes
        .windows(4)
        .position(|w| w == b"data")
        .expect("WAV data chunk")
        + 8;
    let mono: Vec<f32> = bytes[data..]
        .chunks_exact(2 * channels)
        .map(|f| {
            f.chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
                .sum::<f32>()
                / channels as f32
        })
        .collect();
    let mut resampler = StreamResampler::new(rate).expect("resampler");
    let mut out = Vec::new();
    resampler.process(&mono, &mut out).expect("resample");
    resampler.flush(&mut out).expect("resample flush");
    out
}

/// `secs` of digital silence.
pub fn silence(secs: f64) -> Vec<f32> {
    vec![0.0; (f64::from(RATE) * secs).round() as usize]
}

/// Deterministic pink noise (Paul Kellet's filter on xorshift white noise) with RMS
/// `rms_dbfs`.
pub fn pink_noise(secs: f64, rms_dbfs: f64, seed: u64) -> Vec<f32> {
    let n = (f64::from(RATE) * secs).round() as usize;
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
    let rms = (out.iter().map(|v| v * v).sum::<f64>() / n.max(1) as f64).sqrt();
    let gain = 10f64.powf(rms_dbfs / 20.0) / rms;
    out.into_iter().map(|v| (v * gain) as f32).collect()
}

/// RMS of `x` in dBFS.
pub fn rms_dbfs(x: &[f32]) -> f64 {
    let ms = x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len().max(1) as f64;
    10.0 * ms.max(1e-30).log10()
}

/// `speech` with pink noise `snr_db` below its RMS added.
pub fn with_noise(speech: &[f32], snr_db: f64, seed: u64) -> Vec<f32> {
    let noise = pink_noise(
        speech.len() as f64 / f64::from(RATE),
        rms_dbfs(speech) - snr_db,
        seed,
    );
    speech.iter().zip(noise).map(|(s, n)| s + n).collect()
}
