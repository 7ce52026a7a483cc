//! Messages between a session, the connection carrying it, and the registry. A leaf: the
//! session, the connection and the registry import this file, and it imports none of them.

use crate::audio::InputFormat;
use crate::counters::SessionCounters;
use crate::error::SessionError;
use crate::pipeline::Pipeline;
use crate::protocol::CloseReason;
use actix::prelude::*;
use bytes::Bytes;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// Why a session ended, as the registry, metrics and logs name it. The reasons a client
/// is told in `session.closed` are the [`CloseReason`]s; the rest are ends nobody could be
/// told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Told to the client in `session.closed`.
    Closed(CloseReason),
    /// The client closed the WebSocket without `stop` (a close frame ends a session for good).
    ClientClosed,
    /// The connection broke and resume is off.
    ConnectionLost,
    /// Nothing was heard from the client for `heartbeat_timeout_s` and resume is off.
    HeartbeatTimeout,
    /// Detached, and nobody resumed it within `resume_window_s`.
    ResumeExpired,
    /// Detached, and the events since overflowed `resume_buffer_bytes`.
    ResumeBufferOverflow,
    /// Admitted, but the WebSocket upgrade never completed in `handshake_timeout_s`.
    HandshakeTimeout,
    /// Admitted, but the WebSocket upgrade failed.
    UpgradeFailed,
    /// Handed over to another node (`[nats]`): it goes on there.
    HandedOver,
    /// Admitted to take it over from another node, but a third node claimed it first
    /// (`[nats]`): it goes on there.
    TakeoverLost,
}

impl EndReason {
    /// The reason as a metrics label and in `/v1/stats`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Closed(reason) => reason.as_str(),
            EndReason::ClientClosed => "client_closed",
            EndReason::ConnectionLost => "connection_lost",
            EndReason::HeartbeatTimeout => "heartbeat_timeout",
            EndReason::ResumeExpired => "resume_expired",
            EndReason::ResumeBufferOverflow => "resume_buffer_overflow",
            EndReason::HandshakeTimeout => "handshake_timeout",
            EndReason::UpgradeFailed => "upgrade_failed",
            EndReason::HandedOver => "handed_over",
            EndReason::TakeoverLost => "takeover_lost",
        }
    }
}

/// How a connection ended, as it reports it to its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The client sent a close frame.
    ClientClosed,
    /// The socket broke or ended without a close frame.
    Lost,
    /// Nothing arrived for `heartbeat_timeout_s`.
    HeartbeatTimeout,
    /// The session closed it (`session.closed`, a takeover, a slow consumer).
    ClosedByServer,
}

/// What lets a session cut a connection's socket at once, when the connection actor cannot
/// run (its client stopped reading, so its response stream is no longer polled). Provided
/// by the server, which owns the socket.
pub type SocketAbort = Arc<dyn Fn() + Send + Sync>;

/// The connection a session is attached to.
#[derive(Clone)]
pub struct ConnectionHandle {
    /// Unique per connection in this process; a session ignores reports from connections it
    /// has let go.
    pub id: u64,
    /// Where the session's frames for the client go.
    pub to_client: Recipient<ToClient>,
    /// What the session handed this connection and its socket has not taken yet.
    pub outgoing: Arc<OutgoingQueue>,
    /// Cuts the TCP connection; `None` when the server cannot (tests of the actors alone).
    pub abort: Option<SocketAbort>,
}

impl std::fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.id)
            .finish()
    }
}

/// A connection's queue towards its client, as two counters the session and the
/// connection's response body share (no lock, no message).
#[derive(Debug, Default)]
pub struct OutgoingQueue {
    /// Encoded bytes handed to the connection and not yet taken by the socket writer: the
    /// session adds, the response body subtracts as the writer takes them.
    pub queued: std::sync::atomic::AtomicUsize,
    /// Bytes the writer has taken in all: when it stops moving while bytes are queued, the
    /// client has stopped reading (or the connection cannot even run).
    pub taken: std::sync::atomic::AtomicU64,
}

pub use crate::protocol::ResumeRequest;

/// Why a resume is refused. Each maps to an HTTP refusal before the upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeRefusal {
    /// Unknown, ended, or resume is off.
    #[error("no session to resume with this id: it ended, expired or never existed")]
    NotFound,
    /// The token does not match.
    #[error("the resume token does not match this session")]
    TokenInvalid,
    /// `last_seq` is ahead of what the session sent, or older than what it still holds.
    #[error("last_seq must be in {oldest}..={newest} for this session; got {got}")]
    SeqOutOfRange {
        /// The value received.
        got: u64,
        /// Oldest `last_seq` the buffer can replay after.
        oldest: u64,
        /// The last `seq` sent.
        newest: u64,
    },
}

/// Checks a resume's credentials before the WebSocket upgrade, so a refusal is plain HTTP.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), ResumeRefusal>")]
pub struct CheckResume(pub ResumeRequest);

/// A connection asks to carry the session: its first one, or a resume.
#[derive(Debug, Message)]
#[rtype(result = "Result<Attached, ResumeRefusal>")]
pub struct Attach {
    /// The connection.
    pub connection: ConnectionHandle,
    /// `None` for the connection that opened the session.
    pub resume: Option<ResumeRequest>,
}

