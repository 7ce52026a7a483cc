//! Attaching connections to a session, detaching them, and the resume token.
//!
//! A session is attached (one connection carries it) or detached (its connection was lost;
//! it keeps running and keeps its events for `resume_window_s`). A resume presents the
//! token `session.started` showed once; the session holds only the token's SHA-256 and
//! compares in constant time. A resume while a connection is still attached takes the
//! session over: the old connection is closed 4002 `session_taken_over`.

use super::messages::*;
use super::Session;
use crate::error::close_code;
use crate::protocol::ServerEvent;
use actix::prelude::*;
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tracing::info;

/// How long a connection that was let go has to send its close frame before its socket is
/// cut (a client that does not read never takes the frame).
const LET_GO_GRACE: Duration = Duration::from_secs(1);

/// A fresh resume token: 256 bits from the OS's generator, hex.
pub(super) fn new_token() -> String {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to v4 UUIDs (also OS randomness through another path;
        // if that fails too uuid panics at startup of the first session, visibly).
        bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    hex::encode(bytes)
}

/// What the session keeps of its token.
pub(super) fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Session {
    /// Whether `req` may resume this session now.
    fn check(&self, req: &ResumeRequest) -> Result<(), ResumeRefusal> {
        let Some(hash) = &self.token_hash else {
            return Err(ResumeRefusal::NotFound);
        };
        if self.ended.is_some() || self.closing.is_some() || self.handing_over() {
            return Err(ResumeRefusal::NotFound);
        }
        if !bool::from(token_hash(&req.token)[..].ct_eq(&hash[..])) {
            return Err(ResumeRefusal::TokenInvalid);
        }
        // After a lost node the client may hold messages the log never got: it is rewound.
        let ahead = self.node_lost && req.last_seq > self.outbox.newest();
        if !ahead && !self.outbox.can_replay_after(req.last_seq) {
            return Err(ResumeRefusal::SeqOutOfRange {
                got: req.last_seq,
                oldest: self.outbox.oldest_resumable(),
                newest: self.outbox.newest(),
            });
        }
        Ok(())
    }

    /// Closes the attached connection with `code` and lets it go: it may add no more audio,
    /// and if it cannot run to send its close frame (its client is not reading), its socket
    /// is cut after a short grace.
    pub(super) fn let_go(
        &mut self,
        ctx: &mut Context<Self>,
        code: u16,
        description: Option<&'static str>,
    ) {
        let Some(conn) = self.attached.take() else {
            return;
        };
        self.intake.close();
        conn.to_client
            .do_send(ToClient::Close { code, description });
        if let Some(abort) = conn.abort {
            ctx.run_later(LET_GO_GRACE, move |_, _| abort());
        }
    }

    /// The connection is gone: with resume on, the session waits `resume_window_s` for a
    /// client to resume it; otherwise it ends.
    pub(super) fn detach(&mut self, ctx: &mut Context<Self>) {
        self.attached = None;
        self.intake.close();
        self.counters.attached.store(false, Relaxed);
        self.metrics.detaches.inc();
        let window = Duration::from_secs(self.config.limits.resume_window_s);
        self.span.in_scope(|| {
            info!(
                window_s = window.as_secs(),
                "connection lost; session detached"
            )
        });
        if let Some(old) = self.resume_deadline.take() {
            ctx.cancel_future(old);
        }
        self.resume_deadline = Some(ctx.run_later(window, |act, ctx| {
            act.end(ctx, EndReason::ResumeExpired);
        }));
    }

    /// Makes `conn` the session's connection; returns the position of the audio timeline.
    fn attach(&mut self, ctx: &mut Context<Self>, conn: ConnectionHandle) -> u64 {
        if let Some(deadline) = self.resume_deadline.take() {
            ctx.cancel_future(deadline);
        }
        let position = self.intake.hand_to(conn.id);
        self.attached = Some(conn);
        self.writer_stalled = None;
        self.over_since = None;
        self.ever_attached = true;
        self.counters.attached.store(true, Relaxed);
        self.counters.touch();
        position
    }

    fn attached_reply(&self) -> Attached {
        Attached {
            input: self.params.input,
            pipeline: self.pipeline.clone(),
            intake: self.intake.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl Handler<CheckResume> for Session {
    type Result = Result<(), ResumeRefusal>;

    /// Checks a resume before its upgrade.
    fn handle(&mut self, msg: CheckResume, _ctx: &mut Self::Context) -> Self::Result {
        self.check(&msg.0)
    }
}

impl Handler<Attach> for Session {
    type Result = Result<Attached, ResumeRefusal>;

    /// Attaches the session's first connection, or a resuming one (taking over from a
    /// connection still attached): replays what the client missed, then goes on live.
    fn handle(&mut self, msg: Attach, ctx: &mut Self::Context) -> Self::Result {
        let Some(req) = msg.resume else {
            if self.ever_attached || self.ended.is_some() {
                return Err(ResumeRefusal::NotFound);
            }
            self.attach(ctx, msg.connection);
            self.log_started();
            let started = self.started_event();
            self.deliver(ctx, &started);
            return Ok(self.attached_reply());
        };
        self.check(&req)?;
        if self.attached.is_some() {
            self.span
                .in_scope(|| info!("a resuming connection takes the session over"));
            self.metrics.takeovers.inc();
            self.counters.takeovers.fetch_add(1, Relaxed);
            self.let_go(ctx, close_code::TAKEN_OVER, Some("session_taken_over"));
        }
        let frames = self.attach(ctx, msg.connection);
        let newest = self.outbox.newest();
        let rewound_to = (req.last_seq > newest).then_some(newest);
        let replay = self.outbox.after(req.last_seq.min(newest));
        let rate = u64::from(self.params.input.sample_rate.max(1));
        let resumed = ServerEvent::SessionResumed {
            session_id: self.id,
            audio_ms: frames * 1000 / rate,
            input_frames: frames,
            replayed: replay.len(),
            rewound_to,
        };
        self.send_text(resumed.to_json().into());
        self.replay_allowance = replay.iter().map(|t| super::frame_len(t.len())).sum();
        self.over_since = None;
        for text in replay {
            self.send_text(text);
        }
        self.metrics.resumes.inc();
        self.counters.resumes.fetch_add(1, Relaxed);
        self.span.in_scope(|| {
            info!(
                last_seq = req.last_seq,
                input_frames = frames,
                "session resumed"
            )
        });
        Ok(self.attached_reply())
    }
}

impl Handler<ConnectionGone> for Session {
    type Result = ();

    /// A connection ended. Reports from connections already let go are ignored.
    fn handle(&mut self, msg: ConnectionGone, ctx: &mut Self::Context) {
        if self.attached.as_ref().map(|c| c.id) != Some(msg.connection) {
            return;
        }
        let resumable = self.token_hash.is_some() && self.closing.is_none();
        match msg.end {
            ConnectionEnd::ClientClosed => {
                self.attached = None;
                self.end(ctx, EndReason::ClientClosed)
            }
            ConnectionEnd::Lost | ConnectionEnd::ClosedByServer if resumable => self.detach(ctx),
            ConnectionEnd::HeartbeatTimeout if resumable => self.detach(ctx),
            ConnectionEnd::HeartbeatTimeout => {
                self.attached = None;
                self.end(ctx, EndReason::HeartbeatTimeout)
            }
            ConnectionEnd::Lost | ConnectionEnd::ClosedByServer => {
                self.attached = None;
                self.end(ctx, EndReason::ConnectionLost)
            }
        }
    }
}
