//! The transcription threads: `stt.threads` OS threads (not the HTTP workers) taking
//! segments from one bounded [`SegmentQueue`], each with its own model instance.
//!
//! Nothing here ever blocks an actor: a session's `stt` processor only locks the queue to
//! push a segment (microseconds), and results go back through the session's [`LateSink`].
//! The library serializes calls on one model instance, so each thread loads its own; the
//! library itself (code and its ONNX runtime) is loaded once per process.

use super::queue::{Queued, SegmentQueue};
use super::SttStartError;
use crate::error::SessionError;
use crate::metrics::{Outcome, SttMetrics};
use crate::processors::{LateOutput, LateSink};
use crate::protocol::ServerEvent;
use crate::transcription::{SpeechLibrary, TranscribeError, Transcriber};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Speech cut by a session's `stt` processor, ready to transcribe.
#[derive(Debug)]
pub struct Segment {
    /// Where it starts on the input timeline, ms.
    pub t_ms: u64,
    /// Where it ends, ms.
    pub end_ms: u64,
    /// 16 kHz mono samples.
    pub samples: Vec<f32>,
    /// When the processor saw the segment end (`speech_end`, a flush, or a cut at
    /// `max_segment_s`): transcript latency counts from here.
    pub ended_at: Instant,
}

/// What a session still waits for: segments queued or being transcribed.
#[derive(Debug, Default)]
pub struct Pending {
    count: AtomicUsize,
    settled: tokio::sync::Notify,
}

impl Pending {
    fn add(&self) {
        self.count.fetch_add(1, Relaxed);
    }

    /// One segment is finished with (transcribed, failed or dropped) and its output sent.
    fn done(&self) {
        if self.count.fetch_sub(1, Relaxed) == 1 {
            self.settled.notify_waiters();
        }
    }

    /// Segments not yet finished.
    pub fn count(&self) -> usize {
        self.count.load(Relaxed)
    }

    /// Waits until none is pending, at most `timeout`; `Err(pending)` on timeout.
    pub async fn wait(&self, timeout: Duration) -> Result<(), usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Created before the check: `notify_waiters` wakes it even if the last segment
            // finishes between the check and the first poll.
            let settled = self.settled.notified();
            if self.count() == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return match self.count() {
                    0 => Ok(()),
                    n => Err(n),
                };
            }
        }
    }
}

/// A session's handle on the pool: where its transcripts go and what it owes.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The session.
    pub session: Uuid,
    /// Its late output.
    pub late: LateSink,
    /// Its pending segments.
    pub pending: Arc<Pending>,
}

struct Job {
    owner: Owner,
    segment: Segment,
}

impl Queued for Job {
    fn session(&self) -> Uuid {
        self.owner.session
    }
}

/// Figures for `/v1/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct SttSnapshot {
    /// Transcription threads.
    pub threads: usize,
    /// Segments waiting now.
    pub queue_depth: usize,
    /// `stt.max_queued_segments`.
    pub max_queued_segments: usize,
    /// Segments transcribed with words.
    pub segments_transcribed: u64,
    /// Segments in which the model found no words (no transcript sent).
    pub segments_empty: u64,
    /// Segments dropped from a full queue.
    pub segments_dropped: u64,
    /// Segments the library failed on.
    pub segments_failed: u64,
    /// Speech transcribed, seconds.
    pub audio_s: f64,
    /// Time the threads spent transcribing, seconds.
    pub busy_s: f64,
    /// Speech transcribed per wall second since the pool started.
    pub audio_s_per_wall_s: f64,
    /// `speech_end` to transcript, ms: median, 99th percentile, largest (0 before the first).
    pub latency_ms: LatencySnapshot,
}

/// Percentiles in ms.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatencySnapshot {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

struct Shared {
    queue: Mutex<SegmentQueue<Job>>,
    wake: Condvar,
    stop: AtomicBool,
    capacity: usize,
    metrics: SttMetrics,
    /// `speech_end` to transcript, ms (1 ms .. 10 min, 2 significant digits).
    latency: Mutex<Histogram<u64>>,
    started: Instant,
}

impl Shared {
    fn new(capacity: usize, metrics: SttMetrics) -> Self {
        Self {
            queue: Mutex::new(SegmentQueue::new(capacity)),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            capacity: capacity.max(1),
            metrics,
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 600_000, 2).expect("constant bounds are valid"),
            ),
            started: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SegmentQueue<Job>> {
        // A thread that panicked while holding the lock left a queue that is still
        // consistent (every change is one call): keep using it.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The transcription threads and their queue; one per server, shared by every session's
/// `stt` processor. Dropping it stops the threads after the segments they are on; waiting
/// segments are let go (their sessions are closing with the server).
pub struct TranscriptionPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for TranscriptionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranscriptionPool")
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl TranscriptionPool {
    /// Loads `threads` (at least 1) model instances from `model_dir` with `library` (all
    /// before any thread starts, so a bad model fails here, at startup) and starts a thread
    /// for each, behind a queue of `capacity` segments.
    pub fn start(
        library: &Arc<SpeechLibrary>,
        model_dir: &Path,
        threads: usize,
        capacity: usize,
        metrics: SttMetrics,
    ) -> Result<Self, SttStartError> {
        let transcribers = (0..threads.max(1))
            .map(|_| library.transcriber(model_dir))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SttStartError::Model)?;
        let shared = Arc::new(Shared::new(capacity, metrics));
        let mut handles = Vec::with_capacity(transcribers.len());
        for (i, transcriber) in transcribers.into_iter().enumerate() {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("voxrt-stt-{i}"))
                .spawn(move || run(&shared, transcriber))
                .map_err(SttStartError::Thread)?;
            handles.push(handle);
        }
        Ok(Self {
            shared,
            threads: handles,
        })
    }

