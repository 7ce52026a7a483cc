//! The one task that writes to JetStream: events, lifecycle records and session state, in
//! the order sessions queued them.
//!
//! Sessions never wait for it: they queue with `try_send` into a channel bounded by
//! `nats.max_pending`, and a full channel drops the record and counts it unpublished. The
//! task publishes in batches (JetStream acknowledges a batch in one round trip) and, when
//! NATS is slow or down, retries the same record until it is stored, so the queue holds
//! back (and then drops) new records rather than losing queued ones. Each event carries a
//! `Nats-Msg-Id` of `<session>.<seq>`: a retry of a record JetStream stored without the
//! acknowledgement arriving is discarded by the stream's duplicate window, not stored twice.

use super::Shared;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Records published per round trip at most.
const BATCH: usize = 256;
/// The header and value that make a publish to `$KV.<bucket>.<key>` a delete marker, as a
/// bucket's own delete writes it.
const KV_OPERATION: &str = "KV-Operation";
const KV_DELETE: &str = "DEL";
/// Longest wait between two attempts while NATS is down.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One thing to write, in queue order.
#[derive(Debug)]
pub(super) enum Record {
    /// A stream message; `msg_id` de-duplicates retries. With `delete`, a key-value delete
    /// marker (`KV-Operation: DEL`, what a bucket's delete publishes) for the key `subject`
    /// names.
    Publish {
        subject: String,
        msg_id: String,
        payload: Bytes,
        delete: bool,
    },
    /// Answered once everything queued before it is written (or given up on at shutdown).
    Marker(oneshot::Sender<()>),
}

/// Runs until every sender is gone.
pub(super) async fn run(
    js: jetstream::Context,
    mut queue: mpsc::Receiver<Record>,
    shared: Arc<Shared>,
) {
    // The stream and buckets exist (created if missing once NATS answered).
    let mut ready = false;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if queue.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        shared.metrics.pending.set(queue.len() as i64);
        let mut attempt = 0u32;
        while !batch.is_empty() {
            if !ready {
                ready = ensure(&js, &shared).await;
            }
            let written = ready && write_batch(&js, &mut batch, &shared).await;
            if written {
                if attempt > 0 {
                    info!("NATS publishing recovered");
                }
                shared.set_publishing(true);
                break;
            }
            if attempt == 0 {
                warn!("NATS publishing failed; retrying (new records queue up to nats.max_pending, then are counted as unpublished)");
            }
            shared.set_publishing(false);
            // The stream or bucket may be gone with a NATS server that lost its storage.
            ready = false;
            attempt += 1;
            let backoff = Duration::from_millis(50 << attempt.min(5)).min(MAX_BACKOFF);
            tokio::time::sleep(backoff).await;
        }
        shared.metrics.pending.set(queue.len() as i64);
    }
}

/// Creates the stream and buckets if they are missing; false while NATS does not answer.
async fn ensure(js: &jetstream::Context, shared: &Shared) -> bool {
    let s = &shared.settings;
    let created = js
        .get_or_create_stream(stream::Config {
            name: s.stream.clone(),
            subjects: vec![super::records::stream_subjects(&s.subject_prefix)],
            max_age: Duration::from_secs(s.max_age_s),
            max_bytes: s.max_bytes,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await;
    if let Err(e) = created {
        warn!(error = %e, stream = %s.stream, "JetStream stream not available");
        return false;
    }
    super::bucket(js, &s.sessions_bucket, Duration::from_secs(s.max_age_s))
        .await
        .is_some()
        && super::bucket(js, &s.nodes_bucket, shared.node_ttl())
            .await
            .is_some()
}

/// Writes `batch` (sends every record, then waits for the acknowledgements); what was
/// written leaves `batch`. False if something failed: the rest stays for the retry.
async fn write_batch(js: &jetstream::Context, batch: &mut Vec<Record>, shared: &Shared) -> bool {
    let timeout = Duration::from_millis(shared.settings.publish_timeout_ms);
    let mut acks = Vec::with_capacity(batch.len());
    let mut ok = true;
    for record in batch.iter() {
        let Record::Publish {
            subject,
            msg_id,
            payload,
            delete,
        } = record
        else {
            break;
        };
        let mut publish = PublishMessage::build()
            .payload(payload.clone())
            .message_id(msg_id.as_str());
        if *delete {
            publish = publish.header(KV_OPERATION, KV_DELETE);
        }
        match tokio::time::timeout(timeout, js.send_publish(subject.clone(), publish)).await {
            Ok(Ok(ack)) => acks.push(ack),
            _ => {
                ok = false;
                break;
            }
        }
    }
    // Acknowledged in order: the records before the first failure are written.
    let mut written = 0;
    for ack in acks {
        match tokio::time::timeout(timeout, ack).await {
            Ok(Ok(_)) if ok => written += 1,
            _ => ok = false,
        }
    }
    shared.metrics.published.inc_by(written as u64);
    batch.drain(..written);
    if !ok {
        return false;
    }
    // The batch now starts with markers (or is empty): answer them, then go round again.
    while let Some(record) = batch.first() {
        if let Record::Publish { .. } = record {
            return Box::pin(write_batch(js, batch, shared)).await;
        }
        if let Record::Marker(tx) = batch.remove(0) {
            let _ = tx.send(());
        }
    }
    true
}
