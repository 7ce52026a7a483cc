//! The actors' tunables. The server composes these into its one `Settings` struct; every
//! field is documented with its unit and bound in `config/default.toml`, and validated by
//! the server at startup.

use serde::{Deserialize, Serialize};
use std::num::NonZeroUsize;

/// What a session does when the first pipeline stage is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackpressurePolicy {
    /// Stop reading the client's socket until the stage has room. TCP pushes back on the
    /// client; nothing is lost; a client that sends faster than real time is slowed down.
    Block,
    /// Drop the chunk that did not fit, count it, and tell the client with a non-fatal
    /// `audio_dropped` error naming the chunk's `chunk_seq`. Latency stays low; audio is lost.
    DropNewest,
}

/// The audio pipeline behind each session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    /// Processors run on every session, by name, in this order.
    pub processors: Vec<String>,
    /// Mailbox capacity of every stage (resampler and each processor), in messages.
    pub mailbox_capacity: NonZeroUsize,
    /// Client audio accepted but not yet resampled, per session, in bytes. Together with
    /// `mailbox_capacity` this bounds what a flooding client can make the server hold.
    pub max_inflight_bytes: NonZeroUsize,
    /// What happens when the pipeline is behind.
    pub backpressure: BackpressurePolicy,
}

/// How processors that panic are restarted (Erlang/OTP style: an intensity over a period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionSettings {
    /// Restarts of one session's processors allowed within `period_s`; one more closes the
    /// session with 1011 `processor_failed`.
    pub max_restarts: u32,
    /// The window `max_restarts` counts over, in seconds.
    pub period_s: u64,
}

/// Voice activity detection defaults; a client may override each per session.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VadSettings {
    /// Speech probability (0..1) at or above which a 16 ms frame counts as speech.
    pub threshold: f32,
    /// Silence that ends a speech segment, in milliseconds.
    pub silence_ms: u32,
    /// Speech shorter than this is not reported, in milliseconds.
    pub min_speech_ms: u32,
}

/// The `level` processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelSettings {
    /// Interval between `level` events, in milliseconds of audio; 0 turns them off.
    pub interval_ms: u32,
}

/// Limits on one WebSocket session.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionLimits {
    /// Largest binary (audio) message accepted, in one frame or reassembled from fragments,
    /// in bytes; larger closes with 1009.
    pub max_binary_frame_bytes: usize,
    /// Largest text (control) message accepted, in one frame or reassembled, in bytes;
    /// larger closes with 1009.
    pub max_text_frame_bytes: usize,
    /// How often the server pings the client, in seconds.
    pub heartbeat_interval_s: u64,
    /// A client silent for this long (no frame of any kind, not even a pong) is dropped, in seconds.
    pub heartbeat_timeout_s: u64,
    /// Deepest nesting of arrays/objects in a control message; deeper gets a non-fatal
    /// `json_too_deep` error.
    pub max_json_depth: usize,
    /// Control (text) messages per second, with bursts of as many; more closes 1008
    /// `rate_limited`.
    pub max_control_messages_per_s: u32,
    /// Sustained audio rate, as a multiple of real time; faster (beyond the burst) closes
    /// 1008 `rate_limited`.
    pub max_realtime_factor: f32,
    /// Seconds of audio a client may send ahead of `max_realtime_factor` at once: catching
    /// up after a network stall, or a short file sent as fast as possible.
    pub realtime_burst_s: u32,
    /// Bytes of events and returned audio queued for a client that is not reading; beyond it
    /// `level` events and returned audio are dropped (counted), and at twice it the session
    /// closes 1008 `slow_consumer`.
    pub max_outgoing_bytes: usize,
    /// A client whose outgoing queue stays over `max_outgoing_bytes` this long, in seconds,
    /// is closed 1008 `slow_consumer`.
    pub slow_consumer_timeout_s: u64,
    /// How long a session whose connection was lost waits for the client to resume it, in
    /// seconds; 0 turns resume off (a lost connection then ends the session).
    pub resume_window_s: u64,
    /// Bytes of sequenced events a session keeps for replay on resume. While attached the
    /// oldest are let go beyond it; while detached too, except those kept since the
    /// detach: when they alone overflow it, the session ends with
    /// `resume_buffer_overflow`.
    pub resume_buffer_bytes: usize,
}

impl SessionLimits {
    /// Bytes of events a session holds for replay: `resume_buffer_bytes` with resume on,
    /// none with it off (nothing could ever be replayed).
    pub fn replay_buffer_bytes(&self) -> usize {
        match self.resume_window_s {
            0 => 0,
            _ => self.resume_buffer_bytes,
        }
    }
}

/// Everything a session needs from the server's settings, shared by all sessions.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Per-session limits.
    pub limits: SessionLimits,
    /// Registry limits (TTL and idle timeout are reported to the client).
    pub registry: RegistryLimits,
    /// Pipeline layout and backpressure.
    pub pipeline: PipelineSettings,
    /// Level meter settings.
    pub level: LevelSettings,
    /// Processor restart limits.
    pub supervision: SupervisionSettings,
}

