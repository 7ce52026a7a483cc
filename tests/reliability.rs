//! Reliability: processors that panic are restarted by their supervisor, a session whose
//! processors keep failing is closed without disturbing others.

mod common;

use common::process::ServerProcess;
use common::*;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use voxrt::actors::processors::{Processor, ProcessorCatalog, ProcessorContext};
use voxrt::actors::registry::InjectPanic;
use voxrt::actors::{AudioBlock, ServerEvent};

const SPEECH: &str = "/usr/share/sounds/alsa/Front_Center.wav";

/// Sessions at this input rate get a processor that panics; others get a harmless one.
const FAULTY_RATE: u32 = 22_050;

/// A processor that panics in `process` once it has seen `after_samples` pipeline samples,
/// `panics` times in all across the catalog's processors (each restart builds a fresh one).
/// It counts the fresh instances built, so a test can prove the restart happened.
struct Faulty {
    seen: u64,
    after_samples: u64,
    armed: bool,
    left: Arc<AtomicU64>,
}

impl Processor for Faulty {
    fn process(&mut self, block: &AudioBlock, _events: &mut Vec<ServerEvent>) {
        self.seen += block.samples.len() as u64;
        if self.armed && self.seen >= self.after_samples {
            let remaining = self.left.load(Ordering::SeqCst);
            if remaining > 0 {
                self.left.store(remaining - 1, Ordering::SeqCst);
                panic!("faulty processor: deliberate panic in {}", file!());
            }
        }
    }

    fn flush(&mut self, _end_sample: u64, _events: &mut Vec<ServerEvent>) {}
}

/// Counters shared with the catalog's `faulty` processors.
struct Faults {
    /// Panics still to happen.
    left: Arc<AtomicU64>,
    /// Processors built (first build plus restarts), faulty sessions only.
    built: Arc<AtomicU64>,
}

/// The builtins plus `faulty`, which panics `panics` times in sessions at [`FAULTY_RATE`],
/// each time after 0.5 s of audio from its (re)start.
fn faulty_catalog(panics: u64) -> (ProcessorCatalog, Faults) {
    let faults = Faults {
        left: Arc::new(AtomicU64::new(panics)),
        built: Arc::new(AtomicU64::new(0)),
    };
    let (left, built) = (faults.left.clone(), faults.built.clone());
    let mut catalog = ProcessorCatalog::with_builtins();
    catalog.register("faulty", move |ctx: &ProcessorContext| {
        let armed = ctx.input.sample_rate == FAULTY_RATE;
        if armed {
            built.fetch_add(1, Ordering::SeqCst);
        }
        Box::new(Faulty {
            seen: 0,
            after_samples: 8_000,
            armed,
            left: left.clone(),
        })
    });
    (catalog, faults)
}

fn query(rate: u32) -> String {
    format!("sample_rate={rate}&channels=1&encoding=pcm_s16le")
}

/// The recording at `rate`, padded with a second of silence on both sides.
fn speech_at(rate: u32) -> Vec<u8> {
    let (mono, file_rate) = audio::read_wav(SPEECH);
    let mono = audio::resample(&mono, file_rate, rate);
    audio::s16le(&audio::padded(&mono, rate, 1.0, 1.0), 1)
}

/// Streams the recording in 20 ms chunks and flushes; the events up to `flushed`.
async fn stream_speech(client: &mut Client, rate: u32) -> Vec<Value> {
    client
        .stream_and_flush(&speech_at(rate), (rate / 50) as usize * 2)
        .await
}

