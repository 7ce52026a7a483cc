//! Scale-out on NATS JetStream (`[nats]`): every session's events in a stream for
//! downstream consumers, node heartbeats for the cluster view, and what a node needs to take
//! over a session whose node is gone or hands it over.
//!
//! # Layout
//! - [`records`]: the wire contract: subjects, lifecycle, session and node records.
//! - `publisher`: the one task writing to JetStream, behind a bounded queue.
//! - [`log`]: a session's log read back for a takeover (a pure fold).
//! - `queries`: what a node asks NATS (heartbeats, the cluster view, a session's record and
//!   log tail, handover requests to other nodes).
//! - `handovers`: answering other nodes' handover requests, and stopping that cleanly.
//!
//! NATS runs on a thread of its own (a small tokio runtime): the audio workers never poll a
//! NATS future. Sessions hand records to a [`Cluster`] handle with a non-blocking, bounded
//! queue; queries (the cluster view, a takeover's reads) run on that thread and are awaited
//! from anywhere. A NATS server that is down or slow costs sessions nothing: records wait
//! in the queue (bounded by `nats.max_pending`), then are counted as unpublished.

mod handovers;
pub mod log;
mod publisher;
mod queries;
pub mod records;

pub use self::handovers::HandoverAsk;
use self::handovers::HandoverService;
use self::publisher::Record;
pub use self::records::unix_ms;
use self::records::*;
use crate::metrics::NatsMetrics;
use crate::settings::NatsSettings;
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, OnceCell};
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
    /// Handles on the buckets and the events stream, opened on first use and kept: opening
    /// one is a round trip, and a takeover would otherwise pay three of them. (The
    /// publisher creates what is missing, also after a NATS server lost its storage.)
    nodes_store: OnceCell<kv::Store>,
    sessions_store: OnceCell<kv::Store>,
    events_stream: OnceCell<stream::Stream>,
}

/// Which key-value bucket.
#[derive(Debug, Clone, Copy)]
enum Bucket {
    /// Node heartbeats (`nats.nodes_bucket`).
    Nodes,
    /// Resumable sessions' state (`nats.sessions_bucket`).
    Sessions,
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

    /// The bucket `which` (created if missing on first use).
    async fn store(
        &self,
        js: &jetstream::Context,
        which: Bucket,
    ) -> Result<kv::Store, ClusterError> {
        let s = &self.settings;
        let (cell, name, max_age, what) = match which {
            Bucket::Nodes => (
                &self.nodes_store,
                &s.nodes_bucket,
                self.node_ttl(),
                "nodes bucket",
            ),
            Bucket::Sessions => (
                &self.sessions_store,
                &s.sessions_bucket,
                Duration::from_secs(s.max_age_s),
                "sessions bucket",
            ),
        };
        cell.get_or_try_init(|| async {
            bucket(js, name, max_age)
                .await
                .ok_or_else(|| request_error(what)("not available".into()))
        })
        .await
        .cloned()
    }

    /// The events stream (`nats.stream`).
    async fn events_stream(&self, js: &jetstream::Context) -> Result<stream::Stream, ClusterError> {
        self.events_stream
            .get_or_try_init(|| async {
                js.get_stream(&self.settings.stream)
                    .await
                    .map_err(|e| request_error("events stream")(e.to_string()))
            })
            .await
            .cloned()
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
            nodes_store: OnceCell::new(),
            sessions_store: OnceCell::new(),
            events_stream: OnceCell::new(),
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
            delete: false,
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
            delete: false,
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
            self.queue_session_write(session, Bytes::from(json), false);
        }
    }

    /// Forgets a session's state (it ended for good): a delete marker, pipelined like
    /// [`Cluster::put_session`].
    pub fn delete_session(&self, session: Uuid) {
        self.queue_session_write(session, Bytes::new(), true);
    }

    fn queue_session_write(&self, session: Uuid, payload: Bytes, delete: bool) {
        self.queue(Record::Publish {
            subject: format!(
                "$KV.{}.{session}",
                self.inner.shared.settings.sessions_bucket
            ),
            msg_id: format!("{session}.state.{}", Uuid::new_v4()),
            payload,
            delete,
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
