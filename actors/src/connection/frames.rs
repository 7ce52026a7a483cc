//! Frames from the client: each is counted, fragments are joined into messages, and each
//! whole message is dispatched by kind. Audio goes into the session's pipeline under the
//! backpressure policy; text is a control message for the session; protocol errors are
//! reported to it (it closes with the RFC's code); a broken socket ends the connection.

use super::fragments::{Complete, MessageKind};
use super::intake::{classify, DecodeFault};
use super::Connection;
use crate::error::SessionError;
use crate::metrics::{Direction, FrameKind};
use crate::pipeline::{AudioChunk, Offer, Waiting};
use crate::protocol::{check_audio_frame, ClientMessage};
use crate::session::{ConnectionEnd, FromClient};
use crate::settings::BackpressurePolicy;
use actix::prelude::*;
use actix_http::ws::Item;
use actix_web_actors::ws;
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tracing::info;

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Connection {
    /// Counts every frame, joins fragments into messages and dispatches each whole message;
    /// protocol errors are reported to the session, which closes with the RFC's code.
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        if self.closing && !self.stopped_by_client {
            // A fatal error is with the session: nothing the client sends matters any more.
            return;
        }
        let timer = self.timing.start();
        self.last_heard = Instant::now();
        match msg {
            Ok(frame) => {
                self.count_in(&frame);
                match self.assembler.push(frame) {
                    Ok(Some(message)) => self.dispatch(message, ctx),
                    Ok(None) => {}
                    Err(e) => {
                        self.span
                            .in_scope(|| info!(error = ?e, "fragmented message refused"));
                        self.tell_session(ctx, FromClient::Error(e.into()))
                    }
                }
            }
            Err(e) => self.on_decode_error(ctx, &e),
        }
        self.stage.handled(timer);
    }

    /// The client's side ended. After a fatal error the session still has its error event,
    /// `session.closed` and the close frame to send (the socket may still take them); it
    /// closes this connection itself, and a session that never does is not waited for
    /// longer than the heartbeat timeout.
    fn finished(&mut self, ctx: &mut Self::Context) {
        if self.closing && !self.stopped_by_client {
            let grace = Duration::from_secs(self.limits.heartbeat_timeout_s);
            ctx.run_later(grace, |_, ctx| ctx.stop());
        } else {
            ctx.stop();
        }
    }
}

/// What became of a chunk offered to the pipeline.
enum Taken {
    Queued,
    Wait(Waiting),
    Dropped,
    Closed,
}

