//! The command line: every option, its bounds and its help text.

use crate::audio::Encoding;
use clap::Parser;
use std::path::PathBuf;

/// Load generator for voxrt: N real-time WebSocket sessions streaming recorded speech.
#[derive(Parser, Debug)]
#[command(name = "voxrt-loadgen", version)]
pub(crate) struct Args {
    /// Server address (`ws://host:port`); `/v1/stream?...` is appended.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub(crate) url: String,
    /// Sessions to run (ignored with --ramp).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) sessions: u64,
    /// Measured window of each step, seconds (after the connects and the warm-up).
    #[arg(long, default_value_t = 30.0, value_parser = positive_secs)]
    pub(crate) duration: f64,
    /// Streaming before the measured window, seconds; latencies and CPU from it are not
    /// counted.
    #[arg(long, default_value_t = 5.0, value_parser = non_negative_secs)]
    pub(crate) warmup: f64,
    /// Sample rate declared and sent, Hz.
    #[arg(long, default_value_t = 48_000, value_parser = clap::value_parser!(u32).range(8_000..=192_000))]
    pub(crate) rate: u32,
    /// Channels (the mono recording is duplicated into each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    pub(crate) channels: u16,
    /// Sample format on the wire.
    #[arg(long, value_enum, default_value = "pcm_s16le")]
    pub(crate) encoding: Encoding,
    /// Audio per binary frame, milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) chunk_ms: u32,
    /// WAV file to loop (any rate and channels: downmixed, resampled linearly). Default: the
    /// alsa-utils speech recordings (/usr/share/sounds/alsa/{Front,Rear,Side}_*.wav), each
    /// followed by 1 s of silence.
    #[arg(long)]
    pub(crate) wav: Option<PathBuf>,
    /// New sessions per second while connecting.
    #[arg(long, default_value_t = 200.0, value_parser = positive_rate)]
    pub(crate) connect_rate: f64,
    /// Steps of sessions, e.g. 100,200,400: each runs --warmup + --duration; the run stops
    /// at the first step that misses a target or has a failed session.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) ramp: Vec<u64>,
    /// Ramp target: ping round trip p99, milliseconds.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) target_ping_p99_ms: f64,
    /// Ramp target: VAD event latency p99, milliseconds.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) target_event_p99_ms: f64,
    /// Interval between control pings of each session, milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub(crate) ping_every_ms: u64,
    /// The server's vad.silence_ms, to attribute speech_end events. Default: what the server
    /// announces in session.started, else 500.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub(crate) silence_ms: Option<u64>,
    /// API key or JWT, sent as `Authorization: Bearer`.
    #[arg(long, env = "VOXRT_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The server's process id: its CPU and RSS are read from /proc at the start and end of
    /// the measured window (same machine only).
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Print one JSON line on stdout instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// tokio worker threads of the load generator.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) threads: u16,
    /// Cut each session's connection abruptly (RST, no close frame) about every S seconds
    /// (jittered per session between S/2 and 3S/2), resume the session and resend its audio
    /// from the server's `input_frames`; reports resume latency. Needs a server with resume
    /// on (`session.resume_window_s` > 0).
    #[arg(long, value_name = "S", value_parser = positive_secs)]
    pub(crate) drop_every: Option<f64>,
    /// A second voxrt node on the same NATS cluster (`ws://host:port`): each resume goes to
    /// the node the session is not on, so every resume is a takeover across nodes. Sessions
    /// whose node is killed or drained mid-run resume there too (with a --drop-every longer
    /// than the run, those are the only resumes).
    #[arg(long, value_name = "URL", requires = "drop_every")]
    pub(crate) resume_url: Option<String>,
    /// Try refused sessions again: a 503 or 429 refusal (`server_full`, `overloaded`,
    /// `memory_budget_exceeded`, `too_many_sessions`...) is counted by code and retried after
    /// its `Retry-After` (1 to 30 s, plus up to half of it again as jitter; 1 s without the
    /// header), a connect error after a jittered backoff (0.5 to 8 s), until the step ends.
    /// Refused sessions are not failures then; sessions that fail after admission are (and
    /// are replaced by new ones, to keep the load offered).
    #[arg(long)]
    pub(crate) retry: bool,
    /// Offer N sessions and keep trying to get them admitted: `--sessions N --retry`.
    #[arg(long, value_name = "N", conflicts_with_all = ["sessions", "ramp"],
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) offer: Option<u64>,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1e7 => Ok(v),
        _ => Err(format!("expected seconds > 0, got {s:?}")),
    }
}

fn non_negative_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1e7).contains(&v) => Ok(v),
        _ => Err(format!("expected seconds >= 0, got {s:?}")),
    }
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("expected a rate > 0 per second, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn ramp_parses_a_list() {
        let a = Args::try_parse_from(["x", "--ramp", "100,200,400"]).expect("parses");
        assert_eq!(a.ramp, vec![100, 200, 400]);
        assert!(Args::try_parse_from(["x", "--encoding", "pcm_u8"]).is_err());
    }

    #[test]
    fn resume_url_needs_drop_every() {
        assert!(Args::try_parse_from(["x", "--resume-url", "ws://h:2"]).is_err());
        let a = Args::try_parse_from(["x", "--drop-every", "5", "--resume-url", "ws://h:2"])
            .expect("parses");
        assert_eq!(a.resume_url.as_deref(), Some("ws://h:2"));
    }

    #[test]
    fn offer_stands_alone() {
        let a = Args::try_parse_from(["x", "--offer", "100"]).expect("parses");
        assert_eq!(a.offer, Some(100));
        assert!(Args::try_parse_from(["x", "--offer", "100", "--sessions", "5"]).is_err());
        assert!(Args::try_parse_from(["x", "--offer", "100", "--ramp", "5,6"]).is_err());
        assert!(Args::try_parse_from(["x", "--offer", "0"]).is_err());
    }
}