/// Limits the registry enforces across sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryLimits {
    /// Sessions alive at once on this server; more get 503 `server_full`.
    pub max_sessions: usize,
    /// Sessions alive at once from one client address; more get 429 `too_many_sessions`.
    pub max_sessions_per_ip: usize,
    /// Memory the sessions may reserve together, in MiB; each session reserves its
    /// worst case (see `docs/protocol.md`). More get 503 `memory_budget_exceeded`.
    pub memory_budget_mb: usize,
    /// Longest a session may live, in seconds; then it is closed with 4001 `ttl_expired`.
    pub session_ttl_s: u64,
    /// Longest a session may go without audio or a client ping, in seconds; then 4000 `idle_timeout`.
    pub idle_timeout_s: u64,
    /// How often the registry checks TTL and idle time, in milliseconds.
    pub sweep_interval_ms: u64,
    /// How long an admitted client has to finish the WebSocket upgrade, in seconds.
    pub handshake_timeout_s: u64,
    /// The server's own lag (the most any HTTP worker's event loop was behind over the last
    /// second, see `registry::lag`) above which new sessions get 503 `overloaded`, in
    /// milliseconds; 0 turns the check off. Sessions already admitted are not touched.
    pub max_lag_ms: u64,
    /// New sessions admitted per second, server-wide, in bursts of as many; more get 503
    /// `overloaded`. 0 turns the pace off. Why: the lag shows a session's load only once it
    /// streams, so a connect burst would all be admitted before the lag rose; paced, the
    /// lag bound stops admission within a second's worth of sessions of where it should.
    pub max_new_sessions_per_s: u32,
    /// The most loaded HTTP worker's share of the last second spent running or waiting for
    /// a CPU (see `registry::lag`), in percent, at or above which new sessions get 503
    /// `overloaded`; 0 turns the check off. The lag misses a saturated loop: its timers stay
    /// punctual while its sessions' audio waits unread in socket buffers.
    pub max_worker_load_pct: u32,
}

impl RegistryLimits {
    /// How many sessions reserving `reserve_bytes` each fit `memory_budget_mb`: the one
    /// rule admission (`memory_budget_exceeded`) and the startup check both apply.
    pub fn budget_sessions(&self, reserve_bytes: usize) -> usize {
        self.memory_budget_mb.saturating_mul(1 << 20) / reserve_bytes.max(1)
    }
}

/// The `stt` processor: speech to text on threads of its own (see `processors::stt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SttSettings {
    /// The speech library (`libmoonshine.so`), a path; relative paths are from the working
    /// directory. Loaded only when `pipeline.processors` names `stt`.
    pub library: String,
    /// The directory holding the model's files (`encoder_model.ort`,
    /// `decoder_model_merged.ort`, `tokenizer.bin`).
    pub model_dir: String,
    /// OS threads transcribing, each with its own copy of the model's runtime state (the
    /// library serializes calls on one model instance). Not the HTTP workers.
    pub threads: usize,
    /// Segments waiting for a thread, server-wide; when full, the oldest waiting one is
    /// dropped and its client told (`transcript_dropped`).
    pub max_queued_segments: usize,
    /// Longest audio transcribed at once, seconds; longer speech is cut into pieces this
    /// long, each its own transcript.
    pub max_segment_s: u32,
    /// Audio kept before a segment's `speech_start`, ms: the VAD reports speech once it is
    /// sure, and a word's quiet onset comes before.
    pub pre_roll_ms: u32,
    /// Audio kept after a segment's `speech_end`, ms (at most what the VAD's silence
    /// already holds).
    pub post_roll_ms: u32,
    /// How long `flush` and `stop` wait for a session's pending transcripts, ms; then they
    /// answer without them and the client gets `transcript_timeout`.
    pub flush_timeout_ms: u64,
}

impl SttSettings {
    /// Pipeline samples (16 kHz) one session's `stt` processor may hold: `pre_roll_ms` plus
    /// `max_segment_s`. Within a segment it holds the segment so far; between segments, the
    /// audio a VAD start may be dated back to, which it caps at a segment's length (a start
    /// dated back further, with extreme client VAD settings, loses its earliest audio).
    pub fn max_buffered_samples(&self) -> usize {
        let ms = u64::from(self.pre_roll_ms) + u64::from(self.max_segment_s) * 1000;
        usize::try_from(ms * 16).unwrap_or(usize::MAX)
    }
}

/// `[nats]`: scale-out on NATS JetStream (see `cluster`). Off while `url` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// Server URL(s), comma-separated (`nats://host:4222`); "" = no NATS (single node).
    pub url: String,
    /// A `.creds` file (JWT and NKey seed); "" = none.
    pub credentials_file: String,
    /// This node's name in the cluster view and lifecycle records; "" = the host name.
    pub node: String,
    /// The address clients and operators reach this node at, shown in the cluster view;
    /// "" = the listen address.
    pub advertise: String,
    /// Subjects start with this token: `<prefix>.sessions.<id>.events`.
    pub subject_prefix: String,
    /// The JetStream stream holding every session's events and lifecycle records.
    pub stream: String,
    /// Events older than this are removed from the stream, seconds.
    pub max_age_s: u64,
    /// The stream's size bound, bytes; the oldest messages go first.
    pub max_bytes: i64,
    /// Key-value bucket holding each resumable session's state (cross-node resume).
    pub sessions_bucket: String,
    /// Key-value bucket of node heartbeats (the cluster view).
    pub nodes_bucket: String,
    /// Seconds between heartbeats; a node is gone after three missed ones.
    pub heartbeat_interval_s: u64,
    /// How long one publish may wait for JetStream's acknowledgement, ms.
    pub publish_timeout_ms: u64,
    /// Records (events, lifecycle, session state) waiting to be published, server-wide;
    /// beyond it new ones are dropped and counted as unpublished.
    pub max_pending: usize,
    /// How long a node taking a session over waits for the node holding it, ms.
    pub handover_timeout_ms: u64,
    /// How far back a takeover reads a session's events (before the newest one) when the
    /// last second is not enough, seconds; a client that misses older ones makes it read
    /// the whole log.
    pub takeover_tail_s: u64,
    /// On SIGTERM, hand resumable sessions over (clients resume on another node) instead of
    /// closing them.
    pub handover_on_shutdown: bool,
}

impl NatsSettings {
    /// Whether NATS is on.
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }
}
