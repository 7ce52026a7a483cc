//! Streams a WAV file to a voxrt server (protocol v1) and prints what the server reports.
//!
//! Start a server (`cargo run`), then, from the workspace root:
//!
//! ```text
//! cargo run --example stream_wav -- /usr/share/sounds/alsa/Front_Center.wav
//! cargo run --example stream_wav -- --fast --url ws://127.0.0.1:8080 /usr/share/sounds/alsa/Front_Center.wav
//! cargo run --example stream_wav -- --json --chunk-ms 40 /usr/share/sounds/alsa/Front_Center.wav
//! ```
//!
//! (`Front_Center.wav` comes with Debian's `alsa-utils` package.)
//!
//! The file is sent at its own pace (real time) in `--chunk-ms` chunks, or as fast as the
//! server takes it with `--fast`. 16-bit integer files go out as `pcm_s16le` and 32-bit float
//! files as `pcm_f32le`; other integer widths (8, 24, 32 bit) are converted to 16-bit. The
//! sample rate and channel count are sent as they are: the server resamples and downmixes.
//! At the end of the file (or on Ctrl-C) the example sends `stop`, waits for `session.closed`
//! and prints the session's counters.
//!
//! Output: speech segments, a level meter and errors, for people; with `--json`, every server
//! event as one JSON line on stdout (the example's own messages go to stderr).
//!
//! Exit codes: 0 session closed after `stop`; 1 the session ended any other way (fatal server
//! error, connection lost, no `session.closed`); 2 the file is missing, unreadable or in an
//! unsupported format (also bad command-line arguments); 3 the server is unreachable or did not
//! speak WebSocket; 4 the server refused the stream (HTTP status, error code and message are
//! printed).

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type WsSink = futures_util::stream::SplitSink<Ws, Message>;
type WsStream = futures_util::stream::SplitStream<Ws>;

/// How long to wait for the TCP connection and the WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for `session.started` after the upgrade.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for `session.closed` after `stop`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Stream a WAV file to a voxrt server and print speech segments, levels and errors.
#[derive(Parser, Debug)]
#[command(name = "stream_wav")]
struct Args {
    /// WAV file: 16-bit int or 32-bit float (8/24/32-bit int are converted to 16-bit).
    file: PathBuf,
    /// Server address; `/v1/stream` and the query are appended.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// Audio per binary frame, milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    chunk_ms: u32,
    /// Send as fast as the server accepts instead of in real time.
    #[arg(long)]
    fast: bool,
    /// Print server events as raw JSON lines.
    #[arg(long)]
    json: bool,
}

