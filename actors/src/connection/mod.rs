//! The Connection actor: one per WebSocket, carrying one session.
//!
//! # Layout
//! - `frames`: each frame from the client, joined into messages, dispatched by kind; audio
//!   into the pipeline.
//! - [`fragments`]: reassembly of fragmented messages (RFC 6455 section 5.4), bounded.
//! - [`intake`]: paces socket bytes into actix's frame decoder, a frame at a time, and
//!   catches the protocol violations actix reports ambiguously.
//! - [`outgoing`]: counts what the client has not read yet.
//! - `rates`: the control-message and audio-rate limits of one connection.
//!
//! This folder is the only code that knows the WebSocket crate (actix-web-actors): framing,
//! intake pacing, heartbeats, close codes and the bound on unread bytes live here; the
//! session it carries lives on when the connection ends. Audio goes from here straight to
//! the session's pipeline (no hop through the session actor); control messages go to the
//! session, and the session's messages for the client come back as [`ToClient`].

pub mod fragments;
mod frames;
pub mod intake;
pub mod outgoing;
mod rates;

use self::fragments::MessageAssembler;
use self::intake::{FramePacedPayload, WireReport};
use self::outgoing::OutgoingMeter;
use self::rates::SessionRates;
use crate::error::close_code;
use crate::metrics::{Direction, FrameKind, Metrics, StageStats, TimingSampler};
use crate::session::{
    Attach, Attached, ConnectionEnd, ConnectionGone, ConnectionHandle, FromClient, OutgoingQueue,
    ResumeRequest, SessionRoute, SocketAbort, ToClient,
};
use crate::settings::{PipelineSettings, SessionLimits};
use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};
use uuid::Uuid;

/// What a connection is started with.
pub struct ConnectionSpec {
    /// The session it carries.
    pub session_id: Uuid,
    /// How to reach that session.
    pub route: SessionRoute,
    /// `Some` when this connection resumes the session.
    pub resume: Option<ResumeRequest>,
    /// Per-session limits (frame sizes, heartbeats, rates).
    pub limits: SessionLimits,
    /// Backpressure policy and the in-flight audio bound.
    pub pipeline: PipelineSettings,
    /// Server-wide metrics.
    pub metrics: Arc<Metrics>,
    /// Cuts the TCP connection when the actor cannot run (see [`SocketAbort`]).
    pub abort: Option<SocketAbort>,
}

/// One WebSocket connection carrying a session.
pub struct Connection {
    id: u64,
    route: SessionRoute,
    resume: Option<ResumeRequest>,
    limits: SessionLimits,
    pipeline: PipelineSettings,
    /// The session's pipeline and intake, once attached.
    attached: Option<Attached>,
    /// Joins fragmented messages.
    assembler: MessageAssembler,
    /// Violations found in the raw bytes, to classify the decoder's errors.
    wire: WireReport,
    rates: Option<SessionRates>,
    /// Binary frames received, valid or not: the next frame's `seq`.
    binary_frames: u64,
    /// Last frame of any kind from the client (heartbeat; receive time of audio).
    last_heard: Instant,
    /// A fatal error was reported, or `stop` sent: audio is no longer taken.
    closing: bool,
    /// The client sent `stop`.
    stopped_by_client: bool,
    /// How the connection ended, reported to the session when the actor stops.
    end: ConnectionEnd,
    outgoing: Arc<OutgoingQueue>,
    abort: Option<SocketAbort>,
    /// Cleared when the actor stops.
    running: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    stage: Arc<StageStats>,
    timing: TimingSampler,
    span: tracing::Span,
}

/// Whether `req` is a valid WebSocket upgrade request.
pub fn is_upgrade(req: &HttpRequest) -> bool {
    ws::handshake(req).is_ok()
}

