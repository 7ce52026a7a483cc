//! Frames from the client: each is counted, fragments are joined into messages, and each
//! whole message is dispatched by kind. Audio goes into the pipeline under the backpressure
//! policy; text is a control message; protocol errors and a broken connection end the session.

use super::{FlushKind, Session};
use crate::error::SessionError;
use crate::fragments::{Complete, MessageKind};
use crate::intake::{classify, DecodeFault};
use crate::metrics::{Direction, FrameKind};
use crate::protocol::{check_audio_frame, ClientMessage, CloseReason, ServerEvent};
use crate::resampler::AudioChunk;
use crate::settings::BackpressurePolicy;
use actix::prelude::*;
use actix_http::ws::Item;
use actix_web_actors::ws;
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tracing::info;

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    /// Counts every frame, joins fragments into messages and dispatches each whole message;
    /// protocol errors end the session.
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        if self.done {
            // `session.closed` is out: nothing the client sends matters any more.
            return;
        }
        let began = Instant::now();
        self.last_heard = began;
        match msg {
            Ok(frame) => {
                self.count_in(&frame);
                match self.assembler.push(frame) {
                    Ok(Some(message)) => self.dispatch(message, ctx),
                    Ok(None) => {}
                    Err(e) => self.report(ctx, e.into()),
                }
            }
            Err(e) => self.on_decode_error(ctx, &e),
        }
        self.stage.handled(began.elapsed());
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Session {
    /// Frame metrics and `bytes_in`, per frame (a fragment counts as a frame of its
    /// message's kind).
    fn count_in(&self, frame: &ws::Message) {
        let (kind, len) = match frame {
            ws::Message::Binary(b) => (FrameKind::Binary, b.len()),
            ws::Message::Text(t) => (FrameKind::Text, t.len()),
            ws::Message::Ping(p) => (FrameKind::Ping, p.len()),
            ws::Message::Pong(p) => (FrameKind::Pong, p.len()),
            ws::Message::Close(_) => (FrameKind::Close, 0),
            ws::Message::Continuation(item) => {
                let (first, data) = match item {
                    Item::FirstText(d) => (Some(MessageKind::Text), d),
                    Item::FirstBinary(d) => (Some(MessageKind::Binary), d),
                    Item::Continue(d) | Item::Last(d) => (None, d),
                };
                let kind = match first.or(self.assembler.in_progress()) {
                    Some(MessageKind::Text) => FrameKind::Text,
                    _ => FrameKind::Binary,
                };
                (kind, data.len())
            }
            ws::Message::Nop => (FrameKind::Binary, 0),
        };
        self.metrics.frame(Direction::In, kind, len);
        self.counters.bytes_in.fetch_add(len as u64, Relaxed);
    }

    /// Handles one whole message by kind.
    fn dispatch(&mut self, message: Complete, ctx: &mut ws::WebsocketContext<Self>) {
        match message {
            Complete::Binary(data) => self.on_audio(ctx, data),
            Complete::Text(text) => self.on_text(ctx, &text),
            Complete::Control(ws::Message::Ping(payload)) => {
                self.counters.touch();
                self.metrics
                    .frame(Direction::Out, FrameKind::Pong, payload.len());
                ctx.pong(&payload);
            }
            Complete::Control(ws::Message::Close(reason)) => {
                self.span
                    .in_scope(|| info!(?reason, "client closed the connection"));
                if self.closing.is_none() {
                    self.end_reason = "client_closed";
                }
                ctx.close(reason);
                ctx.stop();
            }
            // Pongs answer our heartbeat (any frame counts as heard); nop is never decoded.
            Complete::Control(_) => {}
        }
    }

    /// The decoder failed: a protocol violation or an oversized frame is told to the client
    /// (`session.closed`, then the RFC's close code); a broken connection just ends.
    fn on_decode_error(&mut self, ctx: &mut ws::WebsocketContext<Self>, e: &ws::ProtocolError) {
        match classify(e, &self.wire) {
            DecodeFault::Protocol(violation) => self.report(ctx, SessionError::Protocol(violation)),
            DecodeFault::TooLarge => self.report(
                ctx,
                SessionError::FrameTooLarge {
                    max_binary: self.config.limits.max_binary_frame_bytes,
                    max_text: self.config.limits.max_text_frame_bytes,
                },
            ),
            DecodeFault::ConnectionLost => {
                // Nobody is left to tell.
                self.span.in_scope(|| info!(error = %e, "connection lost"));
                ctx.stop();
            }
        }
    }

    /// A binary frame: checked against the stream's format, then sent into the pipeline. When
    /// the pipeline is full (its mailbox, or `max_inflight_bytes` in flight) the backpressure
    /// policy decides: `block` stops reading the socket until the chunk is taken,
    /// `drop_newest` drops it and reports `audio_dropped` with its `seq`.
    fn on_audio(&mut self, ctx: &mut ws::WebsocketContext<Self>, data: Bytes) {
        let seq = self.binary_frames;
        self.binary_frames += 1;
        if self.closing.is_some() {
            return self.report(ctx, SessionError::AudioAfterStop);
        }
        let limits = &self.config.limits;
        let input = self.params.input;
        if let Err(e) = check_audio_frame(
            &input,
            &data,
            limits.max_binary_frame_bytes,
            limits.max_text_frame_bytes,
        ) {
            return self.report(ctx, e);
        }
        let frames = (data.len() / input.frame_bytes()) as u64;
        if let Err(limit) = self.rates.audio(frames) {
            return self.report(ctx, SessionError::RateLimited(limit));
        }
        self.counters.touch();
        self.counters.chunks_in.fetch_add(1, Relaxed);
        let Some(pipeline) = &self.pipeline else {
            return self.report(ctx, SessionError::Internal);
        };
        let resampler = pipeline.resampler.clone();
        let probe = pipeline.resampler_probe.clone();
        let len = data.len();
        let inflight = self.counters.inflight_bytes.load(Relaxed);
        // Over the byte bound counts as full, unless nothing is in flight (one frame of up
        // to `max_binary_frame_bytes` is always accepted).
        let over = inflight > 0 && inflight + len > self.config.pipeline.max_inflight_bytes.get();
        let chunk = AudioChunk {
            data,
            // Set by the stream handler when this frame arrived.
            received: self.last_heard,
        };
        let refused = if over {
            Some(chunk)
        } else {
            self.counters.inflight_bytes.fetch_add(len, Relaxed);
            match resampler.try_send(chunk) {
                Ok(()) => {
                    probe.queued();
                    None
                }
                Err(SendError::Full(chunk)) => {
                    self.counters.inflight_bytes.fetch_sub(len, Relaxed);
                    Some(chunk)
                }
                Err(SendError::Closed(_)) => return self.report(ctx, SessionError::Internal),
            }
        };
        let Some(chunk) = refused else {
            return;
        };
        match self.config.pipeline.backpressure {
            BackpressurePolicy::Block => {
                // Reading stops until the pipeline took this chunk: TCP pushes back.
                self.counters.inflight_bytes.fetch_add(len, Relaxed);
                probe.queued();
                ctx.wait(resampler.send(chunk).into_actor(self).map(|res, act, ctx| {
                    // We were not reading, so silence from the client meanwhile is ours,
                    // and a session held back by its own pipeline is not idle.
                    act.last_heard = Instant::now();
                    act.counters.touch();
                    if res.is_err() {
                        act.report(ctx, SessionError::Internal);
                    }
                }));
            }
            BackpressurePolicy::DropNewest => {
                self.counters.chunks_dropped.fetch_add(1, Relaxed);
                self.metrics.chunks_dropped.inc();
                self.report(ctx, SessionError::AudioDropped { seq });
            }
        }
    }

    /// A text frame: size and control-message rate are checked before it is parsed.
    fn on_text(&mut self, ctx: &mut ws::WebsocketContext<Self>, text: &str) {
        let max = self.config.limits.max_text_frame_bytes;
        if text.len() > max {
            return self.report(ctx, SessionError::TextFrameTooLarge { max });
        }
        if let Err(limit) = self.rates.control() {
            return self.report(ctx, SessionError::RateLimited(limit));
        }
        match ClientMessage::parse(text, self.config.limits.max_json_depth) {
            Ok(ClientMessage::Ping { id }) => {
                self.counters.touch();
                self.deliver(ctx, &ServerEvent::Pong { id });
            }
            Ok(ClientMessage::Flush) => {
                if self.closing.is_none() {
                    self.flush(ctx, FlushKind::Requested);
                }
            }
            Ok(ClientMessage::Stop) => self.begin_close(ctx, CloseReason::ClientStop),
            Err(e) => self.report(ctx, e),
        }
    }
}
