//! Errors clients see. Each variant has a stable `code` (documented in `docs/protocol.md`);
//! messages say what to fix and never carry internal detail (paths, panics, library text).

use thiserror::Error;

/// Why a client was refused before the WebSocket upgrade. Answered as HTTP with a JSON body.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AdmissionError {
    /// A query parameter is missing, malformed or out of range.
    #[error("{message}")]
    InvalidParameter {
        /// The parameter's name, as in the query string.
        param: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// `max_sessions` sessions are alive.
    #[error("the server is at its session limit ({max}); retry later")]
    ServerFull {
        /// The limit in force.
        max: usize,
    },
    /// Admitting one more session would exceed `memory_budget_mb`.
    #[error("the server's memory budget for sessions is used up; retry later")]
    MemoryBudgetExceeded,
    /// This client address has `max_sessions_per_ip` sessions alive.
    #[error("this address already has {max} sessions open; close one first")]
    TooManySessions {
        /// The limit in force.
        max: usize,
    },
    /// The server is draining for shutdown.
    #[error("the server is shutting down; connect to another instance")]
    ShuttingDown,
    /// The server's event loops are behind by more than `max_lag_ms`: one more session
    /// would make the admitted ones' events later still.
    #[error("the server is overloaded; retry shortly or connect to another instance")]
    Overloaded,
    /// No credential, or one that is not valid (`auth`).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A valid token past its `exp`.
    #[error("the token has expired; get a new one from your backend")]
    TokenExpired,
    /// Too many failed credentials from this address.
    #[error(
        "too many failed authentication attempts from this address; retry in {retry_after_s} s"
    )]
    AuthRateLimited {
        /// Seconds until an attempt is allowed again.
        retry_after_s: u64,
    },
    /// This address opened sessions faster than `security.new_sessions_per_minute_per_ip`.
    #[error("this address opens sessions too fast (limit {per_minute} per minute); retry in {retry_after_s} s")]
    RateLimited {
        /// The limit in force.
        per_minute: u32,
        /// Seconds until a new session is allowed.
        retry_after_s: u64,
    },
    /// The browser page's `Origin` is not in `security.allowed_origins`.
    #[error("this page's origin may not open sessions on this server")]
    OriginNotAllowed,
    /// The request is not a valid WebSocket upgrade.
    #[error("this endpoint needs a WebSocket upgrade request")]
    NotWebSocket,
    /// A resume named a session that is not here: unknown, ended, expired, or resume is off.
    #[error("no session to resume with this id: it ended, expired or never existed; start a new session")]
    SessionNotFound,
    /// A resume of a session another node holds and could not hand over in time.
    #[error("the session is moving between servers; retry the resume in a moment")]
    SessionBusy,
    /// A resume whose token does not match the session.
    #[error("the resume token does not match this session")]
    ResumeTokenInvalid,
    /// Something inside the server failed; the log has the details under the correlation id.
    #[error("internal error; the server log has details under this correlation id")]
    Internal,
}