/// A processor that panics twice is restarted twice with fresh state: the client gets two
/// non-fatal `processor_restarted` errors naming it, the session keeps its VAD segments and
/// ends normally; a concurrent session never sees an error.
#[tokio::test]
async fn a_panicking_processor_is_restarted_and_audio_keeps_flowing() {
    let (catalog, faults) = faulty_catalog(2);
    let server = TestServer::start_with_env(
        &[("VOXRT_PIPELINE__PROCESSORS", "level,vad,faulty")],
        &[],
        catalog,
    );
    let mut faulty = server.connect(&query(FAULTY_RATE)).await;
    let mut healthy = server.connect(&query(48_000)).await;

    let (faulty_events, healthy_events) = tokio::join!(
        stream_speech(&mut faulty, FAULTY_RATE),
        stream_speech(&mut healthy, 48_000)
    );

    let restarted = errors_with_code(&faulty_events, "processor_restarted");
    assert_eq!(restarted.len(), 2, "{faulty_events:?}");
    for e in &restarted {
        assert_eq!(e["fatal"], false, "{e}");
        let message = e["message"].as_str().expect("message");
        assert!(
            message.contains("\"faulty\""),
            "names the processor: {message}"
        );
        assert!(
            !message.contains("deliberate"),
            "panic text stays in the log: {message}"
        );
    }
    assert_eq!(
        faults.built.load(Ordering::SeqCst),
        3,
        "first build plus two restarts"
    );
    assert_eq!(
        segments(&faulty_events).len(),
        1,
        "VAD unaffected: {faulty_events:?}"
    );
    assert_eq!(segments(&healthy_events).len(), 1, "{healthy_events:?}");
    assert!(
        of_type(&healthy_events, "error").is_empty(),
        "the other session never notices: {healthy_events:?}"
    );
    for client in [faulty, healthy] {
        let (events, code) = client.stop().await;
        assert_eq!(code, Some(1000), "{events:?}");
        assert_eq!(closed_event(&events)["reason"], "client_stop");
    }
}

/// More than `supervision.max_restarts` restarts within the period close the session with
/// `processor_failed` and 1011 after the restarts it was told about; a concurrent session
/// streams its speech to the end untouched.
#[tokio::test]
async fn a_processor_that_keeps_panicking_closes_only_its_session() {
    let (catalog, _faults) = faulty_catalog(u64::MAX);
    let server = TestServer::start_with_env(
        &[("VOXRT_PIPELINE__PROCESSORS", "level,vad,faulty")],
        &[
            ("supervision.max_restarts", "2"),
            ("supervision.period_s", "3600"),
        ],
        catalog,
    );
    let mut faulty = server.connect(&query(FAULTY_RATE)).await;
    let mut healthy = server.connect(&query(48_000)).await;

    // 10 s of audio: enough for four panics, 0.5 s apart.
    let rate = FAULTY_RATE as usize;
    let pcm = audio::s16le(&audio::tone(FAULTY_RATE, 440.0, 0.1, 10.0), 1);
    let feed = async {
        for chunk in pcm.chunks(rate / 50 * 2) {
            if faulty.try_send(tungstenite_binary(chunk)).await.is_err() {
                break;
            }
        }
        faulty.drain().await
    };
    let ((events, code), healthy_events) = tokio::join!(feed, stream_speech(&mut healthy, 48_000));

    let restarted = errors_with_code(&events, "processor_restarted");
    assert_eq!(restarted.len(), 2, "{events:?}");
    let failed = errors_with_code(&events, "processor_failed");
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0]["fatal"], true);
    assert_eq!(code, Some(1011));
    assert_eq!(closed_event(&events)["reason"], "error");

    assert_eq!(segments(&healthy_events).len(), 1, "{healthy_events:?}");
    assert!(
        of_type(&healthy_events, "error").is_empty(),
        "{healthy_events:?}"
    );
    let (events, code) = healthy.stop().await;
    assert_eq!(code, Some(1000), "{events:?}");
}

fn tungstenite_binary(chunk: &[u8]) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::Binary(chunk.to_vec().into())
}

