//! The client side of protocol v1 that `stream_wav` and `mic_capture` share: building the
//! stream URL, connecting (and explaining a refusal), waiting for `session.started`, printing
//! server events, resuming the session after a connection loss, stopping the session, and the
//! exit codes.
//!
//! Layout: `connect.rs` opens connections (new and resumed) and explains refusals; `link.rs`
//! is the task owning a session's connection (events, audio, reconnect and resume);
//! `ring.rs` keeps the audio the server has not confirmed; `backoff.rs` the delays between
//! reconnect attempts; `printer.rs` shows events.
//!
//! Each example declares `mod common;`; cargo does not build a subdirectory of `examples/` as
//! an example of its own. Nothing here prints the example's name: messages that need it are
//! returned as a [`Failure`] and printed by [`exit`].

mod backoff;
mod connect;
mod link;
mod printer;
mod ring;

use connect::{close_detail, Ws};
use futures_util::StreamExt;
use link::{Command, Link, ReadState, Resume, WriteState};
use printer::{fmt_ms, Printer};
use ring::AudioRing;
use serde_json::Value;
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// How long to wait for `session.started` after the upgrade.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for `session.closed` after `stop` (plus the resume window, for a resume
/// on the way).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Where sessions are opened and resumed: `ws(s)://host:port/v1/stream`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    path: String,
}

impl Endpoint {
    /// `--url` as given: `ws(s)://host:port`, also `http(s)://`, optionally already ending in
    /// `/v1/stream`; anything with a query of its own is a bad argument.
    pub fn parse(base: &str) -> Result<Endpoint, Failure> {
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
        Ok(Endpoint { path })
    }

    /// The URL of a new session in this format.
    pub fn stream_url(&self, rate: u32, channels: u16, encoding: Encoding) -> String {
        format!(
            "{}?sample_rate={rate}&channels={channels}&encoding={}",
            self.path,
            encoding.name()
        )
    }

    /// The URL resuming session `id` after the events up to `last_seq` (no format
    /// parameters: the session has its format).
    fn resume_url(&self, id: &str, token: &str, last_seq: u64) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("resume", id)
            .append_pair("resume_token", token)
            .append_pair("last_seq", &last_seq.to_string())
            .finish();
        format!("{}?{query}", self.path)
    }
}

/// What an example streams, and how.
pub struct Options {
    /// The example's name, for its lines on stderr.
    pub program: &'static str,
    pub endpoint: Endpoint,
    /// An API key or JWT, presented as a Bearer credential.
    pub token: Option<String>,
    pub rate: u32,
    pub channels: u16,
    pub encoding: Encoding,
    /// Print server events as JSON lines.
    pub json: bool,
    /// Resume the session after a connection loss (when the server offers it).
    pub resume: bool,
}

/// A session the server has confirmed with `session.started`. Its connection belongs to a
/// task of its own (see `link.rs`) that prints the server's events from now on, so that they
/// show up while the caller sends audio on `uplink`, and that resumes the session after a
/// connection loss.
pub struct Session {
    pub uplink: Uplink,
    pub events: Events,
    /// `limits.max_binary_frame_bytes` from `session.started`.
    max_frame_bytes: usize,
}

impl Session {
    /// Connects, waits for `session.started` (printing it) and starts the connection's task.
    pub async fn open(opts: Options) -> Result<Session, Failure> {
        let url = opts
            .endpoint
            .stream_url(opts.rate, opts.channels, opts.encoding);
        let mut ws = connect::connect(&url, opts.token.as_deref()).await?;
        let mut printer = Printer::new(opts.json);
        let started = wait_for_start(&mut ws, &mut printer).await?;
        let max = started
            .pointer("/limits/max_binary_frame_bytes")
            .and_then(Value::as_u64)
            .unwrap_or(64 * 1024);
        let max_frame_bytes = usize::try_from(max).unwrap_or(usize::MAX).max(1);
        let resume = opts.resume.then(|| resume_offer(&started)).flatten();
        let bytes_per_frame = usize::from(opts.channels) * opts.encoding.bytes_per_sample();
        let ring_frames = resume
            .as_ref()
            .map_or(0, |r| r.window.as_secs() * u64::from(opts.rate));
        let window = resume.as_ref().map_or(Duration::ZERO, |r| r.window);
        let link = Link {
            program: opts.program,
            endpoint: opts.endpoint,
            token: opts.token,
            session_id: started
                .get("session_id")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            resume,
            rate: opts.rate,
            max_frame_bytes,
            json: opts.json,
            reader: ReadState {
                printer,
                last_seq: started.get("seq").and_then(Value::as_u64).unwrap_or(0),
                gaps: 0,
            },
            writer: WriteState {
                ring: AudioRing::new(bytes_per_frame, ring_frames),
                stop_requested: false,
                commands_done: false,
            },
        };
        let (tx, rx) = mpsc::channel(UPLINK_COMMANDS);
        let task = tokio::spawn(link.run(ws, rx));
        Ok(Session {
            uplink: Uplink { tx },
            events: Events { task, window },
            max_frame_bytes,
        })
    }