impl AdmissionError {
    /// Stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            AdmissionError::InvalidParameter { .. } => "invalid_parameter",
            AdmissionError::ServerFull { .. } => "server_full",
            AdmissionError::MemoryBudgetExceeded => "memory_budget_exceeded",
            AdmissionError::TooManySessions { .. } => "too_many_sessions",
            AdmissionError::ShuttingDown => "shutting_down",
            AdmissionError::Overloaded => "overloaded",
            AdmissionError::Unauthorized(_) => "unauthorized",
            AdmissionError::TokenExpired => "token_expired",
            AdmissionError::AuthRateLimited { .. } => "auth_rate_limited",
            AdmissionError::RateLimited { .. } => "rate_limited",
            AdmissionError::OriginNotAllowed => "origin_not_allowed",
            AdmissionError::NotWebSocket => "websocket_upgrade_required",
            AdmissionError::SessionNotFound => "session_not_found",
            AdmissionError::SessionBusy => "session_busy",
            AdmissionError::ResumeTokenInvalid => "resume_token_invalid",
            AdmissionError::Internal => "internal_error",
        }
    }

    /// HTTP status of the refusal.
    pub fn http_status(&self) -> u16 {
        match self {
            AdmissionError::InvalidParameter { .. } | AdmissionError::NotWebSocket => 400,
            AdmissionError::Unauthorized(_) | AdmissionError::TokenExpired => 401,
            AdmissionError::OriginNotAllowed | AdmissionError::ResumeTokenInvalid => 403,
            AdmissionError::SessionNotFound => 404,
            AdmissionError::TooManySessions { .. }
            | AdmissionError::AuthRateLimited { .. }
            | AdmissionError::RateLimited { .. } => 429,
            AdmissionError::ServerFull { .. }
            | AdmissionError::MemoryBudgetExceeded
            | AdmissionError::Overloaded
            | AdmissionError::SessionBusy
            | AdmissionError::ShuttingDown => 503,
            AdmissionError::Internal => 500,
        }
    }

    /// Seconds a client should wait before retrying, where retrying can help.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            AdmissionError::ServerFull { .. } | AdmissionError::MemoryBudgetExceeded => Some(5),
            AdmissionError::TooManySessions { .. } => Some(10),
            AdmissionError::ShuttingDown => Some(30),
            // Lag is judged over about a second; a short wait finds out whether it passed.
            AdmissionError::Overloaded => Some(2),
            AdmissionError::SessionBusy => Some(1),
            AdmissionError::AuthRateLimited { retry_after_s }
            | AdmissionError::RateLimited { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        }
    }
}

/// WebSocket close codes voxrt uses (protocol v1).
pub mod close_code {
    /// Normal closure (client `stop`).
    pub const NORMAL: u16 = 1000;
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// WebSocket protocol error (RFC 6455 section 7.4.1).
    pub const PROTOCOL: u16 = 1002;
    /// A text message that is not valid UTF-8 (RFC 6455 sections 7.4.1 and 8.1).
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation.
    pub const POLICY: u16 = 1008;
    /// Frame over its size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The server is restarting and handed the session over to another node: resume.
    pub const SERVICE_RESTART: u16 = 1012;
    /// No audio or ping for `idle_timeout_s`.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// Session older than `session_ttl_s`.
    pub const TTL_EXPIRED: u16 = 4001;
    /// Another connection resumed this session (`session_taken_over`).
    pub const TAKEN_OVER: u16 = 4002;
}

