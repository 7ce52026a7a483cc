//! A session across nodes (`[nats]`): logging its messages and lifecycle to the stream,
//! handing it to another node, and continuing one another node ran.
//!
//! Handing over (another node's resume asked for it, or this server is shutting down with
//! `nats.handover_on_shutdown`): the intake closes, the pipeline flushes (a speech segment
//! open now is closed here and reopened on the next node), a `handed_over` record logs the
//! exact timeline position and next `seq`, and once the stream has everything the
//! connection is closed (4002 or 1012) and the session ends here without `session.closed`.
//!
//! Taking over ([`Takeover`]): the session starts at the logged position with the next
//! `seq`, the log's recent events held for replay. After a lost node the position is the end
//! of the last logged event's audio, and a segment the log shows open is closed there
//! (`speech_end` at the takeover point) before the new pipeline reopens it.

use super::{FlushKind, Session};
use crate::cluster::records::{unix_ms, HandoverReply, Lifecycle, SessionRecord};
use crate::protocol::{ServerEvent, VadEventKind};
use actix::prelude::*;
use std::time::Duration;
use tracing::{info, warn};

/// What a session continuing another node's starts with (read from the stream and the
/// sessions bucket by the node taking over).
#[derive(Debug, Clone)]
pub struct Takeover {
    /// SHA-256 of the resume token, as the first node recorded it.
    pub token_hash: [u8; 32],
    /// Where the timeline continues, input sample frames: the client resends from here.
    pub input_frames: u64,
    /// The `seq` of the next message.
    pub next_seq: u64,
    /// The log's most recent events, `(seq, text)` in order, for replay.
    pub recent: Vec<(u64, String)>,
    /// `t_ms` of a speech segment the log shows open: closed at the takeover point.
    pub open_segment_ms: Option<u64>,
    /// The node that ran the session.
    pub from_node: String,
    /// That node was lost (no handover record): the log may end before what the client got.
    pub node_lost: bool,
}

impl Takeover {
    /// The pipeline (16 kHz) sample the new pipeline's timeline starts at.
    pub fn pipeline_start(&self, input: crate::audio::InputFormat) -> u64 {
        let rate = u64::from(input.sample_rate.max(1));
        self.input_frames * u64::from(crate::audio::PIPELINE_RATE) / rate
    }
}

/// How long a handover waits for the stream to take its last records.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Askers a handover under way answers when it is done (the node's own shutdown and other
/// nodes' resumes of the session; a client retrying its resume asks again each time).
const MAX_HANDOVER_WAITERS: usize = 8;

