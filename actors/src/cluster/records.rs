//! What voxrt writes to NATS: subjects, lifecycle records, session and node records. The
//! wire contract for downstream consumers (docs/cluster.md); changing a field here changes it.

use crate::protocol::{CloseReason, SessionStats, StreamParams};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Wall-clock time, Unix ms: what every record's `*_ms` time is in (comparable across
/// nodes and with the stream's own timestamps).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The subject of a session's events: `<prefix>.sessions.<id>.events`. Each message is the
/// event's JSON exactly as the client got it (with its `seq`), except that
/// `session.started` carries no resume token.
pub fn events_subject(prefix: &str, session: Uuid) -> String {
    format!("{prefix}.sessions.{session}.events")
}

/// The subject of a session's lifecycle records: `<prefix>.sessions.<id>.lifecycle`.
pub fn lifecycle_subject(prefix: &str, session: Uuid) -> String {
    format!("{prefix}.sessions.{session}.lifecycle")
}

/// Everything the stream holds: `<prefix>.sessions.>`.
pub fn stream_subjects(prefix: &str) -> String {
    format!("{prefix}.sessions.>")
}

/// Where a node answers handover requests (core NATS request/reply, not in the stream).
pub fn handover_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.nodes.{node}.handover")
}

/// A session's lifecycle, one record per change, on [`lifecycle_subject`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Lifecycle {
    /// The session began (its first connection attached).
    Started {
        /// The session.
        session_id: Uuid,
        /// The node running it.
        node: String,
        /// The client's format and VAD settings.
        params: StreamParams,
        /// Unix time, ms.
        at_ms: u64,
    },
    /// The session ended for good.
    Closed {
        /// The session.
        session_id: Uuid,
        /// The node that ran it last.
        node: String,
        /// Why (as in `session.closed`; `null` when it ended without one: expired,
        /// connection lost with resume off, resume buffer overflow).
        reason: Option<CloseReason>,
        /// Its counters, from the last node.
        stats: SessionStats,
        /// Unix time, ms.
        at_ms: u64,
    },
    /// The node stopped running the session so another can take it over: every event of
    /// the audio it read is in the stream before this record.
    HandedOver {
        /// The session.
        session_id: Uuid,
        /// The node that let it go.
        node: String,
        /// The position in the client's audio, input sample frames, through which events
        /// are complete: where the next node resumes.
        input_frames: u64,
        /// The `seq` the next message will carry.
        next_seq: u64,
        /// Unix time, ms.
        at_ms: u64,
    },
    /// A node took the session over (after a handover, or from the stream alone when its
    /// node was lost).
    TakenOver {
        /// The session.
        session_id: Uuid,
        /// The node running it from now on.
        node: String,
        /// The node that ran it before.
        from_node: String,
        /// Where the new node's timeline starts, input sample frames.
        input_frames: u64,
        /// The `seq` the new node starts from.
        next_seq: u64,
        /// Whether the lost node had no handover record (events after the last one in the
        /// stream were lost with it and are produced again from the resent audio).
        node_lost: bool,
        /// Unix time, ms.
        at_ms: u64,
    },
}

/// A resumable session's state in the sessions bucket (key: the session id): what another
/// node needs to take it over. Written when the session starts and on each takeover,
/// deleted when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The node running the session.
    pub node: String,
    /// Format and VAD settings, fixed for the session's life.
    pub params: StreamParams,
    /// SHA-256 of the resume token, hex (the token itself is never stored).
    pub token_sha256: String,
    /// The session's own TTL when its credential asked for a shorter one, seconds.
    pub ttl_s: Option<u64>,
    /// `t_ms` of the speech segment open now (its `speech_start`), rewritten at each VAD
    /// event: a takeover that reads only the tail of the log learns from it whether a
    /// segment opened before the tail is still open.
    #[serde(default)]
    pub open_segment_ms: Option<u64>,
}

/// A [`SessionRecord`] as read from the bucket, with the revision it was read at: a node
/// takes the session over only if the record is still at that revision when it claims it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    /// The record.
    pub record: SessionRecord,
    /// Its revision in the bucket (the bucket stream's sequence of the write).
    pub revision: u64,
}

/// How a claim on a session's record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The record names this node now.
    Claimed,
    /// The record changed since it was read (another node claimed it, or it ended):
    /// this node must not take the session over.
    Lost,
}

/// A node's heartbeat in the nodes bucket (key: the node's name). The bucket's TTL removes
/// a node that stops beating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's name (`nats.node`).
    pub node: String,
    /// Where clients and operators reach it (`nats.advertise`).
    pub address: String,
    /// voxrt's version.
    pub version: String,
    /// Unix time the node started, ms.
    pub started_ms: u64,
    /// Unix time of this heartbeat, ms.
    pub heartbeat_ms: u64,
    /// Sessions it holds (attached, detached or admitted and starting).
    pub sessions: usize,
    /// Of those, detached (waiting for a resume).
    pub detached: usize,
    /// Its `registry.max_sessions`.
    pub max_sessions: usize,
    /// Why it would refuse a new session now, if it would (as `/ready` says).
    pub refusal: Option<String>,
    /// Its event-loop lag, ms (the worst worker's, as `/v1/stats` reports it).
    pub lag_ms: u64,
    /// Records waiting to be published.
    pub pending: usize,
    /// Records dropped unpublished since it started.
    pub unpublished: u64,
}

/// A takeover request, sent to the node holding the session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandoverRequest {
    /// The session to hand over.
    pub session_id: Uuid,
    /// The node asking.
    pub to_node: String,
}

/// The holding node's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoverReply {
    /// Handed over: its [`Lifecycle::HandedOver`] record is in the stream.
    HandedOver,
    /// It does not hold the session (ended, or never there).
    NotHere,
    /// It may still hold the session but could not hand it over in time (busy, or the
    /// handover is still under way): the asker must not take the session over now.
    Busy,
}
