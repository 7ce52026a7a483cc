//! Accounting of what a connection's client has not yet read.
//!
//! actix-web-actors queues outgoing frames without a bound: a client that never reads its
//! socket would make the server hold every event forever. The session adds each frame's
//! encoded size to the connection's `outgoing` counter when it hands the frame over;
//! [`OutgoingMeter`] wraps the connection's response body and subtracts what the HTTP writer
//! pulls, which it does only while the socket accepts data. The difference is the queue the
//! session bounds with `session.max_outgoing_bytes`.

use crate::session::OutgoingQueue;
use bytes::Bytes;
use futures_util::Stream;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A connection's response body, counting bytes as the HTTP writer takes them.
pub struct OutgoingMeter<S> {
    inner: Pin<Box<S>>,
    outgoing: Arc<OutgoingQueue>,
}

impl<S> OutgoingMeter<S> {
    /// Wraps `body`, the stream `WebsocketContext` produces for the connection whose unread
    /// bytes `outgoing` counts.
    pub fn new(body: S, outgoing: Arc<OutgoingQueue>) -> Self {
        Self {
            inner: Box::pin(body),
            outgoing,
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
                .outgoing
                .queued
                .fetch_update(Relaxed, Relaxed, |q| Some(q.saturating_sub(taken)));
            self.outgoing.taken.fetch_add(taken as u64, Relaxed);
        }
        next
    }
}