/// A registry handler that panics halfway through an update (leaving the per-address
/// count wrong) is caught; the supervisor restarts the registry, which rebuilds its view
/// from the live sessions: both are still counted, the per-address limit is exact again (a
/// third client from the same address is admitted, a fourth refused by `max_sessions`), and
/// the sessions stream on through the restart.
#[tokio::test]
async fn a_registry_panic_restarts_it_with_every_session_and_limit_kept() {
    let server = TestServer::start(&[
        ("registry.max_sessions", "3"),
        ("registry.max_sessions_per_ip", "3"),
    ]);
    let mut a = server.connect(&query(16_000)).await;
    let b = server.connect(&query(16_000)).await;
    server
        .wait_for_stats("two live sessions", |s| s.sessions_active == 2)
        .await;

    tokio::time::timeout(HANG, server.registry.send(InjectPanic))
        .await
        .expect("registry hung")
        .expect("the registry answers even as it panics");
    let stats = server
        .wait_for_stats("the restart", |s| s.restarts == 1)
        .await;
    assert_eq!(stats.sessions_active, 2, "{stats:?}");
    assert_eq!(stats.admitted_total, 2, "{stats:?}");

    // With the drifted count (102 from this address) this would be refused.
    let c = server.connect(&query(16_000)).await;
    match Client::connect(&server.url(&query(16_000))).await {
        Ok(_) => panic!("a fourth session was admitted over max_sessions"),
        Err(r) => {
            assert_eq!(r.status, 503, "{r:?}");
            assert_eq!(
                r.body.as_ref().expect("JSON body")["error"]["code"],
                "server_full",
                "{r:?}"
            );
        }
    }

    let events = stream_speech(&mut a, 16_000).await;
    assert_eq!(segments(&events).len(), 1, "{events:?}");
    for client in [a, b, c] {
        let (events, code) = client.stop().await;
        assert_eq!(code, Some(1000), "{events:?}");
    }
    let stats = server
        .wait_for_stats("every session unregistered", |s| {
            s.sessions_active == 0 && s.sessions_reserved == 0
        })
        .await;
    assert_eq!(stats.closed_total, 3, "{stats:?}");
    assert_eq!(stats.restarts, 1, "{stats:?}");
}

// ---------------------------------------------------------------------------------------
// Clients that vanish: real client processes (this test binary, re-run as a child) that
// are killed with SIGKILL, or frozen with SIGSTOP so their socket stays open and silent.
// ---------------------------------------------------------------------------------------

/// Set in a child process: the stream URL it connects to.
const CHILD_URL: &str = "TEST_CHILD_CLIENT_URL";

/// Not a test of its own: the client process that the vanishing-client test starts (this
/// binary, filtered to this function). It connects, prints `session <id>` on stdout and
/// streams silence at real time until it is killed.
#[tokio::test]
#[ignore = "a child process of clients_that_vanish_are_detected_and_leave_nothing_behind"]
async fn child_client_streams_until_killed() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let mut client = Client::admitted(&url).await;
    let mut ticks = tokio::time::interval(std::time::Duration::from_millis(20));
    let chunk = vec![0u8; 640];
    println!("session connected");
    loop {
        ticks.tick().await;
        if client.try_send(tungstenite_binary(&chunk)).await.is_err() {
            return;
        }
    }
}

/// Starts a client process; returns once the server has its session.
fn spawn_child_client(url: &str) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_client_streams_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_URL, url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("session connected") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(HANG).expect("child client connected");
    child
}

/// What must return to where it was once every vanished client is gone: sessions and
/// reservations in the registry, and the live count of every actor kind (kinds with none
/// alive left out: a kind appears in the stats once its first actor has started).
fn leftovers(stats: &Value) -> Value {
    let actors: serde_json::Map<String, Value> = stats["actors"]
        .as_array()
        .expect("actors")
        .iter()
        .filter(|a| a["alive"] != 0)
        .map(|a| {
            (
                a["stage"].as_str().expect("stage").to_owned(),
                a["alive"].clone(),
            )
        })
        .collect();
    serde_json::json!({
        "sessions_active": stats["registry"]["sessions_active"],
        "sessions_reserved": stats["registry"]["sessions_reserved"],
        "actors": actors,
    })
}

