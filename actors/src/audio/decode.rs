//! Client PCM formats and decoding to mono `f32`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Sample encoding of the binary frames a client sends (protocol v1 `encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Signed 16-bit little-endian integers; full scale is 32768.
    PcmS16le,
    /// 32-bit IEEE float little-endian; full scale is 1.0. Samples beyond full scale are
    /// clamped to [-1.0, 1.0]; non-finite values are read as 0.
    PcmF32le,
}

impl Encoding {
    /// Bytes per sample of one channel.
    pub const fn bytes_per_sample(self) -> usize {
        match self {
            Encoding::PcmS16le => 2,
            Encoding::PcmF32le => 4,
        }
    }

    /// The protocol name, as in the `encoding` query parameter.
    pub const fn as_str(self) -> &'static str {
        match self {
            Encoding::PcmS16le => "pcm_s16le",
            Encoding::PcmF32le => "pcm_f32le",
        }
    }

    /// Parses the protocol name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pcm_s16le" => Some(Encoding::PcmS16le),
            "pcm_f32le" => Some(Encoding::PcmF32le),
            _ => None,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client declared it sends: validated before the session starts (and, read back
/// from a cluster record, again before a takeover uses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFormat {
    /// Frames per second, 8000..=192000.
    pub sample_rate: u32,
    /// Interleaved channels per frame, 1..=8.
    pub channels: u16,
    /// Sample encoding.
    pub encoding: Encoding,
}

impl InputFormat {
    /// Bytes of one sample frame (all channels).
    pub const fn frame_bytes(&self) -> usize {
        self.encoding.bytes_per_sample() * self.channels as usize
    }

    /// Milliseconds of audio in `frames` sample frames, rounded down.
    pub fn frames_to_ms(&self, frames: u64) -> u64 {
        frames * 1000 / u64::from(self.sample_rate)
    }
}

/// Decodes interleaved PCM into mono by averaging the channels, appending to `out`.
///
/// Every sample appended is finite and within [-1.0, 1.0]: `pcm_f32le` samples are clamped
/// to full scale (and non-finite ones read as 0) before averaging, so neither a sum of
/// large values overflowing to infinity nor out-of-range audio reaches the pipeline.
/// `data.len()` must be a whole number of frames (the session checks this before audio
/// enters the pipeline); a trailing partial frame is ignored. Downmixing before resampling
/// is exact (both are linear) and makes resampling cost independent of the channel count.
/// `out` never reallocates when its capacity covers the frames, which the caller arranges.
pub fn decode_to_mono(format: &InputFormat, data: &[u8], out: &mut Vec<f32>) {
    let channels = format.channels as usize;
    let scale = 1.0 / channels as f32;
    match format.encoding {
        // Mono needs no averaging; a flat loop the compiler vectorises (the general one did
        // not, and showed in profiles).
        Encoding::PcmS16le if channels == 1 => out.extend(
            data.chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) * (1.0 / 32768.0)),
        ),
        Encoding::PcmS16le => {
            let norm = scale / 32768.0;
            for frame in data.chunks_exact(2 * channels) {
                let sum: i32 = frame
                    .chunks_exact(2)
                    .map(|b| i32::from(i16::from_le_bytes([b[0], b[1]])))
                    .sum();
                out.push(sum as f32 * norm);
            }
        }
        Encoding::PcmF32le => {
            for frame in data.chunks_exact(4 * channels) {
                let sum: f32 = frame
                    .chunks_exact(4)
                    .map(|b| {
                        let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        if v.is_finite() {
                            v.clamp(-1.0, 1.0)
                        } else {
                            0.0
                        }
                    })
                    .sum();
                out.push(sum * scale);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stereo_s16_is_averaged_to_mono() {
        let f = InputFormat {
            sample_rate: 48_000,
            channels: 2,
            encoding: Encoding::PcmS16le,
        };
        let mut data = Vec::new();
        for (l, r) in [(16384i16, 0i16), (-32768, -32768)] {
            data.extend_from_slice(&l.to_le_bytes());
            data.extend_from_slice(&r.to_le_bytes());
        }
        let mut out = Vec::new();
        decode_to_mono(&f, &data, &mut out);
        assert_eq!(out, vec![0.25, -1.0]);
    }

    #[test]
    fn non_finite_floats_read_as_silence() {
        let f = InputFormat {
            sample_rate: 16_000,
            channels: 1,
            encoding: Encoding::PcmF32le,
        };
        let mut data = Vec::new();
        for v in [f32::NAN, f32::INFINITY, 0.5] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        let mut out = Vec::new();
        decode_to_mono(&f, &data, &mut out);
        assert_eq!(out, vec![0.0, 0.0, 0.5]);
    }

    #[test]
    fn floats_beyond_full_scale_are_clamped() {
        let f = InputFormat {
            sample_rate: 16_000,
            channels: 4,
            encoding: Encoding::PcmF32le,
        };
        let mut data = Vec::new();
        // Unclamped, these frames would decode to +inf (the sum overflows), 1.25 and
        // about -8.5e37.
        for v in [
            3e38f32,
            3e38,
            3e38,
            3e38,
            2.0,
            2.0,
            2.0,
            -1.0,
            f32::MIN,
            -1.0,
            0.5,
            0.5,
        ] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        let mut out = Vec::new();
        decode_to_mono(&f, &data, &mut out);
        assert_eq!(out, vec![1.0, 0.5, -0.25]);
    }
}