/// Connection ids, unique in this process (0 means none).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Connection {
    /// A connection for the session `spec` names.
    pub fn new(spec: ConnectionSpec) -> Self {
        let id = NEXT_ID.fetch_add(1, Relaxed);
        // The socket is cut only while this actor has not stopped: once it has, its close
        // frame is with the HTTP writer, which ends the TCP connection itself.
        let running = Arc::new(AtomicBool::new(true));
        let abort = spec.abort.map(|abort| {
            let running = running.clone();
            Arc::new(move || {
                if running.load(Relaxed) {
                    abort()
                }
            }) as SocketAbort
        });
        Self {
            running,
            span: tracing::info_span!("connection", session = %spec.session_id, id),
            stage: spec.metrics.stage("connection", 0),
            timing: TimingSampler::default(),
            id,
            route: spec.route,
            resume: spec.resume,
            limits: spec.limits,
            pipeline: spec.pipeline,
            attached: None,
            assembler: MessageAssembler::new(
                spec.limits.max_binary_frame_bytes,
                spec.limits.max_text_frame_bytes,
            ),
            wire: WireReport::default(),
            rates: None,
            binary_frames: 0,
            last_heard: Instant::now(),
            closing: false,
            stopped_by_client: false,
            end: ConnectionEnd::Lost,
            outgoing: Arc::new(OutgoingQueue::default()),
            abort,
            metrics: spec.metrics,
        }
    }

    /// Completes the WebSocket upgrade of `req` and runs `self` on it: the response body is
    /// metered, and socket bytes are paced into the frame decoder.
    pub fn serve(mut self, req: &HttpRequest, payload: web::Payload) -> HttpResponse {
        let max_frame = self
            .limits
            .max_binary_frame_bytes
            .max(self.limits.max_text_frame_bytes);
        let codec = actix_http::ws::Codec::new().max_size(max_frame);
        let outgoing = self.outgoing.clone();
        let paced = FramePacedPayload::new(payload).max_payload(max_frame);
        self.wire = paced.report();
        match ws::handshake(req) {
            Ok(mut response) => {
                let body = ws::WebsocketContext::with_codec(self, paced, codec);
                response.streaming(OutgoingMeter::new(body, outgoing))
            }
            Err(e) => {
                warn!(error = %e, "WebSocket upgrade failed");
                HttpResponse::BadRequest().finish()
            }
        }
    }

    /// Tells the session something the client sent; waits (reading nothing) while the
    /// session's mailbox is full, so a client cannot queue without bound there either.
    fn tell_session(&mut self, ctx: &mut ws::WebsocketContext<Self>, msg: FromClient) {
        let fatal = matches!(&msg, FromClient::Error(e) if e.close_code().is_some());
        if fatal {
            self.closing = true;
        }
        match self.route.from_client.try_send(msg) {
            Ok(()) => {}
            Err(SendError::Full(msg)) => {
                // A fresh handle: actix's `send` on the handle whose `try_send` just found
                // the mailbox full returns a future that is never woken again.
                let send = self.route.from_client.clone().send(msg);
                ctx.wait(send.into_actor(self).map(|res, act, ctx| {
                    if res.is_err() {
                        act.session_gone(ctx);
                    }
                }));
            }
            Err(SendError::Closed(_)) => self.session_gone(ctx),
        }
    }

    /// The session ended without closing this connection (it should not happen): close 1011.
    fn session_gone(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        self.close(ctx, close_code::INTERNAL, None);
    }

    fn close(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        code: u16,
        description: Option<String>,
    ) {
        self.end = ConnectionEnd::ClosedByServer;
        self.metrics.frame(Direction::Out, FrameKind::Close, 2);
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::from(code),
            description,
        }));
        ctx.stop();
    }

    /// Pings the client every `heartbeat_interval_s`; ends the connection when nothing was
    /// heard for `heartbeat_timeout_s` (the session then detaches, or ends if resume is off).
    fn heartbeat(&self, ctx: &mut ws::WebsocketContext<Self>) {
        let every = Duration::from_secs(self.limits.heartbeat_interval_s);
        let timeout = Duration::from_secs(self.limits.heartbeat_timeout_s);
        ctx.run_interval(every, move |act, ctx| {
            if act.last_heard.elapsed() > timeout {
                act.span
                    .in_scope(|| info!("client stopped answering heartbeats; dropping it"));
                act.end = ConnectionEnd::HeartbeatTimeout;
                ctx.stop();
            } else {
                ctx.ping(b"");
            }
        });
    }
}

impl Actor for Connection {
    type Context = ws::WebsocketContext<Self>;

    /// Attaches to the session before reading a frame.
    fn started(&mut self, ctx: &mut Self::Context) {
        self.stage.started();
        self.heartbeat(ctx);
        let attach = Attach {
            connection: ConnectionHandle {
                id: self.id,
                to_client: ctx.address().recipient(),
                outgoing: self.outgoing.clone(),
                abort: self.abort.clone(),
            },
            resume: self.resume.take(),
        };
        let sent = self.route.attach.send(attach);
        ctx.wait(sent.into_actor(self).map(|res, act, ctx| match res {
            Ok(Ok(attached)) => {
                act.rates = Some(SessionRates::new(&act.limits, &attached.input));
                act.attached = Some(attached);
            }
            Ok(Err(refusal)) => {
                // Only a race with another resume or the session's end gets here: the
                // checks before the upgrade passed.
                act.span
                    .in_scope(|| warn!(%refusal, "resume refused after the upgrade"));
                act.close(ctx, close_code::POLICY, Some(refusal.to_string()));
            }
            Err(_) => act.session_gone(ctx),
        }));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.running.store(false, Relaxed);
        self.stage.stopped(0);
        self.route.gone.do_send(ConnectionGone {
            connection: self.id,
            end: self.end,
        });
    }
}

impl Handler<ToClient> for Connection {
    type Result = ();

    /// Writes the session's frame to the client (the session counted it as unread).
    fn handle(&mut self, msg: ToClient, ctx: &mut Self::Context) {
        match msg {
            ToClient::Text(text) => ctx.text(&*text),
            ToClient::Binary(pcm) => ctx.binary(pcm),
            ToClient::Close { code, description } => {
                self.close(ctx, code, description.map(str::to_owned))
            }
        }
    }
}
