//! The Session actor: one per voice session, outliving any one connection.
//!
//! # Layout
//! - [`messages`]: what the session, its connection and the registry tell each other.
//! - [`outbox`]: sequenced messages kept for replay on resume.
//! - `delivery`: sending sequenced messages to the attached connection, and the slow
//!   reader policy.
//! - `ending`: error reports, flushes, and the ways a session ends.
//! - `pipeline_output`: the pipeline's output turned into messages for the client.
//! - `resume`: the resume token, attaching and detaching connections.
//! - `handover`: with `[nats]`, logging to the stream, handing the session to another
//!   node, and starting from another node's log ([`Takeover`]).
//!
//! Life of a session, top to bottom: [`Session::start`] builds the pipeline and starts the
//! actor, which registers with the registry; the first connection attaches and gets
//! `session.started`. Audio goes from the connection straight into the pipeline; control
//! messages come here as [`FromClient`]. Pipeline output comes back as [`PipelineOutput`]
//! and leaves, sequenced, through the outbox to the attached connection. A lost connection
//! detaches the session (it keeps running and buffering) until a client resumes it or
//! `resume_window_s` passes. `stop`, an [`Expire`] from the registry, or a fatal error flush
//! the pipeline, send `session.closed` and close the connection; `stopped` unregisters.

mod delivery;
mod ending;
mod handover;
pub mod messages;
pub mod outbox;
mod pipeline_output;
mod resume;

pub use delivery::frame_len;
pub use handover::Takeover;
pub use messages::*;

use self::outbox::Outbox;
use crate::cluster::Cluster;
use crate::counters::SessionCounters;
use crate::metrics::{Metrics, StageStats, TimingSampler};
use crate::pipeline::{Pipeline, PipelineError};
use crate::processors::ProcessorCatalog;
use crate::protocol::{
    CloseReason, PipelineFormat, ResumeInfo, ServerEvent, SessionLimitsInfo, StreamParams,
};
use crate::settings::SessionConfig;
use actix::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::info;
use uuid::Uuid;

/// Who asked for a flush: only a client's `flush` is answered with `flushed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlushKind {
    /// The client sent `flush`.
    Requested,
    /// The session is closing.
    Closing,
    /// The session is being handed over to another node.
    Handover,
}

/// What a session is started with.
pub struct SessionSpec {
    /// The id the registry admitted.
    pub id: Uuid,
    /// The client's validated stream parameters.
    pub params: StreamParams,
    /// Settings shared by every session.
    pub config: Arc<SessionConfig>,
    /// The processors `pipeline.processors` may name.
    pub catalog: Arc<ProcessorCatalog>,
    /// Server-wide metrics.
    pub metrics: Arc<Metrics>,
    /// This session's TTL when its credential asked for a shorter one.
    pub ttl_s: Option<u64>,
    /// Where the session registers.
    pub register: Recipient<Register>,
    /// Where the session reports its end.
    pub unregister: Recipient<Unregister>,
    /// NATS, when `[nats]` is on: the session logs its messages there.
    pub cluster: Option<Cluster>,
    /// Set when the session continues one another node ran.
    pub takeover: Option<Takeover>,
}

fn route_of(addr: &Addr<Session>) -> SessionRoute {
    SessionRoute {
        attach: addr.clone().recipient(),
        check_resume: addr.clone().recipient(),
        from_client: addr.clone().recipient(),
        gone: addr.clone().recipient(),
        hand_over: addr.clone().recipient(),
    }
}

