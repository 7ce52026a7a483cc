//! What a node asks NATS, awaited from anywhere and run on the NATS thread: heartbeats and
//! the cluster view (the nodes bucket), a session's record (the sessions bucket), the tail
//! of its log (the stream), and handover requests to other nodes.

use super::log::SessionLog;
use super::records::*;
use super::{request_error, Bucket, Cluster, ClusterError};
use async_nats::jetstream::{self, consumer, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use std::future::Future;
use std::time::Duration;
use uuid::Uuid;

impl Cluster {
    /// Records `session` as this node's now, if its record is still as `read`, and waits
    /// until the bucket has it. A node taking a session over claims it before it serves
    /// the client: the next node the client resumes through then asks this one, however
    /// far behind this node's queued records are; and of two nodes taking the same session
    /// over at once, only the first to claim it serves it ([`Claim::Lost`] for the other).
    pub async fn claim_session(
        &self,
        session: Uuid,
        read: &StoredSession,
    ) -> Result<Claim, ClusterError> {
        let js = self.inner.js.clone();
        let shared = self.inner.shared.clone();
        let record = SessionRecord {
            node: self.inner.node.clone(),
            open_segment_ms: None,
            ..read.record.clone()
        };
        let json = serde_json::to_vec(&record).unwrap_or_default();
        let revision = read.revision;
        self.on_nats(async move {
            let written = shared
                .store(&js, Bucket::Sessions)
                .await?
                .update(session.to_string(), Bytes::from(json), revision)
                .await;
            match written {
                Ok(_) => Ok(Claim::Claimed),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(Claim::Lost),
                Err(e) => Err(request_error("session record")(e.to_string())),
            }
        })
        .await
    }

    /// Runs `work` on the NATS thread.
    async fn on_nats<T, F>(&self, work: F) -> Result<T, ClusterError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ClusterError>> + Send + 'static,
    {
        self.inner
            .runtime
            .spawn(work)
            .await
            .map_err(|_| ClusterError::Stopped)?
    }

    /// Writes this node's heartbeat.
    pub async fn heartbeat(&self, record: NodeRecord) -> Result<(), ClusterError> {
        let js = self.inner.js.clone();
        let shared = self.inner.shared.clone();
        self.on_nats(async move {
            let store = shared.store(&js, Bucket::Nodes).await?;
            let json = serde_json::to_vec(&record).unwrap_or_default();
            store
                .put(record.node.as_str(), Bytes::from(json))
                .await
                .map_err(|e| request_error("heartbeat")(e.to_string()))?;
            Ok(())
        })
        .await
    }

    /// Stops answering handover requests (a request sent after this meets no responder),
    /// answers those already taken, and flushes the answers: call it once the sessions have
    /// been closed or handed over, before the process exits.
    pub async fn close_handovers(&self) -> Result<(), ClusterError> {
        let cluster = self.clone();
        self.on_nats(async move {
            cluster.inner.handover_service.close().await;
            Ok(())
        })
        .await
    }

    /// Removes this node's heartbeat (it is stopping).
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let js = self.inner.js.clone();
        let shared = self.inner.shared.clone();
        let node = self.inner.node.clone();
        self.on_nats(async move {
            shared
                .store(&js, Bucket::Nodes)
                .await?
                .delete(node.as_str())
                .await
                .map_err(|e| request_error("leave")(e.to_string()))
        })
        .await
    }

    /// The live nodes (those whose heartbeat has not expired), by name.
    ///
    /// The keys come from the bucket stream's subject list rather than from a key
    /// consumer: a consumer waits for a last entry that never comes when a heartbeat
    /// expires while it is being read, and a killed node's heartbeat does exactly that.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, ClusterError> {
        let js = self.inner.js.clone();
        let shared = self.inner.shared.clone();
        self.on_nats(async move {
            let store = shared.store(&js, Bucket::Nodes).await?;
            let prefix = format!("$KV.{}.", shared.settings.nodes_bucket);
            let mut subjects = store
                .stream
                .clone()
                .info_with_subjects(format!("{prefix}>"))
                .await
                .map_err(|e| request_error("nodes")(e.to_string()))?;
            let mut keys = Vec::new();
            while let Some(subject) = subjects.next().await {
                let (subject, _) = subject.map_err(|e| request_error("nodes")(e.to_string()))?;
                if let Some(key) = subject.strip_prefix(&prefix) {
                    keys.push(key.to_owned());
                }
            }
            let mut nodes = Vec::new();
            for key in keys {
                // Gone since the list was read, or deleted (a node that left): skipped.
                if let Ok(Some(value)) = store.get(key).await {
                    if let Ok(node) = serde_json::from_slice::<NodeRecord>(&value) {
                        nodes.push(node);
                    }
                }
            }
            nodes.sort_by(|a, b| a.node.cmp(&b.node));
            Ok(nodes)
        })
        .await
    }

    /// Whether `node` has a live heartbeat (its key is there until it expires or the node
    /// leaves).
    pub async fn is_live(&self, node: &str) -> Result<bool, ClusterError> {
        let js = self.inner.js.clone();
        let shared = self.inner.shared.clone();
        let node = node.to_owned();
        self.on_nats(async move {
            let store = shared.store(&js, Bucket::Nodes).await?;
            let beat = store
                .get(node)
                .await
                .map_err(|e| request_error("nodes")(e.to_string()))?;
            Ok(beat.is_some())
        })
        .await
    }

    /// A session's state and its revision, if some node recorded it and it has not ended.
    pub async fn session_record(
        &self,
        session: Uuid,
    ) -> Result<Option<StoredSession>, ClusterError> {
        let js = self.inner.js.clone();
        let shared = self.inner.shared.clone();
        self.on_nats(async move {
            let store = shared.store(&js, Bucket::Sessions).await?;
            let entry = store
                .entry(session.to_string())
                .await
                .map_err(|e| request_error("session record")(e.to_string()))?;
            Ok(entry
                .filter(|e| e.operation == kv::Operation::Put)
                .and_then(|e| {
                    let record = serde_json::from_slice(&e.value).ok()?;
                    Some(StoredSession {
                        record,
                        revision: e.revision,
                    })
                }))
        })
        .await
    }

    /// Reads what a takeover of `session` needs from the stream, keeping at most
    /// `max_recent_bytes` of its latest events.
    ///
    /// Reads the tail only: the newest lifecycle record, and the events of the last
    /// [`FIRST_TAIL`] before the newest event, or if the client lacks older ones (or those
    /// do not say where the timeline is) of the last `nats.takeover_tail_s`, so a takeover
    /// costs the same for a session of a minute and one of hours, and the stream scans
    /// little of the other sessions' messages. `open_segment_ms` (the session record's)
    /// says whether a segment opened before the tail is still open. When the client's
    /// `last_seq` is older than the widest tail, or no tail places the timeline, the whole
    /// log is read instead, so that nothing it missed is lost and the audio resumes where
    /// it stands.
    pub async fn session_log(
        &self,
        session: Uuid,
        max_recent_bytes: usize,
        client_seq: u64,
        open_segment_ms: Option<u64>,
    ) -> Result<SessionLog, ClusterError> {
        let js = self.inner.js.clone();
        let shared = self.inner.shared.clone();
        self.on_nats(async move {
            let settings = &shared.settings;
            let stream = shared.events_stream(&js).await?;
            let prefix = &settings.subject_prefix;
            let events = events_subject(prefix, session);
            let mut log = SessionLog::new(max_recent_bytes);
            if let Some(last) = last_message(&stream, &lifecycle_subject(prefix, session)).await? {
                log.newest_ms = unix_ms_of(last.time);
                if let Ok(record) = serde_json::from_slice::<Lifecycle>(&last.payload) {
                    log.lifecycle(&record);
                }
            }
            let Some(newest) = last_message(&stream, &events).await? else {
                return Ok(log);
            };
            let timeout = Duration::from_millis(settings.publish_timeout_ms);
            let widest = Duration::from_secs(settings.takeover_tail_s);
            let tails = match widest > FIRST_TAIL {
                true => vec![FIRST_TAIL, widest],
                false => vec![widest],
            };
            for tail in tails {
                let mut tail_log = log.clone();
                let start_time = newest.time - tail;
                let from = consumer::DeliverPolicy::ByStartTime { start_time };
                read_events(&stream, &events, from, timeout, &mut tail_log).await?;
                // A tail must also say where the timeline is: one of pongs alone (a
                // client that stopped sending audio and pinged) does not.
                if tail_log.reaches_back_to(client_seq) && tail_log.positioned {
                    if !tail_log.whole() && !tail_log.vad_seen {
                        tail_log.open_segment_ms = open_segment_ms;
                    }
                    return Ok(tail_log);
                }
            }
            read_events(
                &stream,
                &events,
                consumer::DeliverPolicy::All,
                timeout,
                &mut log,
            )
            .await?;
            Ok(log)
        })
        .await
    }

    /// Asks `node` to hand `session` over to this node.
    pub async fn request_handover(
        &self,
        node: &str,
        session: Uuid,
    ) -> Result<HandoverReply, ClusterError> {
        let client = self.inner.client.clone();
        let subject = handover_subject(&self.inner.shared.settings.subject_prefix, node);
        let request = HandoverRequest {
            session_id: session,
            to_node: self.inner.node.clone(),
        };
        // The holder's own wait is handover_timeout_ms; its answer may take a moment more.
        let settings = &self.inner.shared.settings;
        let timeout =
            Duration::from_millis(settings.handover_timeout_ms + settings.publish_timeout_ms);
        self.on_nats(async move {
            let payload = Bytes::from(serde_json::to_vec(&request).unwrap_or_default());
            // The request's own timeout: the client's default (10 s) would cut short a
            // holder given a longer handover_timeout_ms.
            let ask = async_nats::Request::new()
                .payload(payload)
                .timeout(Some(timeout));
            match client.send_request(subject, ask).await {
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    Ok(HandoverReply::NotHere)
                }
                Err(e) => Err(request_error("handover")(e.to_string())),
                Ok(reply) => serde_json::from_slice(&reply.payload)
                    .map_err(|e| request_error("handover reply")(e.to_string())),
            }
        })
        .await
    }
}