/// Why the example stops early; each kind has its own exit code.
#[derive(Debug)]
enum Failure {
    /// The WAV file (exit 2).
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

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("stream_wav: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let mut wav = WavSource::open(&args.file)?;
    let url = stream_url(&args.url, wav.rate, wav.channels, wav.encoding)?;
    eprintln!(
        "stream_wav: {}: {} Hz, {} ch, {} ({:.2} s) -> {url}{}",
        args.file.display(),
        wav.rate,
        wav.channels,
        wav.describe(),
        wav.total_frames as f64 / f64::from(wav.rate),
        if args.fast { " (fast)" } else { "" },
    );

    let ws = connect(&url).await?;
    let (mut sink, mut stream) = ws.split();
    let mut printer = Printer::new(args.json);
    let max_frame_bytes = wait_for_start(&mut stream, &mut printer).await?;

    let bytes_per_frame = usize::from(wav.channels) * wav.encoding.bytes_per_sample();
    let wanted = (u64::from(wav.rate) * u64::from(args.chunk_ms) / 1000).max(1) as usize;
    let frames_per_chunk = wanted.min((max_frame_bytes / bytes_per_frame).max(1));

    let mut reader = tokio::spawn(read_events(stream, printer));
    let streamed = tokio::select! {
        r = send_audio(&mut sink, &mut wav, frames_per_chunk, args.fast) => r,
        joined = &mut reader => {
            // The server ended the session while audio was still going out.
            return match joined {
                Ok(Ok(closed)) => {
                    closed.print_summary(args.json);
                    Err(Failure::Session(format!(
                        "the server closed the session before the end of the file ({})",
                        closed.reason
                    )))
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(Failure::Session("the event reader stopped unexpectedly".into())),
            };
        }
    };
    let read_error = match streamed {
        Ok(outcome) => outcome.read_error,
        Err(e) => return Err(e),
    };

    if let Err(e) = sink.send(Message::text(r#"{"type":"stop"}"#)).await {
        return Err(Failure::Session(format!("could not send stop: {e}")));
    }
    let waited = tokio::select! {
        r = tokio::time::timeout(CLOSE_TIMEOUT, &mut reader) => r,
        _ = tokio::signal::ctrl_c() => {
            reader.abort();
            return Err(Failure::Session(
                "interrupted; not waiting for session.closed".into(),
            ));
        }
    };
    let closed = match waited {
        Ok(Ok(Ok(closed))) => closed,
        Ok(Ok(Err(e))) => return Err(e),
        Ok(Err(_)) => {
            return Err(Failure::Session(
                "the event reader stopped unexpectedly".into(),
            ))
        }
        Err(_) => {
            reader.abort();
            return Err(Failure::Session(format!(
                "no session.closed within {} s after stop",
                CLOSE_TIMEOUT.as_secs()
            )));
        }
    };
    // Best effort: the server closes the connection itself after session.closed.
    let _ = sink.close().await;

    closed.print_summary(args.json);
    if let Some(e) = read_error {
        return Err(Failure::Input(format!("{}: {e}", args.file.display())));
    }
    if closed.reason != "client_stop" {
        return Err(Failure::Session(format!(
            "session closed with reason {}",
            closed.reason
        )));
    }
    Ok(())
}

// ---- connection (the same code is in examples/mic_capture.rs) ----

/// `ws://host:port` plus `/v1/stream?...` for this file.
fn stream_url(base: &str, rate: u32, channels: u16, encoding: Encoding) -> Result<String, Failure> {
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

/// Opens the WebSocket, turning every failure into an unreachable/refused message.
async fn connect(url: &str) -> Result<Ws, Failure> {
    let attempt = tokio_tungstenite::connect_async_with_config(url, None, true);
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Err(_) => Err(Failure::Unreachable(format!(
            "server unreachable: no answer from {url} within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(response))) => Err(refusal(&response)),
        Ok(Err(tungstenite::Error::Io(e))) => Err(Failure::Unreachable(format!(
            "server unreachable at {url}: {e} (is the server running? start it with `cargo run`)"
        ))),
        Ok(Err(tungstenite::Error::Url(e))) => Err(Failure::Unreachable(format!(
            "cannot connect to {url}: {e}"
        ))),
        Ok(Err(e)) => Err(Failure::Unreachable(format!("no WebSocket at {url}: {e}"))),
    }
}

/// Describes an HTTP refusal: status plus the server's `{"error":{code,message,...}}`.
fn refusal(response: &tungstenite::handshake::client::Response) -> Failure {
    let status = response.status();
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
                "refused by the server: HTTP {status} {code}: {message} (correlation_id {cid}{retry})"
            ))
        }
        None => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(200).collect();
            Failure::Refused(format!(
                "refused by the server: HTTP {status}{}{text}",
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
                    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
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

struct SendOutcome {
    /// Set when the file could not be read to its end.
    read_error: Option<String>,
}

/// Sends the file in chunks, paced to real time unless `fast`; Ctrl-C ends it early.
async fn send_audio(
    sink: &mut WsSink,
    wav: &mut WavSource,
    frames_per_chunk: usize,
    fast: bool,
) -> Result<SendOutcome, Failure> {
    let start = Instant::now();
    let mut frames_sent: u64 = 0;
    let mut chunk = Vec::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let read = wav.read_chunk(frames_per_chunk, &mut chunk);
        let (frames, read_error) = match read {
            Ok(frames) => (frames, None),
            Err((frames, e)) => (frames, Some(e)),
        };
        if frames > 0 {
            let frame = Message::binary(std::mem::take(&mut chunk));
            if let Err(e) = sink.send(frame).await {
                return Err(Failure::Session(format!(
                    "connection lost while sending: {e}"
                )));
            }
            frames_sent += frames as u64;
        }
        if read_error.is_some() || frames < frames_per_chunk {
            let read_error = read_error.map(|e| {
                format!(
                    "the WAV data ends early ({e}); sent the first {:.2} s",
                    frames_sent as f64 / f64::from(wav.rate)
                )
            });
            return Ok(SendOutcome { read_error });
        }
        if !fast {
            let due = start + Duration::from_secs_f64(frames_sent as f64 / f64::from(wav.rate));
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = &mut ctrl_c => {
                    eprintln!("stream_wav: interrupted, sending stop");
                    return Ok(SendOutcome { read_error: None });
                }
            }
        } else {
            // Stay responsive to Ctrl-C without slowing down.
            tokio::select! {
                biased;
                _ = &mut ctrl_c => {
                    eprintln!("stream_wav: interrupted, sending stop");
                    return Ok(SendOutcome { read_error: None });
                }
                _ = std::future::ready(()) => {}
            }
        }
    }
}

/// What the client declares in `encoding`.
#[derive(Debug, Clone, Copy)]
enum Encoding {
    S16,
    F32,
}

impl Encoding {
    fn name(self) -> &'static str {
        match self {
            Encoding::S16 => "pcm_s16le",
            Encoding::F32 => "pcm_f32le",
        }
    }

    fn bytes_per_sample(self) -> usize {
        match self {
            Encoding::S16 => 2,
            Encoding::F32 => 4,
        }
    }
}

/// A WAV file read chunk by chunk and encoded for the wire.
struct WavSource {
    reader: hound::WavReader<BufReader<File>>,
    rate: u32,
    channels: u16,
    bits: u16,
    float: bool,
    encoding: Encoding,
    total_frames: u32,
}

impl WavSource {
    fn open(path: &std::path::Path) -> Result<Self, Failure> {
        let shown = path.display();
        let reader = hound::WavReader::open(path).map_err(|e| match e {
            hound::Error::IoError(io) if io.kind() == std::io::ErrorKind::NotFound => {
                Failure::Input(format!("{shown}: file not found"))
            }
            hound::Error::IoError(io) => Failure::Input(format!("{shown}: cannot read: {io}")),
            other => Failure::Input(format!("{shown}: not a readable WAV file: {other}")),
        })?;
        let spec = reader.spec();
        let float = spec.sample_format == hound::SampleFormat::Float;
        let encoding = match (float, spec.bits_per_sample) {
            (true, 32) => Encoding::F32,
            (false, 1..=32) => Encoding::S16,
            (true, bits) => {
                return Err(Failure::Input(format!(
                "{shown}: {bits}-bit float WAV is not supported (use 32-bit float or integer PCM)"
            )))
            }
            (false, bits) => {
                return Err(Failure::Input(format!(
                    "{shown}: {bits}-bit integer WAV is not supported"
                )))
            }
        };
        if spec.channels == 0 || spec.sample_rate == 0 {
            return Err(Failure::Input(format!(
                "{shown}: the header declares {} channels at {} Hz",
                spec.channels, spec.sample_rate
            )));
        }
        let total_frames = reader.duration();
        Ok(WavSource {
            reader,
            rate: spec.sample_rate,
            channels: spec.channels,
            bits: spec.bits_per_sample,
            float,
            encoding,
            total_frames,
        })
    }

    fn describe(&self) -> String {
        match (self.float, self.bits) {
            (true, _) => "32-bit float, sent as pcm_f32le".to_string(),
            (false, 16) => "16-bit int, sent as pcm_s16le".to_string(),
            (false, bits) => format!("{bits}-bit int, converted to pcm_s16le"),
        }
    }

    /// Appends up to `frames` whole sample frames to `out`; returns how many. On a read error,
    /// returns the whole frames read before it along with the message.
    fn read_chunk(&mut self, frames: usize, out: &mut Vec<u8>) -> Result<usize, (usize, String)> {
        let channels = usize::from(self.channels);
        let wanted = frames * channels;
        out.clear();
        out.reserve(wanted * self.encoding.bytes_per_sample());
        let mut samples = 0usize;
        let mut failure = None;
        if self.float {
            for s in self.reader.samples::<f32>().take(wanted) {
                match s {
                    Ok(v) => out.extend_from_slice(&v.to_le_bytes()),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
                samples += 1;
            }
        } else {
            let bits = u32::from(self.bits);
            for s in self.reader.samples::<i32>().take(wanted) {
                match s {
                    Ok(v) => out.extend_from_slice(&to_s16(v, bits).to_le_bytes()),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
                samples += 1;
            }
        }
        // Only whole sample frames go out.
        let whole = samples / channels;
        out.truncate(whole * channels * self.encoding.bytes_per_sample());
        match failure {
            None => Ok(whole),
            Some(e) => Err((whole, e.to_string().trim_end_matches('.').to_string())),
        }
    }
}

/// An integer sample of `bits` significant bits as 16-bit.
fn to_s16(v: i32, bits: u32) -> i16 {
    let scaled = if bits <= 16 {
        v << (16 - bits)
    } else {
        v >> (bits - 16)
    };
    scaled.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

// ---- event printing (the same code is in examples/mic_capture.rs) ----

/// `session.closed`: why and the session's counters.
struct Closed {
    reason: String,
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

    /// The counters on stdout, or on stderr when stdout carries JSON lines.
    fn print_summary(&self, json: bool) {
        if json {
            eprintln!("{}", self.summary());
        } else {
            println!("{}", self.summary());
        }
    }

    fn summary(&self) -> String {
        let n = |k: &str| self.stats.get(k).and_then(Value::as_u64).unwrap_or(0);
        format!(
            "session closed ({}): chunks in {}, processed {}, dropped {}, audio {}",
            self.reason,
            n("chunks_in"),
            n("chunks_processed"),
            n("chunks_dropped"),
            fmt_ms(n("audio_ms")),
        )
    }
}

/// A parsed server event.
struct Event {
    kind: String,
    value: Value,
}

/// Prints server events: JSON lines, or a human view with a level meter that is redrawn in
/// place on a terminal and printed once per second of audio otherwise.
struct Printer {
    json: bool,
    tty: bool,
    meter_shown: bool,
    in_speech: bool,
    /// Non-terminal output: the current second of audio, the end of its last level interval,
    /// and the loudest RMS and peak in it.
    window: Option<(u64, u64, f64, f64)>,
}

impl Printer {
    fn new(json: bool) -> Self {
        Printer {
            json,
            tty: std::io::stdout().is_terminal(),
            meter_shown: false,
            in_speech: false,
            window: None,
        }
    }

    /// Prints one text frame from the server and returns it parsed.
    fn print(&mut self, text: &str) -> Event {
        let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if self.json {
            println!("{text}");
        } else {
            self.human(&kind, &value, text);
        }
        let _ = std::io::stdout().flush();
        Event { kind, value }
    }

    fn human(&mut self, kind: &str, v: &Value, raw: &str) {
        let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let float = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(-120.0);
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        match kind {
            "level" => self.level(num("t_ms"), float("rms_dbfs"), float("peak_dbfs")),
            "vad" => {
                let t = num("t_ms");
                if text("event") == "speech_start" {
                    self.in_speech = true;
                    self.line(&format!("{}  speech started", fmt_ms(t)));
                } else {
                    self.in_speech = false;
                    let d = num("duration_ms");
                    self.line(&format!(
                        "{}  speech segment: start {}, duration {}",
                        fmt_ms(t),
                        fmt_ms(t.saturating_sub(d)),
                        fmt_ms(d)
                    ));
                }
            }
            "session.started" => {
                let input = v.get("input").cloned().unwrap_or(Value::Null);
                let get = |k: &str| input.get(k).map(|x| x.to_string()).unwrap_or_default();
                self.line(&format!(
                    "session {} started: input {} Hz, {} ch, {} -> pipeline 16 kHz mono",
                    text("session_id"),
                    get("sample_rate"),
                    get("channels"),
                    get("encoding").trim_matches('"'),
                ));
            }
            "flushed" => self.line(&format!("flushed: {} processed", fmt_ms(num("audio_ms")))),
            "error" => {
                let fatal = v.get("fatal").and_then(Value::as_bool).unwrap_or(false);
                self.line(&format!(
                    "server error {}: {} ({}, correlation_id {})",
                    text("code"),
                    text("message"),
                    if fatal { "fatal" } else { "non-fatal" },
                    text("correlation_id"),
                ));
            }
            "session.closed" => {
                self.flush_window();
                self.end_line();
            }
            "pong" => {}
            _ => self.line(&format!("event: {raw}")),
        }
    }

    fn level(&mut self, t_ms: u64, rms: f64, peak: f64) {
        if self.tty {
            let line = meter_line(t_ms, rms, peak, Some(self.in_speech));
            print!("\r\x1b[2K{line}");
            self.meter_shown = true;
            return;
        }
        let second = t_ms.saturating_sub(1) / 1000;
        match self.window {
            Some((s, _, r, p)) if s == second => {
                self.window = Some((s, t_ms, r.max(rms), p.max(peak)));
            }
            _ => {
                self.flush_window();
                self.window = Some((second, t_ms, rms, peak));
            }
        }
    }

    /// Non-terminal output: one meter line per second of audio (the loudest level in it).
    fn flush_window(&mut self) {
        if let Some((_, t_ms, rms, peak)) = self.window.take() {
            println!("{}", meter_line(t_ms, rms, peak, None));
        }
    }

    /// Prints a line of its own, clearing the meter first.
    fn line(&mut self, s: &str) {
        self.end_line();
        println!("{s}");
    }

    /// Ends an in-place meter line so that what follows starts on a fresh line.
    fn end_line(&mut self) {
        if self.meter_shown {
            print!("\r\x1b[2K");
            self.meter_shown = false;
            let _ = std::io::stdout().flush();
        }
    }
}

/// `   1.30 s  [#########........|...]  -23.4 dBFS (peak  -8.1)  SPEECH`; the indicator
/// only on a live (terminal) line.
fn meter_line(t_ms: u64, rms: f64, peak: f64, speech: Option<bool>) -> String {
    const WIDTH: usize = 30;
    const FLOOR: f64 = -60.0;
    let pos = |db: f64| (((db - FLOOR) / -FLOOR).clamp(0.0, 1.0) * WIDTH as f64).round() as usize;
    let (fill, peak_pos) = (pos(rms), pos(peak));
    let bar: String = (0..WIDTH)
        .map(|i| {
            if i < fill {
                '#'
            } else if peak_pos > 0 && i == peak_pos.min(WIDTH) - 1 {
                '|'
            } else {
                '.'
            }
        })
        .collect();
    let indicator = match speech {
        Some(true) => "  SPEECH",
        Some(false) => "  silence",
        None => "",
    };
    format!(
        "{}  level [{bar}] {rms:6.1} dBFS (peak {peak:6.1}){indicator}",
        fmt_ms(t_ms)
    )
}

/// `1234` -> `   1.23 s`.
fn fmt_ms(ms: u64) -> String {
    format!("{:7.2} s", ms as f64 / 1000.0)
}
