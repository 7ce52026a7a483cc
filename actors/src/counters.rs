//! Per-session counters shared by the session, its pipeline and the registry.
//!
//! Atomics rather than messages: the registry's sweep and the stats endpoint read them
//! without a round trip to every session, and the hot path pays one relaxed add.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the first call in this process: a cheap monotonic clock for atomics.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Live counters of one session. Owned jointly (`Arc`) by the session, its resampler and the
/// registry's entry for it.
#[derive(Debug)]
pub struct SessionCounters {
    /// When the session started, in [`now_ms`] time.
    pub started_ms: u64,
    /// Last audio or client ping, in [`now_ms`] time.
    pub last_activity_ms: AtomicU64,
    /// Binary frames accepted as audio.
    pub chunks_in: AtomicU64,
    /// Chunks the resampler has handed to the processors.
    pub chunks_processed: AtomicU64,
    /// Chunks dropped by the `drop_newest` policy.
    pub chunks_dropped: AtomicU64,
    /// Audio bytes sent to the resampler and not yet handled by it.
    pub inflight_bytes: AtomicUsize,
    /// Pipeline (16 kHz) samples produced so far.
    pub pipeline_samples: AtomicU64,
}

impl SessionCounters {
    /// Counters for a session starting now.
    pub fn new() -> Self {
        let now = now_ms();
        Self {
            started_ms: now,
            last_activity_ms: AtomicU64::new(now),
            chunks_in: AtomicU64::new(0),
            chunks_processed: AtomicU64::new(0),
            chunks_dropped: AtomicU64::new(0),
            inflight_bytes: AtomicUsize::new(0),
            pipeline_samples: AtomicU64::new(0),
        }
    }

    /// Records client activity (audio or ping) now.
    pub fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Relaxed);
    }

    /// Milliseconds since the last activity.
    pub fn idle_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_activity_ms.load(Relaxed))
    }

    /// Milliseconds since the session started.
    pub fn age_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.started_ms)
    }

    /// The counters as reported in `session.closed`.
    pub fn stats(&self) -> crate::protocol::SessionStats {
        crate::protocol::SessionStats {
            chunks_in: self.chunks_in.load(Relaxed),
            chunks_processed: self.chunks_processed.load(Relaxed),
            chunks_dropped: self.chunks_dropped.load(Relaxed),
            audio_ms: self.pipeline_samples.load(Relaxed) / 16,
        }
    }
}

impl Default for SessionCounters {
    fn default() -> Self {
        Self::new()
    }
}
