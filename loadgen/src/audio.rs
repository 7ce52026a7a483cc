//! The audio every session streams: loaded, converted and cut into wire frames once, then
//! shared by all sessions (cloning a [`Bytes`] is a reference count, not a copy).

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The alsa-utils speech recordings (Debian package `alsa-utils`) streamed by default, each
/// followed by [`GAP_S`] of silence.
pub const DEFAULT_RECORDINGS: [&str; 8] = [
    "Front_Center",
    "Front_Left",
    "Front_Right",
    "Rear_Center",
    "Rear_Left",
    "Rear_Right",
    "Side_Left",
    "Side_Right",
];
/// Where [`DEFAULT_RECORDINGS`] are installed.
pub const RECORDINGS_DIR: &str = "/usr/share/sounds/alsa";
/// Seconds of silence after each default recording.
const GAP_S: u32 = 1;

/// Sample format on the wire (`encoding=` in the stream URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    #[value(name = "pcm_s16le")]
    PcmS16le,
    #[value(name = "pcm_f32le")]
    PcmF32le,
}

impl Encoding {
    /// The query-string value.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::PcmS16le => "pcm_s16le",
            Encoding::PcmF32le => "pcm_f32le",
        }
    }

    /// Bytes per sample (per channel).
    pub fn bytes_per_sample(self) -> usize {
        match self {
            Encoding::PcmS16le => 2,
            Encoding::PcmF32le => 4,
        }
    }
}

/// What to stream and how to cut it.
#[derive(Debug, Clone)]
pub struct Format {
    /// Sample frames per second.
    pub rate: u32,
    /// Interleaved channels (the mono source is duplicated into each).
    pub channels: u16,
    pub encoding: Encoding,
    /// Audio per binary frame, milliseconds.
    pub chunk_ms: u32,
}

impl Format {
    /// Sample frames per chunk: `rate * chunk_ms / 1000`, at least 1.
    pub fn frames_per_chunk(&self) -> u64 {
        (u64::from(self.rate) * u64::from(self.chunk_ms) / 1000).max(1)
    }
}

/// The recording as pre-encoded wire frames, looped by every session: chunk `k` of a
/// session's stream is `chunks[k % chunks.len()]`, covering input frames
/// `k * frames_per_chunk .. (k + 1) * frames_per_chunk`.
#[derive(Debug, Clone)]
pub struct Recording {
    /// Binary frames, all `frames_per_chunk` sample frames long; slices of one buffer.
    pub chunks: Arc<[Bytes]>,
    /// Sample frames per chunk.
    pub frames_per_chunk: u64,
    /// Length of one loop, seconds.
    pub loop_s: f64,
    /// Where the audio came from, for the report.
    pub source: String,
}

impl Recording {
    /// Loads `wav`, or the default recordings without one, and encodes it in `format`.
    pub fn load(wav: Option<&Path>, format: &Format) -> Result<Recording, String> {
        let (mono, source) = match wav {
            Some(path) => (load_mono(path, format.rate)?, path.display().to_string()),
            None => (default_mono(format.rate)?, default_source()),
        };
        Ok(Self::from_mono(&mono, format, source))
    }

