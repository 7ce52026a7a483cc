//! What the pipeline sends back to its session, turned into messages for the client.

use super::{FlushKind, Session, ToClient};
use crate::error::SessionError;
use crate::metrics::{Direction, FrameKind};
use crate::pipeline::PipelineOutput;
use crate::protocol::ServerEvent;
use actix::prelude::*;
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

impl Handler<PipelineOutput> for Session {
    type Result = ();

    /// Turns pipeline output into messages for the client.
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
                // Returned audio is not sequenced or kept: dropped (counted) when the
                // client is not keeping up or not attached.
                if !self.room_for_droppable() {
                    self.counters.outgoing_dropped.fetch_add(1, Relaxed);
                    self.metrics.outgoing_dropped.inc();
                    return;
                }
                let Some(conn) = &self.attached else {
                    return;
                };
                let pcm = to_s16le(&samples);
                conn.outgoing
                    .queued
                    .fetch_add(super::frame_len(pcm.len()), Relaxed);
                self.metrics
                    .frame(Direction::Out, FrameKind::Binary, pcm.len());
                self.counters.bytes_out.fetch_add(pcm.len() as u64, Relaxed);
                conn.to_client.do_send(ToClient::Binary(pcm));
            }
            PipelineOutput::Flushed { audio_ms } => {
                match self.flushes.pop_front() {
                    Some(FlushKind::Requested) => {
                        self.deliver(ctx, &ServerEvent::Flushed { audio_ms })
                    }
                    Some(FlushKind::Handover) => self.finish_handover(ctx),
                    _ => {}
                }
                if let (Some(reason), true) = (self.closing, self.flushes.is_empty()) {
                    self.finish(ctx, reason, reason.close_code());
                }
            }
            PipelineOutput::Failed => self.report(ctx, SessionError::Internal),
            PipelineOutput::Problem(error) => self.report(ctx, error),
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
    fn on_restart(&mut self, ctx: &mut Context<Self>, processor: String) {
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
