//! `level`: RMS and peak loudness per interval.

use super::{to_dbfs, Processor, SAMPLES_PER_MS};
use crate::audio::AudioBlock;
use crate::protocol::ServerEvent;
use crate::settings::LevelSettings;

/// Emits `{"type":"level","t_ms","rms_dbfs","peak_dbfs"}` every `interval_ms` of audio, with
/// `t_ms` at the end of the interval; a partial interval is emitted at flush. Levels are
/// relative to full scale 1.0 (a full-scale sine reads -3.0 dBFS RMS), floored at -120.
#[derive(Debug)]
pub struct LevelProcessor {
    interval: u64,
    sum_sq: f64,
    peak: f32,
    count: u64,
}

impl LevelProcessor {
    /// A level meter; `interval_ms == 0` makes it emit nothing.
    pub fn new(settings: LevelSettings) -> Self {
        Self {
            interval: u64::from(settings.interval_ms) * SAMPLES_PER_MS,
            sum_sq: 0.0,
            peak: 0.0,
            count: 0,
        }
    }

    fn emit(&mut self, end_sample: u64, events: &mut Vec<ServerEvent>) {
        let rms = (self.sum_sq / self.count as f64).sqrt();
        events.push(ServerEvent::Level {
            t_ms: end_sample / SAMPLES_PER_MS,
            rms_dbfs: round2(to_dbfs(rms)),
            peak_dbfs: round2(to_dbfs(f64::from(self.peak))),
        });
        self.sum_sq = 0.0;
        self.peak = 0.0;
        self.count = 0;
    }
}

/// Two decimals are plenty for a meter and keep events short.
/// Lanes summed independently: a single running sum is one long chain of dependent adds
/// that the compiler may not reorder (float addition is not associative); eight lanes let
/// it use SIMD registers. The sum differs from the sequential one only in rounding, far
/// below the 0.01 dB the events carry.
const LANES: usize = 8;

/// Sum of squares and largest magnitude of `samples`.
fn energy_and_peak(samples: &[f32]) -> (f32, f32) {
    let mut sums = [0.0f32; LANES];
    let mut peaks = [0.0f32; LANES];
    let lanes = samples.chunks_exact(LANES);
    let rest = lanes.remainder();
    for lane in lanes {
        for i in 0..LANES {
            sums[i] += lane[i] * lane[i];
            peaks[i] = peaks[i].max(lane[i].abs());
        }
    }
    for (i, &s) in rest.iter().enumerate() {
        sums[i] += s * s;
        peaks[i] = peaks[i].max(s.abs());
    }
    let peak = peaks.iter().fold(0.0f32, |a, &b| a.max(b));
    (sums.iter().sum(), peak)
}

fn round2(v: f32) -> f32 {
    (v * 100.0).round() / 100.0
}

impl Processor for LevelProcessor {
    fn process(&mut self, block: &AudioBlock, events: &mut Vec<ServerEvent>) {
        if self.interval == 0 {
            return;
        }
        let mut rest = &block.samples[..];
        let mut pos = block.start;
        while !rest.is_empty() {
            let take = ((self.interval - self.count) as usize).min(rest.len());
            let (now, later) = rest.split_at(take);
            let (sum, peak) = energy_and_peak(now);
            self.sum_sq += f64::from(sum);
            self.peak = self.peak.max(peak);
            self.count += take as u64;
            pos += take as u64;
            rest = later;
            if self.count == self.interval {
                self.emit(pos, events);
            }
        }
    }

    fn flush(&mut self, end_sample: u64, events: &mut Vec<ServerEvent>) {
        if self.interval != 0 && self.count > 0 {
            self.emit(end_sample, events);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::energy_and_peak;

    /// The lane sums agree with a plain f64 sum, for lengths that do and do not fill lanes.
    #[test]
    fn lanes_match_a_sequential_sum() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let samples: Vec<f32> = (0..1_603)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        for len in [0, 1, 7, 8, 9, 320, 1_603] {
            let s = &samples[..len];
            let (sum, peak) = energy_and_peak(s);
            let exact: f64 = s.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            let max = s.iter().fold(0.0f32, |a, &b| a.max(b.abs()));
            assert!(
                (f64::from(sum) - exact).abs() <= 1e-5 * exact.max(1.0),
                "{len}"
            );
            assert_eq!(peak, max, "{len}");
        }
    }
}
