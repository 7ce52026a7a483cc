//! How a session ends: an error reported to the client (a fatal one closes it), an orderly
//! close that flushes the pipeline first, and the end itself, after which nothing is sent
//! and `stopped` unregisters the session.

use super::delivery::error_event;
use super::{EndReason, FlushKind, Session, ToClient};
use crate::error::{close_code, SessionError};
use crate::pipeline::{Flush, Offer};
use crate::protocol::{CloseReason, ServerEvent};
use crate::settings::BackpressurePolicy;
use actix::prelude::*;
use std::time::Duration;
use tracing::{info, warn};

impl Session {
    /// Sends an error event, logging it under a fresh correlation id. Fatal errors end the
    /// session with the error's close code, without waiting for the pipeline.
    pub(super) fn report(&mut self, ctx: &mut Context<Self>, error: SessionError) {
        let close = error.close_code();
        let event = error_event(&error, close.is_some());
        if let ServerEvent::Error { correlation_id, .. } = &event {
            self.span.in_scope(|| {
                if close.is_some() {
                    warn!(%correlation_id, code = error.code(), "{error}");
                } else {
                    info!(%correlation_id, code = error.code(), "{error}");
                }
            });
        }
        if let Ok(mut last) = self.counters.last_error.lock() {
            *last = Some(error.code());
        }
        self.deliver(ctx, &event);
        if let Some(code) = close {
            self.finish(ctx, error.close_reason(), code);
        }
    }

    /// Sends `session.closed`, closes the connection with `code` and ends the session.
    pub(super) fn finish(&mut self, ctx: &mut Context<Self>, reason: CloseReason, code: u16) {
        if self.ended.is_some() {
            return;
        }
        self.closing = Some(reason);
        let stats = self.counters.stats();
        self.deliver(ctx, &ServerEvent::SessionClosed { reason, stats });
        self.metrics.frame(
            crate::metrics::Direction::Out,
            crate::metrics::FrameKind::Close,
            2,
        );
        self.let_go(ctx, code, None);
        self.span
            .in_scope(|| info!(?reason, code, ?stats, "session closed"));
        self.end(ctx, EndReason::Closed(reason));
    }

    /// Ends the session for good: nothing more is sent, and `stopped` unregisters it.
    pub(super) fn end(&mut self, ctx: &mut Context<Self>, reason: EndReason) {
        if self.ended.is_some() {
            return;
        }
        self.ended = Some(reason);
        self.intake.close();
        self.log_end(reason);
        if let Some(conn) = self.attached.take() {
            conn.to_client.do_send(ToClient::Close {
                code: close_code::INTERNAL,
                description: None,
            });
        }
        if !matches!(reason, EndReason::Closed(_)) {
            self.span
                .in_scope(|| info!(reason = reason.as_str(), "session ended"));
        }
        ctx.stop();
    }

    /// Begins an orderly end: flush, then `session.closed` once the pipeline has drained.
    /// A pipeline that cannot drain within the heartbeat timeout is closed anyway.
    pub(super) fn begin_close(&mut self, ctx: &mut Context<Self>, reason: CloseReason) {
        if self.closing.is_some() || self.ended.is_some() {
            return;
        }
        self.closing = Some(reason);
        self.intake.close();
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

    /// Sends the pipeline a flush; its answer is handled as `kind` says (`flushed` for the
    /// client, `session.closed`, or the handover).
    pub(super) fn flush(&mut self, ctx: &mut Context<Self>, kind: FlushKind) {
        self.flushes.push_back(kind);
        // Control is never dropped: the session waits for room, handling nothing meanwhile.
        match self
            .pipeline
            .resampler
            .offer(Flush, BackpressurePolicy::Block)
        {
            Offer::Queued => {}
            Offer::Wait(room) => ctx.wait(room.into_actor(self).map(|res, act, ctx| {
                if res.is_err() {
                    act.report(ctx, SessionError::Internal);
                }
            })),
            Offer::Dropped(_) | Offer::Closed => self.report(ctx, SessionError::Internal),
        }
    }
}
