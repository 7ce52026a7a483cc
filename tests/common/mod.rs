//! Test harness: a real voxrt server on 127.0.0.1 (OS-picked port) in its own actix system,
//! and a real WebSocket client (tokio-tungstenite). Timeouts only catch hangs.
#![allow(dead_code)]

pub mod audio;

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
        let env = std::collections::HashMap::new();
        let settings =
            voxrt::Settings::load_from(Some("test"), &env, overrides).expect("test settings load");
        voxrt::logging::init(&settings.log);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = voxrt::start(settings, catalog)
                    .await
                    .expect("server starts");
                ready_tx
                    .send((server.addr, server.registry.clone()))
                    .expect("test alive");
                let _ = stop_rx.await;
                server.shutdown().await;
            });
        });
        let (addr, registry) = ready_rx.recv_timeout(HANG).expect("server ready");
        TestServer {
            addr,
            registry,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `ws://.../v1/stream?{query}`.
    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/v1/stream?{}", self.addr, query)
    }

    /// Connects and reads `session.started`; panics on refusal.
    pub async fn connect(&self, query: &str) -> Client {
        match Client::connect(&self.url(query)).await {
            Ok(c) => c,
            Err(r) => panic!("refused: {} {:?}", r.status, r.body),
        }
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
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `session.started` event.
    pub started: Value,
}

impl Client {
    /// Connects; `Err` carries the HTTP refusal.
    pub async fn connect(url: &str) -> Result<Client, Refusal> {
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
        let mut client = Client {
            ws,
            started: Value::Null,
        };
        match client.recv().await {
            Received::Event(v) if v["type"] == "session.started" => client.started = v,
            other => panic!("expected session.started, got {other:?}"),
        }
        Ok(client)
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
        loop {
            let next = tokio::time::timeout(HANG, self.ws.next())
                .await
                .expect("receive hung");
            match next {
                None => return Received::Closed(None),
                Some(Err(_)) => return Received::Closed(None),
                Some(Ok(Message::Text(t))) => {
                    return Received::Event(serde_json::from_str(&t).expect("server sends JSON"))
                }
                Some(Ok(Message::Binary(b))) => return Received::Audio(b.to_vec()),
                Some(Ok(Message::Close(frame))) => {
                    return Received::Closed(
                        frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    )
                }
                Some(Ok(_)) => continue,
            }
        }
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
