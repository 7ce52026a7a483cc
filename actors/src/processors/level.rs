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
            let mut sum = 0.0f32;
            let mut peak = self.peak;
            for &s in now {
                sum += s * s;
                peak = peak.max(s.abs());
            }
            self.sum_sq += f64::from(sum);
            self.peak = peak;
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
