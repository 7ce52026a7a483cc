//! The Session actor: one per WebSocket connection.
//!
//! Life of a session, top to bottom: `started` builds the pipeline, registers with the
//! registry and sends `session.started`; the stream handler validates each frame, sends audio
//! into the pipeline under the backpressure policy and answers control messages; pipeline
//! output comes back as [`PipelineOutput`] and leaves as events; `stop`, an [`Expire`] from
//! the registry, or a fatal error flush the pipeline, send `session.closed` and close;
//! `stopped` unregisters.

mod client_frames;
mod outgoing;
mod pipeline_output;
mod rates;

pub use outgoing::{frame_len, OutgoingMeter};
pub use pipeline_output::PipelineOutput;

use self::rates::SessionRates;
use crate::counters::SessionCounters;
use crate::error::SessionError;
use crate::fragments::MessageAssembler;
use crate::intake::WireReport;
use crate::metrics::{Direction, FrameKind, Metrics, StageStats};
use crate::pipeline::Pipeline;
use crate::processors::ProcessorCatalog;
use crate::protocol::{CloseReason, PipelineFormat, ServerEvent, SessionLimitsInfo, StreamParams};
use crate::registry::{Register, SessionRegistry, Unregister};
use crate::resampler::Flush;
use crate::settings::{
    LevelSettings, PipelineSettings, RegistryLimits, SessionLimits, SupervisionSettings,
};
use actix::prelude::*;
use actix_web_actors::ws;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};
use uuid::Uuid;

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

/// The registry asks the session to end, telling the client why.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Expire {
    /// Reported in `session.closed`; decides the close code.
    pub reason: CloseReason,
}

/// Who asked for a flush: only a client's `flush` is answered with `flushed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlushKind {
    /// The client sent `flush`.
    Requested,
    /// The session is closing.
    Closing,
}

/// One WebSocket client and its pipeline.
pub struct Session {
    id: Uuid,
    peer: IpAddr,
    params: StreamParams,
    config: Arc<SessionConfig>,
    catalog: Arc<ProcessorCatalog>,
    registry: Addr<SessionRegistry>,
    counters: Arc<SessionCounters>,
    pipeline: Option<Pipeline>,
    /// Binary messages received, valid or not: the next message's `seq`.
    binary_frames: u64,
    /// Joins fragmented messages (bounded by the frame limits).
    assembler: MessageAssembler,
    /// Violations the intake found in the client's bytes, read when the decoder fails.
    wire: WireReport,
    /// Last frame of any kind from the client (heartbeat).
    last_heard: Instant,
    /// Set once the session is ending; further audio is refused.
    closing: Option<CloseReason>,
    /// Flushes sent to the pipeline and not yet answered, oldest first.
    flushes: VecDeque<FlushKind>,
    /// Why the session ended, for the registry and metrics (`connection_lost` until known).
    end_reason: &'static str,
    /// `session.closed` has been sent; nothing more goes out.
    done: bool,
    /// Control-message and audio-rate buckets.
    rates: SessionRates,
    /// This session's TTL when its credential asked for a shorter one.
    ttl_s: Option<u64>,
    /// Since when the outgoing queue has been over `max_outgoing_bytes`.
    over_since: Option<Instant>,
    /// Processor restarts within the last `supervision.period_s`, oldest first (at most
    /// `max_restarts + 1`).
    restarts: VecDeque<Instant>,
    metrics: Arc<Metrics>,
    stage: Arc<StageStats>,
    span: tracing::Span,
}

impl Session {
    /// A session admitted by the registry under `id`.
    pub fn new(
        id: Uuid,
        peer: IpAddr,
        params: StreamParams,
        config: Arc<SessionConfig>,
        catalog: Arc<ProcessorCatalog>,
        registry: Addr<SessionRegistry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let span = tracing::info_span!("session", id = %id);
        let assembler = MessageAssembler::new(
            config.limits.max_binary_frame_bytes,
            config.limits.max_text_frame_bytes,
        );
        let stages = std::iter::once("resampler".to_owned())
            .chain(config.pipeline.processors.iter().cloned());
        Self {
            counters: Arc::new(SessionCounters::new(stages)),
            rates: SessionRates::new(&config.limits, &params.input),
            done: false,
            ttl_s: None,
            over_since: None,
            restarts: VecDeque::new(),
            end_reason: "connection_lost",
            stage: metrics.stage("session", 0),
            metrics,
            id,
            peer,
            params,
            config,
            catalog,
            registry,
            pipeline: None,
            binary_frames: 0,
            assembler,
            wire: WireReport::default(),
            last_heard: Instant::now(),
            closing: None,
            flushes: VecDeque::new(),
            span,
        }
    }