/// Errors inside a live session, sent as `{"type":"error",...}` events.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SessionError {
    /// A binary frame is not a whole number of sample frames.
    #[error("binary frame of {len} bytes is not a whole number of sample frames ({frame_bytes} bytes each for {channels} channel(s) of {encoding})")]
    PartialSampleFrame {
        /// Bytes received.
        len: usize,
        /// Bytes per sample frame.
        frame_bytes: usize,
        /// Declared channels.
        channels: u16,
        /// Declared encoding.
        encoding: &'static str,
    },
    /// A binary frame with no bytes.
    #[error("empty binary frame; send at least one sample frame")]
    EmptyAudioFrame,
    /// A frame over the WebSocket codec's limit (the larger of the two frame limits).
    #[error("frame exceeds the size limit (binary frames: {max_binary} bytes, text frames: {max_text} bytes); send smaller chunks")]
    FrameTooLarge {
        /// Binary limit.
        max_binary: usize,
        /// Text limit.
        max_text: usize,
    },
    /// A text frame over `max_text_frame_bytes`.
    #[error("text frame exceeds the limit of {max} bytes")]
    TextFrameTooLarge {
        /// The limit.
        max: usize,
    },
    /// A text frame that is not valid JSON.
    #[error("text frame is not valid JSON: {detail}")]
    InvalidJson {
        /// Position and kind of the syntax error (no input text is echoed).
        detail: String,
    },
    /// A control message nested deeper than `session.max_json_depth`.
    #[error("control message nests arrays/objects deeper than {max} levels")]
    JsonTooDeep {
        /// The limit.
        max: usize,
    },
    /// A JSON message that is not an object with a string `type`.
    #[error("control message must be a JSON object with a string \"type\" field")]
    MissingType,
    /// A `type` the server does not know.
    #[error("unknown message type \"{kind}\"; expected one of: ping, flush, stop")]
    UnknownMessageType {
        /// The type received (truncated to 64 characters).
        kind: String,
    },
    /// The client broke the WebSocket protocol (RFC 6455); the session ends with the RFC's
    /// close code for what was wrong. (Fragmented messages are reassembled since this
    /// variant replaced `fragmented_message`, which is no longer sent.)
    #[error("WebSocket protocol error: {0}")]
    Protocol(ProtocolViolation),
    /// The pipeline was behind and this chunk was dropped (`drop_newest` policy).
    #[error("audio chunk {seq} dropped: the pipeline is behind; send at real time")]
    AudioDropped {
        /// 0-based index of the binary frame.
        seq: u64,
    },
    /// The client sent control messages or audio faster than its limits.
    #[error("{0}")]
    RateLimited(RateLimit),
    /// The client does not read its events; its outgoing queue stayed full.
    #[error("the client is not reading its events (over {max_bytes} bytes queued); read the socket continuously")]
    SlowConsumer {
        /// `session.max_outgoing_bytes`.
        max_bytes: usize,
    },
    /// A processor panicked and was restarted with fresh state; audio goes on.
    #[error("processor \"{processor}\" failed and was restarted; its state (an open speech segment, a partial level interval) was lost")]
    ProcessorRestarted {
        /// The processor's name in `pipeline.processors`.
        processor: String,
    },
    /// A processor failed more than `supervision.max_restarts` times in `period_s`.
    #[error("processor \"{processor}\" keeps failing; the session cannot go on")]
    ProcessorFailed {
        /// The processor's name.
        processor: String,
    },
    /// Audio arrived after `stop`.
    #[error("audio after stop is ignored")]
    AudioAfterStop,
    /// The speech-to-text queue was full: this waiting segment, the oldest, was dropped
    /// to make room (`stt.max_queued_segments`). The other segments are transcribed.
    #[error("speech from {t_ms} ms to {end_ms} ms was not transcribed: the server's speech-to-text queue was full")]
    TranscriptDropped {
        /// Where the segment starts on the input timeline, ms.
        t_ms: u64,
        /// Where it ends, ms.
        end_ms: u64,
    },
    /// The speech-to-text library failed on one segment; the next ones are transcribed.
    #[error("speech from {t_ms} ms to {end_ms} ms could not be transcribed")]
    TranscriptionFailed {
        /// Where the segment starts, ms.
        t_ms: u64,
        /// Where it ends, ms.
        end_ms: u64,
    },
    /// A flush or stop stopped waiting for transcripts after `stt.flush_timeout_ms`; those
    /// still pending arrive later (after `flushed`), or not at all once the session closed.
    #[error("{pending} transcript(s) still pending after {waited_ms} ms; answering without them")]
    TranscriptTimeout {
        /// Segments not yet transcribed.
        pending: usize,
        /// How long the flush waited, ms.
        waited_ms: u64,
    },
    /// Something inside the server failed; details are in the log under the correlation id.
    #[error("internal error; the server log has details under this correlation id")]
    Internal,
}

