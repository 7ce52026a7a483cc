//! The client side of protocol v1 that `stream_wav` and `mic_capture` share: building the
//! stream URL, connecting (and explaining a refusal), waiting for `session.started`, printing
//! server events, stopping the session, and the exit codes.
//!
//! Each example declares `mod common;`; cargo does not build a subdirectory of `examples/` as
//! an example of its own. Nothing here prints the example's name: messages that need it are
//! returned as a [`Failure`] and printed by [`exit`].

mod printer;

use futures_util::{SinkExt, StreamExt};
use printer::{fmt_ms, Printer};
use serde_json::Value;
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// Where the examples send audio (binary frames) and `stop`.
pub type WsSink = futures_util::stream::SplitSink<Ws, Message>;
type WsStream = futures_util::stream::SplitStream<Ws>;

/// How long to wait for the TCP connection and the WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for `session.started` after the upgrade.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for `session.closed` after `stop`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to let the close handshake finish after `session.closed`.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an example stops early; each kind has its own exit code.
#[derive(Debug)]
pub enum Failure {
    /// The audio source (WAV file, input device) or the command line (exit 2).
    Input(String),
    /// No connection or no WebSocket (exit 3).
    Unreachable(String),
    /// An HTTP refusal before the upgrade (exit 4).
    Refused(String),
    /// The session went wrong after the upgrade (exit 1).
    Session(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Session(_) => 1,
            Failure::Input(_) => 2,
            Failure::Unreachable(_) => 3,
            Failure::Refused(_) => 4,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Input(m)
            | Failure::Unreachable(m)
            | Failure::Refused(m)
            | Failure::Session(m) => f.write_str(m),
        }
    }
}

/// The process exit status for `main`: 0 on success, otherwise the failure's own code after
/// printing it as `program: message` on stderr.
pub fn exit(program: &str, result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{program}: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

/// A report line for people: on stdout, or on stderr when stdout carries JSON lines (`--json`),
/// so that stdout stays machine-readable.
pub fn print_report(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// What the client declares in `encoding`.
#[derive(Debug, Clone, Copy)]
pub enum Encoding {
    S16,
    F32,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::S16 => "pcm_s16le",
            Encoding::F32 => "pcm_f32le",
        }
    }

    pub fn bytes_per_sample(self) -> usize {
        match self {
            Encoding::S16 => 2,
            Encoding::F32 => 4,
        }
    }
}

/// Sample frames in `chunk_ms` of audio at `rate` (at least one): the `--chunk-ms` size.
pub fn chunk_frames(rate: u32, chunk_ms: u32) -> usize {
    (u64::from(rate) * u64::from(chunk_ms) / 1000).max(1) as usize
}

/// `ws://host:port` plus `/v1/stream?...` for this format. `--url` may also be `http(s)://`
/// or already end in `/v1/stream`; anything with a query of its own is a bad argument.
pub fn stream_url(
    base: &str,
    rate: u32,
    channels: u16,
    encoding: Encoding,
) -> Result<String, Failure> {
    let base = base.trim().trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        base.to_string()
    };
    if !(base.starts_with("ws://") || base.starts_with("wss://")) || base.contains('?') {
        return Err(Failure::Input(format!(
            "--url must look like ws://HOST:PORT (got \"{base}\")"
        )));
    }
    let path = if base.ends_with("/v1/stream") {
        base
    } else {
        format!("{base}/v1/stream")
    };
    Ok(format!(
        "{path}?sample_rate={rate}&channels={channels}&encoding={}",
        encoding.name()
    ))
}

/// A session the server has confirmed with `session.started`: audio may go out on `sink`.
pub struct Session {
    pub sink: WsSink,
    /// `limits.max_binary_frame_bytes` from `session.started`.
    max_frame_bytes: usize,
    events: WsStream,
    printer: Printer,
}

impl Session {
    /// Connects to `url`, presenting `token` (an API key or JWT) as a Bearer credential when
    /// given, and waits for `session.started`, printing it (as JSON with `json`).
    pub async fn open(url: &str, token: Option<&str>, json: bool) -> Result<Session, Failure> {
        let (sink, mut events) = connect(url, token).await?.split();
        let mut printer = Printer::new(json);
        let max_frame_bytes = wait_for_start(&mut events, &mut printer).await?;
        Ok(Session {
            sink,
            max_frame_bytes,
            events,
            printer,
        })
    }

    /// The most whole sample frames of `bytes_per_frame` bytes one binary frame may carry
    /// (at least one).
    pub fn max_frames(&self, bytes_per_frame: usize) -> usize {
        (self.max_frame_bytes / bytes_per_frame).max(1)
    }

    /// Prints the server's events from now on in a task of their own, so that they show up
    /// while the caller sends audio on the returned sink.
    pub fn read_events(self) -> (WsSink, Events) {
        let task = tokio::spawn(read_events(self.events, self.printer));
        (self.sink, Events { task })
    }
}

/// The task printing server events until `session.closed`.
pub struct Events {
    task: JoinHandle<Result<Closed, Failure>>,
}

