//! One simulated client: connect, stream the shared recording at real time, ping, read
//! events, and at the end `stop` and wait for `session.closed`.
//!
//! A session is one tokio task. Its writer (audio and pings) and its reader (events) are two
//! futures polled by that task, so the reader keeps reading while a send waits for TCP
//! (backpressure) and neither needs a lock but the tiny one on the send ring. Nothing the
//! server sends can make a session panic; whatever happens ends up as an [`Outcome`].

use crate::audio::Recording;
use crate::connect::{connect, Ws};
use crate::latency::{Attribution, SendRing, VadEvent};
use crate::metrics::{Metrics, Outcome};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

type WsSink = futures_util::stream::SplitSink<Ws, Message>;
type WsStream = futures_util::stream::SplitStream<Ws>;

/// Longest wait for `session.started` after the upgrade, and for `session.closed` after
/// `stop`.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the close handshake after `session.closed`, and for the reader to say
/// why a send failed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Prefix of the frequent `level` events, skipped without parsing (the server serializes
/// `type` first). Anything else is parsed.
const LEVEL_PREFIX: &str = r#"{"type":"level""#;

/// Everything sessions share, read-only.
pub struct Plan {
    /// The full stream URL (`ws://host:port/v1/stream?sample_rate=...`).
    pub url: String,
    /// `Authorization` header value (`Bearer ...`), if a token was given.
    pub auth: Option<HeaderValue>,
    /// The audio, pre-encoded.
    pub recording: Recording,
    /// Input frames per second (for pacing).
    pub rate: u32,
    /// How event `t_ms` maps to chunks.
    pub attribution: Attribution,
    /// Interval between `ping` messages.
    pub ping_every: Duration,
    /// Send instants remembered per session, in chunks.
    pub ring_chunks: usize,
}

impl Plan {
    /// When chunk `k` is due, relative to the first chunk: `k * frames_per_chunk / rate` s,
    /// computed from `k` each time so that the schedule never drifts.
    fn due(&self, k: u64) -> Duration {
        let frames = u128::from(k) * u128::from(self.recording.frames_per_chunk);
        let nanos = frames * 1_000_000_000 / u128::from(self.rate.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// The orchestrator's word to the sessions: `None` while they should stream, then
/// `Some(deadline)`: send `stop` now and be done (`session.closed` received) by `deadline`.
pub type StopSignal = watch::Receiver<Option<Instant>>;

/// The fields of server events that the load generator looks at; everything else is
/// ignored.
#[derive(Deserialize)]
struct ServerEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(default)]
    t_ms: Option<u64>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default)]
    fatal: Option<bool>,
    #[serde(default, borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(default)]
    stats: Option<Value>,
}

/// Runs one session from its connect turn (`start_at`) to its end and records it in
/// `metrics`. Sends one message on `settled` once it is connected or has failed to.
pub async fn run(
    plan: Arc<Plan>,
    metrics: Arc<Metrics>,
    start_at: Instant,
    stop: StopSignal,
    settled: mpsc::UnboundedSender<()>,
) {
    let state = SessionState::new(plan.ring_chunks);
    let outcome = session(&plan, &metrics, &state, start_at, stop, &settled).await;
    let sent = state.ring().sent();
    let missing = sent >= plan.recording.chunks.len() as u64
        && state.speech_starts.load(Relaxed) == 0
        && matches!(outcome, Outcome::Completed | Outcome::NoSessionClosed);
    metrics.finished(&outcome, sent, missing, state.dropped.load(Relaxed));
}

/// What the writer and the reader of one session share, and what survives a session cut off
/// at the stop deadline.
struct SessionState {
    ring: Mutex<SendRing>,
    /// Set just before `stop` is sent: a `session.closed` after it is the expected end.
    stop_sent: AtomicBool,
    speech_starts: AtomicU64,
    /// `stats.chunks_dropped` of `session.closed`.
    dropped: AtomicU64,
    /// Code of a fatal error event, if one came.
    fatal: Mutex<Option<String>>,
}

