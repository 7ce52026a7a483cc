//! Process-wide counters for operators: Prometheus metrics and per-stage statistics.
//!
//! One [`Metrics`] per server, shared (`Arc`) by the registry and every actor. It owns its
//! own Prometheus registry rather than a global recorder, so several servers in one process
//! (the test suite) never mix their numbers. Recording is atomic adds plus, per handled
//! sampled message (one in [`TIMING_SAMPLE_EVERY`]), one uncontended lock to feed the percentile
//! histogram of its stage.

mod nats;
mod stt;

pub use nats::NatsMetrics;
pub use stt::{Outcome, OutcomeLabel, SttMetrics};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// `{stage="resampler"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// Stage kind: `session`, `resampler`, or a processor name.
    pub stage: String,
}

/// `{reason="server_full"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A refusal code or close reason.
    pub reason: String,
}

/// `{direction="in",kind="binary"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrameLabel {
    /// `in` (from clients) or `out`.
    pub direction: &'static str,
    /// `binary`, `text`, `ping`, `pong`, `close`.
    pub kind: &'static str,
}

/// `{direction="in"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `in` or `out`.
    pub direction: &'static str,
}

/// `{status="503"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// HTTP status code.
    pub status: u16,
}

/// Frame kinds counted, in index order of [`FrameKind`].
const FRAME_KINDS: [&str; 5] = ["binary", "text", "ping", "pong", "close"];

/// Which way a frame went.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// From the client.
    In = 0,
    /// To the client.
    Out = 1,
}

/// What kind of frame.
#[derive(Debug, Clone, Copy)]
pub enum FrameKind {
    /// Audio.
    Binary = 0,
    /// Control or event.
    Text = 1,
    /// WebSocket ping.
    Ping = 2,
    /// WebSocket pong.
    Pong = 3,
    /// WebSocket close.
    Close = 4,
}

/// One message in this many has its handling time measured. Counts stay exact; a clock read
/// pair and a histogram lock per message were a measurable share of the hot path, and the
/// percentiles of a sample of thousands of messages per second are as good.
pub const TIMING_SAMPLE_EVERY: u32 = 16;

/// Picks which of an actor's messages are timed: the first, then every
/// [`TIMING_SAMPLE_EVERY`]th. One per actor (not shared: no contention).
#[derive(Debug, Clone, Default)]
pub struct TimingSampler {
    n: u32,
}

impl TimingSampler {
    /// The start time if this message is to be timed.
    pub fn start(&mut self) -> Option<Instant> {
        let timed = self.n.is_multiple_of(TIMING_SAMPLE_EVERY);
        self.n = self.n.wrapping_add(1);
        timed.then(Instant::now)
    }
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 1 µs .. ~1 s.
    exponential_buckets(1e-6, 2.0, 21)
}

/// Statistics of one stage kind across all sessions.
#[derive(Debug)]
pub struct StageStats {
    name: String,
    capacity: usize,
    alive: Gauge,
    handled: Counter,
    depth: Gauge,
    peak_depth: AtomicI64,
    /// Deepest one actor's mailbox has been: what to compare with `capacity`.
    session_peak_depth: AtomicI64,
    restarts: Counter,
    seconds: Histogram,
    /// Handling time in microseconds, for percentiles in `/v1/stats`.
    micros: Mutex<hdrhistogram::Histogram<u64>>,
}

impl StageStats {
    /// An actor of this stage started.
    pub fn started(&self) {
        self.alive.inc();
    }

    /// An actor of this stage stopped with `depth` messages it never handled.
    pub fn stopped(&self, depth: i64) {
        self.alive.dec();
        self.depth.dec_by(depth);
    }

    /// A message was queued to an actor of this stage, whose mailbox now holds
    /// `actor_depth` messages.
    pub fn queued(&self, actor_depth: i64) {
        let now = self.depth.inc() + 1;
        self.peak_depth.fetch_max(now, Relaxed);
        self.session_peak_depth.fetch_max(actor_depth, Relaxed);
    }

    /// A queued message was taken off the queue.
    pub fn dequeued(&self) {
        self.depth.dec();
    }

    /// A message was handled; `started` is when, if it was picked for timing (see
    /// [`TimingSampler`]).
    pub fn handled(&self, started: Option<Instant>) {
        self.handled.inc();
        if let Some(started) = started {
            let took = started.elapsed();
            self.seconds.observe(took.as_secs_f64());
            if let Ok(mut h) = self.micros.lock() {
                h.saturating_record(took.as_micros().max(1) as u64);
            }
        }
    }

    /// An actor of this stage was restarted by its supervisor.
    pub fn restarted(&self) {
        self.restarts.inc();
    }