impl Events {
    /// Resolves once the task has ended: with `session.closed`, or with why it never came.
    /// Cancel-safe, for a `tokio::select!` next to the audio being sent: the server may end
    /// the session at any time.
    pub async fn ended(&mut self) -> Result<Closed, Failure> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Session(
                "the event reader stopped unexpectedly".into(),
            )),
        }
    }

    /// Sends `stop` and waits for `session.closed` (Ctrl-C or [`CLOSE_TIMEOUT`] give up
    /// waiting, and fail), then closes the connection.
    pub async fn stop(mut self, mut sink: WsSink) -> Result<Closed, Failure> {
        if let Err(e) = sink.send(stop_message()).await {
            return Err(Failure::Session(format!("could not send stop: {e}")));
        }
        let waited = tokio::select! {
            r = tokio::time::timeout(CLOSE_TIMEOUT, self.ended()) => r,
            _ = tokio::signal::ctrl_c() => {
                self.task.abort();
                return Err(Failure::Session(
                    "interrupted; not waiting for session.closed".into(),
                ));
            }
        };
        let Ok(closed) = waited else {
            self.task.abort();
            return Err(Failure::Session(format!(
                "no session.closed within {} s after stop",
                CLOSE_TIMEOUT.as_secs()
            )));
        };
        let closed = closed?;
        // Best effort: the server closes the connection itself after session.closed.
        let _ = sink.close().await;
        Ok(closed)
    }
}

/// The control message that ends a session (the server answers with `session.closed`); public
/// for a caller that has to end a session before reading its events.
pub fn stop_message() -> Message {
    Message::text(r#"{"type":"stop"}"#)
}

/// Opens the WebSocket, turning every failure into an unreachable/refused message.
async fn connect(url: &str, token: Option<&str>) -> Result<Ws, Failure> {
    use tungstenite::client::IntoClientRequest;
    let mut request = url
        .into_client_request()
        .map_err(|e| Failure::Unreachable(format!("cannot connect to {url}: {e}")))?;
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Failure::Input("--token must be printable ASCII".into()))?;
        request.headers_mut().insert("authorization", value);
    }
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

/// Waits for `session.started`, prints it, and returns `limits.max_binary_frame_bytes`.
async fn wait_for_start(stream: &mut WsStream, printer: &mut Printer) -> Result<usize, Failure> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let next = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(next) => next,
            Err(_) => {
                return Err(Failure::Session(format!(
                    "no session.started within {} s",
                    START_TIMEOUT.as_secs()
                )))
            }
        };
        match next {
            Some(Ok(Message::Text(text))) => {
                let event = printer.print(text.as_str());
                if event.kind == "session.started" {
                    let max = event
                        .value
                        .pointer("/limits/max_binary_frame_bytes")
                        .and_then(Value::as_u64)
                        .unwrap_or(64 * 1024);
                    return Ok(usize::try_from(max).unwrap_or(usize::MAX));
                }
                if event.kind == "session.closed" {
                    return Err(Failure::Session(
                        "the server closed the session before it started".into(),
                    ));
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(Failure::Session(format!(
                    "the server closed the connection before session.started{}",
                    close_detail(frame.as_ref())
                )))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Failure::Session(format!("connection lost: {e}"))),
            None => {
                return Err(Failure::Session(
                    "connection closed before session.started".into(),
                ))
            }
        }
    }
}

/// ` (close code N: reason)` for a message about a close frame; empty without one.
fn close_detail(frame: Option<&tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) if f.reason.is_empty() => format!(" (close code {})", u16::from(f.code)),
        Some(f) => format!(" (close code {}: {})", u16::from(f.code), f.reason),
        None => String::new(),
    }
}

/// Reads server events until `session.closed`, printing each one.
async fn read_events(mut stream: WsStream, mut printer: Printer) -> Result<Closed, Failure> {
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => {
                let event = printer.print(text.as_str());
                if event.kind == "session.closed" {
                    // Let the close handshake finish (tungstenite answers the close frame).
                    let drain = async {
                        while let Some(Ok(m)) = stream.next().await {
                            if m.is_close() {
                                break;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
                    return Ok(Closed::from_event(&event.value));
                }
            }
            Some(Ok(Message::Close(frame))) => {
                printer.end_line();
                return Err(Failure::Session(format!(
                    "the server closed the connection without session.closed{}",
                    close_detail(frame.as_ref())
                )));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                printer.end_line();
                return Err(Failure::Session(format!("connection lost: {e}")));
            }
            None => {
                printer.end_line();
                return Err(Failure::Session(
                    "connection closed without session.closed".into(),
                ));
            }
        }
    }
}

/// `session.closed`: why and the session's counters.
pub struct Closed {
    pub reason: String,
    stats: Value,
}

impl Closed {
    fn from_event(v: &Value) -> Self {
        Closed {
            reason: v
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            stats: v.get("stats").cloned().unwrap_or(Value::Null),
        }
    }

    /// The counters, as a report line (see [`print_report`]).
    pub fn print_summary(&self, json: bool) {
        let n = |k: &str| self.stats.get(k).and_then(Value::as_u64).unwrap_or(0);
        print_report(
            json,
            &format!(
                "session closed ({}): chunks in {}, processed {}, dropped {}, audio {}",
                self.reason,
                n("chunks_in"),
                n("chunks_processed"),
                n("chunks_dropped"),
                fmt_ms(n("audio_ms")),
            ),
        );
    }

    /// Fails unless the session ended because the client sent `stop`.
    pub fn expect_client_stop(&self) -> Result<(), Failure> {
        if self.reason == "client_stop" {
            Ok(())
        } else {
            Err(Failure::Session(format!(
                "session closed with reason {}",
                self.reason
            )))
        }
    }
}
