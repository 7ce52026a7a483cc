//! Scale-out on NATS JetStream (`[nats]`): every session's events in a stream for
//! downstream consumers, node heartbeats for the cluster view, and what a node needs to take
//! over a session whose node is gone or hands it over.
//!
//! # Layout
//! - [`records`]: the wire contract: subjects, lifecycle, session and node records.
//! - `publisher`: the one task writing to JetStream, behind a bounded queue.
//! - [`log`]: a session's log read back for a takeover (a pure fold).
//!
//! NATS runs on a thread of its own (a small tokio runtime): the audio workers never poll a
//! NATS future. Sessions hand records to a [`Cluster`] handle with a non-blocking, bounded
//! queue; queries (the cluster view, a takeover's reads) run on that thread and are awaited
//! from anywhere. A NATS server that is down or slow costs sessions nothing: records wait
//! in the queue (bounded by `nats.max_pending`), then are counted as unpublished.

mod handovers;
pub mod log;
mod publisher;
pub mod records;

pub use self::handovers::HandoverAsk;
use self::handovers::HandoverService;
use self::log::SessionLog;
use self::publisher::Record;
pub use self::records::unix_ms;
use self::records::*;
use crate::metrics::NatsMetrics;
use crate::settings::NatsSettings;
use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;
use uuid::Uuid;

/// Heartbeats a node may miss before the nodes bucket forgets it.
const MISSED_HEARTBEATS: u32 = 3;

/// Why NATS could not be used. Never shown to clients (a takeover that fails is
/// `internal_error`); the server logs it.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// `nats.credentials_file` could not be read.
    #[error("nats.credentials_file \"{path}\": {source}")]
    Credentials {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `nats.url` does not parse or the client could not start.
    #[error("nats.url \"{url}\": {message}")]
    Connect {
        /// The URL(s).
        url: String,
        /// The client's error.
        message: String,
    },
    /// A request to NATS failed or timed out.
    #[error("NATS {what}: {message}")]
    Request {
        /// What was asked.
        what: &'static str,
        /// The client's error.
        message: String,
    },
    /// The NATS thread is gone (the server is stopping).
    #[error("the NATS thread has stopped")]
    Stopped,
}

fn request_error(what: &'static str) -> impl Fn(String) -> ClusterError {
    move |message| ClusterError::Request { what, message }
}

/// State the handle and the NATS thread share.
pub(crate) struct Shared {
    settings: NatsSettings,
    metrics: NatsMetrics,
    /// The client is connected to a NATS server (its connection events say).
    link_up: AtomicBool,
    /// Publishing is not failing (false from a failed write until the next success).
    publishing: AtomicBool,
}

impl Shared {
    /// Connected and publishing; kept in the `nats_connected` gauge on every change.
    fn connected(&self) -> bool {
        self.link_up.load(Relaxed) && self.publishing.load(Relaxed)
    }

    fn set_link(&self, up: bool) {
        self.link_up.store(up, Relaxed);
        self.metrics.connected.set(i64::from(self.connected()));
    }

    fn set_publishing(&self, ok: bool) {
        self.publishing.store(ok, Relaxed);
        self.metrics.connected.set(i64::from(self.connected()));
    }

    fn node_ttl(&self) -> Duration {
        Duration::from_secs(self.settings.heartbeat_interval_s * u64::from(MISSED_HEARTBEATS))
    }
}

/// What `/ready` and `/v1/stats` say about NATS.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ClusterStatus {
    /// Connected to NATS and publishing without failures.
    pub connected: bool,
    /// Records waiting to be published.
    pub pending: usize,
    /// Records dropped unpublished since the start (the queue was full).
    pub unpublished: u64,
    /// Records published since the start.
    pub published: u64,
}

