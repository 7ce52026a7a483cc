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

/// What the transcription pool reports. Cheap to clone: handles to shared values.
#[derive(Debug, Clone)]
pub struct SttMetrics {
    /// Segments waiting for a thread.
    pub queue_depth: Gauge,
    /// Segments by outcome.
    pub segments: Family<OutcomeLabel, Counter>,
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
        let m = Self {
            queue_depth: Gauge::default(),
            segments: Family::default(),
            audio_seconds: Counter::default(),
            busy_seconds: Counter::default(),
            // 10 ms .. ~82 s.
            latency: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        };
        for outcome in ["transcribed", "empty", "dropped", "failed"] {
            m.segments
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(0);
        }
        registry.register(
            "stt_queue_depth",
            "Speech segments waiting for a transcription thread",
            m.queue_depth.clone(),
        );
        registry.register(
            "stt_segments",
            "Speech segments by outcome (transcribed, empty, dropped, failed)",
            m.segments.clone(),
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
}