impl Session {
    /// Logs a sequenced message to the stream (when NATS is on). `session.started` is
    /// logged without its resume token; a VAD event also rewrites the session's record with
    /// the segment it leaves open (after the event, so the stream has the event first).
    pub(super) fn log_event(&mut self, seq: u64, event: &ServerEvent, text: &str) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        match event {
            ServerEvent::SessionStarted {
                session_id,
                input,
                pipeline,
                vad,
                limits,
                resume: Some(_),
            } => {
                let without_token = ServerEvent::SessionStarted {
                    session_id: *session_id,
                    input: *input,
                    pipeline: *pipeline,
                    vad: *vad,
                    limits: *limits,
                    resume: None,
                };
                cluster.event(self.id, seq, &without_token.to_json_with_seq(seq));
            }
            _ => cluster.event(self.id, seq, text),
        }
        if let ServerEvent::Vad { event, t_ms, .. } = event {
            self.open_segment_ms = match event {
                VadEventKind::SpeechStart => Some(*t_ms),
                VadEventKind::SpeechEnd => None,
            };
            if let Some(record) = self.record() {
                cluster.put_session(self.id, &record);
            }
        }
    }

    /// The session's state for the sessions bucket (resumable sessions only).
    fn record(&self) -> Option<SessionRecord> {
        let (cluster, hash) = (self.cluster.as_ref()?, self.token_hash.as_ref()?);
        Some(SessionRecord {
            node: cluster.node().to_owned(),
            params: self.params.clone(),
            token_sha256: hex::encode(hash),
            ttl_s: self.ttl_s,
            open_segment_ms: self.open_segment_ms,
        })
    }

    /// Logs the start (first connection attached) and records the session's state.
    pub(super) fn log_started(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        cluster.lifecycle(&Lifecycle::Started {
            session_id: self.id,
            node: cluster.node().to_owned(),
            params: self.params.clone(),
            at_ms: unix_ms(),
        });
        if let Some(record) = self.record() {
            cluster.put_session(self.id, &record);
        }
    }

    /// Logs the end, unless the session goes on elsewhere (or never had a client here: a
    /// takeover whose client did not attach may be tried again).
    pub(super) fn log_end(&self, reason: super::EndReason) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        if reason == super::EndReason::HandedOver || !self.ever_attached {
            return;
        }
        cluster.lifecycle(&Lifecycle::Closed {
            session_id: self.id,
            node: cluster.node().to_owned(),
            reason: self.closing,
            stats: self.counters.stats(),
            at_ms: unix_ms(),
        });
        if self.token_hash.is_some() {
            cluster.delete_session(self.id);
        }
    }

    /// Starts a session taken over from another node: logs the takeover and closes a
    /// segment the log shows open.
    pub(super) fn start_takeover(&mut self, ctx: &mut Context<Self>) {
        let Some(takeover) = self.takeover.take() else {
            return;
        };
        let at_ms = self.params.input.frames_to_ms(takeover.input_frames);
        if let Some(cluster) = &self.cluster {
            cluster.lifecycle(&Lifecycle::TakenOver {
                session_id: self.id,
                node: cluster.node().to_owned(),
                from_node: takeover.from_node.clone(),
                input_frames: takeover.input_frames,
                next_seq: takeover.next_seq,
                node_lost: takeover.node_lost,
                at_ms: unix_ms(),
            });
            // The record already names this node: the server claimed it before starting us.
        }
        self.span.in_scope(|| {
            info!(
                from = %takeover.from_node,
                node_lost = takeover.node_lost,
                input_frames = takeover.input_frames,
                next_seq = takeover.next_seq,
                "session taken over from another node"
            )
        });
        if let Some(start) = takeover.open_segment_ms {
            self.deliver(
                ctx,
                &ServerEvent::Vad {
                    event: VadEventKind::SpeechEnd,
                    t_ms: at_ms.max(start),
                    duration_ms: Some(at_ms.saturating_sub(start)),
                },
            );
        }
    }

    /// Whether a handover is under way (a resume here is refused meanwhile).
    pub(super) fn handing_over(&self) -> bool {
        self.handing_over.is_some()
    }

    /// The pipeline has flushed for a handover: log the point, wait for the stream, let
    /// the connection go and end.
    pub(super) fn finish_handover(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let input_frames = self.intake.position();
        cluster.lifecycle(&Lifecycle::HandedOver {
            session_id: self.id,
            node: cluster.node().to_owned(),
            input_frames,
            next_seq: self.outbox.newest() + 1,
            at_ms: unix_ms(),
        });
        let drained = async move { tokio::time::timeout(DRAIN_TIMEOUT, cluster.drained()).await };
        ctx.wait(drained.into_actor(self).map(move |result, act, ctx| {
            let Some((code, replies)) = act.handing_over.take() else {
                return;
            };
            if !matches!(result, Ok(Ok(()))) {
                act.span.in_scope(|| {
                    warn!("the stream did not take the handover in time; handing over anyway")
                });
            }
            act.span
                .in_scope(|| info!(input_frames, "session handed over to another node"));
            act.let_go(ctx, code, Some("session_handed_over"));
            act.end(ctx, super::EndReason::HandedOver);
            for reply in replies {
                let _ = reply.send(HandoverReply::HandedOver);
            }
        }));
    }
}

impl Handler<super::HandOver> for Session {
    type Result = ();

    /// Starts a handover, joins the one under way (answered when it is done), or answers
    /// `NotHere` when the session cannot be handed over.
    fn handle(&mut self, msg: super::HandOver, ctx: &mut Self::Context) {
        if let Some((_, replies)) = &mut self.handing_over {
            // Past the bound the request is dropped, which its asker reads as `Busy`.
            if replies.len() < MAX_HANDOVER_WAITERS {
                replies.push(msg.reply);
            }
            return;
        }
        let able = self.cluster.is_some()
            && self.token_hash.is_some()
            && self.ended.is_none()
            && self.closing.is_none();
        if !able {
            let _ = msg.reply.send(HandoverReply::NotHere);
            return;
        }
        self.handing_over = Some((msg.code, vec![msg.reply]));
        if let Some(deadline) = self.resume_deadline.take() {
            ctx.cancel_future(deadline);
        }
        self.intake.close();
        self.flush(ctx, FlushKind::Handover);
    }
}
