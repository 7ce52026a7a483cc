//! Test harness: a real voxrt server on 127.0.0.1 (OS-picked port) in its own actix system,
//! and a real WebSocket client (tokio-tungstenite). Timeouts only catch hangs.
#![allow(dead_code)]

pub mod audio;
pub mod frames;
pub mod http;
pub mod nats;
pub mod process;
pub mod proxy;
pub mod resume;
pub mod tls;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use voxrt::actors::processors::ProcessorCatalog;
use voxrt::actors::registry::SessionRegistry;

/// Longest any single wait in a test may take before it counts as a hang.
pub const HANG: Duration = Duration::from_secs(60);

/// A server running on its own thread; shut down (gracefully) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The admin listener, when `admin.bind` is set.
    pub admin_addr: Option<SocketAddr>,
    pub registry: actix::Addr<SessionRegistry>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// The test profile with `overrides` (dotted key, value) and the built-in processors.
    pub fn start(overrides: &[(&str, &str)]) -> Self {
        Self::start_with(overrides, ProcessorCatalog::with_builtins())
    }

    /// Like [`TestServer::start`] with a custom processor catalog.
    pub fn start_with(overrides: &[(&str, &str)], catalog: ProcessorCatalog) -> Self {
        Self::start_with_env(&[], overrides, catalog)
    }

    /// `ws://.../v1/stream?{query}`.
    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/v1/stream?{}", self.addr, query)
    }

    /// Connects and reads `session.started`; panics on refusal.
    pub async fn connect(&self, query: &str) -> Client {
        Client::admitted(&self.url(query)).await
    }

    /// Graceful shutdown, waiting until the server thread is done.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// A refusal before the upgrade.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub body: Option<Value>,
    pub retry_after: Option<String>,
}

/// What the server sent.
#[derive(Debug, Clone)]
pub enum Received {
    Event(Value),
    Audio(Vec<u8>),
    Closed(Option<(u16, String)>),
}

/// A WebSocket client of protocol v1.
pub struct Client {
    ws: Ws,
    /// The `session.started` event.
    pub started: Value,
}

impl Client {
    /// Connects; `Err` carries the HTTP refusal.
    /// Connects to `url`, panicking with the refusal if the server does not admit it.
    pub async fn admitted(url: &str) -> Client {
        match Client::connect(url).await {
            Ok(c) => c,
            Err(r) => panic!("refused: {} {:?}", r.status, r.body),
        }
    }

    pub async fn connect(url: &str) -> Result<Client, Refusal> {
        let mut client = Client::connect_raw(url).await?;
        match client.recv().await {
            Received::Event(v) if v["type"] == "session.started" => client.started = v,
            other => panic!("expected session.started, got {other:?}"),
        }
        Ok(client)
    }