impl Connection {
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
        if let Some(attached) = &self.attached {
            attached.counters.bytes_in.fetch_add(len as u64, Relaxed);
        }
    }

    /// Handles one whole message by kind.
    fn dispatch(&mut self, message: Complete, ctx: &mut ws::WebsocketContext<Self>) {
        match message {
            Complete::Binary(data) => self.on_audio(ctx, data),
            Complete::Text(text) => self.on_text(ctx, &text),
            Complete::Control(ws::Message::Ping(payload)) => {
                if let Some(attached) = &self.attached {
                    attached.counters.touch();
                }
                self.metrics
                    .frame(Direction::Out, FrameKind::Pong, payload.len());
                ctx.pong(&payload);
            }
            Complete::Control(ws::Message::Close(reason)) => {
                self.span
                    .in_scope(|| info!(?reason, "client closed the connection"));
                self.end = ConnectionEnd::ClientClosed;
                ctx.close(reason);
                ctx.stop();
            }
            // Pongs answer our heartbeat (any frame counts as heard); nop is never decoded.
            Complete::Control(_) => {}
        }
    }

    /// The decoder failed: a protocol violation or an oversized frame goes to the session
    /// (`session.closed`, then the RFC's close code); a broken connection just ends.
    fn on_decode_error(&mut self, ctx: &mut ws::WebsocketContext<Self>, e: &ws::ProtocolError) {
        let error = match classify(e, &self.wire) {
            DecodeFault::Protocol(violation) => {
                self.span
                    .in_scope(|| info!(%violation, "WebSocket protocol violation"));
                SessionError::Protocol(violation)
            }
            DecodeFault::TooLarge => SessionError::FrameTooLarge {
                max_binary: self.limits.max_binary_frame_bytes,
                max_text: self.limits.max_text_frame_bytes,
            },
            DecodeFault::ConnectionLost => {
                // Nobody is left to tell.
                self.span.in_scope(|| info!(error = %e, "connection lost"));
                return ctx.stop();
            }
        };
        self.tell_session(ctx, FromClient::Error(error));
    }

    /// A binary frame: checked against the stream's format, then sent into the pipeline
    /// through the session's intake gate. When the pipeline is full (its mailbox, or
    /// `max_inflight_bytes` in flight) the backpressure policy decides: `block` stops
    /// reading the socket until the chunk is taken, `drop_newest` drops it and reports
    /// `audio_dropped` with its `chunk_seq`.
    fn on_audio(&mut self, ctx: &mut ws::WebsocketContext<Self>, data: Bytes) {
        let seq = self.binary_frames;
        self.binary_frames += 1;
        if self.stopped_by_client {
            return self.tell_session(ctx, FromClient::Error(SessionError::AudioAfterStop));
        }
        let (Some(attached), Some(rates)) = (&self.attached, &mut self.rates) else {
            return;
        };
        if self.closing {
            return;
        }
        let limits = &self.limits;
        let checked = check_audio_frame(
            &attached.input,
            &data,
            limits.max_binary_frame_bytes,
            limits.max_text_frame_bytes,
        );
        let frames = match checked {
            Ok(frames) => frames,
            Err(e) => return self.tell_session(ctx, FromClient::Error(e)),
        };
        if let Err(limit) = rates.audio(frames) {
            return self.tell_session(ctx, FromClient::Error(SessionError::RateLimited(limit)));
        }
        let counters = attached.counters.clone();
        counters.touch();
        let len = data.len();
        let inflight = counters.inflight_bytes.load(Relaxed);
        // Over the byte bound counts as full, unless nothing is in flight (one frame of up
        // to `max_binary_frame_bytes` is always accepted).
        let over = inflight > 0 && inflight + len > self.pipeline.max_inflight_bytes.get();
        let policy = self.pipeline.backpressure;
        let chunk = AudioChunk {
            data,
            // Set by the stream handler when this frame arrived.
            received: self.last_heard,
        };
        let resampler = &attached.pipeline.resampler;
        let inflight = &counters.inflight_bytes;
        let taken = attached.intake.admit(self.id, frames, || {
            // Counted before the send: the resampler may handle the chunk (and subtract)
            // before this returns.
            inflight.fetch_add(len, Relaxed);
            let offer = match (over, policy) {
                (true, BackpressurePolicy::Block) => Offer::Wait(resampler.wait_for_room(chunk)),
                (true, BackpressurePolicy::DropNewest) => Offer::Dropped(chunk),
                (false, _) => resampler.offer(chunk, policy),
            };
            match offer {
                Offer::Queued => (true, Taken::Queued),
                Offer::Wait(room) => (true, Taken::Wait(room)),
                Offer::Dropped(_) => {
                    inflight.fetch_sub(len, Relaxed);
                    (true, Taken::Dropped)
                }
                Offer::Closed => {
                    inflight.fetch_sub(len, Relaxed);
                    (false, Taken::Closed)
                }
            }
        });
        if matches!(taken, Some(Taken::Queued | Taken::Wait(_) | Taken::Dropped)) {
            counters.chunks_in.fetch_add(1, Relaxed);
        }
        match taken {
            // The session let this connection go (a resume took over, or it is closing).
            None => {}
            Some(Taken::Queued) => {}
            Some(Taken::Wait(room)) => {
                // The chunk is already in the resampler's mailbox (see `wait_for_room`):
                // reading stops until the resampler has handled it. TCP pushes back.
                ctx.wait(room.into_actor(self).map(move |res, act, ctx| {
                    // We were not reading, so silence from the client meanwhile is ours,
                    // and a session held back by its own pipeline is not idle.
                    act.last_heard = Instant::now();
                    counters.touch();
                    if res.is_err() {
                        act.tell_session(ctx, FromClient::Error(SessionError::Internal));
                    }
                }));
            }
            Some(Taken::Dropped) => {
                counters.chunks_dropped.fetch_add(1, Relaxed);
                self.metrics.chunks_dropped.inc();
                self.tell_session(ctx, FromClient::Error(SessionError::AudioDropped { seq }));
            }
            Some(Taken::Closed) => {
                self.tell_session(ctx, FromClient::Error(SessionError::Internal))
            }
        }
    }

    /// A text frame: size and control-message rate are checked before it is parsed.
    fn on_text(&mut self, ctx: &mut ws::WebsocketContext<Self>, text: &str) {
        let max = self.limits.max_text_frame_bytes;
        if text.len() > max {
            return self.tell_session(
                ctx,
                FromClient::Error(SessionError::TextFrameTooLarge { max }),
            );
        }
        if let Some(rates) = &self.rates {
            if let Err(limit) = rates.control() {
                return self.tell_session(ctx, FromClient::Error(SessionError::RateLimited(limit)));
            }
        }
        let msg = match ClientMessage::parse(text, self.limits.max_json_depth) {
            Ok(ClientMessage::Ping { id }) => FromClient::Ping { id },
            Ok(ClientMessage::Flush) => FromClient::Flush,
            Ok(ClientMessage::Stop) => {
                self.stopped_by_client = true;
                FromClient::Stop
            }
            Err(e) => FromClient::Error(e),
        };
        self.tell_session(ctx, msg);
    }
}
