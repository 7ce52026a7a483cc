//! `voxrt-loadgen`: the project's load generator. Opens many real-time sessions against a
//! voxrt server (protocol v1, docs/protocol.md), streams recorded speech into each at real
//! time, and reports connect time, ping round trips, VAD event latency, failures, and the
//! server's CPU and memory next to its own.
//!
//! ```text
//! VOXRT_PROFILE=bench voxrt &      # the server, with config/bench.toml
//! voxrt-loadgen --sessions 100 --duration 30 --server-pid $(pgrep -x voxrt)
//! voxrt-loadgen --ramp 100,200,400 --duration 60 --json
//! ```
//!
//! Every session comes from this one address: a server with the default limits refuses it
//! after 50 sessions (429 `too_many_sessions`) or 120 attempts a minute. The `bench` profile
//! raises those limits and changes nothing else.
//!
//! It is built to cost far less than the server it measures: the audio is encoded once and
//! every session sends slices of the same buffer (`Bytes`, no copy but the WebSocket mask);
//! sessions are tasks on one tokio runtime (`--threads`, default 1: a current-thread
//! runtime); each session's writer keeps one timer and writes whatever is due with one
//! system call; `level` events, most of what the server sends, are counted by their `seq`
//! without being parsed.
//!
//! A step: connect its sessions at `--connect-rate` per second, stream `--warmup` seconds,
//! then measure for `--duration` seconds (ping and event latencies, server and own CPU over
//! exactly that window), then `stop` every session and wait for `session.closed`. Connect
//! times and failures cover the whole step. With `--ramp` the steps run in order and the
//! run stops after the first step that misses a target or has a failed session.
//!
//! `--drop-every S` tests resume: every session cuts its own connection about every S seconds
//! (an abort: RST, no close frame), resumes its session on a new connection and resends the
//! audio from the server's `input_frames`; the report adds resume latency (cut to the first
//! replayed event, or to `session.resumed` when nothing was replayed), cuts, resumes, failed
//! resumes, and event seqs missing or duplicated after de-duplication (a missing seq fails
//! the step). Replayed events and pongs are left out of the event and ping latencies: they
//! waited out the cut. With `--resume-url` each resume goes through the other of two nodes
//! (docs/cluster.md), which measures resume across nodes, after cuts or after a node is
//! killed or drained mid-run.
//!
//! `--offer N` (or `--retry` with `--sessions`/`--ramp`) measures a server under more load
//! than it admits: a session refused with 503 or 429 (`server_full`, `overloaded`,
//! `memory_budget_exceeded`, ...) is counted by code and tries again after the refusal's
//! `Retry-After` (bounded, jittered) until the step ends, so the admitted count grows as the
//! server allows. Refusals are then not failures; the report gives sessions asked, admitted
//! and never admitted, refused attempts by code, sessions that failed after admission, and
//! latencies, which only admitted sessions have.
//!
//! Per-session figures (server CPU and RSS per session) divide by the sessions that were
//! streaming during the measured window (time-weighted mean; RSS: those at its end), never by
//! the sessions asked for.
//!
//! Exit codes: 0 the run completed (failures are reported, not an error); 2 bad arguments,
//! unreadable audio, or a server that cannot be reached or refuses a first probe session.

mod args;
mod audio;
mod connect;
mod latency;
mod metrics;
mod proc_stats;
mod report;
mod resume;
mod retry;
mod session;

use args::Args;
use audio::{Format, Recording};
use clap::Parser;
use latency::Attribution;
use metrics::{Metrics, Outcome};
use proc_stats::Proc;
use report::{ProcReadings, StepReport, Summary, Targets};
use session::Plan;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Send instants remembered per session, seconds of audio (events later than this are
/// counted as not attributable).
const SEND_RING_S: u64 = 5;
/// After `stop`: how long every session has to receive `session.closed`.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Slack on top of the connect timeouts before the connect phase is given up.
const CONNECT_SLACK: Duration = Duration::from_secs(25);

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread (the default): a current-thread runtime, whose task wake-ups need no
    // cross-thread queues or atomics; that is most of what a session costs besides its
    // system calls.
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(args.threads))
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("voxrt-loadgen: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("voxrt-loadgen: {message}");
            ExitCode::from(2)
        }
    }
}