    /// Connects without reading the first frame (a resume's is `session.resumed`);
    /// `started` is null. `Err` carries the HTTP refusal.
    pub async fn connect_raw(url: &str) -> Result<Client, Refusal> {
        let connect = tokio::time::timeout(HANG, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect hung");
        let ws = match connect {
            Ok((ws, _)) => ws,
            Err(tungstenite::Error::Http(response)) => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if let Some(b) = response.body() {
                    assert_no_leak("HTTP refusal", &String::from_utf8_lossy(b));
                }
                let body = response
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok());
                return Err(Refusal {
                    status: response.status().as_u16(),
                    body,
                    retry_after,
                });
            }
            Err(e) => panic!("connect failed: {e}"),
        };
        Ok(Client {
            ws,
            started: Value::Null,
        })
    }

    /// Wraps an upgraded connection and reads `session.started`.
    pub async fn from_stream(ws: Ws) -> Client {
        let mut client = Client {
            ws,
            started: Value::Null,
        };
        match client.recv().await {
            Received::Event(v) if v["type"] == "session.started" => client.started = v,
            other => panic!("expected session.started, got {other:?}"),
        }
        client
    }

    pub async fn send_audio(&mut self, bytes: Vec<u8>) {
        self.send(Message::Binary(bytes.into())).await;
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send(Message::Text(v.to_string().into())).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::Text(text.to_owned().into())).await;
    }

    pub async fn send(&mut self, msg: Message) {
        tokio::time::timeout(HANG, self.ws.send(msg))
            .await
            .expect("send hung")
            .expect("send failed");
    }

    /// Next frame from the server (ws pings are answered by tungstenite and skipped).
    pub async fn recv(&mut self) -> Received {
        next_received(&mut self.ws).await
    }

    /// Splits into a sender and a receiver usable from different tasks.
    pub fn split(self) -> (ClientSink, ClientStream) {
        let (sink, stream) = self.ws.split();
        (ClientSink { sink }, ClientStream { stream })
    }

    /// Reads events until one of `kind` arrives (inclusive); returns them all. Audio frames
    /// are collected into `audio`. Panics if the connection closes first.
    pub async fn until(&mut self, kind: &str, audio: &mut Vec<u8>) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            match self.recv().await {
                Received::Event(v) => {
                    let done = v["type"] == kind;
                    events.push(v);
                    if done {
                        return events;
                    }
                }
                Received::Audio(b) => audio.extend_from_slice(&b),
                Received::Closed(c) => panic!("closed before {kind}: {c:?}; got {events:?}"),
            }
        }
    }

    /// Sends `stop`, reads to the close; returns events (session.closed last) and the close code.
    pub async fn stop(mut self) -> (Vec<Value>, Option<u16>) {
        self.send_json(serde_json::json!({"type": "stop"})).await;
        self.drain().await
    }

    /// Reads everything until the connection closes.
    pub async fn drain(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut events = Vec::new();
        loop {
            match self.recv().await {
                Received::Event(v) => events.push(v),
                Received::Audio(_) => {}
                Received::Closed(c) => return (events, c.map(|(code, _)| code)),
            }
        }
    }

    /// Sends audio in chunks of `chunk_bytes` then `flush`; returns events up to `flushed`.
    pub async fn stream_and_flush(&mut self, pcm: &[u8], chunk_bytes: usize) -> Vec<Value> {
        for chunk in pcm.chunks(chunk_bytes) {
            self.send_audio(chunk.to_vec()).await;
        }
        self.send_json(serde_json::json!({"type": "flush"})).await;
        let mut audio = Vec::new();
        self.until("flushed", &mut audio).await
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The sending half of a [`Client`].
pub struct ClientSink {
    sink: futures_util::stream::SplitSink<Ws, Message>,
}

impl ClientSink {
    pub async fn send_audio(&mut self, bytes: Vec<u8>) {
        self.send(Message::Binary(bytes.into())).await;
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send(Message::Text(v.to_string().into())).await;
    }

    pub async fn send(&mut self, msg: Message) {
        self.try_send(msg).await.expect("send failed");
    }

    /// Like [`ClientSink::send`] but returns the error: for sends that may race with the
    /// server closing the connection.
    pub async fn try_send(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        tokio::time::timeout(HANG, self.sink.send(msg))
            .await
            .expect("send hung")
    }
}

/// The receiving half of a [`Client`].
pub struct ClientStream {
    stream: futures_util::stream::SplitStream<Ws>,
}

impl ClientStream {
    pub async fn recv(&mut self) -> Received {
        next_received(&mut self.stream).await
    }
}

/// Next frame from the server (ws pings are answered by tungstenite and skipped).
async fn next_received<S>(stream: &mut S) -> Received
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        let next = tokio::time::timeout(HANG, stream.next())
            .await
            .expect("receive hung");
        match next {
            None | Some(Err(_)) => return Received::Closed(None),
            Some(Ok(Message::Text(t))) => {
                let event: Value = serde_json::from_str(&t).expect("server sends JSON");
                if event["type"] == "error" {
                    assert_no_leak("error event", &t);
                }
                return Received::Event(event);
            }
            Some(Ok(Message::Binary(b))) => return Received::Audio(b.to_vec()),
            Some(Ok(Message::Close(frame))) => {
                return Received::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
            }
            Some(Ok(_)) => continue,
        }
    }
}

/// What must never reach a client: Rust paths and type names, source files, panic and
/// backtrace text, library error strings, filesystem paths.
const LEAKS: [&str; 16] = [
    "::",
    ".rs",
    "panicked",
    "backtrace",
    "unwrap",
    "thread '",
    "Error {",
    "Os {",
    "/root",
    "/home",
    "/usr/",
    "src/",
    "actix",
    "tokio",
    "serde",
    "jsonwebtoken",
];

/// Every error the suite receives (error events in [`next_received`], HTTP refusals in
/// [`Client::connect`], operator endpoint errors in tests/ops.rs) passes through here: a
/// leak of internals fails the test that provoked it, and an error body must carry a code,
/// a message and a correlation id.
pub fn assert_no_leak(context: &str, text: &str) {
    let lower = text.to_lowercase();
    for leak in LEAKS {
        assert!(
            !lower.contains(&leak.to_lowercase()),
            "{context} leaks internals ({leak:?}): {text}"
        );
    }
    let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let error = if value["type"] == "error" {
        &value
    } else {
        &value["error"]
    };
    if error.is_null() {
        // Not an error body (a probe's 503, say): only the leak check applies.
        return;
    }
    assert!(
        error["code"].is_string() && error["message"].is_string(),
        "{context} without a code and message: {text}"
    );
    assert!(
        error["correlation_id"]
            .as_str()
            .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()),
        "{context} without a correlation id: {text}"
    );
}

