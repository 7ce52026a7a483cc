//! What the pipeline sends back to its session, and how the session turns it into frames
//! for the client.

use super::{frame_len, FlushKind, Session};
use crate::error::SessionError;
use crate::metrics::{Direction, FrameKind};
use crate::protocol::ServerEvent;
use actix::prelude::*;
use actix_web_actors::ws;
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the pipeline sends back to its session. Delivered with `do_send`: the volume is
/// bounded by the session's own audio in flight (the mailboxes upstream), not by this queue.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum PipelineOutput {
    /// Events from processors, in order.
    Events {
        /// The events.
        events: Vec<crate::protocol::ServerEvent>,
        /// When the chunk that caused them was received (`None` for flush-time events).
        received: Option<Instant>,
    },
    /// Pipeline audio for `return_audio` (16 kHz mono).
    Audio(Arc<[f32]>),
    /// Everything before the last `Flush` went through; every event of it precedes this.
    Flushed {
        /// Audio through the pipeline so far, ms.
        audio_ms: u64,
    },
    /// A stage failed; the session cannot go on.
    Failed,
    /// A processor panicked and its supervisor restarted it with fresh state.
    ProcessorRestarted {
        /// The processor's name.
        processor: String,
    },
    /// A processor exceeded `supervision.max_restarts`; its stage has stopped.
    ProcessorFailed {
        /// The processor's name.
        processor: String,
    },
}

impl Handler<PipelineOutput> for Session {
    type Result = ();

    /// Turns pipeline output into frames for the client.
    fn handle(&mut self, msg: PipelineOutput, ctx: &mut Self::Context) {
        match msg {
            PipelineOutput::Events { events, received } => {
                for event in &events {
                    self.deliver(ctx, event);
                }
                if let Some(received) = received {
                    self.metrics
                        .event_latency
                        .observe(received.elapsed().as_secs_f64());
                }
            }
            PipelineOutput::Audio(samples) => {
                if !self.outgoing_room(ctx, true) {
                    return;
                }
                let pcm = to_s16le(&samples);
                self.counters
                    .outgoing_bytes
                    .fetch_add(frame_len(pcm.len()), Relaxed);
                self.metrics
                    .frame(Direction::Out, FrameKind::Binary, pcm.len());
                self.counters.bytes_out.fetch_add(pcm.len() as u64, Relaxed);
                ctx.binary(pcm);
            }
            PipelineOutput::Flushed { audio_ms } => {
                if self.flushes.pop_front() == Some(FlushKind::Requested) {
                    self.deliver(ctx, &ServerEvent::Flushed { audio_ms });
                }
                if let (Some(reason), true) = (self.closing, self.flushes.is_empty()) {
                    self.finish(ctx, reason, reason.close_code());
                }
            }
            PipelineOutput::Failed => self.report(ctx, SessionError::Internal),
            PipelineOutput::ProcessorRestarted { processor } => self.on_restart(ctx, processor),
            PipelineOutput::ProcessorFailed { processor } => {
                self.report(ctx, SessionError::ProcessorFailed { processor })
            }
        }
    }
}

impl Session {
    /// The session is its stages' supervisor for the intensity limit: more than
    /// `max_restarts` processor restarts within `period_s` end the session.
    fn on_restart(&mut self, ctx: &mut ws::WebsocketContext<Self>, processor: String) {
        let limits = self.config.supervision;
        let now = Instant::now();
        let period = Duration::from_secs(limits.period_s);
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= period)
        {
            self.restarts.pop_front();
        }
        self.restarts.push_back(now);
        if self.restarts.len() > limits.max_restarts as usize {
            self.report(ctx, SessionError::ProcessorFailed { processor });
        } else {
            self.report(ctx, SessionError::ProcessorRestarted { processor });
        }
    }
}

/// Pipeline audio as 16-bit little-endian PCM, clipped to full scale.
fn to_s16le(samples: &[f32]) -> Bytes {
    let mut out = Vec::with_capacity(samples.len() * 2);
    for &s in samples {
        let v = (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    Bytes::from(out)
}