/// What an attached connection needs to feed the session's pipeline directly.
#[derive(Debug, Clone)]
pub struct Attached {
    /// What the client sends.
    pub input: InputFormat,
    /// The pipeline's first stage.
    pub pipeline: Pipeline,
    /// The gate audio passes on its way into the pipeline.
    pub intake: Arc<IntakeGate>,
    /// The session's live counters.
    pub counters: Arc<SessionCounters>,
}

/// Where a session's audio timeline stands, and which connection may add to it. Audio
/// goes from the connection straight to the pipeline (no hop through the session), so the
/// session cannot count it; the gate does, under a lock held only for the count and the
/// non-blocking send, so a resume reads an exact position and no connection it let go can
/// add audio after that.
#[derive(Debug, Default)]
pub struct IntakeGate {
    state: Mutex<IntakeState>,
}

#[derive(Debug, Default)]
struct IntakeState {
    /// The connection allowed to add audio; 0 = none.
    owner: u64,
    /// Sample frames of the client's stream read so far (taken into the pipeline, or under
    /// `drop_newest` dropped and reported): where a resuming client resends from.
    frames: u64,
}

impl IntakeGate {
    /// A gate whose client stream is already `frames` in (a session taken over from
    /// another node continues the timeline).
    pub fn starting_at(frames: u64) -> Self {
        let gate = Self::default();
        gate.lock().frames = frames;
        gate
    }

    /// Lets `connection` add audio from now on, shutting out any other; returns the position.
    pub fn hand_to(&self, connection: u64) -> u64 {
        let mut state = self.lock();
        state.owner = connection;
        state.frames
    }

    /// Shuts every connection out; returns the position.
    pub fn close(&self) -> u64 {
        self.hand_to(0)
    }

    /// Sample frames read so far.
    pub fn position(&self) -> u64 {
        self.lock().frames
    }

    /// Runs `take` (which must not block) if `connection` still owns the gate, and advances
    /// the position by `frames` when it returns true. `None` if the connection was let go.
    pub fn admit<R>(
        &self,
        connection: u64,
        frames: u64,
        take: impl FnOnce() -> (bool, R),
    ) -> Option<R> {
        let mut state = self.lock();
        if state.owner != connection || connection == 0 {
            return None;
        }
        let (advance, result) = take();
        if advance {
            state.frames += frames;
        }
        Some(result)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IntakeState> {
        // Nothing panics while holding it; a poisoned lock still holds a consistent count.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a connection forwards from its client to the session.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum FromClient {
    /// `{"type":"ping","id":...}`.
    Ping {
        /// Echoed in the pong.
        id: Value,
    },
    /// `{"type":"flush"}`.
    Flush,
    /// `{"type":"stop"}`.
    Stop,
    /// Something the client sent was wrong; fatal errors end the session.
    Error(SessionError),
}

/// A connection's report that it ended.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct ConnectionGone {
    /// The connection's id.
    pub connection: u64,
    /// How.
    pub end: ConnectionEnd,
}

/// A frame for the client, in the order the session sends them.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum ToClient {
    /// A JSON message, already sequenced. Its encoded size is already counted in the
    /// session's `outgoing_bytes`.
    Text(Arc<str>),
    /// Pipeline audio (`return_audio`), 16 kHz mono s16le; counted like text.
    Binary(Bytes),
    /// Close the WebSocket with this code and stop.
    Close {
        /// The close code.
        code: u16,
        /// Optional close reason text (short, for logs and clients).
        description: Option<&'static str>,
    },
}

/// How a started session is reached.
#[derive(Clone)]
pub struct SessionRoute {
    /// Connections attach here.
    pub attach: Recipient<Attach>,
    /// Resumes are checked here before their upgrade.
    pub check_resume: Recipient<CheckResume>,
    /// Client control messages and errors.
    pub from_client: Recipient<FromClient>,
    /// Connections report their end here.
    pub gone: Recipient<ConnectionGone>,
    /// Another node takes the session over, or the server hands it over on shutdown.
    pub hand_over: Recipient<HandOver>,
}

/// Hand the session over to another node (`[nats]`): flush the pipeline so the stream holds
/// every event of the audio read, log a `handed_over` record, close the connection (if any)
/// with `code`, and end here without `session.closed`. The client resumes on another node.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct HandOver {
    /// Close code for the attached connection: 4002 when a resume on another node takes
    /// the session, 1012 when this server is shutting down.
    pub code: u16,
    /// Answered once the record is published, or `NotHere` if the session cannot be handed
    /// over (resume off, ending, no NATS).
    pub reply: tokio::sync::oneshot::Sender<crate::cluster::records::HandoverReply>,
}

/// A session is running under an admitted id (sent by the session when it starts).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    /// The id the registry admitted.
    pub id: Uuid,
    /// Where expiry notices go.
    pub expire: Recipient<Expire>,
    /// How connections reach the session.
    pub route: SessionRoute,
    /// The session's live counters.
    pub counters: Arc<SessionCounters>,
    /// What the client sends.
    pub input: InputFormat,
    /// This session's own TTL, when its credential asked for one shorter than
    /// `registry.session_ttl_s` (the shorter of the two applies).
    pub ttl_s: Option<u64>,
}

/// A session has ended.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Unregister {
    /// The session's id.
    pub id: Uuid,
    /// Why it ended.
    pub reason: EndReason,
}

/// The registry asks the session to end, telling the client why (if it is attached).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Expire {
    /// Reported in `session.closed`; decides the close code.
    pub reason: CloseReason,
}
