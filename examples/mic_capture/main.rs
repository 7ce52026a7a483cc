//! Captures the microphone with cpal and streams it live to a voxrt server (protocol v1).
//!
//! Start a server (`cargo run`), then, from the workspace root:
//!
//! ```text
//! cargo run --features mic --example mic_capture
//! cargo run --features mic --example mic_capture -- --list-devices
//! cargo run --features mic --example mic_capture -- --device "hw:CARD=1,DEV=0" --url ws://127.0.0.1:8080
//! cargo run --features mic --example mic_capture -- --json
//! cargo run --features mic --example mic_capture -- --token "$(cat client-key)"   # server with auth on
//! ```
//!
//! It builds only with the `mic` feature, which brings in cpal; on Linux that needs the ALSA
//! headers: `apt-get install libasound2-dev pkg-config`. (The server and `stream_wav` do not.)
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
//! When the connection is lost without `session.closed`, the example keeps capturing, reconnects
//! with backoff and resumes the session (docs/protocol.md, "Resume"), sending the audio the
//! server did not get (at most the server's resume window of it) so that the session's
//! timeline has no hole; no event is printed twice. It prints `resumed session ID after N ms,
//! replayed K events` on stderr (with `--json`, a `{"type":"client.resumed",...}` line on
//! stdout). `--no-resume` turns this off.
//!
//! Exit codes: 0 session closed after Ctrl-C; 1 the session ended any other way (fatal server
//! error, connection lost and not resumed, no `session.closed`); 2 no usable input device (or bad arguments);
//! 3 the server is unreachable or did not speak WebSocket; 4 the server refused the stream
//! (HTTP status, error code and message are printed).

#[path = "../common/mod.rs"]
mod common;
mod devices;

use clap::Parser;
use common::{
    chunk_frames, exit, print_report, Encoding, Endpoint, Events, Failure, Options, Session, Uplink,
};
use cpal::traits::{DeviceTrait, StreamTrait};
use cpal::{FromSample, Sample, SampleFormat, SizedSample};
use devices::{list_devices, pick_device, TRY_DEVICES};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Capture buffers that may wait for the WebSocket task before new ones are dropped.
const CHANNEL_BUFFERS: usize = 128;
/// How long ending the session may take when capturing could not start.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Stream the microphone to a voxrt server: live level meter, speech segments, errors.
#[derive(Parser, Debug)]
#[command(name = "mic_capture")]
struct Args {
    /// Server address; `/v1/stream` and the query are appended.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// API key or JWT for a server with `auth` on (sent as `Authorization: Bearer`);
    /// defaults to the VOXRT_TOKEN environment variable.
    #[arg(long, env = "VOXRT_TOKEN", hide_env_values = true)]
    token: Option<String>,
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
    /// Do not resume the session after a connection loss (a loss then ends the run, exit 1).
    #[arg(long)]
    no_resume: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.list_devices {
        list_devices()
    } else {
        run(args).await
    };
    exit("mic_capture", result)
}

async fn run(args: Args) -> Result<(), Failure> {
    let mut capture = open_input(args.device.as_deref())?;
    let endpoint = Endpoint::parse(&args.url)?;
    eprintln!(
        "mic_capture: {} -> {}",
        capture.describe(),
        endpoint.stream_url(capture.rate, capture.channels, capture.encoding)
    );

    let session = Session::open(Options {
        program: "mic_capture",
        endpoint,
        token: args.token.clone(),
        rate: capture.rate,
        channels: capture.channels,
        encoding: capture.encoding,
        json: args.json,
        resume: !args.no_resume,
    })
    .await?;
    let bytes_per_frame = usize::from(capture.channels) * capture.encoding.bytes_per_sample();
    let chunk_bytes = chunk_frames(capture.rate, args.chunk_ms) * bytes_per_frame;
    let max_bytes = session.max_frames(bytes_per_frame) * bytes_per_frame;
    let Session { uplink, events, .. } = session;

    if let Err(failure) = capture.start() {
        // Best effort: end the session rather than leave it to the idle timeout.
        let _ = tokio::time::timeout(STOP_WAIT, events.stop(uplink)).await;
        return Err(failure);
    }
    if !args.json {
        eprintln!("mic_capture: listening; Ctrl-C to stop");
    }
    let chunker = Chunker {
        uplink,
        pending: Vec::with_capacity(chunk_bytes * 2),
        chunk_bytes,
        max_bytes,
    };
    stream_capture(capture, chunker, events, args.json).await
}