/// A well-behaved client streaming the recording twice at real time, reading as it goes;
/// returns its events and close code.
async fn realtime_client(client: Client) -> (Vec<Value>, Option<u16>) {
    let (mut tx, mut rx) = client.split();
    let reader = tokio::spawn(async move {
        let mut events = Vec::new();
        loop {
            match rx.recv().await {
                Received::Event(v) => events.push(v),
                Received::Audio(_) => {}
                Received::Closed(c) => return (events, c.map(|c| c.0)),
            }
        }
    });
    let pcm = speech_at(16_000).repeat(2);
    let mut ticks = tokio::time::interval(std::time::Duration::from_millis(20));
    for chunk in pcm.chunks(640) {
        ticks.tick().await;
        tx.send_audio(chunk.to_vec()).await;
    }
    tx.send_json(serde_json::json!({"type": "stop"})).await;
    reader.await.expect("reader")
}

/// Client processes killed with SIGKILL (the kernel closes their sockets, no close frame)
/// and one frozen with SIGSTOP (its connection stays open but answers no heartbeat) are
/// all detected, the frozen one by the heartbeat after `heartbeat_timeout_s`. Their
/// sessions detach, nobody resumes them, and they expire after `resume_window_s`; every
/// actor they had stops, and the server's counts return to where they were, while a
/// well-behaved session streams through it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_are_detected_and_leave_nothing_behind() {
    let server = ServerProcess::start(&[
        ("VOXRT_SESSION__HEARTBEAT_INTERVAL_S", "1"),
        ("VOXRT_SESSION__HEARTBEAT_TIMEOUT_S", "3"),
        ("VOXRT_SESSION__RESUME_WINDOW_S", "2"),
    ]);
    let url = server.url(&query(16_000));
    let baseline = leftovers(&server.stats().await);
    let healthy = tokio::spawn(realtime_client(Client::admitted(&url).await));

    let children_url = url.clone();
    let (mut killed, mut frozen) = tokio::task::spawn_blocking(move || {
        let killed: Vec<_> = (0..3).map(|_| spawn_child_client(&children_url)).collect();
        (killed, spawn_child_client(&children_url))
    })
    .await
    .expect("children");
    server
        .wait_for_stats("five sessions", |s| s["registry"]["sessions_active"] == 5)
        .await;

    for child in &mut killed {
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    let status = std::process::Command::new("kill")
        .args(["-STOP", &frozen.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let frozen_at = std::time::Instant::now();

    server
        .wait_for_stats("the killed clients' sessions detached", |s| {
            s["registry"]["sessions_detached"].as_u64() >= Some(3)
        })
        .await;
    let stats = server
        .wait_for_stats("only the healthy session left", |s| {
            s["registry"]["sessions_active"] == 1
        })
        .await;
    // The frozen client's session ended last: heartbeat timeout, then the resume window.
    let detected_after = frozen_at.elapsed();
    assert_eq!(
        stats["registry"]["closed_by_reason"]["resume_expired"], 4,
        "{stats}"
    );
    // Only the heartbeat can tell a frozen peer from a quiet one: not before the timeout.
    assert!(
        detected_after >= std::time::Duration::from_secs(3),
        "the frozen client was dropped before its heartbeat timeout: {detected_after:?}"
    );
    frozen.kill().expect("SIGKILL");
    frozen.wait().expect("reaped");

    let (events, code) = healthy.await.expect("healthy client");
    assert_eq!(code, Some(1000), "{events:?}");
    assert_eq!(segments(&events).len(), 2, "{events:?}");
    assert!(of_type(&events, "error").is_empty(), "{events:?}");
    server
        .wait_for_stats("every session and actor gone", |s| leftovers(s) == baseline)
        .await;
}

// ---------------------------------------------------------------------------------------
// Shutdown with a session that cannot finish in time: a server process of our own (this
// test binary, re-run as a child) whose pipeline has a processor slower than real time.
// ---------------------------------------------------------------------------------------

/// Set in a child process: run a server with [`slow_flush_catalog`] until SIGTERM (not
/// `VOXRT_`: the server would read that prefix as configuration).
const CHILD_SERVER: &str = "TEST_CHILD_SERVER";

/// A processor that needs `FLUSH_TAKES` to finish a stream (as a speech-to-text model
/// finalising its transcript might): `process` is instant, `flush` is slow.
struct SlowFlush;

/// Longer than the child server's `shutdown_grace_s` (1 s).
const FLUSH_TAKES: std::time::Duration = std::time::Duration::from_secs(3);

impl Processor for SlowFlush {
    fn process(&mut self, _block: &AudioBlock, _events: &mut Vec<ServerEvent>) {}

    fn flush(&mut self, _end_sample: u64, _events: &mut Vec<ServerEvent>) {
        std::thread::sleep(FLUSH_TAKES);
    }
}

/// The builtins plus `slow_flush`.
fn slow_flush_catalog() -> ProcessorCatalog {
    let mut catalog = ProcessorCatalog::with_builtins();
    catalog.register("slow_flush", |_ctx: &ProcessorContext| Box::new(SlowFlush));
    catalog
}

/// Not a test of its own: the server process that the grace test starts. Configured by its
/// `VOXRT_*` environment like the real binary, with `slow_flush` in its catalog.
#[test]
#[ignore = "a child process of sigterm_closes_sessions_that_outlast_the_grace_and_names_them"]
fn child_server_with_a_slow_processor() {
    if std::env::var(CHILD_SERVER).is_err() {
        return;
    }
    let source = voxrt::ConfigSource::from_process();
    let settings = source.load().expect("settings");
    let _log_files = voxrt::logging::init(&settings.log).expect("logging starts");
    actix_web::rt::System::new().block_on(async move {
        let server = voxrt::start(source, slow_flush_catalog())
            .await
            .expect("server starts");
        server.run_until_signal().await;
    });
}

/// SIGTERM while a session's pipeline needs longer than `server.shutdown_grace_s` to flush
/// (a processor whose `flush` takes 3 s, grace 1 s): the session is closed anyway, the log
/// line says so and names its session id, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_that_outlast_the_grace_and_names_them() {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--exact",
        "child_server_with_a_slow_processor",
        "--ignored",
        "--nocapture",
    ])
    .env_clear()
    .env("PATH", std::env::var("PATH").unwrap_or_default())
    .env(CHILD_SERVER, "1")
    .env("VOXRT_PROFILE", "test")
    .env("VOXRT_PIPELINE__PROCESSORS", "level,vad,slow_flush")
    .env("VOXRT_SERVER__SHUTDOWN_GRACE_S", "1");
    let server = ServerProcess::spawn(cmd);

    let mut slow = Client::admitted(&server.url(&query(16_000))).await;
    let slow_id = slow.started["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    // Audio, then a ping round trip: the server has the session's audio when the signal comes.
    for chunk in audio::s16le(&audio::silence(16_000, 1.0), 1).chunks(640) {
        slow.send_audio(chunk.to_vec()).await;
    }
    slow.send_json(serde_json::json!({"type": "ping", "id": 1}))
        .await;
    let mut audio = Vec::new();
    slow.until("pong", &mut audio).await;

    server.signal("TERM");
    let line = server.wait_for_log("the forced close", |l| {
        l["message"] == "sessions did not close within shutdown_grace_s; closing them anyway"
    });
    assert!(
        line["sessions"].to_string().contains(&slow_id),
        "names the slow session {slow_id}: {line}"
    );
    assert_eq!(line["count"], 1, "{line}");
    // The client's connection ends, whatever it last received.
    let _ = slow.drain().await;
    let (code, _) = tokio::task::spawn_blocking(move || server.wait())
        .await
        .expect("wait");
    assert_eq!(code, Some(0));
}