/// Events of one `type` (and, for vad, one `event`).
pub fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// `(start_ms, end_ms)` speech segments from vad events.
pub fn segments(events: &[Value]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut start = None;
    for e in events.iter().filter(|e| e["type"] == "vad") {
        match e["event"].as_str() {
            Some("speech_start") => start = e["t_ms"].as_u64(),
            Some("speech_end") => {
                let end = e["t_ms"].as_u64().expect("t_ms");
                out.push((start.take().expect("end follows start"), end));
            }
            _ => panic!("unknown vad event {e}"),
        }
    }
    assert!(
        start.is_none(),
        "speech_start without speech_end: {events:?}"
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Added for tests/protocol.rs, tests/bad_input.rs, tests/registry.rs, tests/backpressure.rs.
// ---------------------------------------------------------------------------------------------

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use voxrt::actors::processors::{Placement, Processor, ProcessorContext};
use voxrt::actors::registry::{GetStats, RegistryStats};
use voxrt::actors::{AudioBlock, ServerEvent};

impl TestServer {
    /// Like [`TestServer::start_with`] with an explicit environment map, for settings that
    /// overrides cannot express, e.g. the list `("VOXRT_PIPELINE__PROCESSORS", "level,slow")`.
    pub fn start_with_env(
        env: &[(&str, &str)],
        overrides: &[(&str, &str)],
        catalog: ProcessorCatalog,
    ) -> Self {
        let source = voxrt::ConfigSource {
            profile: Some("test".into()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            overrides: overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let settings = source.load().expect("test settings load");
        voxrt::logging::init(&settings.log).expect("logging starts");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = voxrt::start(source, catalog).await.expect("server starts");
                ready_tx
                    .send((server.addr, server.admin_addr, server.registry.clone()))
                    .expect("test alive");
                let _ = stop_rx.await;
                server.shutdown().await;
            });
        });
        let (addr, admin_addr, registry) = ready_rx.recv_timeout(HANG).expect("server ready");
        TestServer {
            addr,
            admin_addr,
            registry,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The registry's counters, asked of the registry actor itself.
    pub async fn registry_stats(&self) -> RegistryStats {
        tokio::time::timeout(HANG, self.registry.send(GetStats))
            .await
            .expect("GetStats hung")
            .expect("registry answers GetStats")
    }

    /// Polls the registry until `cond` holds and returns the stats that satisfied it. Polls
    /// every 10 ms (the sleep only spaces the polls; the condition decides); panics after
    /// [`HANG`] with the last stats seen.
    pub async fn wait_for_stats(
        &self,
        what: &str,
        cond: impl Fn(&RegistryStats) -> bool,
    ) -> RegistryStats {
        poll_until(
            what,
            Duration::from_millis(10),
            || self.registry_stats(),
            cond,
        )
        .await
    }
}

/// Calls `fetch` until `cond` holds for what it returns, and returns that; panics after
/// [`HANG`] naming `what` and the last value seen. `every` only spaces the calls: the
/// condition decides.
pub async fn poll_until<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    every: Duration,
    mut fetch: impl FnMut() -> F,
    cond: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let value = fetch().await;
        if cond(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last seen: {value:?}"
        );
        tokio::time::sleep(every).await;
    }
}

impl Client {
    /// Like [`Client::send`] but returns the error instead of panicking: for sends that may
    /// race with the server closing the connection.
    pub async fn try_send(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        tokio::time::timeout(HANG, self.ws.send(msg))
            .await
            .expect("send hung")
    }

    /// Queues every message and writes them with one flush, so they reach the server
    /// back to back.
    pub async fn send_batch(&mut self, msgs: Vec<Message>) {
        tokio::time::timeout(HANG, async {
            for m in msgs {
                self.ws.feed(m).await?;
            }
            self.ws.flush().await
        })
        .await
        .expect("send hung")
        .expect("send failed");
    }
}

/// `{"type":"ping","id":id}`.
pub fn ping(id: Value) -> Value {
    serde_json::json!({"type": "ping", "id": id})
}

/// The last `session.closed` event in `events` (panics if there is none).
pub fn closed_event(events: &[Value]) -> &Value {
    events
        .iter()
        .rev()
        .find(|e| e["type"] == "session.closed")
        .unwrap_or_else(|| panic!("no session.closed in {events:?}"))
}

/// `error` events with `code`.
pub fn errors_with_code<'a>(events: &'a [Value], code: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == "error" && e["code"] == code)
        .collect()
}

