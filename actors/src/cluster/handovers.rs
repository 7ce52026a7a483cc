//! The handover service: before a node takes over a session whose node is alive, it asks
//! that node (request-reply on [`handover_subject`]) to hand the session over. Requests pass
//! to the server as [`HandoverAsk`]s; each is answered `HandedOver` once the session's
//! `handed_over` record is in the stream, or `NotHere`.
//!
//! Stopping ([`HandoverService::close`]) unsubscribes first, so that a request sent after it
//! meets no responder and its asker reads the log at once; then it answers the requests
//! already taken and flushes the answers. A node that exited with a request unanswered would
//! leave its asker waiting out a request timeout, and a resuming client with it.

use super::records::{handover_subject, HandoverReply, HandoverRequest};
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::warn;
use uuid::Uuid;

/// Handover requests waiting for the server to take them, and requests being answered at
/// once: past it a request is answered `NotHere` on the spot.
const HANDOVER_QUEUE: usize = 64;

/// A request from another node to hand a session over, for the server to carry out.
#[derive(Debug)]
pub struct HandoverAsk {
    /// The session.
    pub session_id: Uuid,
    /// The node asking.
    pub to_node: String,
    /// Where to answer; dropping it answers [`HandoverReply::Busy`] (the asker tries again
    /// later rather than take over a session that may still be here).
    pub reply: oneshot::Sender<HandoverReply>,
}

/// The running service, owned by the cluster handle.
pub(super) struct HandoverService {
    closing: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl HandoverService {
    /// Subscribes `node`'s handover subject on the current (NATS) runtime. The server reads
    /// the requests from the receiver; each waits at most `timeout` for its answer.
    pub(super) fn start(
        client: async_nats::Client,
        prefix: &str,
        node: &str,
        timeout: Duration,
    ) -> (HandoverService, mpsc::Receiver<HandoverAsk>) {
        let (asks, requests) = mpsc::channel(HANDOVER_QUEUE);
        let (closing, closed) = watch::channel(false);
        let subject = handover_subject(prefix, node);
        let task = tokio::spawn(serve(client, subject, asks, timeout, closed));
        let service = HandoverService {
            closing,
            task: Mutex::new(Some(task)),
        };
        (service, requests)
    }

    /// Stops taking requests, answers those taken, and flushes the answers; call it on the
    /// NATS runtime. A second call returns at once.
    pub(super) async fn close(&self) {
        let _ = self.closing.send(true);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn serve(
    client: async_nats::Client,
    subject: String,
    asks: mpsc::Sender<HandoverAsk>,
    timeout: Duration,
    mut closing: watch::Receiver<bool>,
) {
    let mut subscription = loop {
        match client.subscribe(subject.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                warn!(error = %e, "cannot subscribe to handover requests; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = closing.changed() => return,
                }
            }
        }
    };
    // Each answer in a task of its own: a handover waits for its session to flush.
    let mut answering = JoinSet::new();
    loop {
        tokio::select! {
            message = subscription.next() => {
                let Some(message) = message else { break };
                let Some(reply_to) = message.reply.clone() else {
                    continue;
                };
                if answering.len() >= HANDOVER_QUEUE {
                    let _ = client.publish(reply_to, encode(HandoverReply::Busy)).await;
                    continue;
                }
                let (client, asks) = (client.clone(), asks.clone());
                answering.spawn(async move {
                    let answer = answer(&message.payload, &asks, timeout).await;
                    let _ = client.publish(reply_to, encode(answer)).await;
                });
            }
            Some(_) = answering.join_next(), if !answering.is_empty() => {}
            _ = closing.changed() => break,
        }
    }
    let _ = subscription.unsubscribe().await;
    while answering.join_next().await.is_some() {}
    let _ = client.flush().await;
}

/// The server's answer to one request: `NotHere` if it does not parse; `Busy` if the
/// server's queue is full, or the server does not answer within `timeout`.
async fn answer(
    payload: &[u8],
    asks: &mpsc::Sender<HandoverAsk>,
    timeout: Duration,
) -> HandoverReply {
    let Ok(request) = serde_json::from_slice::<HandoverRequest>(payload) else {
        return HandoverReply::NotHere;
    };
    let (tx, rx) = oneshot::channel();
    let ask = HandoverAsk {
        session_id: request.session_id,
        to_node: request.to_node,
        reply: tx,
    };
    if asks.try_send(ask).is_err() {
        return HandoverReply::Busy;
    }
    tokio::time::timeout(timeout, rx)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(HandoverReply::Busy)
}

fn encode(reply: HandoverReply) -> Bytes {
    Bytes::from(serde_json::to_vec(&reply).unwrap_or_default())
}
