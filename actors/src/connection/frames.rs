//! Frames from the client: each is counted, then dispatched by kind. Audio goes into the
//! session's pipeline under the backpressure policy; text is a control message for the
//! session; protocol errors are reported to it; a broken socket ends the connection.

use super::Connection;
use crate::error::SessionError;
use crate::metrics::{Direction, FrameKind};
use crate::pipeline::{AudioChunk, Offer, Waiting};
use crate::protocol::{check_audio_frame, ClientMessage};
use crate::session::{ConnectionEnd, FromClient};
use crate::settings::BackpressurePolicy;
use actix::prelude::*;
use actix_web_actors::ws;
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tracing::info;

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Connection {
    /// Dispatches every frame kind.
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let began = Instant::now();
        self.last_heard = began;
        if let Ok(frame) = &msg {
            let (kind, len) = match frame {
                ws::Message::Binary(b) => (FrameKind::Binary, b.len()),
                ws::Message::Text(t) => (FrameKind::Text, t.len()),
                ws::Message::Ping(p) => (FrameKind::Ping, p.len()),
                ws::Message::Pong(p) => (FrameKind::Pong, p.len()),
                ws::Message::Close(_) => (FrameKind::Close, 0),
                ws::Message::Continuation(_) | ws::Message::Nop => (FrameKind::Binary, 0),
            };
            self.metrics.frame(Direction::In, kind, len);
            if let Some(attached) = &self.attached {
                attached.counters.bytes_in.fetch_add(len as u64, Relaxed);
            }
        }
        self.dispatch(msg, ctx);
        self.stage.handled(began.elapsed());
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
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
    /// Handles one frame by kind.
    fn dispatch(
        &mut self,
        msg: Result<ws::Message, ws::ProtocolError>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        match msg {
            Ok(ws::Message::Binary(data)) => self.on_audio(ctx, data),
            Ok(ws::Message::Text(text)) => self.on_text(ctx, &text),
            Ok(ws::Message::Ping(payload)) => {
                if let Some(attached) = &self.attached {
                    attached.counters.touch();
                }
                self.metrics
                    .frame(Direction::Out, FrameKind::Pong, payload.len());
                ctx.pong(&payload);
            }
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                self.span
                    .in_scope(|| info!(?reason, "client closed the connection"));
                self.end = ConnectionEnd::ClientClosed;
                ctx.close(reason);
                ctx.stop();
            }
            Ok(ws::Message::Continuation(_)) => {
                self.tell_session(ctx, FromClient::Error(SessionError::FragmentedMessage))
            }
            Err(ws::ProtocolError::Overflow) => {
                let error = SessionError::FrameTooLarge {
                    max_binary: self.limits.max_binary_frame_bytes,
                    max_text: self.limits.max_text_frame_bytes,
                };
                self.tell_session(ctx, FromClient::Error(error))
            }
            Err(ws::ProtocolError::Io(e)) => {
                // The connection broke (client vanished): nobody is left to tell.
                self.span.in_scope(|| info!(error = %e, "connection lost"));
                ctx.stop();
            }
            Err(_) => self.tell_session(ctx, FromClient::Error(SessionError::Protocol)),
        }
    }

    /// A binary frame: checked against the stream's format, then sent into the pipeline
    /// through the session's intake gate. When the pipeline is full (its mailbox, or
    /// `max_inflight_bytes` in flight) the backpressure policy decides: `block` stops
    /// reading the socket until the chunk is taken, `drop_newest` drops it and reports
    /// `audio_dropped` with its `seq`.
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