/// A node's handle to NATS; cheap to clone. See the module docs.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    shared: Arc<Shared>,
    queue: mpsc::Sender<Record>,
    runtime: tokio::runtime::Handle,
    client: async_nats::Client,
    js: jetstream::Context,
    handovers: Mutex<Option<mpsc::Receiver<HandoverAsk>>>,
    handover_service: HandoverService,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts the NATS thread and the client as `node`. Returns once the client exists, not
    /// once it is connected: a NATS server that is down at startup is retried in the
    /// background (records queue meanwhile). Fails on a bad URL or credentials file.
    pub fn start(
        settings: &NatsSettings,
        node: &str,
        metrics: NatsMetrics,
    ) -> Result<Cluster, ClusterError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let settings = settings.clone();
        let node = node.to_owned();
        std::thread::Builder::new()
            .name("voxrt-nats".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ClusterError::Connect {
                            url: settings.url.clone(),
                            message: e.to_string(),
                        }));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let started = Self::connect(settings, node, metrics).await;
                    let running = started.is_ok();
                    let _ = ready_tx.send(started);
                    if running {
                        // The client's and publisher's tasks run on this thread until the
                        // process exits.
                        futures_util::future::pending::<()>().await;
                    }
                });
            })
            .map_err(|e| ClusterError::Connect {
                url: String::new(),
                message: e.to_string(),
            })?;
        ready_rx.recv().map_err(|_| ClusterError::Stopped)?
    }

    /// Runs on the NATS thread: the client, the publisher and the handover service.
    async fn connect(
        settings: NatsSettings,
        node: String,
        metrics: NatsMetrics,
    ) -> Result<Cluster, ClusterError> {
        let shared = Arc::new(Shared {
            settings,
            metrics,
            link_up: AtomicBool::new(false),
            publishing: AtomicBool::new(true),
        });
        let settings = &shared.settings;
        let events = shared.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("voxrt {node}"))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => events.set_link(true),
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            events.set_link(false)
                        }
                        _ => {}
                    }
                }
            });
        if !settings.credentials_file.is_empty() {
            options = options
                .credentials_file(&settings.credentials_file)
                .await
                .map_err(|source| ClusterError::Credentials {
                    path: settings.credentials_file.clone(),
                    source,
                })?;
        }
        let urls: Vec<async_nats::ServerAddr> = settings
            .url
            .split(',')
            .map(|u| u.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e: std::io::Error| ClusterError::Connect {
                url: settings.url.clone(),
                message: e.to_string(),
            })?;
        let client = options
            .connect(urls)
            .await
            .map_err(|e| ClusterError::Connect {
                url: settings.url.clone(),
                message: e.to_string(),
            })?;
        let timeout = Duration::from_millis(settings.publish_timeout_ms);
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .ack_timeout(timeout)
            .build(client.clone());
        let (queue, rx) = mpsc::channel(settings.max_pending.max(1));
        tokio::spawn(publisher::run(js.clone(), rx, shared.clone()));
        let (handover_service, handovers) = HandoverService::start(
            client.clone(),
            &shared.settings.subject_prefix,
            &node,
            Duration::from_millis(shared.settings.handover_timeout_ms),
        );
        let cluster = Cluster {
            inner: Arc::new(Inner {
                node,
                shared,
                queue,
                runtime: tokio::runtime::Handle::current(),
                client,
                js,
                handovers: Mutex::new(Some(handovers)),
                handover_service,
            }),
        };
        Ok(cluster)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// `[nats]` as the cluster was started with.
    pub fn settings(&self) -> &NatsSettings {
        &self.inner.shared.settings
    }

    /// Queues `record` without waiting; a full queue drops it, counted unpublished.
    fn queue(&self, record: Record) {
        if self.inner.queue.try_send(record).is_err() {
            self.inner.shared.metrics.unpublished.inc();
        }
    }

    /// Logs one of `session`'s messages: `text` is its JSON with `seq` (the token-free form
    /// for `session.started`).
    pub fn event(&self, session: Uuid, seq: u64, text: &str) {
        self.queue(Record::Publish {
            subject: events_subject(&self.inner.shared.settings.subject_prefix, session),
            msg_id: format!("{session}.{seq}"),
            payload: Bytes::copy_from_slice(text.as_bytes()),
        });
    }

    /// Logs a lifecycle record.
    pub fn lifecycle(&self, record: &Lifecycle) {
        let session = match record {
            Lifecycle::Started { session_id, .. }
            | Lifecycle::Closed { session_id, .. }
            | Lifecycle::HandedOver { session_id, .. }
            | Lifecycle::TakenOver { session_id, .. } => *session_id,
        };
        let Ok(json) = serde_json::to_vec(record) else {
            return;
        };
        self.queue(Record::Publish {
            subject: lifecycle_subject(&self.inner.shared.settings.subject_prefix, session),
            msg_id: format!("{session}.lifecycle.{}", Uuid::new_v4()),
            payload: Bytes::from(json),
        });
    }

    /// Records (or replaces) a resumable session's state.
    ///
    /// Written as the plain JetStream publish a key-value put is (to `$KV.<bucket>.<key>`),
    /// so that it goes out pipelined with the events around it: a session rewrites its
    /// record at every VAD event, and a put waited for on its own would hold up every
    /// session's publishing behind it.
    pub fn put_session(&self, session: Uuid, record: &SessionRecord) {
        if let Ok(json) = serde_json::to_vec(record) {
            self.queue(Record::Publish {
                subject: format!(
                    "$KV.{}.{session}",
                    self.inner.shared.settings.sessions_bucket
                ),
                msg_id: format!("{session}.state.{}", Uuid::new_v4()),
                payload: Bytes::from(json),
            });
        }
    }

    /// Records `session` as this node's now, and waits until the bucket has it: a node
    /// taking a session over does so before it serves the client, so that the next node
    /// the client resumes through asks this one, however far behind this node's queued
    /// records are.
    pub async fn claim_session(
        &self,
        session: Uuid,
        record: &SessionRecord,
    ) -> Result<(), ClusterError> {
        let js = self.inner.js.clone();
        let shared = self.inner.shared.clone();
        let record = SessionRecord {
            node: self.inner.node.clone(),
            open_segment_ms: None,
            ..record.clone()
        };
        let json = serde_json::to_vec(&record).unwrap_or_default();
        self.on_nats(async move {
            Self::store(&js, &shared, false)
                .await?
                .put(session.to_string(), Bytes::from(json))
                .await
                .map_err(|e| request_error("session record")(e.to_string()))?;
            Ok(())
        })
        .await
    }

    /// Forgets a session's state (it ended for good).
    pub fn delete_session(&self, session: Uuid) {
        self.queue(Record::DeleteSession {
            key: session.to_string(),
        });
    }

    /// Resolves once everything queued so far is written. Waits for room in the queue
    /// (callers bound the wait).
    pub async fn drained(&self) -> Result<(), ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .queue
            .send(Record::Marker(tx))
            .await
            .map_err(|_| ClusterError::Stopped)?;
        rx.await.map_err(|_| ClusterError::Stopped)
    }

    /// Publishing figures now.
    pub fn status(&self) -> ClusterStatus {
        let m = &self.inner.shared.metrics;
        ClusterStatus {
            connected: self.inner.shared.connected(),
            pending: self.inner.queue.max_capacity() - self.inner.queue.capacity(),
            unpublished: m.unpublished.get(),
            published: m.published.get(),
        }
    }

    /// The handover requests other nodes send this one; `None` after the first call.
    pub fn take_handover_requests(&self) -> Option<mpsc::Receiver<HandoverAsk>> {
        self.inner.handovers.lock().ok()?.take()
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

    /// Opens the nodes bucket (or the sessions bucket) on the NATS thread.
    async fn store(
        js: &jetstream::Context,
        shared: &Shared,
        nodes: bool,
    ) -> Result<kv::Store, ClusterError> {
        let s = &shared.settings;
        let (name, max_age) = match nodes {
            true => (&s.nodes_bucket, shared.node_ttl()),
            false => (&s.sessions_bucket, Duration::from_secs(s.max_age_s)),
        };
        bucket(js, name, max_age)
            .await
            .ok_or(ClusterError::Request {
                what: if nodes {
                    "nodes bucket"
                } else {
                    "sessions bucket"
                },
                message: "not available".into(),
            })
    }

    /// Writes this node's heartbeat.
    pub async fn heartbeat(&self, record: NodeRecord) -> Result<(), ClusterError> {
        let js = self.inner.js.clone();
        let shared = self.inner.shared.clone();
        self.on_nats(async move {
            let store = Self::store(&js, &shared, true).await?;
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
            Self::store(&js, &shared, true)
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
            let store = Self::store(&js, &shared, true).await?;
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

    /// Whether `node` has a live heartbeat.
    pub async fn is_live(&self, node: &str) -> Result<bool, ClusterError> {
        Ok(self.nodes().await?.iter().any(|n| n.node == node))
    }

    /// A session's state, if some node recorded it and it has not ended.
    pub async fn session_record(
        &self,
        session: Uuid,
    ) -> Result<Option<SessionRecord>, ClusterError> {
        let js = self.inner.js.clone();
        let shared = self.inner.shared.clone();
        self.on_nats(async move {
            let store = Self::store(&js, &shared, false).await?;
            let value = store
                .get(session.to_string())
                .await
                .map_err(|e| request_error("session record")(e.to_string()))?;
            Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
        })
        .await
    }

    /// Reads what a takeover of `session` needs from the stream, keeping at most
    /// `max_recent_bytes` of its latest events.
    ///
    /// Reads the tail only: the newest lifecycle record, and the events of the last
    /// `nats.takeover_tail_s` before the newest event, so a takeover costs the same for a
    /// session of a minute and one of hours. `open_segment_ms` (the session record's) says
    /// whether a segment opened before the tail is still open. When the client's `last_seq`
    /// is older than the tail, the whole log is read instead, so that nothing it missed is
    /// lost.
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
            let err = request_error("session log");
            let settings = &shared.settings;
            let stream = js
                .get_stream(&settings.stream)
                .await
                .map_err(|e| err(e.to_string()))?;
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
            let tail = newest.time - Duration::from_secs(settings.takeover_tail_s);
            let mut tail_log = log.clone();
            let from = consumer::DeliverPolicy::ByStartTime { start_time: tail };
            read_events(&stream, &events, from, timeout, &mut tail_log).await?;
            if tail_log.reaches_back_to(client_seq) {
                if !tail_log.whole() && !tail_log.vad_seen {
                    tail_log.open_segment_ms = open_segment_ms;
                }
                return Ok(tail_log);
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
            let asked = tokio::time::timeout(timeout, client.request(subject, payload)).await;
            match asked {
                Err(_) => Err(request_error("handover")("timed out".into())),
                Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    Ok(HandoverReply::NotHere)
                }
                Ok(Err(e)) => Err(request_error("handover")(e.to_string())),
                Ok(Ok(reply)) => serde_json::from_slice(&reply.payload)
                    .map_err(|e| request_error("handover reply")(e.to_string())),
            }
        })
        .await
    }
}

/// The bucket `name`, created with `max_age` if missing; `None` while NATS does not answer.
///
/// Created as the stream a key-value bucket is (`KV_<name>` on `$KV.<name>.>`, one value
/// per key) rather than through the client's bucket call: that one first reads account
/// fields nats-server 2.9 (Debian 12's) does not send, and fails there.
async fn bucket(js: &jetstream::Context, name: &str, max_age: Duration) -> Option<kv::Store> {
    if let Ok(store) = js.get_key_value(name).await {
        return Some(store);
    }
    let created = js
        .create_stream(stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await;
    // Another node may have created it meanwhile: either way, open it.
    let store = js.get_key_value(name).await.ok();
    if store.is_none() {
        if let Err(e) = created {
            warn!(error = %e, bucket = name, "NATS key-value bucket not available");
        }
    }
    store
}

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
