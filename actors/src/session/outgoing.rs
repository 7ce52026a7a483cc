//! Accounting of what a session has queued for its client and the socket has not yet taken.
//!
//! actix-web-actors queues outgoing frames without a bound: a client that never reads its
//! socket would make the server hold every event forever. The session adds each frame's
//! encoded size to [`SessionCounters::outgoing_bytes`] when it queues it; [`OutgoingMeter`]
//! wraps the connection's response body and subtracts what the HTTP writer pulls, which it
//! does only while the socket accepts data. The difference is the queue the session bounds
//! with `session.max_outgoing_bytes`.

use crate::counters::SessionCounters;
use bytes::Bytes;
use futures_util::Stream;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Encoded size of an unmasked server frame with `payload` bytes (RFC 6455 section 5.2).
pub const fn frame_len(payload: usize) -> usize {
    payload
        + match payload {
            0..=125 => 2,
            126..=65_535 => 4,
            _ => 10,
        }
}

/// The session's response body, counting bytes as the HTTP writer takes them.
pub struct OutgoingMeter<S> {
    inner: Pin<Box<S>>,
    counters: Arc<SessionCounters>,
}

impl<S> OutgoingMeter<S> {
    /// Wraps `body`, the stream `WebsocketContext` produces for the session `counters`
    /// belong to.
    pub fn new(body: S, counters: Arc<SessionCounters>) -> Self {
        Self {
            inner: Box::pin(body),
            counters,
        }
    }
}

impl<S, E> Stream for OutgoingMeter<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &next {
            let taken = chunk.len();
            // Control frames (pings, pongs, close) are not counted on the way in, so the
            // subtraction saturates rather than wrapping.
            let _ = self
                .counters
                .outgoing_bytes
                .fetch_update(Relaxed, Relaxed, |q| Some(q.saturating_sub(taken)));
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths_follow_the_header_sizes() {
        assert_eq!(frame_len(0), 2);
        assert_eq!(frame_len(125), 127);
        assert_eq!(frame_len(126), 130);
        assert_eq!(frame_len(65_535), 65_539);
        assert_eq!(frame_len(65_536), 65_546);
    }
}
