//! What the server sends: events, the session's closing reason and the figures it reports.

use crate::audio::{InputFormat, PIPELINE_RATE};
use crate::settings::VadSettings;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// Why a session ended (`session.closed` `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The client sent `stop`.
    ClientStop,
    /// No audio or ping for `idle_timeout_s`.
    IdleTimeout,
    /// The session reached `session_ttl_s`.
    TtlExpired,
    /// The server is shutting down.
    ServerShutdown,
    /// A fatal error (the preceding `error` event says which).
    Error,
    /// The client broke the WebSocket protocol (the preceding `protocol_error` event says
    /// how); the close code is 1002, or 1007 for invalid UTF-8.
    ProtocolError,
}

impl CloseReason {
    /// The reason as sent in `session.closed` (and used as a metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientStop => "client_stop",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::TtlExpired => "ttl_expired",
            CloseReason::ServerShutdown => "server_shutdown",
            CloseReason::Error => "error",
            CloseReason::ProtocolError => "protocol_error",
        }
    }

    /// The WebSocket close code that goes with this reason.
    pub fn close_code(self) -> u16 {
        use crate::error::close_code::*;
        match self {
            CloseReason::ClientStop => NORMAL,
            CloseReason::IdleTimeout => IDLE_TIMEOUT,
            CloseReason::TtlExpired => TTL_EXPIRED,
            CloseReason::ServerShutdown => GOING_AWAY,
            CloseReason::Error => INTERNAL,
            CloseReason::ProtocolError => PROTOCOL,
        }
    }
}

/// Counters reported in `session.closed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SessionStats {
    /// Binary frames accepted as audio.
    pub chunks_in: u64,
    /// Chunks that went through the resampler into the processors.
    pub chunks_processed: u64,
    /// Chunks dropped by the `drop_newest` policy.
    pub chunks_dropped: u64,
    /// Milliseconds of input audio that went through the pipeline.
    pub audio_ms: u64,
}

/// `pipeline` in `session.started`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PipelineFormat {
    /// Always 16000.
    pub sample_rate: u32,
    /// Always 1.
    pub channels: u16,
    /// The resampler's filter delay, in milliseconds: pipeline audio up to input time `t` is
    /// complete once input up to `t + resampler_delay_ms` has arrived (plus the rest of its
    /// block). 0 for 16 kHz input. Clients measuring event latency add it to the point at
    /// which an event becomes decidable.
    pub resampler_delay_ms: f64,
}

impl PipelineFormat {
    /// The pipeline format for a stream whose resampler has `delay_ms` of filter delay.
    pub fn with_delay(delay_ms: f64) -> Self {
        Self {
            sample_rate: PIPELINE_RATE,
            channels: 1,
            resampler_delay_ms: delay_ms,
        }
    }
}

/// `limits` in `session.started`: what applies to this session.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SessionLimitsInfo {
    /// Largest binary frame, bytes.
    pub max_binary_frame_bytes: usize,
    /// Largest text frame, bytes.
    pub max_text_frame_bytes: usize,
    /// Session lifetime, seconds.
    pub session_ttl_s: u64,
    /// Idle timeout, seconds.
    pub idle_timeout_s: u64,
    /// Server ping interval, seconds.
    pub heartbeat_interval_s: u64,
    /// Silence after which the client is considered gone, seconds.
    pub heartbeat_timeout_s: u64,
    /// Stage mailbox capacity, messages.
    pub mailbox_capacity: usize,
    /// Audio bytes accepted but not yet resampled.
    pub max_inflight_bytes: usize,
    /// `block` or `drop_newest`.
    pub backpressure: crate::settings::BackpressurePolicy,
    /// Deepest nesting in a control message.
    pub max_json_depth: usize,
    /// Control messages per second (bursts of as many).
    pub max_control_messages_per_s: u32,
    /// Sustained audio rate, multiple of real time.
    pub max_realtime_factor: f32,
    /// Seconds of audio allowed at once beyond that rate.
    pub realtime_burst_s: u32,
    /// Bytes of events queued for the client before `level` events are dropped.
    pub max_outgoing_bytes: usize,
}

/// `resume` in `session.started`.
#[derive(Debug, Clone, Serialize)]
pub struct ResumeInfo {
    /// Presented with `resume_token` to resume; shown only here, kept by the server only
    /// as a hash.
    pub token: String,
    /// How long after a lost connection the session waits to be resumed, seconds.
    pub window_s: u64,
}

/// Speech boundary kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VadEventKind {
    /// Speech began at `t_ms`.
    SpeechStart,
    /// Speech ended at `t_ms`, after `duration_ms`.
    SpeechEnd,
}