/// One voice session: its pipeline, its outbox, and the connection it is attached to.
pub struct Session {
    id: Uuid,
    params: StreamParams,
    config: Arc<SessionConfig>,
    counters: Arc<SessionCounters>,
    pipeline: Pipeline,
    intake: Arc<IntakeGate>,
    outbox: Outbox,
    /// SHA-256 of the resume token; `None` when resume is off.
    token_hash: Option<[u8; 32]>,
    /// The token until `session.started` has carried it to the client.
    token: Option<String>,
    /// The connection carrying the session, if any.
    attached: Option<ConnectionHandle>,
    /// A connection has attached at least once.
    ever_attached: bool,
    /// Ends the session when a detached session is not resumed in time.
    resume_deadline: Option<SpawnHandle>,
    /// Set once the session is ending.
    closing: Option<CloseReason>,
    /// Flushes sent to the pipeline and not yet answered, oldest first.
    flushes: VecDeque<FlushKind>,
    /// Why the session ended, once it has.
    ended: Option<EndReason>,
    ttl_s: Option<u64>,
    /// Since when the attached connection's unread queue has been over `max_outgoing_bytes`.
    over_since: Option<Instant>,
    /// Bytes of a resume's replay not yet read down to the bound (see `check_reader`).
    replay_allowance: usize,
    /// The attached connection's `taken` count when last seen to move, and since when.
    writer_stalled: Option<(u64, Instant)>,
    /// Processor restarts within the last `supervision.period_s`, oldest first (at most
    /// `max_restarts + 1`).
    restarts: VecDeque<Instant>,
    register: Recipient<Register>,
    unregister: Recipient<Unregister>,
    /// NATS, when on (see `handover`).
    cluster: Option<Cluster>,
    /// A handover in progress: the close code for the connection, and everyone who asked
    /// for it (a node's shutdown and another node's resume may ask at once; all are
    /// answered when the stream has the `handed_over` record).
    handing_over: Option<(
        u16,
        Vec<tokio::sync::oneshot::Sender<crate::cluster::records::HandoverReply>>,
    )>,
    /// Continues a session another node ran: what it starts with (taken in `started`).
    takeover: Option<Takeover>,
    /// `t_ms` of the speech segment open now, as logged (in the session's record, for a
    /// takeover that reads only the log's tail).
    open_segment_ms: Option<u64>,
    /// Was taken over from a node that was lost: a resuming client may be ahead of the log.
    node_lost: bool,
    metrics: Arc<Metrics>,
    stage: Arc<StageStats>,
    timing: TimingSampler,
    span: tracing::Span,
}

impl Session {
    /// Builds the pipeline and starts the session on the current arbiter, its mailbox
    /// bounded to `pipeline.mailbox_capacity`. Fails if the pipeline cannot be built.
    pub fn start(spec: SessionSpec) -> Result<(Addr<Session>, SessionRoute), PipelineError> {
        let SessionSpec {
            id,
            params,
            config,
            catalog,
            metrics,
            ttl_s,
            register,
            unregister,
            cluster,
            takeover,
        } = spec;
        let stages = Pipeline::stage_names(&catalog, &config.pipeline.processors);
        let counters = Arc::new(SessionCounters::new(stages));
        if let Some(t) = &takeover {
            counters
                .pipeline_samples
                .store(t.pipeline_start(params.input), Ordering::Relaxed);
        }
        let mut ctx: Context<Session> = Context::new();
        ctx.set_mailbox_capacity(config.pipeline.mailbox_capacity.get());
        let pipeline = Pipeline::start(
            id,
            &params,
            &config,
            &catalog,
            ctx.address().recipient(),
            counters.clone(),
            &metrics,
        )?;
        let (token, token_hash) = match (&takeover, config.limits.resume_window_s) {
            (Some(t), _) => (None, Some(t.token_hash)),
            (None, 0) => (None, None),
            _ => {
                let token = resume::new_token();
                let hash = resume::token_hash(&token);
                (Some(token), Some(hash))
            }
        };
        let replay_bytes = config.limits.replay_buffer_bytes();
        let (outbox, intake) = match &takeover {
            Some(t) => (
                Outbox::resuming(replay_bytes, t.next_seq, &t.recent),
                IntakeGate::starting_at(t.input_frames),
            ),
            None => (Outbox::new(replay_bytes), IntakeGate::default()),
        };
        let session = Session {
            outbox,
            span: tracing::info_span!("session", id = %id),
            stage: metrics.stage("session", config.pipeline.mailbox_capacity.get()),
            timing: TimingSampler::default(),
            intake: Arc::new(intake),
            node_lost: takeover.as_ref().is_some_and(|t| t.node_lost),
            takeover,
            cluster,
            handing_over: None,
            open_segment_ms: None,
            id,
            params,
            config,
            counters,
            pipeline,
            token_hash,
            token,
            attached: None,
            ever_attached: false,
            resume_deadline: None,
            closing: None,
            flushes: VecDeque::new(),
            ended: None,
            ttl_s,
            over_since: None,
            replay_allowance: 0,
            writer_stalled: None,
            restarts: VecDeque::new(),
            register,
            unregister,
            metrics,
        };
        let addr = ctx.run(session);
        let route = route_of(&addr);
        Ok((addr, route))
    }