impl SessionError {
    /// Stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::PartialSampleFrame { .. } => "invalid_audio_frame",
            SessionError::EmptyAudioFrame => "empty_audio_frame",
            SessionError::FrameTooLarge { .. } => "frame_too_large",
            SessionError::TextFrameTooLarge { .. } => "text_frame_too_large",
            SessionError::InvalidJson { .. } => "invalid_json",
            SessionError::JsonTooDeep { .. } => "json_too_deep",
            SessionError::MissingType => "invalid_message",
            SessionError::UnknownMessageType { .. } => "unknown_message_type",
            SessionError::Protocol(_) => "protocol_error",
            SessionError::AudioDropped { .. } => "audio_dropped",
            SessionError::AudioAfterStop => "audio_after_stop",
            SessionError::TranscriptDropped { .. } => "transcript_dropped",
            SessionError::TranscriptionFailed { .. } => "transcription_failed",
            SessionError::TranscriptTimeout { .. } => "transcript_timeout",
            SessionError::RateLimited(_) => "rate_limited",
            SessionError::ProcessorRestarted { .. } => "processor_restarted",
            SessionError::ProcessorFailed { .. } => "processor_failed",
            SessionError::SlowConsumer { .. } => "slow_consumer",
            SessionError::Internal => "internal_error",
        }
    }

    /// The `session.closed` reason when this error ends the session.
    pub fn close_reason(&self) -> crate::protocol::CloseReason {
        match self {
            SessionError::Protocol(_) => crate::protocol::CloseReason::ProtocolError,
            _ => crate::protocol::CloseReason::Error,
        }
    }

    /// The close code when this error ends the session; `None` if the session goes on.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            SessionError::FrameTooLarge { .. } | SessionError::TextFrameTooLarge { .. } => {
                Some(close_code::TOO_BIG)
            }
            SessionError::Protocol(violation) => Some(violation.close_code()),
            SessionError::RateLimited(_) | SessionError::SlowConsumer { .. } => {
                Some(close_code::POLICY)
            }
            SessionError::Internal | SessionError::ProcessorFailed { .. } => {
                Some(close_code::INTERNAL)
            }
            _ => None,
        }
    }
}

/// What a client got wrong at the WebSocket layer. The message names it for the client
/// and the log; [`ProtocolViolation::close_code`] is the RFC 6455 code the session closes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ProtocolViolation {
    /// A frame with RSV1, RSV2 or RSV3 set; no extension that defines them was negotiated.
    #[error("a frame has reserved bits set (RSV {rsv:#05b}) but no extension was negotiated")]
    ReservedBits {
        /// The three RSV bits, RSV1 highest.
        rsv: u8,
    },
    /// A frame from the client without a mask (RFC 6455 section 5.1).
    #[error("a client frame is not masked")]
    UnmaskedFrame,
    /// An opcode RFC 6455 does not define (3-7, 11-15).
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    /// A ping, pong or close frame without FIN (control frames cannot be fragmented).
    #[error("a control frame is fragmented")]
    FragmentedControlFrame,
    /// A ping, pong or close frame with more than 125 bytes of payload.
    #[error("a control frame carries {0} bytes; at most 125 are allowed")]
    ControlFrameTooLong(usize),
    /// A close frame whose payload is 1 byte, whose code is reserved or undefined, or whose
    /// reason is not UTF-8.
    #[error("a close frame has an invalid code or reason")]
    InvalidClosePayload,
    /// A new text or binary message began before the fragmented one ended.
    #[error("a new data frame arrived before the fragmented message ended")]
    DataFrameInFragmentedMessage,
    /// A continuation frame arrived with no fragmented message started.
    #[error("a continuation frame arrived with no fragmented message started")]
    ContinuationWithoutStart,
    /// A text message (one frame or reassembled) that is not valid UTF-8.
    #[error("a text message is not valid UTF-8")]
    InvalidUtf8,
    /// A frame the decoder refused for another reason (its message has no detail).
    #[error("a frame is malformed")]
    Malformed,
}

impl ProtocolViolation {
    /// The close code RFC 6455 gives this violation: 1007 for invalid UTF-8, 1002 otherwise.
    pub fn close_code(self) -> u16 {
        match self {
            ProtocolViolation::InvalidUtf8 => close_code::INVALID_DATA,
            _ => close_code::PROTOCOL,
        }
    }
}

/// Which per-session rate a client exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Error)]
pub enum RateLimit {
    /// `session.max_control_messages_per_s`.
    #[error("more than {per_s} control messages per second")]
    ControlMessages {
        /// The limit.
        per_s: u32,
    },
    /// `session.max_realtime_factor` beyond `session.realtime_burst_s`.
    #[error("audio sent faster than {factor}x real time for longer than {burst_s} s of audio; stream at real time")]
    Audio {
        /// The limit.
        factor: f32,
        /// The burst allowance, seconds of audio.
        burst_s: u32,
    },
}
