//! Captures the microphone with cpal and streams it live to a voxrt server (protocol v1).
//!
//! Start a server (`cargo run`), then, from the workspace root:
//!
//! ```text
//! cargo run --example mic_capture
//! cargo run --example mic_capture -- --list-devices
//! cargo run --example mic_capture -- --device "hw:CARD=1,DEV=0" --url ws://127.0.0.1:8080
//! cargo run --example mic_capture -- --json
//! ```
//!
//! (On Linux, building needs the ALSA headers: `apt-get install libasound2-dev pkg-config`.)
//!
//! Without a sound card, ALSA's `default` device cannot be opened: the example says so and
//! exits with 2 (alsa-lib itself prints a few `ALSA lib ...` lines to stderr first). ALSA's
//! `null` device (`--device null`) delivers silence as fast as it can, not in real time, so
//! most of its buffers are dropped (and counted) on the way to the server.
//!
//! The device's own default input configuration is used as it is: its sample rate and channel
//! count go to the server unchanged (the server resamples and downmixes; nothing is resampled
//! here). `i16` devices stream `pcm_s16le` and `f32` devices `pcm_f32le`; any other sample
//! format is converted to `f32` and streamed as `pcm_f32le`.
//!
//! The cpal callback never blocks: it encodes the buffer and hands it to the WebSocket task
//! over a bounded channel with `try_send`; when the channel is full the buffer is dropped and
//! counted (reported at the end).
//!
//! The live line shows a level meter from the server's `level` events and a SPEECH/silence
//! indicator; each speech segment is printed with its start time and duration. `--json`
//! prints every server event as a JSON line instead. Ctrl-C sends `stop`, waits for
//! `session.closed` and prints the session's counters (Ctrl-C again stops waiting).
//!
//! `--device NAME` takes a device id as `--list-devices` shows it (`alsa:hw:CARD=1,DEV=0`),
//! the id without the host prefix (`hw:CARD=1,DEV=0`), or the device's name; a part of a name
//! or id works when it matches exactly one input device.
//!
//! Exit codes: 0 session closed after Ctrl-C; 1 the session ended any other way (fatal server
//! error, connection lost, no `session.closed`); 2 no usable input device (or bad arguments);
//! 3 the server is unreachable or did not speak WebSocket; 4 the server refused the stream
//! (HTTP status, error code and message are printed).

use clap::Parser;
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, Sample, SampleFormat, SizedSample};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
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
/// Capture buffers that may wait for the WebSocket task before new ones are dropped.
const CHANNEL_BUFFERS: usize = 128;

/// Stream the microphone to a voxrt server: live level meter, speech segments, errors.
#[derive(Parser, Debug)]
#[command(name = "mic_capture")]
struct Args {
    /// Server address; `/v1/stream` and the query are appended.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// Input device: id, id without host prefix, or name (see --list-devices).
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
    /// List input devices and their supported configurations, then exit.
    #[arg(long)]
    list_devices: bool,
    /// Collect this much audio per binary frame, milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    chunk_ms: u32,
    /// Print server events as raw JSON lines.
    #[arg(long)]
    json: bool,
}

