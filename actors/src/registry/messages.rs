//! Messages the SessionRegistry handles, and the snapshots it answers with.

pub use crate::session::{EndReason, Expire, HandOver, Register, SessionRoute, Unregister};

use crate::audio::InputFormat;
use crate::error::AdmissionError;
use crate::settings::RegistryLimits;
use actix::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

use uuid::Uuid;

/// Asks for a slot for a new session from `peer`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Uuid, AdmissionError>")]
pub struct Admit {
    /// The client's address (per-IP limits).
    pub peer: IpAddr,
    /// The id of a session taken over from another node (`[nats]`); `None` = a fresh id.
    /// Refused as `session_busy` if a session with it is already here (another takeover
    /// of it is starting, or it is ending).
    pub takeover: Option<Uuid>,
}

/// Where a resume goes: the session's route, if it is alive here.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Option<SessionRoute>")]
pub struct FindSession {
    /// The session.
    pub id: Uuid,
}

/// Where a session stands here, for another node that asks to take it over (`[nats]`).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Held")]
pub struct LocateSession {
    /// The session.
    pub id: Uuid,
}

/// The answer to [`LocateSession`].
#[derive(Clone)]
pub enum Held {
    /// Running here: it can be handed over through its route.
    Running(SessionRoute),
    /// Admitted here and not running yet: this node is taking it over itself, and the
    /// asker must not (it asks again later).
    Starting,
    /// Not here, or ending.
    Absent,
}

/// Stop admitting, tell every session to close with `server_shutdown`, and answer when
/// none is left.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    /// Hand resumable sessions over to other nodes (`nats.handover_on_shutdown`) instead
    /// of closing them: each flushes, logs a `handed_over` record and closes its connection
    /// 1012; its client resumes on another node. Sessions that cannot be handed over close
    /// as usual.
    pub hand_over: bool,
}

/// Ids of live sessions (for the shutdown log).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<Uuid>")]
pub struct LiveSessions;

/// Counters for operators.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "RegistryStats")]
pub struct GetStats;

/// A page of live sessions, oldest first.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "SessionPage")]
pub struct ListSessions {
    /// Sessions to skip.
    pub offset: usize,
    /// Most sessions to return.
    pub limit: usize,
    /// Include client addresses.
    pub show_peer: bool,
}

/// One live session, if it exists.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Option<SessionSnapshot>")]
pub struct GetSession {
    /// The session.
    pub id: Uuid,
    /// Include the client address.
    pub show_peer: bool,
}

/// New limits (a config reload); they apply to admissions from now on.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct UpdateLimits {
    /// The limits.
    pub limits: RegistryLimits,
    /// The per-session memory reservation.
    pub reserve_bytes: usize,
}

/// A page of sessions.
#[derive(Debug, Clone, Serialize)]
pub struct SessionPage {
    /// Live sessions in all.
    pub total: usize,
    /// Offset of the first in `sessions`.
    pub offset: usize,
    /// Page size asked for.
    pub limit: usize,
    /// The page, oldest session first.
    pub sessions: Vec<SessionSnapshot>,
}

/// Mailbox depth of one pipeline stage of a session.
#[derive(Debug, Clone, Serialize)]
pub struct StageDepth {
    /// Stage name.
    pub stage: String,
    /// Messages queued.
    pub depth: i64,
}

/// One live session as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSnapshot {
    /// Session id.
    pub id: Uuid,
    /// `attached` (a connection carries it) or `detached` (waiting to be resumed).
    pub state: &'static str,
    /// Times a client resumed it.
    pub resumes: u64,
    /// Resumes that took it over from a connection still attached.
    pub takeovers: u64,
    /// Client address, when configured to show it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Milliseconds since it started.
    pub age_ms: u64,
    /// Milliseconds since its last audio or ping.
    pub idle_ms: u64,
    /// What the client sends.
    pub input: InputFormat,
    /// Input audio through the pipeline, ms.
    pub audio_ms: u64,
    /// Binary frames accepted as audio.
    pub chunks_in: u64,
    /// Chunks through the resampler.
    pub chunks_processed: u64,
    /// Chunks dropped (`drop_newest`).
    pub chunks_dropped: u64,
    /// Queued messages per stage.
    pub mailbox_depth: Vec<StageDepth>,
    /// Events sent.
    pub events_sent: u64,
    /// WebSocket payload bytes received.
    pub bytes_in: u64,
    /// WebSocket payload bytes sent.
    pub bytes_out: u64,
    /// Encoded bytes queued for the client and not yet taken by its socket.
    pub outgoing_bytes: usize,
    /// Returned-audio frames dropped because the client was not reading or not attached.
    pub outgoing_dropped: u64,
    /// Code of the last error sent, if any.
    pub last_error: Option<&'static str>,
}

/// Stops the actor so its supervisor restarts it (operators' recovery lever; tests use it
/// to prove the restart keeps every session).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Restart;

/// Makes a registry handler panic halfway through an update, to prove the supervisor
/// restarts the registry and its rebuilt view keeps every session and limit. Built only
/// with the `fault-injection` feature (the test suite turns it on).
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// What the registry knows, as numbers.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RegistryStats {
    /// Sessions running (attached or detached).
    pub sessions_active: usize,
    /// Of those, detached: waiting for their client to resume them.
    pub sessions_detached: usize,
    /// Admitted but not yet running (upgrade in progress).
    pub sessions_reserved: usize,
    /// Admitted since start.
    pub admitted_total: u64,
    /// Refused since start, by error code.
    pub refused_total: BTreeMap<&'static str, u64>,
    /// Ended since start.
    pub closed_total: u64,
    /// Ended since start, by reason.
    pub closed_by_reason: BTreeMap<&'static str, u64>,
    /// Resume lookups that found no session (`session_not_found`).
    pub resumes_not_found: u64,
    /// Times the registry was restarted by its supervisor.
    pub restarts: u64,
    /// Bytes reserved per session for the memory budget.
    pub reserve_bytes_per_session: usize,
    /// The session limit in force.
    pub max_sessions: usize,
    /// Shutting down: admitting nobody.
    pub draining: bool,
    /// The code a new session would be refused with now, per-client limits aside
    /// (`shutting_down`, `server_full`, `memory_budget_exceeded`, `overloaded`); `None`
    /// while one would be admitted. `/ready` is 503 with this as its reason.
    pub refusal: Option<&'static str>,
    /// The server's own lag when these stats were taken, ms: the most any HTTP worker's
    /// event loop was behind over the last second (see `registry::lag`).
    pub event_loop_lag_ms: u64,
    /// The most loaded HTTP worker's share of the last second spent running or waiting for
    /// a CPU, percent (see `registry::lag`; 0 where not measurable).
    pub worker_load_pct: u64,
}