impl SessionState {
    fn new(ring_chunks: usize) -> Self {
        SessionState {
            ring: Mutex::new(SendRing::new(ring_chunks)),
            stop_sent: AtomicBool::new(false),
            speech_starts: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            fatal: Mutex::new(None),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, SendRing> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn session(
    plan: &Plan,
    metrics: &Metrics,
    state: &SessionState,
    start_at: Instant,
    mut stop: StopSignal,
    settled: &mpsc::UnboundedSender<()>,
) -> Outcome {
    tokio::select! {
        _ = sleep_until(start_at) => {}
        _ = stop_requested(&mut stop) => {
            let _ = settled.send(());
            return Outcome::NotStarted;
        }
    }
    let begin = Instant::now();
    let connected = connect(&plan.url, plan.auth.as_ref()).await;
    if connected.is_ok() {
        metrics.connected(begin.elapsed());
    }
    let _ = settled.send(());
    let ws = match connected {
        Ok((ws, _)) => ws,
        Err(outcome) => return outcome,
    };
    let exchange = exchange(ws, plan, metrics, state, stop.clone());
    tokio::select! {
        outcome = exchange => outcome,
        _ = past_deadline(stop) => match state.fatal.lock().ok().and_then(|f| f.clone()) {
            Some(code) => Outcome::FatalError(code),
            None => Outcome::NoSessionClosed,
        },
    }
}

/// Streams until told to stop, then sends `stop` and reads up to `session.closed`.
async fn exchange(
    ws: Ws,
    plan: &Plan,
    metrics: &Metrics,
    state: &SessionState,
    stop: StopSignal,
) -> Outcome {
    let (sink, stream) = ws.split();
    let epoch = Instant::now();
    let reader = read_events(stream, plan, metrics, state, epoch);
    let writer = write_audio(sink, plan, state, epoch, stop);
    tokio::pin!(reader, writer);
    let ended = tokio::select! {
        ended = &mut reader => ended,
        (mut sink, written) = &mut writer => match written {
            Ok(()) => {
                state.stop_sent.store(true, Relaxed);
                if let Err(e) = sink.send(stop_message()).await {
                    // The reader may still know better why (a close frame already read).
                    timeout(DRAIN_TIMEOUT, &mut reader)
                        .await
                        .unwrap_or(ReadEnd::Broken(format!("cannot send stop: {e}")))
                } else {
                    let ended = reader.await;
                    let _ = timeout(DRAIN_TIMEOUT, sink.close()).await;
                    ended
                }
            }
            Err(e) => timeout(DRAIN_TIMEOUT, &mut reader)
                .await
                .unwrap_or(ReadEnd::Broken(e)),
        },
    };
    if let Some(code) = state.fatal.lock().ok().and_then(|f| f.clone()) {
        return Outcome::FatalError(code);
    }
    match ended {
        ReadEnd::Closed(reason) if reason == "client_stop" && state.stop_sent.load(Relaxed) => {
            Outcome::Completed
        }
        ReadEnd::Closed(reason) => {
            Outcome::UnexpectedClose(format!("session.closed with reason {reason}"))
        }
        ReadEnd::Broken(e) => Outcome::UnexpectedClose(e),
    }
}

/// Sends chunk `k` at `first + plan.due(k)` (late chunks go out at once, catching up: a
/// burst, as `MissedTickBehavior::Burst` would) and a ping every `plan.ping_every`, until the
/// stop signal. Gives the sink back; `Err` if a send failed (the connection is gone).
async fn write_audio(
    mut sink: WsSink,
    plan: &Plan,
    state: &SessionState,
    epoch: Instant,
    mut stop: StopSignal,
) -> (WsSink, Result<(), String>) {
    let chunks = &plan.recording.chunks;
    let first = Instant::now();
    let mut next_ping = first + plan.ping_every;
    let mut k: u64 = 0;
    loop {
        if stop.borrow_and_update().is_some() {
            return (sink, Ok(()));
        }
        let due = first + plan.due(k);
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() {
                    // The orchestrator is gone: stop as if told to.
                    return (sink, Ok(()));
                }
            }
            _ = sleep_until(due) => {
                let chunk = chunks[(k % chunks.len() as u64) as usize].clone();
                if let Err(e) = sink.send(Message::Binary(chunk)).await {
                    return (sink, Err(format!("connection lost while sending audio: {e}")));
                }
                state.ring().push(Instant::now().into_std());
                k += 1;
            }
            _ = sleep_until(next_ping) => {
                let id = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                let ping = Message::text(format!(r#"{{"type":"ping","id":{id}}}"#));
                if let Err(e) = sink.send(ping).await {
                    return (sink, Err(format!("connection lost while sending a ping: {e}")));
                }
                // Pings are not caught up after a stall: one per interval from now.
                next_ping = (next_ping + plan.ping_every).max(Instant::now());
            }
        }
    }
}

/// How the reader stopped.
enum ReadEnd {
    /// `session.closed` with this reason.
    Closed(String),
    /// The connection ended without `session.closed`.
    Broken(String),
}

/// Reads server events until `session.closed` or the end of the connection, recording ping
/// round trips, VAD event latencies, error events and the session's final counters.
async fn read_events(
    mut stream: WsStream,
    plan: &Plan,
    metrics: &Metrics,
    state: &SessionState,
    epoch: Instant,
) -> ReadEnd {
    loop {
        let text = match stream.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                return ReadEnd::Broken(format!(
                    "the server closed the connection without session.closed{}",
                    close_detail(frame.as_ref())
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return ReadEnd::Broken(format!("connection lost: {e}")),
            None => return ReadEnd::Broken("connection closed without session.closed".into()),
        };
        let now = Instant::now();
        if text.as_str().starts_with(LEVEL_PREFIX) {
            continue;
        }
        let Ok(ev) = serde_json::from_str::<ServerEvent>(text.as_str()) else {
            continue;
        };
        match ev.kind.as_ref() {
            "vad" => {
                let kind = match ev.event.as_deref() {
                    Some("speech_start") => VadEvent::SpeechStart,
                    Some("speech_end") => VadEvent::SpeechEnd,
                    _ => continue,
                };
                if kind == VadEvent::SpeechStart {
                    state.speech_starts.fetch_add(1, Relaxed);
                }
                let Some(t_ms) = ev.t_ms else { continue };
                let index = plan.attribution.chunk_index(kind, t_ms);
                let sent = state.ring().get(index);
                let latency = sent.map(|s| now.into_std().saturating_duration_since(s));
                metrics.event(now.into_std(), latency);
            }
            "pong" => {
                if let Some(us) = ev.id.as_ref().and_then(Value::as_u64) {
                    let sent = epoch + Duration::from_micros(us);
                    if sent <= now {
                        metrics.ping(now.into_std(), now - sent);
                    }
                }
            }
            "error" => {
                let code = ev.code.as_deref().unwrap_or("?");
                metrics.error_event(code);
                if ev.fatal == Some(true) {
                    if let Ok(mut fatal) = state.fatal.lock() {
                        fatal.get_or_insert_with(|| code.to_owned());
                    }
                }
            }
            "session.closed" => {
                let dropped = ev
                    .stats
                    .as_ref()
                    .and_then(|s| s.get("chunks_dropped"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                state.dropped.store(dropped, Relaxed);
                let reason = ev.reason.as_deref().unwrap_or("?").to_owned();
                // Let the close handshake finish (tungstenite answers the close frame).
                let drain = async {
                    while let Some(Ok(m)) = stream.next().await {
                        if m.is_close() {
                            break;
                        }
                    }
                };
                let _ = timeout(DRAIN_TIMEOUT, drain).await;
                return ReadEnd::Closed(reason);
            }
            _ => {}
        }
    }
}

/// Resolves once the orchestrator has asked to stop.
async fn stop_requested(stop: &mut StopSignal) {
    loop {
        if stop.borrow_and_update().is_some() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Resolves at the stop deadline (never, if the orchestrator went away without one).
async fn past_deadline(mut stop: StopSignal) {
    loop {
        let deadline = *stop.borrow_and_update();
        if let Some(deadline) = deadline {
            sleep_until(deadline).await;
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The control message that ends a session.
pub(crate) fn stop_message() -> Message {
    Message::text(r#"{"type":"stop"}"#)
}

/// ` (close code N: reason)`, or nothing without a close frame.
pub(crate) fn close_detail(frame: Option<&tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) if f.reason.is_empty() => format!(" (close code {})", u16::from(f.code)),
        Some(f) => format!(" (close code {}: {})", u16::from(f.code), f.reason),
        None => String::new(),
    }
}