/// Everything after argument parsing; `Err` is a reason to exit 2 before any load ran.
async fn run(args: Args) -> Result<(), String> {
    let base_url = ws_base(&args.url)?;
    let format = Format {
        rate: args.rate,
        channels: args.channels,
        encoding: args.encoding,
        chunk_ms: args.chunk_ms,
    };
    let stream_path = format!("{base_url}/v1/stream");
    let url = format!(
        "{stream_path}?sample_rate={}&channels={}&encoding={}",
        format.rate,
        format.channels,
        format.encoding.name()
    );
    let auth = match &args.token {
        Some(t) => Some(
            HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| "--token must be printable ASCII".to_string())?,
        ),
        None => None,
    };
    let server = args.server_pid.map(Proc::Pid);
    if let Some(p) = server {
        p.sample().map_err(|e| format!("--server-pid: {e}"))?;
    }
    let recording = Recording::load(args.wav.as_deref(), &format)?;

    let started = connect::probe(&url, auth.as_ref())
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if let Some(max) = started.max_binary_frame_bytes {
        if recording.chunk_bytes() as u64 > max {
            return Err(format!(
                "a {} ms chunk is {} bytes, over the server's max_binary_frame_bytes {max}; \
                 use a smaller --chunk-ms",
                args.chunk_ms,
                recording.chunk_bytes()
            ));
        }
    }
    let attribution = Attribution {
        rate: format.rate,
        frames_per_chunk: recording.frames_per_chunk,
        min_speech_ms: started.min_speech_ms.unwrap_or(100),
        silence_ms: args.silence_ms.or(started.silence_ms).unwrap_or(500),
        resampler_delay_ms: started.resampler_delay_ms.unwrap_or(0.0),
    };
    let ring_chunks = (SEND_RING_S * 1000).div_ceil(u64::from(args.chunk_ms)) as usize;
    eprintln!(
        "voxrt-loadgen: {url}: audio {} ({:.1} s loop, {} chunks of {} bytes)",
        recording.source,
        recording.loop_s,
        recording.chunks.len(),
        recording.chunk_bytes()
    );
    let drop_every = args.drop_every.map(Duration::from_secs_f64);
    if drop_every.is_some() && started.resume.as_ref().is_none_or(|(_, w)| *w == 0) {
        return Err(
            "--drop-every needs a server that offers resume (session.resume_window_s > 0); \
             session.started has no resume"
                .into(),
        );
    }
    let mut resume_paths = vec![stream_path];
    if let Some(other) = &args.resume_url {
        resume_paths.push(format!("{}/v1/stream", ws_base(other)?));
    }
    let plan = Arc::new(Plan {
        url: url.clone(),
        resume_paths,
        drop_every,
        auth,
        rate: format.rate,
        attribution,
        ping_every: Duration::from_millis(args.ping_every_ms),
        ring_chunks,
        recording: recording.clone(),
        retry: args.retry || args.offer.is_some(),
    });

    let interrupted = interrupt_signal();
    let targets = Targets {
        ping_p99_ms: args.target_ping_p99_ms,
        event_p99_ms: args.target_event_p99_ms,
    };
    let steps: Vec<u64> = if let Some(n) = args.offer {
        vec![n]
    } else if args.ramp.is_empty() {
        vec![args.sessions]
    } else {
        args.ramp.clone()
    };
    let mut reports = Vec::new();
    for &n in &steps {
        let report = run_step(&plan, n, &args, server, targets, interrupted.clone()).await;
        let passed = report.passed;
        eprintln!(
            "voxrt-loadgen: step of {n} sessions: {}",
            if passed {
                "targets met".to_string()
            } else {
                format!("missed: {}", report.failed_checks.join("; "))
            }
        );
        reports.push(report);
        if !passed || *interrupted.borrow() {
            break;
        }
    }

    let ramp = !args.ramp.is_empty();
    let Some(last) = reports.last().cloned() else {
        return Err("no step ran".into());
    };
    let summary = Summary {
        url,
        rate_hz: format.rate,
        channels: format.channels,
        encoding: format.encoding.name(),
        chunk_ms: format.chunk_ms,
        audio_loop_s: recording.loop_s,
        vad_silence_ms: attribution.silence_ms,
        vad_min_speech_ms: attribution.min_speech_ms,
        loadgen_threads: usize::from(args.threads),
        target_ping_p99_ms: targets.ping_p99_ms,
        target_event_p99_ms: targets.event_p99_ms,
        interrupted: *interrupted.borrow(),
        last,
        steps: ramp.then(|| reports.clone()),
        ramp_max_passing_sessions: ramp.then(|| {
            reports
                .iter()
                .filter(|r| r.passed)
                .map(|r| r.sessions)
                .max()
        }),
    };
    if args.json {
        println!("{}", summary.json());
    } else {
        print!("{}", summary.table(&reports));
    }
    Ok(())
}

