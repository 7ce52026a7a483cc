//! Per-session counters shared by the session, its pipeline and the registry.
//!
//! Atomics rather than messages: the registry's sweep and the stats endpoint read them
//! without a round trip to every session, and the hot path pays one relaxed add.

use crate::metrics::{StageStats, TimingSampler};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
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
    /// Events sent to the client.
    pub events_sent: AtomicU64,
    /// WebSocket payload bytes received.
    pub bytes_in: AtomicU64,
    /// WebSocket payload bytes sent.
    pub bytes_out: AtomicU64,
    /// Encoded bytes queued for the client and not yet taken by the socket writer.
    pub outgoing_bytes: AtomicUsize,
    /// `level` events and returned-audio frames dropped because the client was not reading.
    pub outgoing_dropped: AtomicU64,
    /// Code of the last error sent to the client.
    pub last_error: Mutex<Option<&'static str>>,
    /// Messages queued per pipeline stage: the resampler first, then each processor.
    pub stage_depths: Vec<(String, AtomicI64)>,
    /// A connection carries the session (false before the first attaches and while
    /// detached).
    pub attached: AtomicBool,
    /// Times a client resumed the session.
    pub resumes: AtomicU64,
    /// Resumes that took the session over from a connection still attached.
    pub takeovers: AtomicU64,
}

impl SessionCounters {
    /// Counters for a session starting now whose pipeline has `stages` (resampler first).
    pub fn new(stages: impl IntoIterator<Item = String>) -> Self {
        let now = now_ms();
        Self {
            started_ms: now,
            last_activity_ms: AtomicU64::new(now),
            chunks_in: AtomicU64::new(0),
            chunks_processed: AtomicU64::new(0),
            chunks_dropped: AtomicU64::new(0),
            inflight_bytes: AtomicUsize::new(0),
            pipeline_samples: AtomicU64::new(0),
            events_sent: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            outgoing_bytes: AtomicUsize::new(0),
            outgoing_dropped: AtomicU64::new(0),
            last_error: Mutex::new(None),
            stage_depths: stages.into_iter().map(|s| (s, AtomicI64::new(0))).collect(),
            attached: AtomicBool::new(false),
            resumes: AtomicU64::new(0),
            takeovers: AtomicU64::new(0),
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

/// One pipeline actor's view of its queue: updates both the session's per-stage depth and
/// the stage kind's totals, so `/v1/stats` can show either without asking the actor.
///
/// Depth counts messages in the mailbox, not the one being handled: the sender adds when it
/// queues, the actor subtracts when it takes the message ([`StageProbe::start`]).
#[derive(Debug, Clone)]
pub struct StageProbe {
    stats: Arc<StageStats>,
    counters: Arc<SessionCounters>,
    index: usize,
    timing: TimingSampler,
}

impl StageProbe {
    /// The probe of stage `index` (0 = resampler) of the session owning `counters`.
    pub fn new(stats: Arc<StageStats>, counters: Arc<SessionCounters>, index: usize) -> Self {
        Self {
            stats,
            counters,
            index,
            timing: TimingSampler::default(),
        }
    }

    fn depth(&self) -> Option<&AtomicI64> {
        self.counters.stage_depths.get(self.index).map(|(_, d)| d)
    }

    /// A message was put in this stage's mailbox.
    pub fn queued(&self) {
        let session_depth = self.depth().map_or(0, |d| d.fetch_add(1, Relaxed) + 1);
        self.stats.queued(session_depth);
    }

    /// The actor took a message out of its mailbox and starts handling it; pass what this
    /// returns to [`StageProbe::handled`] when done.
    pub fn start(&mut self) -> Option<Instant> {
        self.stats.dequeued();
        if let Some(d) = self.depth() {
            d.fetch_sub(1, Relaxed);
        }
        self.timing.start()
    }

    /// The message taken at [`StageProbe::start`] was handled.
    pub fn handled(&self, started: Option<Instant>) {
        self.stats.handled(started);
    }

    /// The stage's processor was restarted after a panic.
    pub fn restarted(&self) {
        self.stats.restarted();
    }

    /// The actor started.
    pub fn started(&self) {
        self.stats.started();
    }

    /// The actor stopped; messages it never handled leave the depth counts.
    pub fn stopped(&self) {
        let left = self.depth().map_or(0, |d| d.swap(0, Relaxed));
        self.stats.stopped(left);
    }
}