/// Why the example stops early; each kind has its own exit code.
#[derive(Debug)]
enum Failure {
    /// No usable input device, or bad arguments (exit 2).
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
    let result = if args.list_devices {
        list_devices()
    } else {
        run(args).await
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("mic_capture: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

const TRY_DEVICES: &str =
    "try `--list-devices` to see the input devices, then `--device NAME` to pick one";

/// `--list-devices`: every input device of the default host with its configurations.
fn list_devices() -> Result<(), Failure> {
    let host = cpal::default_host();
    let host_name = host.id().name();
    let default = host.default_input_device();
    let default_id = default
        .as_ref()
        .and_then(|d| d.id().ok())
        .map(|id| id.to_string());
    let default_state = match &default {
        None => "none".to_string(),
        Some(d) => {
            let id = default_id.as_deref().unwrap_or("(no id)");
            match d.default_input_config() {
                Ok(c) => format!("{id} ({})", describe_config(&c)),
                Err(e) => format!("{id}, unusable: {e}"),
            }
        }
    };
    println!("host {host_name}; default input: {default_state}");
    let devices: Vec<cpal::Device> = match host.input_devices() {
        Ok(devices) => devices.collect(),
        Err(e) => {
            return Err(Failure::Input(format!(
                "cannot list the input devices of host {host_name}: {e}"
            )))
        }
    };
    if devices.is_empty() {
        return Err(Failure::Input(format!(
            "no input devices found (host {host_name})"
        )));
    }
    for device in &devices {
        let id = device
            .id()
            .map(|id| id.to_string())
            .unwrap_or_else(|_| "(no id)".into());
        let name = device
            .description()
            .map(|d| d.to_string())
            .unwrap_or_default();
        println!("{id}  {name}");
        match device.default_input_config() {
            Ok(c) => println!("    default: {}", describe_config(&c)),
            Err(e) => println!("    default: unusable ({e})"),
        }
        match device.supported_input_configs() {
            Ok(configs) => {
                for line in summarize_configs(configs) {
                    println!("    supports: {line}");
                }
            }
            Err(e) => println!("    supports: unknown ({e})"),
        }
    }
    Ok(())
}

fn describe_config(c: &cpal::SupportedStreamConfig) -> String {
    format!(
        "{} Hz, {} ch, {}",
        c.sample_rate(),
        c.channels(),
        c.sample_format()
    )
}

/// Folds config ranges into lines of `rates, channels: formats`.
fn summarize_configs(
    configs: impl Iterator<Item = cpal::SupportedStreamConfigRange>,
) -> Vec<String> {
    // (rates, format) -> channel counts, then (rates, channel counts) -> formats; first-seen order.
    let mut channels: Vec<((u32, u32, SampleFormat), Vec<u16>)> = Vec::new();
    for c in configs {
        let key = (c.min_sample_rate(), c.max_sample_rate(), c.sample_format());
        match channels.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(c.channels()),
            None => channels.push((key, vec![c.channels()])),
        }
    }
    let mut lines: Vec<((u32, u32, String), Vec<String>)> = Vec::new();
    for ((min, max, format), list) in channels {
        let key = (min, max, number_ranges(list));
        match lines.iter_mut().find(|(k, _)| *k == key) {
            Some((_, formats)) => formats.push(format.to_string()),
            None => lines.push((key, vec![format.to_string()])),
        }
    }
    lines
        .into_iter()
        .map(|((min, max, ch), formats)| {
            let rates = if min == max {
                format!("{min} Hz")
            } else {
                format!("{min}..={max} Hz")
            };
            format!("{rates}, {ch} ch: {}", formats.join(", "))
        })
        .collect()
}

/// `[1, 2, 3, 6]` -> `1..=3, 6`.
fn number_ranges(mut v: Vec<u16>) -> String {
    v.sort_unstable();
    v.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}..={}", v[i], v[j])
        });
        i = j + 1;
    }
    parts.join(", ")
}