/// `ws://host:port` without a trailing slash; `http://` is taken as `ws://`.
fn ws_base(url: &str) -> Result<String, String> {
    let url = url.trim_end_matches('/');
    if let Some(rest) = url.strip_prefix("http://") {
        return Ok(format!("ws://{rest}"));
    }
    if url.starts_with("ws://") {
        return Ok(url.to_string());
    }
    Err(format!(
        "--url must be ws://host:port (TLS is not supported), got {url:?}"
    ))
}

/// A flag set by the first Ctrl-C (the current step ends early and is reported); a second
/// one exits at once.
fn interrupt_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handling here: never interrupted.
            std::future::pending::<()>().await;
        }
        eprintln!("voxrt-loadgen: interrupted; stopping sessions (Ctrl-C again to quit now)");
        let _ = tx.send(true);
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
    rx
}

/// Sleeps until `until`; false if interrupted first.
async fn sleep_or_interrupt(until: Instant, interrupted: &mut watch::Receiver<bool>) -> bool {
    if *interrupted.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep_until(until) => true,
        _ = interrupted.wait_for(|&i| i) => false,
    }
}

/// Runs one step of `n` sessions and reports it.
async fn run_step(
    plan: &Arc<Plan>,
    n: u64,
    args: &Args,
    server: Option<Proc>,
    targets: Targets,
    mut interrupted: watch::Receiver<bool>,
) -> StepReport {
    let metrics = Arc::new(Metrics::default());
    let mut procs = ProcReadings {
        server_before: server.and_then(|p| p.sample().ok()),
        ..ProcReadings::default()
    };
    let (stop_tx, stop_rx) = watch::channel(None);
    let (settled_tx, mut settled_rx) = mpsc::unbounded_channel();
    let base = Instant::now();
    let spread = Duration::from_secs_f64(n as f64 / args.connect_rate);
    let mut sessions = JoinSet::new();
    for i in 0..n {
        let start_at = base + Duration::from_secs_f64(i as f64 / args.connect_rate);
        sessions.spawn(session::run(
            plan.clone(),
            metrics.clone(),
            start_at,
            stop_rx.clone(),
            settled_tx.clone(),
        ));
    }
    drop(settled_tx);
    eprintln!(
        "voxrt-loadgen: step of {n} sessions: connecting over {:.1} s",
        spread.as_secs_f64()
    );

    // Connect phase: until every session is connected or has failed to.
    let connect_deadline = base + spread + CONNECT_SLACK;
    let mut settled = 0;
    while settled < n {
        tokio::select! {
            got = settled_rx.recv() => match got {
                Some(()) => settled += 1,
                None => break,
            },
            _ = tokio::time::sleep_until(connect_deadline) => break,
            _ = interrupted.wait_for(|&i| i) => break,
        }
    }
    let connected = metrics.snapshot().counts.sessions_started;
    eprintln!(
        "voxrt-loadgen: {connected}/{n} connected in {:.1} s; warm-up {:.0} s, then {:.0} s measured",
        base.elapsed().as_secs_f64(),
        args.warmup,
        args.duration
    );

    let mut window_s = 0.0;
    if sleep_or_interrupt(
        Instant::now() + Duration::from_secs_f64(args.warmup),
        &mut interrupted,
    )
    .await
    {
        let start = Instant::now();
        procs.server_start = server.and_then(|p| p.sample().ok());
        procs.own_start = Proc::Current.sample().ok();
        metrics.start_window(start.into_std());
        sleep_or_interrupt(
            start + Duration::from_secs_f64(args.duration),
            &mut interrupted,
        )
        .await;
        let end = Instant::now();
        metrics.end_window(end.into_std());
        procs.server_end = server.and_then(|p| p.sample().ok());
        procs.own_end = Proc::Current.sample().ok();
        window_s = (end - start).as_secs_f64();
    }

    // Stop every session and wait (bounded) for them to finish.
    let deadline = Instant::now() + STOP_GRACE;
    let _ = stop_tx.send(Some(deadline));
    let all_done = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline + Duration::from_secs(2), all_done)
        .await
        .is_err()
    {
        // Sessions cut themselves off at the deadline; any still running is counted here.
        for _ in 0..sessions.len() {
            metrics.finished(&Outcome::NoSessionClosed, 0, false, 0);
        }
        sessions.abort_all();
    }
    StepReport::new(
        n,
        plan.retry,
        window_s,
        args.warmup,
        metrics.snapshot(),
        &procs,
        targets,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(ws_base("ws://h:1/").as_deref(), Ok("ws://h:1"));
        assert_eq!(ws_base("http://h:1").as_deref(), Ok("ws://h:1"));
        assert!(ws_base("wss://h:1").is_err());
    }
}
