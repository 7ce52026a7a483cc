//! Opening a session: TCP, the WebSocket upgrade (a refusal becomes an [`Outcome`]) and
//! `session.started`, whose announced settings the attribution of events needs; resuming one
//! (`session.resumed`); cutting a connection abruptly; and the one-session probe the load
//! generator runs before it starts.

use crate::metrics::Outcome;
use crate::session::{close_detail, stop_message, START_TIMEOUT};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest wait for the TCP connection plus the WebSocket upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer of each connection, bytes: tungstenite zero-fills this much before every
/// read (a `WouldBlock` one too), so it is kept to a few of the server's small events; a
/// larger message (`session.started`) just takes more reads.
const READ_BUFFER_BYTES: usize = 1024;

/// What `session.started` told us.
#[derive(Debug, Clone, Default)]
pub struct Started {
    /// `vad.silence_ms`.
    pub silence_ms: Option<u64>,
    /// `vad.min_speech_ms`.
    pub min_speech_ms: Option<u64>,
    /// `limits.max_binary_frame_bytes`.
    pub max_binary_frame_bytes: Option<u64>,
    /// `pipeline.resampler_delay_ms` (servers before it was announced: absent).
    pub resampler_delay_ms: Option<f64>,
    /// `session_id`.
    pub session_id: String,
    /// `resume.token` and `resume.window_s`, when the server offers resume.
    pub resume: Option<(String, u64)>,
    /// `seq` of `session.started` (0).
    pub seq: u64,
}

impl Started {
    fn from_event(v: &Value) -> Self {
        let n = |p: &str| v.pointer(p).and_then(Value::as_u64);
        Started {
            silence_ms: n("/vad/silence_ms"),
            min_speech_ms: n("/vad/min_speech_ms"),
            max_binary_frame_bytes: n("/limits/max_binary_frame_bytes"),
            resampler_delay_ms: v
                .pointer("/pipeline/resampler_delay_ms")
                .and_then(Value::as_f64),
            session_id: v
                .get("session_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            resume: v
                .pointer("/resume/token")
                .and_then(Value::as_str)
                .zip(n("/resume/window_s"))
                .map(|(t, w)| (t.to_owned(), w)),
            seq: n("/seq").unwrap_or(0),
        }
    }
}

/// What `session.resumed` said.
#[derive(Debug, Clone, Copy)]
pub struct Resumed {
    /// Input sample frames the server accepted before the loss (from `audio_ms` for servers
    /// that do not send `input_frames`).
    pub input_frames: u64,
    /// Buffered events the server replays next.
    pub replayed: u64,
    /// `rewound_to` (a node that took the session over after losing its node has it only up
    /// to this seq): what the client holds after it comes again.
    pub rewound_to: Option<u64>,
}

/// Opens one session: TCP, upgrade, `session.started`. `Err` is the outcome to report.
pub async fn connect(url: &str, auth: Option<&HeaderValue>) -> Result<(Ws, Started), Outcome> {
    let mut ws = upgrade(url, auth).await?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let next = timeout_at(deadline, ws.next()).await.map_err(|_| {
            Outcome::ConnectError(format!(
                "no session.started within {} s",
                START_TIMEOUT.as_secs()
            ))
        })?;
        match next {
            Some(Ok(Message::Text(text))) => {
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                match v.get("type").and_then(Value::as_str) {
                    Some("session.started") => return Ok((ws, Started::from_event(&v))),
                    Some("session.closed") => {
                        return Err(Outcome::ConnectError(
                            "session.closed before session.started".into(),
                        ))
                    }
                    _ => {}
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(Outcome::ConnectError(format!(
                    "closed before session.started{}",
                    close_detail(frame.as_ref())
                )))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Outcome::ConnectError(format!("connection lost: {e}"))),
            None => {
                return Err(Outcome::ConnectError(
                    "connection closed before session.started".into(),
                ))
            }
        }
    }
}

/// Resumes a session at `url` (`...?resume=ID&resume_token=T&last_seq=N`): upgrade, then
/// `session.resumed`, which must be the first frame. `rate` converts `audio_ms` for servers
/// that do not send `input_frames`.
pub async fn resume(
    url: &str,
    auth: Option<&HeaderValue>,
    rate: u32,
) -> Result<(Ws, Resumed), Outcome> {
    let mut ws = upgrade(url, auth).await?;
    let first = timeout(START_TIMEOUT, ws.next()).await.map_err(|_| {
        Outcome::ConnectError(format!(
            "no session.resumed within {} s",
            START_TIMEOUT.as_secs()
        ))
    })?;
    let text = match first {
        Some(Ok(Message::Text(text))) => text,
        Some(Ok(Message::Close(frame))) => {
            return Err(Outcome::ConnectError(format!(
                "closed before session.resumed{}",
                close_detail(frame.as_ref())
            )))
        }
        Some(Ok(_)) => {
            return Err(Outcome::ConnectError(
                "a non-text frame before session.resumed".into(),
            ))
        }
        Some(Err(e)) => return Err(Outcome::ConnectError(format!("connection lost: {e}"))),
        None => {
            return Err(Outcome::ConnectError(
                "closed before session.resumed".into(),
            ))
        }
    };
    let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
    if v.get("type").and_then(Value::as_str) != Some("session.resumed") {
        let start: String = text.as_str().chars().take(80).collect();
        return Err(Outcome::ConnectError(format!(
            "expected session.resumed first, got {start}"
        )));
    }
    let n = |k: &str| v.get(k).and_then(Value::as_u64);
    let input_frames =
        n("input_frames").unwrap_or_else(|| n("audio_ms").unwrap_or(0) * u64::from(rate) / 1000);
    Ok((
        ws,
        Resumed {
            input_frames,
            replayed: n("replayed").unwrap_or(0),
            rewound_to: n("rewound_to"),
        },
    ))
}

/// A second handle on a connection's socket, to cut it later with [`cut`].
pub fn socket_handle(ws: &Ws) -> Option<OwnedFd> {
    match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.as_fd().try_clone_to_owned().ok(),
        _ => None,
    }
}