/// Name under which [`slow_catalog`] registers [`SlowProcessor`].
pub const SLOW: &str = "slow";

/// Shared counters of every [`SlowProcessor`] a catalog builds, for the sessions whose input
/// rate matches (or all sessions, see [`slow_catalog`]).
#[derive(Debug, Default)]
pub struct SlowProbe {
    /// Pipeline samples handed to `process` so far.
    pub samples: AtomicU64,
    /// `process` calls so far.
    pub blocks: AtomicU64,
    /// First sample of every block, in order (lets tests tag chunks by their content).
    pub firsts: std::sync::Mutex<Vec<f32>>,
}

impl SlowProbe {
    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::SeqCst)
    }
}

/// A processor slower than real time: sleeps `per_block` in every `process` call (a CPU-heavy
/// model stand-in). At flush it emits `{"type":"slow.flushed","samples":N,"t_ms":..}` with
/// the pipeline samples it saw since the session started.
pub struct SlowProcessor {
    per_block: Duration,
    seen: u64,
    probe: Option<Arc<SlowProbe>>,
}

impl Processor for SlowProcessor {
    fn process(&mut self, block: &AudioBlock, _events: &mut Vec<ServerEvent>) {
        if !self.per_block.is_zero() {
            std::thread::sleep(self.per_block);
        }
        self.seen += block.samples.len() as u64;
        if let Some(p) = &self.probe {
            p.samples
                .fetch_add(block.samples.len() as u64, Ordering::SeqCst);
            p.blocks.fetch_add(1, Ordering::SeqCst);
            if let Some(&first) = block.samples.first() {
                p.firsts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(first);
            }
        }
    }

    fn flush(&mut self, end_sample: u64, events: &mut Vec<ServerEvent>) {
        events.push(ServerEvent::Custom(serde_json::json!({
            "type": "slow.flushed",
            "samples": self.seen,
            "t_ms": end_sample / 16,
        })));
    }
}

/// The built-ins plus [`SLOW`]: a [`SlowProcessor`] sleeping `per_block` per block for
/// sessions whose input sample rate is `only_rate` (every session when `None`); other
/// sessions get a `SlowProcessor` that does not sleep and is not counted. Returns the probe
/// counting what the sleeping processors saw. Heavy, so placed in a stage of its own.
pub fn slow_catalog(
    per_block: Duration,
    only_rate: Option<u32>,
) -> (ProcessorCatalog, Arc<SlowProbe>) {
    let probe = Arc::new(SlowProbe::default());
    let mut catalog = ProcessorCatalog::with_builtins();
    let shared = probe.clone();
    catalog.register_placed(SLOW, Placement::OwnStage, move |ctx: &ProcessorContext| {
        let slow = only_rate.is_none_or(|r| r == ctx.input.sample_rate);
        Box::new(SlowProcessor {
            per_block: if slow { per_block } else { Duration::ZERO },
            seen: 0,
            probe: slow.then(|| shared.clone()),
        }) as Box<dyn Processor>
    });
    (catalog, probe)
}

/// Events grouped by `type`, each group in arrival order. Different processors run as
/// different actors, so only the order *within* a processor's events is deterministic.
pub fn by_type(events: &[Value]) -> std::collections::BTreeMap<String, Vec<Value>> {
    let mut out = std::collections::BTreeMap::<String, Vec<Value>>::new();
    for e in events {
        let kind = e["type"].as_str().unwrap_or("").to_owned();
        // `seq` counts every message, so it depends on how processors' events interleave
        // (either order is allowed); within one type only the content is compared.
        let mut e = e.clone();
        if let Some(obj) = e.as_object_mut() {
            obj.remove("seq");
        }
        out.entry(kind).or_default().push(e);
    }
    out
}

/// A fresh directory under the system temp dir, removed when dropped; `label` shows in its
/// name (handy when a failed test leaves logs to read).
pub fn temp_dir(label: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("voxrt-{label}-"))
        .tempdir()
        .expect("temp dir")
}

/// Reads to the close after a fatal error; asserts one `error{code, fatal:true}`, then
/// `session.closed{reason:"error"}` last, then close code `close`. Returns the events.
pub async fn expect_fatal(c: &mut Client, code: &str, close: u16) -> Vec<Value> {
    let (events, got) = c.drain().await;
    let errors = errors_with_code(&events, code);
    assert_eq!(errors.len(), 1, "one {code} error: {events:?}");
    assert_eq!(errors[0]["fatal"], true, "{events:?}");
    let last = events.last().expect("events");
    assert_eq!(last["type"], "session.closed", "{events:?}");
    assert_eq!(last["reason"], "error", "{events:?}");
    assert_eq!(got, Some(close), "close code; events {events:?}");
    events
}