/// The first tail of a session's events a takeover reads, before the newest one. A client
/// that lost its node has almost always had every event but the last moment's, and the
/// stream's cost of a read grows with the window (it interleaves every session's messages):
/// in a mass failover of 200 sessions, a 1 s window took over 4 times faster than 10 s.
const FIRST_TAIL: Duration = Duration::from_secs(1);

/// The newest message on `subject`, `None` if it has none.
async fn last_message(
    stream: &jetstream::stream::Stream,
    subject: &str,
) -> Result<Option<jetstream::message::StreamMessage>, ClusterError> {
    use jetstream::stream::LastRawMessageErrorKind;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(Some(message)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(request_error("session log")(e.to_string())),
    }
}

/// Folds the events on `subject` from `from` on into `log`.
async fn read_events(
    stream: &jetstream::stream::Stream,
    subject: &str,
    from: consumer::DeliverPolicy,
    timeout: Duration,
    log: &mut SessionLog,
) -> Result<(), ClusterError> {
    let err = request_error("session log");
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: from,
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.to_string()))?;
    let pending = consumer
        .info()
        .await
        .map_err(|e| err(e.to_string()))?
        .num_pending;
    if pending == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await.map_err(|e| err(e.to_string()))?;
    loop {
        let next = tokio::time::timeout(timeout, messages.next())
            .await
            .map_err(|_| err("timed out reading".into()))?;
        let Some(message) = next else { break };
        let message = message.map_err(|e| err(e.to_string()))?;
        let info = message.info().map_err(|e| err(e.to_string()))?;
        log.newest_ms = log.newest_ms.max(unix_ms_of(info.published));
        if let Ok(text) = std::str::from_utf8(&message.payload) {
            log.event(text);
        }
        if info.pending == 0 {
            break;
        }
    }
    Ok(())
}

/// A stream timestamp as Unix ms.
fn unix_ms_of(time: async_nats::datetime::DateTime) -> u64 {
    u64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}