/// The default input device, or the one `--device` names.
fn pick_device(host: &cpal::Host, wanted: Option<&str>) -> Result<cpal::Device, Failure> {
    let host_name = host.id().name();
    let Some(wanted) = wanted else {
        return host.default_input_device().ok_or_else(|| {
            Failure::Input(format!(
                "no input device found (host {host_name}); {TRY_DEVICES}"
            ))
        });
    };
    let devices: Vec<cpal::Device> = host
        .input_devices()
        .map_err(|e| {
            Failure::Input(format!(
                "cannot list the input devices of host {host_name}: {e}"
            ))
        })?
        .collect();
    let wanted_lc = wanted.to_lowercase();
    let keys = |d: &cpal::Device| -> Vec<String> {
        let mut keys = Vec::new();
        if let Ok(id) = d.id() {
            keys.push(id.to_string().to_lowercase());
            keys.push(id.id().to_lowercase());
        }
        if let Ok(desc) = d.description() {
            keys.push(desc.name().to_lowercase());
        }
        keys
    };
    if let Some(exact) = devices.iter().find(|d| keys(d).contains(&wanted_lc)) {
        return Ok(exact.clone());
    }
    let partial: Vec<&cpal::Device> = devices
        .iter()
        .filter(|d| keys(d).iter().any(|k| k.contains(&wanted_lc)))
        .collect();
    match partial.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Failure::Input(format!(
            "no input device matches \"{wanted}\" (host {host_name}); {TRY_DEVICES}"
        ))),
        many => Err(Failure::Input(format!(
            "\"{wanted}\" matches {} input devices ({}); give the full id from `--list-devices`",
            many.len(),
            many.iter()
                .filter_map(|d| d.id().ok().map(|id| id.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A running capture: the cpal stream and what its callbacks hand over.
struct Capture {
    stream: cpal::Stream,
    audio: mpsc::Receiver<Vec<u8>>,
    errors: mpsc::UnboundedReceiver<cpal::Error>,
    dropped: Arc<AtomicU64>,
}

/// Builds (but does not start) an input stream in the device's native default config.
fn open_capture(
    device: &cpal::Device,
    supported: &cpal::SupportedStreamConfig,
) -> Result<(Capture, Encoding), Failure> {
    let config = supported.config();
    let (tx, audio) = mpsc::channel(CHANNEL_BUFFERS);
    let (err_tx, errors) = mpsc::unbounded_channel();
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    let (built, encoding) = match supported.sample_format() {
        SampleFormat::I16 => (
            build::<i16>(device, &config, tx, err_tx, d, encode_native),
            Encoding::S16,
        ),
        SampleFormat::F32 => (
            build::<f32>(device, &config, tx, err_tx, d, encode_native),
            Encoding::F32,
        ),
        SampleFormat::I8 => (
            build::<i8>(device, &config, tx, err_tx, d, encode_f32),
            Encoding::F32,
        ),
        SampleFormat::I24 => (
            build::<cpal::I24>(device, &config, tx, err_tx, d, encode_f32),
            Encoding::F32,
        ),
        SampleFormat::I32 => (
            build::<i32>(device, &config, tx, err_tx, d, encode_f32),
            Encoding::F32,
        ),
        SampleFormat::I64 => (
            build::<i64>(device, &config, tx, err_tx, d, encode_f32),
            Encoding::F32,
        ),
        SampleFormat::U8 => (
            build::<u8>(device, &config, tx, err_tx, d, encode_f32),
            Encoding::F32,
        ),
        SampleFormat::U16 => (
            build::<u16>(device, &config, tx, err_tx, d, encode_f32),
            Encoding::F32,
        ),
        SampleFormat::U24 => (
            build::<cpal::U24>(device, &config, tx, err_tx, d, encode_f32),
            Encoding::F32,
        ),
        SampleFormat::U32 => (
            build::<u32>(device, &config, tx, err_tx, d, encode_f32),
            Encoding::F32,
        ),
        SampleFormat::U64 => (
            build::<u64>(device, &config, tx, err_tx, d, encode_f32),
            Encoding::F32,
        ),
        SampleFormat::F64 => (
            build::<f64>(device, &config, tx, err_tx, d, encode_f32),
            Encoding::F32,
        ),
        other => {
            return Err(Failure::Input(format!(
                "the device's default input format {other} cannot be streamed as PCM; {TRY_DEVICES}"
            )))
        }
    };
    let stream = built.map_err(|e| {
        Failure::Input(format!(
            "cannot open the input stream ({} Hz, {} ch, {}): {e}; {TRY_DEVICES}",
            config.sample_rate,
            config.channels,
            supported.sample_format()
        ))
    })?;
    Ok((
        Capture {
            stream,
            audio,
            errors,
            dropped,
        },
        encoding,
    ))
}

/// An input stream whose callback encodes each buffer and hands it over without blocking.
fn build<T: SizedSample + 'static>(
    device: &cpal::Device,
    config: &cpal::StreamConfig,
    tx: mpsc::Sender<Vec<u8>>,
    errors: mpsc::UnboundedSender<cpal::Error>,
    dropped: Arc<AtomicU64>,
    encode: fn(&[T], &mut Vec<u8>),
) -> Result<cpal::Stream, cpal::Error> {
    device.build_input_stream(
        *config,
        move |data: &[T], _: &cpal::InputCallbackInfo| {
            let mut bytes = Vec::with_capacity(data.len() * 4);
            encode(data, &mut bytes);
            if tx.try_send(bytes).is_err() {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        },
        move |err| {
            // Unbounded: never blocks the audio thread.
            let _ = errors.send(err);
        },
        None,
    )
}

/// Samples the wire takes as they are (`i16`, `f32`), little-endian.
fn encode_native<T: LeBytes>(data: &[T], out: &mut Vec<u8>) {
    for s in data {
        s.put_le(out);
    }
}

/// Any other sample format, as `f32` little-endian.
fn encode_f32<T: Sample>(data: &[T], out: &mut Vec<u8>)
where
    f32: FromSample<T>,
{
    for &s in data {
        out.extend_from_slice(&s.to_sample::<f32>().to_le_bytes());
    }
}

trait LeBytes {
    fn put_le(&self, out: &mut Vec<u8>);
}

impl LeBytes for i16 {
    fn put_le(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl LeBytes for f32 {
    fn put_le(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
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

/// A line on stderr that does not land in the middle of the live meter line.
fn note(message: &str) {
    if std::io::stdout().is_terminal() {
        print!("\r\x1b[2K");
        let _ = std::io::stdout().flush();
    }
    eprintln!("mic_capture: {message}");
}

async fn run(args: Args) -> Result<(), Failure> {
    let host = cpal::default_host();
    let device = pick_device(&host, args.device.as_deref())?;
    let device_id = device
        .id()
        .map(|id| id.to_string())
        .unwrap_or_else(|_| "(no id)".into());
    let supported = device.default_input_config().map_err(|e| {
        Failure::Input(format!(
            "no usable input device: {device_id} cannot be opened for capture ({e}); {TRY_DEVICES}"
        ))
    })?;
    let (mut capture, encoding) = open_capture(&device, &supported)?;
    let rate = supported.sample_rate();
    let channels = supported.channels();
    let url = stream_url(&args.url, rate, channels, encoding)?;
    let converted = if matches!(
        supported.sample_format(),
        SampleFormat::I16 | SampleFormat::F32
    ) {
        String::new()
    } else {
        format!(" (converted from {})", supported.sample_format())
    };
    eprintln!(
        "mic_capture: {device_id}: {rate} Hz, {channels} ch, {}{converted} -> {url}",
        encoding.name()
    );

    let ws = connect(&url).await?;
    let (mut sink, mut stream) = ws.split();
    let mut printer = Printer::new(args.json);
    let max_frame_bytes = wait_for_start(&mut stream, &mut printer).await?;
    let bytes_per_frame = usize::from(channels) * encoding.bytes_per_sample();
    let chunk_frames = (u64::from(rate) * u64::from(args.chunk_ms) / 1000).max(1) as usize;
    let chunk_bytes = chunk_frames * bytes_per_frame;
    let max_bytes = (max_frame_bytes / bytes_per_frame).max(1) * bytes_per_frame;

    // Anything a backend captured before play() is stale.
    while capture.audio.try_recv().is_ok() {}
    capture.dropped.store(0, Ordering::Relaxed);
    if let Err(e) = capture.stream.play() {
        let _ = sink.send(Message::text(r#"{"type":"stop"}"#)).await;
        return Err(Failure::Input(format!(
            "cannot start capturing from {device_id}: {e}; {TRY_DEVICES}"
        )));
    }
    if !args.json {
        eprintln!("mic_capture: listening; Ctrl-C to stop");
    }

    let mut reader = tokio::spawn(read_events(stream, printer));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut pending: Vec<u8> = Vec::with_capacity(chunk_bytes * 2);
    let mut xruns = 0u64;
    let mut device_lost = None;
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            buffer = capture.audio.recv() => {
                let Some(buffer) = buffer else {
                    device_lost = Some("the capture stream ended".to_string());
                    break;
                };
                pending.extend_from_slice(&buffer);
                if pending.len() >= chunk_bytes {
                    send_pending(&mut sink, &mut pending, max_bytes).await?;
                }
            }
            Some(err) = capture.errors.recv() => match err.kind() {
                cpal::ErrorKind::Xrun => xruns += 1,
                cpal::ErrorKind::DeviceNotAvailable | cpal::ErrorKind::StreamInvalidated => {
                    device_lost = Some(err.to_string());
                    break;
                }
                _ => note(&format!("audio input: {err}")),
            },
            joined = &mut reader => {
                drop(capture);
                let closed = joined.map_err(|_| {
                    Failure::Session("the event reader stopped unexpectedly".into())
                })??;
                closed.print_summary(args.json);
                return Err(Failure::Session(format!(
                    "the server ended the session ({})",
                    closed.reason
                )));
            }
        }
    }

    // Stop capturing, send what is left, then stop the session.
    let dropped = capture.dropped.load(Ordering::Relaxed);
    drop(capture.stream);
    while let Ok(buffer) = capture.audio.try_recv() {
        pending.extend_from_slice(&buffer);
    }
    match &device_lost {
        Some(why) => note(&format!("input device lost ({why}); sending stop")),
        None => note("stopping: sending stop, waiting for session.closed"),
    }
    send_pending(&mut sink, &mut pending, max_bytes).await?;
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
    let _ = sink.close().await;

    closed.print_summary(args.json);
    let client = format!(
        "client: {dropped} capture buffers dropped (WebSocket task behind), {xruns} overruns reported by the device"
    );
    if args.json {
        eprintln!("{client}");
    } else {
        println!("{client}");
    }
    if let Some(why) = device_lost {
        return Err(Failure::Input(format!("input device lost: {why}")));
    }
    if closed.reason != "client_stop" {
        return Err(Failure::Session(format!(
            "session closed with reason {}",
            closed.reason
        )));
    }
    Ok(())
}

/// Sends `pending` as binary frames of at most `max_bytes` (whole sample frames) and empties it.
async fn send_pending(
    sink: &mut WsSink,
    pending: &mut Vec<u8>,
    max_bytes: usize,
) -> Result<(), Failure> {
    for part in pending.chunks(max_bytes) {
        if let Err(e) = sink.send(Message::binary(part.to_vec())).await {
            return Err(Failure::Session(format!(
                "connection lost while sending: {e}"
            )));
        }
    }
    pending.clear();
    Ok(())
}

// ---- connection (the same code is in examples/stream_wav.rs) ----

/// `ws://host:port` plus `/v1/stream?...` for this format.
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

// ---- event printing (the same code is in examples/stream_wav.rs) ----

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