    /// A snapshot for `/v1/stats`.
    pub fn snapshot(&self) -> StageSnapshot {
        let (p50, p90, p99, max) = match self.micros.lock() {
            Ok(h) if !h.is_empty() => (
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.max(),
            ),
            _ => (0, 0, 0, 0),
        };
        StageSnapshot {
            stage: self.name.clone(),
            alive: self.alive.get().max(0),
            mailbox_capacity: self.capacity,
            mailbox_depth: self.depth.get().max(0),
            mailbox_peak_depth: self.peak_depth.load(Relaxed),
            session_peak_depth: self.session_peak_depth.load(Relaxed),
            messages_handled: self.handled.get(),
            restarts: self.restarts.get(),
            processing_us: Percentiles { p50, p90, p99, max },
        }
    }
}

/// Handling time percentiles, microseconds (since start).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest seen.
    pub max: u64,
}

/// One stage kind in `/v1/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct StageSnapshot {
    /// Stage kind.
    pub stage: String,
    /// Actors of this kind alive now.
    pub alive: i64,
    /// Mailbox capacity of each (messages; 0 = not bounded by a mailbox: the socket is).
    pub mailbox_capacity: usize,
    /// Messages queued now, summed over all actors of this kind.
    pub mailbox_depth: i64,
    /// Largest `mailbox_depth` (the sum) seen since start.
    pub mailbox_peak_depth: i64,
    /// Deepest any one actor's mailbox has been since start: at most `mailbox_capacity`
    /// plus one (the message a blocked sender holds) for pipeline stages.
    pub session_peak_depth: i64,
    /// Messages handled since start.
    pub messages_handled: u64,
    /// Supervisor restarts since start.
    pub restarts: u64,
    /// Time to handle one message.
    pub processing_us: Percentiles,
}

