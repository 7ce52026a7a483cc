//! Sending a session's messages to its client: each is sequenced, kept in the outbox for
//! replay and handed to the attached connection, whose unread bytes are watched so that a
//! client that stops reading is let go (or, with resume off, the session ends) instead of
//! its queue growing.

use super::{EndReason, Session, ToClient};
use crate::error::{close_code, SessionError};
use crate::protocol::ServerEvent;
use actix::prelude::*;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::warn;
use uuid::Uuid;

impl Session {
    /// Sequences `event`, keeps it for replay and sends it to the attached connection. A
    /// detached session whose outbox overflows ends (`resume_buffer_overflow`).
    pub(super) fn deliver(&mut self, ctx: &mut Context<Self>, event: &ServerEvent) {
        if self.ended.is_some() {
            return;
        }
        let (seq, text) = self.outbox.sequence(event);
        // Kept before it is sent: sending may detach a slow reader and sequence an error
        // after it, which must follow it in the outbox too.
        let attached = self.attached.is_some();
        if seq > 0 && self.outbox.keep(seq, &text, attached).is_err() {
            self.span.in_scope(|| {
                warn!(
                    bytes = self.outbox.bytes(),
                    "events since the detach overflowed resume_buffer_bytes; ending the session"
                )
            });
            return self.end(ctx, EndReason::ResumeBufferOverflow);
        }
        self.log_event(seq, event, &text);
        self.send_text(text);
        self.check_reader(ctx);
    }

    /// Hands a sequenced message to the attached connection, counting it as unread until
    /// the socket takes it.
    pub(super) fn send_text(&mut self, text: Arc<str>) {
        let Some(conn) = &self.attached else {
            return;
        };
        let len = text.len();
        self.counters.events_sent.fetch_add(1, Relaxed);
        self.counters.bytes_out.fetch_add(len as u64, Relaxed);
        self.metrics.frame(
            crate::metrics::Direction::Out,
            crate::metrics::FrameKind::Text,
            len,
        );
        conn.outgoing.queued.fetch_add(frame_len(len), Relaxed);
        conn.to_client.do_send(ToClient::Text(text));
    }

    /// Whether the attached client is reading. It is a slow consumer when its unread queue
    /// stays over `max_outgoing_bytes` for `slow_consumer_timeout_s` or reaches twice it,
    /// or when its socket has taken nothing for `slow_consumer_timeout_s` while bytes wait
    /// (its connection may then be unable to run at all, taking no audio either). With
    /// resume on, its connection is closed and the session detaches (the events wait in
    /// the outbox); with resume off the session ends 1008 `slow_consumer`.
    pub(super) fn check_reader(&mut self, ctx: &mut Context<Self>) {
        let Some(conn) = &self.attached else {
            return;
        };
        let limits = &self.config.limits;
        let max = limits.max_outgoing_bytes;
        let timeout = Duration::from_secs(limits.slow_consumer_timeout_s);
        let queued = conn.outgoing.queued.load(Relaxed);
        let taken = conn.outgoing.taken.load(Relaxed);
        self.counters.outgoing_bytes.store(queued, Relaxed);
        let stalled = match self.writer_stalled {
            Some((at, since)) if at == taken && queued > 0 => since.elapsed() >= timeout,
            _ => {
                self.writer_stalled = Some((taken, Instant::now()));
                false
            }
        };
        if queued <= max {
            self.over_since = None;
            self.replay_allowance = 0;
            if !stalled {
                return;
            }
        }
        // A resume's replay was asked for all at once: it counts against the bound only
        // once the client has read it down to the bound.
        let over = queued.saturating_sub(self.replay_allowance);
        let since = *self.over_since.get_or_insert_with(Instant::now);
        if !stalled && over <= 2 * max && (over <= max || since.elapsed() < timeout) {
            return;
        }
        self.over_since = None;
        self.writer_stalled = None;
        self.span.in_scope(|| {
            warn!(
                queued,
                max,
                stalled,
                over_ms = since.elapsed().as_millis() as u64,
                "client is not reading its events"
            )
        });
        self.metrics.slow_consumers.inc();
        if self.token_hash.is_none() || self.closing.is_some() {
            return self.report(ctx, SessionError::SlowConsumer { max_bytes: max });
        }
        self.let_go(ctx, close_code::POLICY, Some("slow_consumer"));
        self.detach(ctx);
        // Told on resume, in order with the rest.
        self.deliver(
            ctx,
            &error_event(&SessionError::SlowConsumer { max_bytes: max }, false),
        );
    }

    /// Whether a droppable frame (returned audio) may be queued for the client now.
    pub(super) fn room_for_droppable(&self) -> bool {
        self.attached.as_ref().is_some_and(|conn| {
            conn.outgoing.queued.load(Relaxed) <= self.config.limits.max_outgoing_bytes
        })
    }
}

/// An error event under a fresh correlation id.
pub(super) fn error_event(error: &SessionError, fatal: bool) -> ServerEvent {
    ServerEvent::Error {
        code: error.code(),
        message: error.to_string(),
        correlation_id: Uuid::new_v4(),
        fatal,
        chunk_seq: match error {
            SessionError::AudioDropped { seq } => Some(*seq),
            _ => None,
        },
    }
}

/// Encoded size of an unmasked server frame with `payload` bytes (RFC 6455 section 5.2).
pub const fn frame_len(payload: usize) -> usize {
    payload
        + match payload {
            0..=125 => 2,
            126..=65_535 => 4,
            _ => 10,
        }
}

#[cfg(test)]
mod tests {
    use super::frame_len;

    #[test]
    pub(super) fn frame_lengths_follow_the_header_sizes() {
        assert_eq!(frame_len(0), 2);
        assert_eq!(frame_len(125), 127);
        assert_eq!(frame_len(126), 130);
        assert_eq!(frame_len(65_535), 65_539);
        assert_eq!(frame_len(65_536), 65_546);
    }
}