/// Streams until Ctrl-C or until the device goes away, then stops the session and prints its
/// counters and the client's own. Fails when the server ends the session first, when the
/// device was lost (exit 2), or as [`common::Closed::expect_client_stop`] says.
async fn stream_capture(
    mut capture: Capture,
    mut chunker: Chunker,
    mut events: Events,
    json: bool,
) -> Result<(), Failure> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
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
                if chunker.push(&buffer).await.is_err() {
                    // The session's task ended: the branch below says how.
                    drop(capture);
                    return server_ended(events.ended().await, json);
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
            ended = events.ended() => {
                drop(capture);
                return server_ended(ended, json);
            }
        }
    }

    // Stop capturing, send what is left, then stop the session.
    let dropped = capture.stop(&mut chunker.pending);
    match &device_lost {
        Some(why) => note(&format!("input device lost ({why}); sending stop")),
        None => note("stopping: sending stop, waiting for session.closed"),
    }
    if chunker.flush().await.is_err() {
        return server_ended(events.ended().await, json);
    }
    let closed = events.stop(chunker.uplink).await?;

    closed.print_summary(json);
    print_report(
        json,
        &format!(
            "client: {dropped} capture buffers dropped (WebSocket task behind), {xruns} overruns reported by the device"
        ),
    );
    if let Some(why) = device_lost {
        return Err(Failure::Input(format!("input device lost: {why}")));
    }
    closed.expect_client_stop()
}

/// The session ended (or failed) while the microphone was still streaming.
fn server_ended(ended: Result<common::Closed, Failure>, json: bool) -> Result<(), Failure> {
    let closed = ended?;
    closed.print_summary(json);
    Err(Failure::Session(format!(
        "the server ended the session ({})",
        closed.reason
    )))
}

/// Captured audio on its way to the server: collected up to `--chunk-ms`, then sent in binary
/// frames no larger than the server's limit.
struct Chunker {
    uplink: Uplink,
    pending: Vec<u8>,
    /// Send once this much is pending (whole sample frames).
    chunk_bytes: usize,
    /// The most one binary frame may carry (whole sample frames).
    max_bytes: usize,
}

