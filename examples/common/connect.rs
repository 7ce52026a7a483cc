//! Opening a WebSocket to the server, for a new session or to resume one, and explaining a
//! refusal.

use super::Failure;
use futures_util::StreamExt;
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(super) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long to wait for the TCP connection and the WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for `session.resumed` after a resume's upgrade.
const RESUMED_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the WebSocket, turning every failure into an unreachable/refused message.
pub(super) async fn connect(url: &str, token: Option<&str>) -> Result<Ws, Failure> {
    use tungstenite::client::IntoClientRequest;
    let mut request = url
        .into_client_request()
        .map_err(|e| Failure::Unreachable(format!("cannot connect to {}: {e}", shown(url))))?;
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Failure::Input("--token must be printable ASCII".into()))?;
        request.headers_mut().insert("authorization", value);
    }
    let url = shown(url);
    let attempt = tokio_tungstenite::connect_async_with_config(request, None, true);
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Err(_) => Err(Failure::Unreachable(format!(
            "server unreachable: no answer from {url} within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(response))) => Err(refusal(&response, token.is_some())),
        Ok(Err(tungstenite::Error::Io(e))) => Err(Failure::Unreachable(format!(
            "server unreachable at {url}: {e} (is the server running? start it with `cargo run`)"
        ))),
        Ok(Err(tungstenite::Error::Url(e))) => Err(Failure::Unreachable(format!(
            "cannot connect to {url}: {e}"
        ))),
        Ok(Err(e)) => Err(Failure::Unreachable(format!("no WebSocket at {url}: {e}"))),
    }
}

/// The URL as messages show it: a resume URL's query carries the resume token, which is a
/// credential and never printed.
fn shown(url: &str) -> &str {
    if url.contains("resume_token=") {
        url.split('?').next().unwrap_or(url)
    } else {
        url
    }
}

/// What `session.resumed` says.
pub(super) struct Resumed {
    /// Input sample frames the server accepted before the loss: audio resumes from there.
    pub(super) input_frames: Option<u64>,
    /// The same as milliseconds (for servers that do not send `input_frames`).
    pub(super) audio_ms: u64,
    /// Buffered events the server sends next (seq above `last_seq`).
    pub(super) replayed: u64,
}

/// Why a resume attempt did not work.
pub(super) enum Attempt {
    /// Worth another try (no connection, server busy, lost again before `session.resumed`).
    Retry(String),
    /// The session cannot be resumed (unknown, closed or expired; wrong token or credential).
    Refused(Failure),
}

/// Opens a resume connection and reads its first frame, `session.resumed`.
pub(super) async fn resume(url: &str, token: Option<&str>) -> Result<(Ws, Resumed), Attempt> {
    let mut ws = match connect(url, token).await {
        Ok(ws) => ws,
        Err(Failure::Refused(m)) if retryable_refusal(&m) => return Err(Attempt::Retry(m)),
        Err(f @ (Failure::Refused(_) | Failure::Input(_))) => return Err(Attempt::Refused(f)),
        Err(f) => return Err(Attempt::Retry(f.to_string())),
    };
    let first = tokio::time::timeout(RESUMED_TIMEOUT, ws.next()).await;
    let text = match first {
        Err(_) => {
            return Err(Attempt::Retry(format!(
                "no session.resumed within {} s",
                RESUMED_TIMEOUT.as_secs()
            )))
        }
        Ok(Some(Ok(Message::Text(text)))) => text,
        Ok(Some(Ok(Message::Close(frame)))) => {
            return Err(Attempt::Retry(format!(
                "closed before session.resumed{}",
                close_detail(frame.as_ref())
            )))
        }
        Ok(Some(Ok(other))) => {
            return Err(Attempt::Refused(Failure::Session(format!(
                "expected session.resumed first, got a {} frame",
                frame_kind(&other)
            ))))
        }
        Ok(Some(Err(e))) => return Err(Attempt::Retry(format!("connection lost: {e}"))),
        Ok(None) => return Err(Attempt::Retry("closed before session.resumed".into())),
    };
    let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
    if v.get("type").and_then(Value::as_str) != Some("session.resumed") {
        let start: String = text.as_str().chars().take(120).collect();
        return Err(Attempt::Refused(Failure::Session(format!(
            "expected session.resumed first, got {start}"
        ))));
    }
    let n = |k: &str| v.get(k).and_then(Value::as_u64);
    Ok((
        ws,
        Resumed {
            input_frames: n("input_frames"),
            audio_ms: n("audio_ms").unwrap_or(0),
            replayed: n("replayed").unwrap_or(0),
        },
    ))
}

/// 429 (too many attempts or sessions) and 503 (server full) may pass within the resume
/// window; every other refusal is final.
fn retryable_refusal(message: &str) -> bool {
    message.contains("HTTP 429") || message.contains("HTTP 503")
}

fn frame_kind(m: &Message) -> &'static str {
    match m {
        Message::Binary(_) => "binary",
        Message::Ping(_) | Message::Pong(_) => "ping/pong",
        _ => "non-text",
    }
}

/// Describes an HTTP refusal: status plus the server's `{"error":{code,message,...}}`, or the
/// start of the body when it is not that; a 401 also says what to do about the credential
/// (`with_token`: one was presented).
fn refusal(response: &tungstenite::handshake::client::Response, with_token: bool) -> Failure {
    let status = response.status();
    let hint = match (status.as_u16(), with_token) {
        (401, false) => "; pass an API key or JWT with `--token` (or set VOXRT_TOKEN)",
        (401, true) => "; check the key or JWT given with `--token` (or VOXRT_TOKEN)",
        _ => "",
    };
    let body = response.body().as_deref().unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    match error {
        Some(e) => {
            let code = e.get("code").and_then(Value::as_str).unwrap_or("?");
            let message = e.get("message").and_then(Value::as_str).unwrap_or("");
            let cid = e
                .get("correlation_id")
                .and_then(Value::as_str)
                .unwrap_or("-");
            let retry = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(|s| format!(", retry after {s} s"))
                .unwrap_or_default();
            Failure::Refused(format!(
                "refused by the server: HTTP {status} {code}: {message}{hint} (correlation_id {cid}{retry})"
            ))
        }
        None => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(200).collect();
            Failure::Refused(format!(
                "refused by the server: HTTP {status}{}{text}{hint}",
                if text.is_empty() { "" } else { ": " }
            ))
        }
    }
}

/// ` (close code N: reason)` for a message about a close frame; empty without one.
pub(super) fn close_detail(frame: Option<&tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) if f.reason.is_empty() => format!(" (close code {})", u16::from(f.code)),
        Some(f) => format!(" (close code {}: {})", u16::from(f.code), f.reason),
        None => String::new(),
    }
}
