//! Speech-to-text figures for `/metrics` (zero while no session runs `stt`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// `{outcome="transcribed"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `transcribed` (a transcript was sent), `empty` (no words), `dropped` (queue full),
    /// `failed` (the library's error).
    pub outcome: &'static str,
}

/// What became of one speech segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A transcript was sent.
    Transcribed = 0,
    /// The model found no words; nothing was sent.
    Empty = 1,
    /// Dropped from a full queue (`transcript_dropped`).
    Dropped = 2,
    /// The library failed on it (`transcription_failed`).
    Failed = 3,
}

impl Outcome {
    /// Every outcome, in index order.
    pub const ALL: [Outcome; 4] = [
        Outcome::Transcribed,
        Outcome::Empty,
        Outcome::Dropped,
        Outcome::Failed,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Transcribed => "transcribed",
            Outcome::Empty => "empty",
            Outcome::Dropped => "dropped",
            Outcome::Failed => "failed",
        }
    }
}

/// What the transcription pool reports, and the one place it keeps its counts (`/v1/stats`
/// reads them back). Cheap to clone: handles to shared values.
#[derive(Debug, Clone)]
pub struct SttMetrics {
    /// Segments waiting for a thread.
    pub queue_depth: Gauge,
    /// Segments by outcome, handles created up front: indexed by [`Outcome`].
    segments: [Counter; 4],
    /// Seconds of speech transcribed (rate: audio seconds per wall second).
    pub audio_seconds: Counter<f64, AtomicU64>,
    /// Seconds the transcription threads spent transcribing (over `audio_seconds`: the
    /// real-time factor).
    pub busy_seconds: Counter<f64, AtomicU64>,
    /// From `speech_end` (when the `stt` processor saw it) to the transcript sent.
    pub latency: Histogram,
}

impl SttMetrics {
    /// Fresh figures, registered in `registry` under `stt_*`.
    pub fn registered(registry: &mut Registry) -> Self {
        let family: Family<OutcomeLabel, Counter> = Family::default();
        let m = Self {
            queue_depth: Gauge::default(),
            segments: Outcome::ALL
                .map(|o| family.get_or_create_owned(&OutcomeLabel { outcome: o.label() })),
            audio_seconds: Counter::default(),
            busy_seconds: Counter::default(),
            // 10 ms .. ~82 s.
            latency: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        };
        registry.register(
            "stt_queue_depth",
            "Speech segments waiting for a transcription thread",
            m.queue_depth.clone(),
        );
        registry.register(
            "stt_segments",
            "Speech segments by outcome (transcribed, empty, dropped, failed)",
            family,
        );
        registry.register_with_unit(
            "stt_audio",
            "Speech transcribed",
            Unit::Seconds,
            m.audio_seconds.clone(),
        );
        registry.register_with_unit(
            "stt_busy",
            "Time the transcription threads spent transcribing",
            Unit::Seconds,
            m.busy_seconds.clone(),
        );
        registry.register_with_unit(
            "stt_latency",
            "From speech_end to the transcript sent",
            Unit::Seconds,
            m.latency.clone(),
        );
        m
    }

    /// Counts one segment's outcome.
    pub fn record(&self, outcome: Outcome) {
        self.segments[outcome as usize].inc();
    }

    /// Segments that ended with `outcome` so far.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.segments[outcome as usize].get()
    }
}
