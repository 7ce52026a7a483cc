//! Streams a WAV file to a voxrt server (protocol v1) and prints what the server reports.
//!
//! Start a server (`cargo run`), then, from the workspace root:
//!
//! ```text
//! cargo run --example stream_wav -- /usr/share/sounds/alsa/Front_Center.wav
//! cargo run --example stream_wav -- --fast --url ws://127.0.0.1:8080 /usr/share/sounds/alsa/Front_Center.wav
//! cargo run --example stream_wav -- --json --chunk-ms 40 /usr/share/sounds/alsa/Front_Center.wav
//! VOXRT_TOKEN=$(cat client-key) cargo run --example stream_wav -- /usr/share/sounds/alsa/Front_Center.wav
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
//! When the connection is lost without `session.closed` (network, server restart of the
//! connection, `slow_consumer`), the example reconnects with backoff and resumes the session
//! (docs/protocol.md, "Resume"): the server's audio timeline continues where it was, the
//! audio it did not get is sent again, and no event is printed twice. It prints
//! `resumed session ID after N ms, replayed K events` on stderr (with `--json`, a
//! `{"type":"client.resumed",...}` line on stdout). `--no-resume` turns this off.
//!
//! Exit codes: 0 session closed after `stop`; 1 the session ended any other way (fatal server
//! error, connection lost and not resumed, no `session.closed`); 2 the file is missing, unreadable or in an
//! unsupported format (also bad command-line arguments); 3 the server is unreachable or did not
//! speak WebSocket; 4 the server refused the stream (HTTP status, error code and message are
//! printed).

mod common;

use clap::Parser;
use common::{chunk_frames, exit, Encoding, Endpoint, Failure, Gone, Options, Session, Uplink};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::time::Instant;

/// Stream a WAV file to a voxrt server and print speech segments, levels and errors.
#[derive(Parser, Debug)]
#[command(name = "stream_wav")]
struct Args {
    /// WAV file: 16-bit int or 32-bit float (8/24/32-bit int are converted to 16-bit).
    file: PathBuf,
    /// Server address; `/v1/stream` and the query are appended.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// API key or JWT for a server with `auth` on (sent as `Authorization: Bearer`);
    /// defaults to the VOXRT_TOKEN environment variable.
    #[arg(long, env = "VOXRT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Audio per binary frame, milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    chunk_ms: u32,
    /// Send as fast as the server accepts instead of in real time.
    #[arg(long)]
    fast: bool,
    /// Print server events as raw JSON lines.
    #[arg(long)]
    json: bool,
    /// Do not resume the session after a connection loss (a loss then ends the run, exit 1).
    #[arg(long)]
    no_resume: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    exit("stream_wav", run(Args::parse()).await)
}

async fn run(args: Args) -> Result<(), Failure> {
    let mut wav = WavSource::open(&args.file)?;
    let endpoint = Endpoint::parse(&args.url)?;
    eprintln!(
        "stream_wav: {}: {} Hz, {} ch, {} ({:.2} s) -> {}{}",
        args.file.display(),
        wav.rate,
        wav.channels,
        wav.describe(),
        wav.total_frames as f64 / f64::from(wav.rate),
        endpoint.stream_url(wav.rate, wav.channels, wav.encoding),
        if args.fast { " (fast)" } else { "" },
    );

    let session = Session::open(Options {
        program: "stream_wav",
        endpoint,
        token: args.token.clone(),
        rate: wav.rate,
        channels: wav.channels,
        encoding: wav.encoding,
        json: args.json,
        resume: !args.no_resume,
    })
    .await?;
    let bytes_per_frame = usize::from(wav.channels) * wav.encoding.bytes_per_sample();
    let frames_per_chunk =
        chunk_frames(wav.rate, args.chunk_ms).min(session.max_frames(bytes_per_frame));
    let Session {
        mut uplink,
        mut events,
        ..
    } = session;

    let streamed = tokio::select! {
        r = send_audio(&mut uplink, &mut wav, frames_per_chunk, args.fast) => r.ok(),
        ended = events.ended() => return ended_early(ended, args.json),
    };
    // `None`: the session's task ended while audio was still going out.
    let Some(read_error) = streamed else {
        return ended_early(events.ended().await, args.json);
    };
    let closed = events.stop(uplink).await?;

    closed.print_summary(args.json);
    if let Some(e) = read_error {
        return Err(Failure::Input(format!("{}: {e}", args.file.display())));
    }
    closed.expect_client_stop()
}