/// Makes closing the socket abort the connection: with `SO_LINGER` 0 the kernel sends RST
/// and discards unsent data instead of a FIN, so the server sees a network failure, not a
/// close. The connection ends once every handle on it (this one and the WebSocket's) is
/// dropped.
pub fn cut(socket: &OwnedFd) {
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

/// TCP and the WebSocket upgrade; a refusal (HTTP status and error code) is an outcome.
async fn upgrade(url: &str, auth: Option<&HeaderValue>) -> Result<Ws, Outcome> {
    let mut request = url
        .into_client_request()
        .map_err(|e| Outcome::ConnectError(format!("bad URL {url}: {e}")))?;
    if let Some(auth) = auth {
        request.headers_mut().insert("authorization", auth.clone());
    }
    // The server sends small JSON events: a 1 KiB read buffer instead of the default 128 KiB
    // keeps thousands of sessions cheap (tungstenite zero-fills the free part on every read).
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let attempt = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    let ws = match timeout(CONNECT_TIMEOUT, attempt).await {
        Err(_) => {
            return Err(Outcome::ConnectError(format!(
                "no WebSocket upgrade within {} s",
                CONNECT_TIMEOUT.as_secs()
            )))
        }
        Ok(Ok((ws, _))) => ws,
        Ok(Err(tungstenite::Error::Http(response))) => {
            let code = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                .and_then(|v| v.pointer("/error/code")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| "-".to_string());
            let retry_after_s = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            return Err(Outcome::Refused {
                status: response.status().as_u16(),
                code,
                retry_after_s,
            });
        }
        Ok(Err(e)) => return Err(Outcome::ConnectError(e.to_string())),
    };
    Ok(ws)
}

/// Opens a session, sends `stop` at once and waits for `session.closed`: checks that the
/// server is there and accepts these parameters and token, and returns what it announced.
pub async fn probe(url: &str, auth: Option<&HeaderValue>) -> Result<Started, String> {
    let (mut ws, started) = connect(url, auth).await.map_err(|o| match o {
        Outcome::Refused { status, code, .. } => {
            format!("the server refused: HTTP {status} {code}")
        }
        Outcome::ConnectError(e) => e,
        other => format!("{other:?}"),
    })?;
    let finish = async {
        ws.send(stop_message())
            .await
            .map_err(|e| format!("cannot send stop: {e}"))?;
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(t)) if t.as_str().contains(r#""session.closed""#) => {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => return Err(format!("connection lost: {e}")),
            }
        }
        Err("connection closed without session.closed".to_string())
    };
    timeout(START_TIMEOUT, finish)
        .await
        .map_err(|_| "no session.closed after stop".to_string())??;
    Ok(started)
}