/// Every event the server sends as a text frame.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub enum ServerEvent {
    /// First frame of every session.
    #[serde(rename = "session.started")]
    SessionStarted {
        /// The session's id (also in the server log).
        session_id: Uuid,
        /// What the client declared.
        input: InputFormat,
        /// What processors receive.
        pipeline: PipelineFormat,
        /// VAD tunables in force.
        vad: VadSettings,
        /// Limits in force.
        limits: SessionLimitsInfo,
        /// How to resume after a lost connection; absent when resume is off.
        #[serde(skip_serializing_if = "Option::is_none")]
        resume: Option<ResumeInfo>,
    },
    /// First frame of a resumed connection (carries no `seq`): the replayed messages follow.
    #[serde(rename = "session.resumed")]
    SessionResumed {
        /// The session.
        session_id: Uuid,
        /// Input audio the server read before the loss, ms: resend from here.
        audio_ms: u64,
        /// The same position exactly, in sample frames of the input.
        input_frames: u64,
        /// Messages replayed next (those after the client's `last_seq`).
        replayed: usize,
        /// Only after a takeover from a lost node whose log ends before the client's
        /// `last_seq`: the last `seq` that stands. The client drops the messages it holds
        /// after it (they were never logged; the resent audio produces them again).
        #[serde(skip_serializing_if = "Option::is_none")]
        rewound_to: Option<u64>,
    },
    /// Answer to `ping`.
    #[serde(rename = "pong")]
    Pong {
        /// The ping's id.
        id: Value,
    },
    /// Answer to `flush`.
    #[serde(rename = "flushed")]
    Flushed {
        /// Audio through the pipeline so far, ms.
        audio_ms: u64,
    },
    /// A speech boundary.
    #[serde(rename = "vad")]
    Vad {
        /// Start or end.
        event: VadEventKind,
        /// Where in the input audio, ms since session start.
        t_ms: u64,
        /// Segment length, on `speech_end` only.
        #[serde(skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    /// Loudness over the last interval.
    #[serde(rename = "level")]
    Level {
        /// End of the interval, ms.
        t_ms: u64,
        /// RMS level, dBFS (full-scale sine: -3.0), floored at -120.
        rms_dbfs: f32,
        /// Peak level, dBFS, floored at -120.
        peak_dbfs: f32,
    },
    /// What was said in one speech segment (the `stt` processor), sent once the segment was
    /// transcribed: after its `speech_end`, by the transcription's latency.
    #[serde(rename = "transcript")]
    Transcript {
        /// Where the transcribed audio starts (the segment's `speech_start` less
        /// `stt.pre_roll_ms`), ms on the input timeline.
        t_ms: u64,
        /// Where it ends, ms.
        end_ms: u64,
        /// The words, as the model wrote them (never empty: a segment with no words gives
        /// no transcript).
        text: String,
        /// Always `true`: each segment is transcribed once, whole (no partial results).
        #[serde(rename = "final")]
        is_final: bool,
    },
    /// An event from a user processor, sent as the processor built it (an object with a
    /// `type` of the processor's choosing).
    #[serde(skip)]
    Custom(Value),
    /// Something went wrong.
    #[serde(rename = "error")]
    Error {
        /// Stable code.
        code: &'static str,
        /// What happened and how to fix it.
        message: String,
        /// Also in the server's log line for this error.
        correlation_id: Uuid,
        /// Whether the session ends.
        fatal: bool,
        /// The dropped chunk's index among the binary messages, for `audio_dropped` (not
        /// `seq`: that key is the message's own sequence number).
        #[serde(skip_serializing_if = "Option::is_none")]
        chunk_seq: Option<u64>,
    },
    /// Last event of a session.
    #[serde(rename = "session.closed")]
    SessionClosed {
        /// Why.
        reason: CloseReason,
        /// Counters.
        stats: SessionStats,
    },
}

impl ServerEvent {
    /// The event as one JSON text frame with `"seq"` as its first key. A user processor's
    /// event that is not a JSON object is wrapped as `{"seq":N,"type":"custom","value":...}`.
    pub fn to_json_with_seq(&self, seq: u64) -> String {
        let json = self.to_json();
        match json.strip_prefix('{') {
            Some("}") => format!("{{\"seq\":{seq}}}"),
            Some(rest) => format!("{{\"seq\":{seq},{rest}"),
            None => format!("{{\"seq\":{seq},\"type\":\"custom\",\"value\":{json}}}"),
        }
    }

    /// The event as one JSON text frame.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: keys are strings and floats are finite.
        let json = match self {
            ServerEvent::Custom(value) => serde_json::to_string(value),
            other => serde_json::to_string(other),
        };
        json.unwrap_or_else(|_| String::from("{\"type\":\"error\",\"code\":\"internal_error\"}"))
    }
}