    /// Caps this session's lifetime below `registry.session_ttl_s` (a token's claim).
    pub fn with_ttl_s(mut self, ttl_s: Option<u64>) -> Self {
        self.ttl_s = ttl_s;
        self
    }

    /// Reads protocol violations from `report`, the one of the `FramePacedPayload` feeding
    /// this session's decoder (without it, violations actix reports as I/O errors look like
    /// a lost connection).
    pub fn with_wire_report(mut self, report: WireReport) -> Self {
        self.wire = report;
        self
    }

    /// The session's live counters; the server wraps the response body in an
    /// [`OutgoingMeter`] over them before the actor starts.
    pub fn counters(&self) -> Arc<SessionCounters> {
        self.counters.clone()
    }

    /// Queues an event regardless of the outgoing bound: for what a client must get
    /// (`session.started`, fatal errors, `session.closed`).
    fn send_event(&self, ctx: &mut ws::WebsocketContext<Self>, event: &ServerEvent) {
        let text = event.to_json();
        self.metrics
            .frame(Direction::Out, FrameKind::Text, text.len());
        self.counters.events_sent.fetch_add(1, Relaxed);
        self.counters
            .bytes_out
            .fetch_add(text.len() as u64, Relaxed);
        self.counters
            .outgoing_bytes
            .fetch_add(frame_len(text.len()), Relaxed);
        ctx.text(text);
    }

    /// Queues an event if the client is keeping up. `level` events are dropped (counted)
    /// while the outgoing queue is over its bound; others are queued until the client
    /// counts as a slow consumer.
    fn deliver(&mut self, ctx: &mut ws::WebsocketContext<Self>, event: &ServerEvent) {
        let droppable = matches!(event, ServerEvent::Level { .. });
        if self.outgoing_room(ctx, droppable) {
            self.send_event(ctx, event);
        }
    }

    /// Whether one more frame may be queued. Over `max_outgoing_bytes` droppable frames are
    /// refused and counted; at twice it, or after `slow_consumer_timeout_s` over it, the
    /// session ends with `slow_consumer`.
    fn outgoing_room(&mut self, ctx: &mut ws::WebsocketContext<Self>, droppable: bool) -> bool {
        if self.done {
            return false;
        }
        let limits = &self.config.limits;
        let max = limits.max_outgoing_bytes;
        let queued = self.counters.outgoing_bytes.load(Relaxed);
        if queued <= max {
            self.over_since = None;
            return true;
        }
        let since = *self.over_since.get_or_insert_with(Instant::now);
        let timeout = Duration::from_secs(limits.slow_consumer_timeout_s);
        if queued > 2 * max || since.elapsed() >= timeout {
            self.span.in_scope(|| {
                warn!(
                    queued,
                    max,
                    over_ms = since.elapsed().as_millis() as u64,
                    "client is not reading its events"
                )
            });
            self.report(ctx, SessionError::SlowConsumer { max_bytes: max });
            return false;
        }
        if droppable {
            self.counters.outgoing_dropped.fetch_add(1, Relaxed);
            self.metrics.outgoing_dropped.inc();
            return false;
        }
        true
    }

    /// Sends an error event, logging it under a fresh correlation id. Fatal errors end the
    /// session with the error's close code, without waiting for the pipeline; the
    /// `session.closed` reason is `protocol_error` for protocol errors, `error` otherwise.
    fn report(&mut self, ctx: &mut ws::WebsocketContext<Self>, error: SessionError) {
        let correlation_id = Uuid::new_v4();
        let close = error.close_code();
        self.span.in_scope(|| {
            if close.is_some() {
                warn!(%correlation_id, code = error.code(), "{error}");
            } else {
                info!(%correlation_id, code = error.code(), "{error}");
            }
        });
        if let Ok(mut last) = self.counters.last_error.lock() {
            *last = Some(error.code());
        }
        let seq = match error {
            SessionError::AudioDropped { seq } => Some(seq),
            _ => None,
        };
        let event = ServerEvent::Error {
            code: error.code(),
            message: error.to_string(),
            correlation_id,
            fatal: close.is_some(),
            seq,
        };
        match close {
            Some(code) => {
                let reason = match error {
                    SessionError::Protocol(_) => CloseReason::ProtocolError,
                    _ => CloseReason::Error,
                };
                self.send_event(ctx, &event);
                self.finish(ctx, reason, code);
            }
            None => self.deliver(ctx, &event),
        }
    }