/// All of a server's metrics; see the module docs.
pub struct Metrics {
    registry: Registry,
    /// Sessions running now.
    pub sessions_active: Gauge,
    /// Sessions admitted since start.
    pub sessions_admitted: Counter,
    /// Refusals by code.
    pub sessions_refused: Family<ReasonLabel, Counter>,
    /// Sessions ended, by reason.
    pub sessions_closed: Family<ReasonLabel, Counter>,
    /// Seconds of input audio through the pipeline.
    pub audio_seconds: Counter<f64, AtomicU64>,
    /// Chunks dropped by `drop_newest`.
    pub chunks_dropped: Counter,
    /// Returned audio frames dropped for clients not reading or not attached.
    pub outgoing_dropped: Counter,
    /// Sessions whose connection was lost and that wait to be resumed.
    pub detaches: Counter,
    /// Sessions resumed by a client.
    pub resumes: Counter,
    /// Resumes that took over from a connection still attached (closed 4002).
    pub takeovers: Counter,
    /// Clients that stopped reading their events (connections closed `slow_consumer`).
    pub slow_consumers: Counter,
    /// Client authentication results, by outcome (`granted`, `denied`, `rate_limited`).
    pub auth: Family<ReasonLabel, Counter>,
    /// From receiving a chunk to sending the events it caused.
    pub event_latency: Histogram,
    /// WebSocket frames, handles created up front: `[direction][kind]`.
    ws_frames: [[Counter; FRAME_KINDS.len()]; 2],
    /// WebSocket payload bytes: `[direction]`.
    ws_bytes: [Counter; 2],
    /// HTTP refusals before the upgrade, by status.
    pub http_refusals: Family<StatusLabel, Counter>,
    stage_alive: Family<StageLabel, Gauge>,
    stage_messages: Family<StageLabel, Counter>,
    stage_depth: Family<StageLabel, Gauge>,
    stage_restarts: Family<StageLabel, Counter>,
    stage_seconds: Family<StageLabel, Histogram>,
    stages: RwLock<BTreeMap<String, Arc<StageStats>>>,
    /// Speech to text (`stt`).
    pub stt: SttMetrics,
    /// Publishing to NATS (`[nats]`).
    pub nats: NatsMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `voxrt_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("voxrt");
        let m = Metrics {
            sessions_active: Gauge::default(),
            sessions_admitted: Counter::default(),
            sessions_refused: Family::default(),
            sessions_closed: Family::default(),
            audio_seconds: Counter::default(),
            chunks_dropped: Counter::default(),
            outgoing_dropped: Counter::default(),
            detaches: Counter::default(),
            resumes: Counter::default(),
            takeovers: Counter::default(),
            slow_consumers: Counter::default(),
            auth: Family::default(),
            event_latency: Histogram::new(seconds_buckets()),
            ws_frames: Default::default(),
            ws_bytes: Default::default(),
            http_refusals: Family::default(),
            stage_alive: Family::default(),
            stage_messages: Family::default(),
            stage_depth: Family::default(),
            stage_restarts: Family::default(),
            stage_seconds: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            stages: RwLock::new(BTreeMap::new()),
            stt: SttMetrics::registered(&mut registry),
            nats: NatsMetrics::registered(&mut registry),
            registry: Registry::default(),
        };
        let mut m = m;
        registry.register(
            "sessions_active",
            "Sessions running now",
            m.sessions_active.clone(),
        );
        registry.register(
            "sessions_admitted",
            "Sessions admitted",
            m.sessions_admitted.clone(),
        );
        registry.register(
            "sessions_refused",
            "Sessions refused before the upgrade, by code",
            m.sessions_refused.clone(),
        );
        registry.register(
            "sessions_closed",
            "Sessions ended, by reason",
            m.sessions_closed.clone(),
        );
        registry.register_with_unit(
            "audio",
            "Input audio through the pipeline",
            Unit::Seconds,
            m.audio_seconds.clone(),
        );
        registry.register(
            "chunks_dropped",
            "Audio chunks dropped by the drop_newest policy",
            m.chunks_dropped.clone(),
        );
        registry.register(
            "outgoing_dropped",
            "Returned audio frames dropped because the client was not reading or not attached",
            m.outgoing_dropped.clone(),
        );
        registry.register(
            "session_detaches",
            "Sessions whose connection was lost, left waiting to be resumed",
            m.detaches.clone(),
        );
        registry.register(
            "session_resumes",
            "Sessions resumed on a new connection",
            m.resumes.clone(),
        );
        registry.register(
            "session_takeovers",
            "Resumes that took a session over from a connection still attached",
            m.takeovers.clone(),
        );
        registry.register(
            "slow_consumers",
            "Clients that stopped reading their events (connection closed slow_consumer)",
            m.slow_consumers.clone(),
        );
        registry.register(
            "auth",
            "Client authentication attempts, by outcome",
            m.auth.clone(),
        );
        registry.register_with_unit(
            "event_latency",
            "From receiving a chunk to sending the events it caused",
            Unit::Seconds,
            m.event_latency.clone(),
        );
        let frames: Family<FrameLabel, Counter> = Family::default();
        let bytes: Family<DirectionLabel, Counter> = Family::default();
        for (d, direction) in ["in", "out"].into_iter().enumerate() {
            for (k, kind) in FRAME_KINDS.into_iter().enumerate() {
                frames
                    .get_or_create(&FrameLabel { direction, kind })
                    .inc_by(0);
                // Family::get_or_create_owned returns the shared handle the family encodes.
                m.ws_frames[d][k] = frames.get_or_create_owned(&FrameLabel { direction, kind });
            }
            m.ws_bytes[d] = bytes.get_or_create_owned(&DirectionLabel { direction });
        }
        registry.register(
            "websocket_frames",
            "WebSocket frames by direction and kind",
            frames,
        );
        registry.register_with_unit(
            "websocket_payload",
            "WebSocket payload by direction",
            Unit::Bytes,
            bytes,
        );
        registry.register(
            "http_refusals",
            "HTTP refusals before the upgrade, by status",
            m.http_refusals.clone(),
        );
        registry.register(
            "stage_actors",
            "Actors alive, by stage",
            m.stage_alive.clone(),
        );
        registry.register(
            "stage_messages",
            "Messages handled, by stage",
            m.stage_messages.clone(),
        );
        registry.register(
            "mailbox_depth",
            "Messages queued, summed by stage",
            m.stage_depth.clone(),
        );
        registry.register(
            "actor_restarts",
            "Actor restarts by supervisors, by stage",
            m.stage_restarts.clone(),
        );
        registry.register_with_unit(
            "stage_processing",
            "Time to handle one message, by stage",
            Unit::Seconds,
            m.stage_seconds.clone(),
        );
        let mut m = m;
        m.registry = registry;
        m
    }

    /// The statistics of stage kind `name` (created on first use) with mailboxes of `capacity`.
    pub fn stage(&self, name: &str, capacity: usize) -> Arc<StageStats> {
        if let Some(s) = self.stages.read().ok().and_then(|m| m.get(name).cloned()) {
            return s;
        }
        let label = StageLabel {
            stage: name.to_owned(),
        };
        let stats = Arc::new(StageStats {
            name: name.to_owned(),
            capacity,
            alive: self.stage_alive.get_or_create_owned(&label),
            handled: self.stage_messages.get_or_create_owned(&label),
            depth: self.stage_depth.get_or_create_owned(&label),
            peak_depth: AtomicI64::new(0),
            session_peak_depth: AtomicI64::new(0),
            restarts: self.stage_restarts.get_or_create_owned(&label),
            seconds: self.stage_seconds.get_or_create_owned(&label),
            micros: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2)
                    .unwrap_or_else(|_| hdrhistogram::Histogram::new(2).expect("2 sig figs")),
            ),
        });
        match self.stages.write() {
            Ok(mut m) => m.entry(name.to_owned()).or_insert(stats).clone(),
            Err(_) => stats,
        }
    }

    /// Every stage kind seen so far.
    pub fn stages(&self) -> Vec<StageSnapshot> {
        self.stages
            .read()
            .map(|m| m.values().map(|s| s.snapshot()).collect())
            .unwrap_or_default()
    }

    /// Counts a WebSocket frame of `bytes` payload (two relaxed atomic adds).
    pub fn frame(&self, direction: Direction, kind: FrameKind, bytes: usize) {
        self.ws_frames[direction as usize][kind as usize].inc();
        self.ws_bytes[direction as usize].inc_by(bytes as u64);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