    /// Cuts `mono` (at `format.rate`) into chunks, padding the end with silence to a whole
    /// chunk so that the loop is seamless.
    pub fn from_mono(mono: &[f32], format: &Format, source: String) -> Recording {
        let fpc = format.frames_per_chunk() as usize;
        let frames = mono.len().div_ceil(fpc).max(1) * fpc;
        let channels = usize::from(format.channels);
        let bps = format.encoding.bytes_per_sample();
        let mut buf = Vec::with_capacity(frames * channels * bps);
        for i in 0..frames {
            let x = mono.get(i).copied().unwrap_or(0.0);
            for _ in 0..channels {
                match format.encoding {
                    Encoding::PcmS16le => {
                        let v = (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
                        buf.extend_from_slice(&v.to_le_bytes());
                    }
                    Encoding::PcmF32le => buf.extend_from_slice(&x.to_le_bytes()),
                }
            }
        }
        let all = Bytes::from(buf);
        let chunk_bytes = fpc * channels * bps;
        let chunks: Arc<[Bytes]> = (0..frames / fpc)
            .map(|k| all.slice(k * chunk_bytes..(k + 1) * chunk_bytes))
            .collect();
        Recording {
            chunks,
            frames_per_chunk: fpc as u64,
            loop_s: frames as f64 / f64::from(format.rate),
            source,
        }
    }

    /// Bytes in one binary frame.
    pub fn chunk_bytes(&self) -> usize {
        self.chunks.first().map_or(0, Bytes::len)
    }
}

fn default_source() -> String {
    format!(
        "{RECORDINGS_DIR}/{{{}}}.wav, {GAP_S} s of silence after each",
        DEFAULT_RECORDINGS.join(",")
    )
}

/// The default recordings at `rate`, each followed by [`GAP_S`] of silence.
fn default_mono(rate: u32) -> Result<Vec<f32>, String> {
    let mut out = Vec::new();
    for name in DEFAULT_RECORDINGS {
        let path = PathBuf::from(format!("{RECORDINGS_DIR}/{name}.wav"));
        let mono = load_mono(&path, rate).map_err(|e| {
            format!("{e} (the default audio comes with Debian's alsa-utils; or pass --wav FILE)")
        })?;
        out.extend_from_slice(&mono);
        out.resize(out.len() + (rate * GAP_S) as usize, 0.0);
    }
    Ok(out)
}

/// Reads a WAV file as mono f32 (channels averaged, full scale 1.0) at `rate`.
fn load_mono(path: &Path, rate: u32) -> Result<Vec<f32>, String> {
    let shown = path.display();
    let mut reader =
        hound::WavReader::open(path).map_err(|e| format!("{shown}: cannot read WAV: {e}"))?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    if channels == 0 || spec.sample_rate == 0 {
        return Err(format!(
            "{shown}: the header declares no channels or no rate"
        ));
    }
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{shown}: {e}"))?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{shown}: {e}"))?
        }
    };
    let mono: Vec<f32> = interleaved
        .chunks_exact(channels)
        .map(|f| f.iter().sum::<f32>() / channels as f32)
        .collect();
    if mono.is_empty() {
        return Err(format!("{shown}: no audio"));
    }
    Ok(resample_linear(&mono, spec.sample_rate, rate))
}

/// Resamples by linear interpolation (good enough to drive a VAD; a load test needs the
/// right rate and plausible speech, not a clean passband). Output length is
/// `round(len * to / from)`.
pub fn resample_linear(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || x.is_empty() {
        return x.to_vec();
    }
    let n_out = ((x.len() as u64 * u64::from(to) + u64::from(from) / 2) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    (0..n_out)
        .map(|j| {
            let pos = j as f64 * step;
            let i = pos as usize;
            let frac = (pos - i as f64) as f32;
            let a = x[i.min(x.len() - 1)];
            let b = x[(i + 1).min(x.len() - 1)];
            a + (b - a) * frac
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_whole_padded_and_duplicated_per_channel() {
        let format = Format {
            rate: 1000,
            channels: 2,
            encoding: Encoding::PcmS16le,
            chunk_ms: 10,
        };
        let mono = vec![0.5f32; 25];
        let rec = Recording::from_mono(&mono, &format, "test".into());
        assert_eq!(rec.frames_per_chunk, 10);
        assert_eq!(rec.chunks.len(), 3);
        assert_eq!(rec.chunk_bytes(), 10 * 2 * 2);
        // 0.5 full scale, both channels; the padding is silence.
        assert_eq!(&rec.chunks[0][..4], &[0x00, 0x40, 0x00, 0x40]);
        assert_eq!(&rec.chunks[2][20..24], &[0, 0, 0, 0]);
        assert!((rec.loop_s - 0.03).abs() < 1e-9);
    }

    #[test]
    fn linear_resampling_keeps_duration_and_interpolates() {
        let x = [0.0f32, 1.0, 0.0, -1.0];
        let up = resample_linear(&x, 1000, 2000);
        assert_eq!(up.len(), 8);
        assert_eq!(up[1], 0.5);
        assert_eq!(resample_linear(&x, 48000, 16000).len(), 1);
    }
}