/// The session ended (or failed) before the end of the file.
fn ended_early(ended: Result<common::Closed, Failure>, json: bool) -> Result<(), Failure> {
    let closed = ended?;
    closed.print_summary(json);
    Err(Failure::Session(format!(
        "the server closed the session before the end of the file ({})",
        closed.reason
    )))
}

/// Sends the file in chunks, paced to real time unless `fast`; Ctrl-C ends it early (as if
/// the file had ended there). `Ok(Some(message))` when the file could not be read to its end:
/// what could be read has been sent. `Err` when the session's task has ended.
async fn send_audio(
    uplink: &mut Uplink,
    wav: &mut WavSource,
    frames_per_chunk: usize,
    fast: bool,
) -> Result<Option<String>, Gone> {
    let start = Instant::now();
    let mut frames_sent: u64 = 0;
    let mut chunk = Vec::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let (frames, read_error) = match wav.read_chunk(frames_per_chunk, &mut chunk) {
            Ok(frames) => (frames, None),
            Err((frames, e)) => (frames, Some(e)),
        };
        if frames > 0 {
            uplink.send(std::mem::take(&mut chunk)).await?;
            frames_sent += frames as u64;
        }
        let seconds_sent = frames_sent as f64 / f64::from(wav.rate);
        if read_error.is_some() || frames < frames_per_chunk {
            return Ok(read_error.map(|e| {
                format!("the WAV data ends early ({e}); sent the first {seconds_sent:.2} s")
            }));
        }
        let due = (!fast).then(|| start + Duration::from_secs_f64(seconds_sent));
        tokio::select! {
            // Ctrl-C first: with `fast`, `pace` is always ready at once.
            biased;
            _ = &mut ctrl_c => {
                eprintln!("stream_wav: interrupted, sending stop");
                return Ok(None);
            }
            _ = pace(due) => {}
        }
    }
}

/// Sleeps until `due`, or not at all without one.
async fn pace(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
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
    fn open(path: &Path) -> Result<Self, Failure> {
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
        let (samples, failure) = if self.float {
            encode_samples(&mut self.reader, wanted, out, |v: f32, out| {
                out.extend_from_slice(&v.to_le_bytes())
            })
        } else {
            let bits = u32::from(self.bits);
            encode_samples(&mut self.reader, wanted, out, |v: i32, out| {
                out.extend_from_slice(&to_s16(v, bits).to_le_bytes())
            })
        };
        // Only whole sample frames go out.
        let whole = samples / channels;
        out.truncate(whole * channels * self.encoding.bytes_per_sample());
        match failure {
            None => Ok(whole),
            Some(e) => Err((whole, e.to_string().trim_end_matches('.').to_string())),
        }
    }
}

/// Reads up to `wanted` samples as `S` and appends each with `put`; returns how many were
/// read, and the error that stopped it before `wanted` if any.
fn encode_samples<S: hound::Sample>(
    reader: &mut hound::WavReader<BufReader<File>>,
    wanted: usize,
    out: &mut Vec<u8>,
    put: impl Fn(S, &mut Vec<u8>),
) -> (usize, Option<hound::Error>) {
    let mut samples = 0;
    for s in reader.samples::<S>().take(wanted) {
        match s {
            Ok(v) => put(v, out),
            Err(e) => return (samples, Some(e)),
        }
        samples += 1;
    }
    (samples, None)
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