    /// The `session.started` event, carrying the resume token (the only time it is shown).
    fn started_event(&mut self) -> ServerEvent {
        let window_s = self.config.limits.resume_window_s;
        ServerEvent::SessionStarted {
            session_id: self.id,
            input: self.params.input,
            pipeline: PipelineFormat::with_delay(self.pipeline.resampler_delay_ms),
            vad: self.params.vad,
            limits: self.limits_info(),
            resume: self
                .token
                .take()
                .map(|token| ResumeInfo { token, window_s }),
        }
    }

    fn limits_info(&self) -> SessionLimitsInfo {
        let c = &self.config;
        SessionLimitsInfo {
            max_binary_frame_bytes: c.limits.max_binary_frame_bytes,
            max_text_frame_bytes: c.limits.max_text_frame_bytes,
            session_ttl_s: self.ttl_s.map_or(c.registry.session_ttl_s, |own| {
                own.min(c.registry.session_ttl_s)
            }),
            idle_timeout_s: c.registry.idle_timeout_s,
            heartbeat_interval_s: c.limits.heartbeat_interval_s,
            heartbeat_timeout_s: c.limits.heartbeat_timeout_s,
            mailbox_capacity: c.pipeline.mailbox_capacity.get(),
            max_inflight_bytes: c.pipeline.max_inflight_bytes.get(),
            backpressure: c.pipeline.backpressure,
            max_json_depth: c.limits.max_json_depth,
            max_control_messages_per_s: c.limits.max_control_messages_per_s,
            max_realtime_factor: c.limits.max_realtime_factor,
            realtime_burst_s: c.limits.realtime_burst_s,
            max_outgoing_bytes: c.limits.max_outgoing_bytes,
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    /// Registers, and watches the attached client's reading between messages.
    fn started(&mut self, ctx: &mut Self::Context) {
        self.stage.started();
        let addr = ctx.address();
        self.register.do_send(Register {
            id: self.id,
            expire: addr.clone().recipient(),
            route: route_of(&addr),
            counters: self.counters.clone(),
            input: self.params.input,
            ttl_s: self.ttl_s,
        });
        self.span
            .in_scope(|| info!(input = ?self.params.input, "session started"));
        self.start_takeover(ctx);
        // A client that stopped reading is caught even when nothing new is being sent.
        let every = Duration::from_secs(self.config.limits.heartbeat_interval_s);
        ctx.run_interval(every, |act, ctx| act.check_reader(ctx));
        // A connection that never attaches (its upgrade failed after admission) must not
        // leave the session running.
        let handshake = Duration::from_secs(self.config.registry.handshake_timeout_s);
        ctx.run_later(handshake, |act, ctx| {
            if !act.ever_attached {
                act.end(ctx, EndReason::HandshakeTimeout);
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.stage.stopped(0);
        let reason = self.ended.unwrap_or(EndReason::ConnectionLost);
        self.unregister.do_send(Unregister {
            id: self.id,
            reason,
        });
    }
}

impl Handler<Expire> for Session {
    type Result = ();

    /// Ends the session for the registry's reason, after flushing.
    fn handle(&mut self, msg: Expire, ctx: &mut Self::Context) {
        self.begin_close(ctx, msg.reason);
    }
}

impl Handler<FromClient> for Session {
    type Result = ();

    /// Answers a client's control message, or reports what it sent wrong.
    fn handle(&mut self, msg: FromClient, ctx: &mut Self::Context) {
        let timer = self.timing.start();
        match msg {
            FromClient::Ping { id } => {
                self.counters.touch();
                self.deliver(ctx, &ServerEvent::Pong { id });
            }
            FromClient::Flush => {
                if self.closing.is_none() {
                    self.flush(ctx, FlushKind::Requested);
                }
            }
            FromClient::Stop => self.begin_close(ctx, CloseReason::ClientStop),
            FromClient::Error(error) => self.report(ctx, error),
        }
        self.stage.handled(timer);
    }
}