impl Chunker {
    /// Adds a capture buffer, sending what is pending once it reaches a chunk. `Err`: the
    /// session's task has ended.
    async fn push(&mut self, buffer: &[u8]) -> Result<(), common::Gone> {
        self.pending.extend_from_slice(buffer);
        if self.pending.len() >= self.chunk_bytes {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends everything pending as binary frames of at most `max_bytes`.
    async fn flush(&mut self) -> Result<(), common::Gone> {
        for part in self.pending.chunks(self.max_bytes) {
            self.uplink.send(part.to_vec()).await?;
        }
        self.pending.clear();
        Ok(())
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

/// The default input device, or the one `--device` names, ready to capture (not started) in
/// its own default input configuration.
fn open_input(wanted: Option<&str>) -> Result<Capture, Failure> {
    let host = cpal::default_host();
    let device = pick_device(&host, wanted)?;
    let device_id = device
        .id()
        .map(|id| id.to_string())
        .unwrap_or_else(|_| "(no id)".into());
    let supported = device.default_input_config().map_err(|e| {
        Failure::Input(format!(
            "no usable input device: {device_id} cannot be opened for capture ({e}); {TRY_DEVICES}"
        ))
    })?;
    open_capture(&device, device_id, &supported)
}

/// A capture from one device: the cpal stream, what its callbacks hand over, and the format
/// that goes to the server.
struct Capture {
    device_id: String,
    rate: u32,
    channels: u16,
    /// The device's own sample format; anything but `i16` and `f32` is converted to `f32`.
    format: SampleFormat,
    encoding: Encoding,
    stream: cpal::Stream,
    audio: mpsc::Receiver<Vec<u8>>,
    errors: mpsc::UnboundedReceiver<cpal::Error>,
    /// Buffers the callback dropped because `audio` was full.
    dropped: Arc<AtomicU64>,
}

impl Capture {
    /// `hw:...: 48000 Hz, 2 ch, pcm_f32le (converted from i32)`.
    fn describe(&self) -> String {
        let converted = if matches!(self.format, SampleFormat::I16 | SampleFormat::F32) {
            String::new()
        } else {
            format!(" (converted from {})", self.format)
        };
        format!(
            "{}: {} Hz, {} ch, {}{converted}",
            self.device_id,
            self.rate,
            self.channels,
            self.encoding.name()
        )
    }

    /// Starts capturing, discarding (and not counting) anything captured before.
    fn start(&mut self) -> Result<(), Failure> {
        // Anything a backend captured before play() is stale.
        while self.audio.try_recv().is_ok() {}
        self.dropped.store(0, Ordering::Relaxed);
        self.stream.play().map_err(|e| {
            Failure::Input(format!(
                "cannot start capturing from {}: {e}; {TRY_DEVICES}",
                self.device_id
            ))
        })
    }

    /// Stops capturing and appends what was captured but not yet handed over to `pending`;
    /// returns how many buffers were dropped.
    fn stop(mut self, pending: &mut Vec<u8>) -> u64 {
        let dropped = self.dropped.load(Ordering::Relaxed);
        drop(self.stream);
        while let Ok(buffer) = self.audio.try_recv() {
            pending.extend_from_slice(&buffer);
        }
        dropped
    }
}

/// Builds (but does not start) an input stream in the device's native default config.
fn open_capture(
    device: &cpal::Device,
    device_id: String,
    supported: &cpal::SupportedStreamConfig,
) -> Result<Capture, Failure> {
    let config = supported.config();
    let format = supported.sample_format();
    let (tx, audio) = mpsc::channel(CHANNEL_BUFFERS);
    let (err_tx, errors) = mpsc::unbounded_channel();
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    // A stream of samples `$t`, sent as `pcm_f32le`.
    macro_rules! as_f32 {
        ($t:ty) => {
            (
                build::<$t>(device, &config, tx, err_tx, d, encode_f32),
                Encoding::F32,
            )
        };
    }
    let (built, encoding) = match format {
        SampleFormat::I16 => (
            build::<i16>(device, &config, tx, err_tx, d, encode_s16),
            Encoding::S16,
        ),
        SampleFormat::F32 => as_f32!(f32),
        SampleFormat::I8 => as_f32!(i8),
        SampleFormat::I24 => as_f32!(cpal::I24),
        SampleFormat::I32 => as_f32!(i32),
        SampleFormat::I64 => as_f32!(i64),
        SampleFormat::U8 => as_f32!(u8),
        SampleFormat::U16 => as_f32!(u16),
        SampleFormat::U24 => as_f32!(cpal::U24),
        SampleFormat::U32 => as_f32!(u32),
        SampleFormat::U64 => as_f32!(u64),
        SampleFormat::F64 => as_f32!(f64),
        other => {
            return Err(Failure::Input(format!(
                "the device's default input format {other} cannot be streamed as PCM; {TRY_DEVICES}"
            )))
        }
    };
    let stream = built.map_err(|e| {
        Failure::Input(format!(
            "cannot open the input stream ({} Hz, {} ch, {format}): {e}; {TRY_DEVICES}",
            config.sample_rate, config.channels,
        ))
    })?;
    Ok(Capture {
        device_id,
        rate: config.sample_rate,
        channels: config.channels,
        format,
        encoding,
        stream,
        audio,
        errors,
        dropped,
    })
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

/// `i16` samples as `pcm_s16le`.
fn encode_s16(data: &[i16], out: &mut Vec<u8>) {
    for s in data {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

/// Any other sample format as `pcm_f32le` (`f32` itself goes through unchanged).
fn encode_f32<T: Sample>(data: &[T], out: &mut Vec<u8>)
where
    f32: FromSample<T>,
{
    for &s in data {
        out.extend_from_slice(&s.to_sample::<f32>().to_le_bytes());
    }
}