    /// The most whole sample frames of `bytes_per_frame` bytes one binary frame may carry
    /// (at least one).
    pub fn max_frames(&self, bytes_per_frame: usize) -> usize {
        (self.max_frame_bytes / bytes_per_frame).max(1)
    }
}

/// Commands (audio chunks, `stop`) that may wait for the connection's task: few, so that a
/// server applying backpressure (or a reconnect with a full ring) holds the example up.
const UPLINK_COMMANDS: usize = 4;

/// `resume` from `session.started`: the token and window when the server offers resume.
fn resume_offer(started: &Value) -> Option<Resume> {
    let token = started.pointer("/resume/token")?.as_str()?.to_string();
    let window_s = started.pointer("/resume/window_s")?.as_u64()?;
    (window_s > 0).then(|| Resume {
        token,
        window: Duration::from_secs(window_s),
    })
}

/// Where the example's audio goes.
pub struct Uplink {
    tx: mpsc::Sender<Command>,
}

/// The session's task has ended: [`Events::ended`] says how.
#[derive(Debug)]
pub struct Gone;

impl Uplink {
    /// Sends whole sample frames, at most one binary frame's worth (see
    /// [`Session::max_frames`]); waits while the server or a reconnect holds the audio up.
    pub async fn send(&mut self, bytes: Vec<u8>) -> Result<(), Gone> {
        self.tx.send(Command::Audio(bytes)).await.map_err(|_| Gone)
    }
}

/// The task serving the session until `session.closed`.
pub struct Events {
    task: JoinHandle<Result<Closed, Failure>>,
    /// The resume window: how much longer than [`CLOSE_TIMEOUT`] `stop` may take.
    window: Duration,
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

    /// Sends `stop` and waits for `session.closed` (Ctrl-C or [`CLOSE_TIMEOUT`], plus the
    /// resume window, give up waiting, and fail); the connection closes after it.
    pub async fn stop(mut self, uplink: Uplink) -> Result<Closed, Failure> {
        let limit = CLOSE_TIMEOUT + self.window;
        let interrupted = {
            let finish = async {
                // Waits while a reconnect holds audio up; a send error means the task has
                // ended already: `ended` says how.
                let _ = uplink.tx.send(Command::Stop).await;
                drop(uplink);
                self.ended().await
            };
            tokio::select! {
                r = tokio::time::timeout(limit, finish) => Some(r),
                _ = tokio::signal::ctrl_c() => None,
            }
        };
        let Some(waited) = interrupted else {
            self.task.abort();
            return Err(Failure::Session(
                "interrupted; not waiting for session.closed".into(),
            ));
        };
        let Ok(closed) = waited else {
            self.task.abort();
            return Err(Failure::Session(format!(
                "no session.closed within {} s after stop",
                limit.as_secs()
            )));
        };
        closed
    }
}

/// The control message that ends a session (the server answers with `session.closed`).
fn stop_message() -> Message {
    Message::text(r#"{"type":"stop"}"#)
}

/// Waits for `session.started`, prints it, and returns it.
async fn wait_for_start(ws: &mut Ws, printer: &mut Printer) -> Result<Value, Failure> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let next = match tokio::time::timeout_at(deadline, ws.next()).await {
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
                let value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                let event = printer.print(text.as_str(), value);
                if event.kind == "session.started" {
                    return Ok(event.value);
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