    /// Sends `session.closed` and closes with `code`.
    fn finish(&mut self, ctx: &mut ws::WebsocketContext<Self>, reason: CloseReason, code: u16) {
        if self.done {
            return;
        }
        self.done = true;
        self.closing = Some(reason);
        self.end_reason = reason.as_str();
        let stats = self.counters.stats();
        self.send_event(ctx, &ServerEvent::SessionClosed { reason, stats });
        self.metrics.frame(Direction::Out, FrameKind::Close, 2);
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::from(code),
            description: None,
        }));
        self.span
            .in_scope(|| info!(?reason, code, ?stats, "session closed"));
        ctx.stop();
    }

    /// Begins an orderly end: flush, then `session.closed` once the pipeline has drained.
    /// A pipeline that cannot drain within the heartbeat timeout is closed anyway.
    fn begin_close(&mut self, ctx: &mut ws::WebsocketContext<Self>, reason: CloseReason) {
        if self.closing.is_some() {
            return;
        }
        if self.pipeline.is_none() {
            return self.finish(ctx, reason, reason.close_code());
        }
        self.closing = Some(reason);
        self.flush(ctx, FlushKind::Closing);
        let deadline = Duration::from_secs(self.config.limits.heartbeat_timeout_s);
        ctx.run_later(deadline, move |act, ctx| {
            act.span.in_scope(|| {
                warn!(
                    ?reason,
                    "pipeline did not drain in time; closing without flush"
                )
            });
            act.finish(ctx, reason, reason.close_code());
        });
    }

    fn flush(&mut self, ctx: &mut ws::WebsocketContext<Self>, kind: FlushKind) {
        let Some(pipeline) = &self.pipeline else {
            return;
        };
        self.flushes.push_back(kind);
        let resampler = pipeline.resampler.clone();
        pipeline.resampler_probe.queued();
        match resampler.try_send(Flush) {
            Ok(()) => {}
            // Control is never dropped: wait for room, reading nothing meanwhile.
            Err(SendError::Full(msg)) => {
                ctx.wait(resampler.send(msg).into_actor(self).map(|res, act, ctx| {
                    if res.is_err() {
                        act.report(ctx, SessionError::Internal);
                    }
                }))
            }
            Err(SendError::Closed(_)) => self.report(ctx, SessionError::Internal),
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

    /// Pings the client every `heartbeat_interval_s`; drops it when nothing was heard for
    /// `heartbeat_timeout_s` (a vanished client cannot be told anything).
    fn heartbeat(&self, ctx: &mut ws::WebsocketContext<Self>) {
        let every = Duration::from_secs(self.config.limits.heartbeat_interval_s);
        let timeout = Duration::from_secs(self.config.limits.heartbeat_timeout_s);
        ctx.run_interval(every, move |act, ctx| {
            if act.last_heard.elapsed() > timeout {
                act.span.in_scope(
                    || info!(peer = %act.peer, "client stopped answering heartbeats; dropping it"),
                );
                ctx.stop();
            } else {
                // A client that stopped reading is caught here even when nothing new is
                // being sent to it.
                if act.outgoing_room(ctx, false) {
                    ctx.ping(b"");
                }
            }
        });
    }
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    /// Builds the pipeline, registers, and greets the client.
    fn started(&mut self, ctx: &mut Self::Context) {
        self.stage.started();
        let sink = ctx.address().recipient();
        let pipeline_format;
        match Pipeline::start(
            self.id,
            &self.params,
            &self.config,
            &self.catalog,
            sink,
            self.counters.clone(),
            &self.metrics,
        ) {
            Ok(pipeline) => {
                pipeline_format = PipelineFormat::with_delay(pipeline.resampler_delay_ms);
                self.pipeline = Some(pipeline);
            }
            Err(e) => {
                self.span
                    .in_scope(|| warn!(error = %e, "pipeline could not start"));
                return self.report(ctx, SessionError::Internal);
            }
        }
        self.registry.do_send(Register {
            id: self.id,
            session: ctx.address().recipient(),
            counters: self.counters.clone(),
            input: self.params.input,
            ttl_s: self.ttl_s,
        });
        self.span
            .in_scope(|| info!(peer = %self.peer, input = ?self.params.input, "session started"));
        let started = ServerEvent::SessionStarted {
            session_id: self.id,
            input: self.params.input,
            pipeline: pipeline_format,
            vad: self.params.vad,
            limits: self.limits_info(),
        };
        self.send_event(ctx, &started);
        self.heartbeat(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.stage.stopped(0);
        self.registry.do_send(Unregister {
            id: self.id,
            reason: self.end_reason,
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