    /// Queues `segment` for `owner`. Never waits for a transcription: when the queue is
    /// full the oldest waiting segment (whoever's) is dropped and its session told.
    pub fn submit(&self, owner: &Owner, segment: Segment) {
        owner.pending.add();
        let job = Job {
            owner: owner.clone(),
            segment,
        };
        let (dropped, depth) = {
            let mut queue = self.shared.lock();
            let dropped = queue.push(job);
            (dropped, queue.len())
        };
        self.shared.metrics.queue_depth.set(depth as i64);
        self.shared.wake.notify_one();
        if let Some(Job { owner, segment }) = dropped {
            self.shared.metrics.record(Outcome::Dropped);
            owner
                .late
                .send(LateOutput::Problem(SessionError::TranscriptDropped {
                    t_ms: segment.t_ms,
                    end_ms: segment.end_ms,
                }));
            owner.pending.done();
        }
    }

    /// Figures for `/v1/stats`.
    pub fn snapshot(&self) -> SttSnapshot {
        let s = &self.shared;
        let (p50, p99, max) = {
            let h = s.latency.lock().unwrap_or_else(|p| p.into_inner());
            if h.is_empty() {
                (0, 0, 0)
            } else {
                (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
            }
        };
        let m = &s.metrics;
        let audio_s = m.audio_seconds.get();
        let wall_s = s.started.elapsed().as_secs_f64().max(1e-3);
        SttSnapshot {
            threads: self.threads.len(),
            queue_depth: s.lock().len(),
            max_queued_segments: s.capacity,
            segments_transcribed: m.count(Outcome::Transcribed),
            segments_empty: m.count(Outcome::Empty),
            segments_dropped: m.count(Outcome::Dropped),
            segments_failed: m.count(Outcome::Failed),
            audio_s,
            busy_s: m.busy_seconds.get(),
            audio_s_per_wall_s: audio_s / wall_s,
            latency_ms: LatencySnapshot { p50, p99, max },
        }
    }
}

#[cfg(test)]
impl TranscriptionPool {
    /// A pool whose queue no thread takes from (tests of the queue and of waiting).
    pub(crate) fn unstarted(capacity: usize) -> Self {
        let metrics = SttMetrics::registered(&mut prometheus_client::registry::Registry::default());
        Self {
            shared: Arc::new(Shared::new(capacity, metrics)),
            threads: Vec::new(),
        }
    }
}

impl Drop for TranscriptionPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        let left = self.shared.lock().drain();
        for job in left {
            job.owner.pending.done();
        }
        self.shared.wake.notify_all();
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

/// One transcription thread: takes the next segment, transcribes it, sends the result.
fn run(shared: &Shared, mut transcriber: Transcriber) {
    loop {
        let job = {
            let mut queue = shared.lock();
            loop {
                if shared.stop.load(Relaxed) {
                    return;
                }
                if let Some(job) = queue.take() {
                    shared.metrics.queue_depth.set(queue.len() as i64);
                    break job;
                }
                queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
        };
        let Job { owner, segment } = job;
        transcribe(shared, &owner, &segment, |s| transcriber.transcribe(s));
        owner.pending.done();
        shared.lock().done(owner.session);
        // The session's next segment, if one waits, may go now.
        shared.wake.notify_all();
    }
}

/// Transcribes one segment with `model` and sends the outcome to its owner: a transcript,
/// nothing (no words), or `transcription_failed` (the library's error, or a panic).
fn transcribe(
    shared: &Shared,
    owner: &Owner,
    segment: &Segment,
    model: impl FnOnce(&[f32]) -> Result<String, TranscribeError>,
) {
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| model(&segment.samples)));
    shared
        .metrics
        .busy_seconds
        .inc_by(started.elapsed().as_secs_f64());
    let audio_s = segment.samples.len() as f64 / 16_000.0;
    shared.metrics.audio_seconds.inc_by(audio_s);
    let (t_ms, end_ms) = (segment.t_ms, segment.end_ms);
    match result {
        Ok(Ok(text)) if text.is_empty() => shared.metrics.record(Outcome::Empty),
        Ok(Ok(text)) => {
            owner
                .late
                .send(LateOutput::Events(vec![ServerEvent::Transcript {
                    t_ms,
                    end_ms,
                    text,
                    is_final: true,
                }]));
            shared.metrics.record(Outcome::Transcribed);
            let latency = segment.ended_at.elapsed();
            shared.metrics.latency.observe(latency.as_secs_f64());
            let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
            let mut h = shared.latency.lock().unwrap_or_else(|p| p.into_inner());
            let _ = h.record(ms.clamp(1, 600_000));
        }
        failed => {
            let reason = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "the transcription panicked".to_owned(),
            };
            tracing::warn!(session = %owner.session, t_ms, end_ms, %reason, "transcription failed");
            shared.metrics.record(Outcome::Failed);
            owner
                .late
                .send(LateOutput::Problem(SessionError::TranscriptionFailed {
                    t_ms,
                    end_ms,
                }));
        }
    }
}

#[cfg(test)]
mod tests;
