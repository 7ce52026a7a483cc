//! The real `voxrt` binary as operators run it: startup validation, `--print-config`, and
//! SIGTERM draining live sessions.

mod common;

use common::process::{rss_bytes, voxrt, ServerProcess};
use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// An out-of-range value stops startup with exit code 2 and a message naming key, value and range.
#[test]
fn invalid_config_exits_2_naming_the_key() {
    let out = voxrt()
        .env("VOXRT_REGISTRY__MAX_SESSIONS", "0")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("registry.max_sessions = 0: must be in 1..=100000"),
        "{stderr}"
    );
}

/// A misspelt key is an error naming it, not a silently ignored setting.
#[test]
fn unknown_config_key_exits_2_naming_it() {
    let out = voxrt()
        .env("VOXRT_VAD__TRESHOLD", "0.3")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("treshold"), "{stderr}");
}

/// `VOXRT_*` variables that are not settings (the clients' `VOXRT_TOKEN`, say, exported in
/// the same shell) do not stop the server: it starts, serves, warns once per name without
/// its value, and still reads the `VOXRT_<SECTION>__<KEY>` beside them.
#[test]
fn client_variables_in_the_environment_are_ignored_with_a_warning() {
    const TOKEN: &str = "vx-newcomer-client-key-81f3";
    let server = ServerProcess::start(&[
        ("VOXRT_TOKEN", TOKEN),
        ("VOXRT_URL", "ws://127.0.0.1:1"),
        ("VOXRT_REGISTRY__MAX_SESSIONS", "1500"),
    ]);
    let health = common::http::request("GET", &format!("{}/health", server.http()), None);
    health.expect(200);
    let warned: Vec<&str> = server
        .startup_logs
        .iter()
        .filter(|l| l["level"] == "WARN")
        .filter_map(|l| l["variable"].as_str())
        .collect();
    assert_eq!(
        warned,
        ["VOXRT_TOKEN", "VOXRT_URL"],
        "{:?}",
        server.startup_logs
    );
    let startup = serde_json::to_string(&server.startup_logs).expect("JSON");
    assert!(
        !startup.contains(TOKEN),
        "a variable's value reached the log: {startup}"
    );
    let stats = common::http::request("GET", &format!("{}/v1/stats", server.http()), None);
    assert_eq!(
        stats.expect(200)["server"]["limits"]["registry"]["max_sessions"],
        json!(1500),
        "the settings variable beside them is read"
    );
    server.signal("TERM");
    let (code, _logs) = server.wait();
    assert_eq!(code, Some(0));
}

/// `--print-config` shows the effective settings after every layer.
#[test]
fn print_config_shows_effective_settings() {
    let out = voxrt()
        .arg("--print-config")
        .env("VOXRT_VAD__SILENCE_MS", "700")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let settings: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(settings["vad"]["silence_ms"], 700);
    assert_eq!(settings["server"]["port"], 0, "test profile applied");
    assert_eq!(settings["pipeline"]["processors"], json!(["level", "vad"]));
}

/// SIGTERM with sessions mid-stream: each gets its final events, then session.closed
/// (server_shutdown) and close 1001, and the process exits 0.
#[tokio::test]
async fn sigterm_drains_sessions_and_exits_zero() {
    let server = ServerProcess::start(&[]);
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c =
            Client::admitted(&server.url("sample_rate=48000&channels=1&encoding=pcm_s16le")).await;
        // Speech still open when the signal comes: its speech_end must arrive before closing.
        let mut clip = audio::silence(rate, 0.5);
        clip.extend(&speech[..speech.len() / 2]);
        for chunk in audio::s16le(&clip, 1).chunks(1920) {
            c.send_audio(chunk.to_vec()).await;
        }
        // A ping round trip proves the audio before it was read.
        c.send_json(json!({"type": "ping", "id": 1})).await;
        let mut audio = Vec::new();
        // Events before the pong (speech_start may already be among them) count too.
        let before = c.until("pong", &mut audio).await;
        clients.push((c, before));
    }
    server.signal("TERM");
    for (mut c, before) in clients {
        let (after, code) = c.drain().await;
        let events: Vec<_> = before.into_iter().chain(after).collect();
        let last = events.last().expect("events before close");
        assert_eq!(last["type"], "session.closed", "{events:?}");
        assert_eq!(last["reason"], "server_shutdown");
        assert_eq!(code, Some(1001));
        let segs = segments(&events);
        assert_eq!(segs.len(), 1, "open speech closed at shutdown: {events:?}");
        assert_eq!(
            last["stats"]["chunks_in"],
            last["stats"]["chunks_processed"]
        );
    }
    let (code, _logs) = server.wait();
    assert_eq!(code, Some(0));
}

/// Streams `secs` of audio as fast as the server lets it, reading events concurrently;
/// returns session.closed.
async fn flood(url: String, secs: usize) -> Value {
    let c = Client::admitted(&url).await;
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let mut second = audio::s16le(&speech, 1);
    second.truncate(rate as usize * 2);
    let (mut sink, mut stream) = c.split();
    let reader = tokio::spawn(async move {
        let mut last = Value::Null;
        loop {
            match stream.recv().await {
                Received::Event(v) => last = v,
                Received::Audio(_) => {}
                Received::Closed(_) => return last,
            }
        }
    });
    for _ in 0..secs {
        for chunk in second.chunks(rate as usize * 2 / 50) {
            sink.send_audio(chunk.to_vec()).await;
        }
    }
    sink.send_json(json!({"type": "stop"})).await;
    reader.await.expect("reader")
}

/// Two clients pushing 2 minutes of audio each as fast as TCP allows (hundreds of times
/// real time): in `block` mode nothing is lost and server memory grows by far less than the
/// audio sent (23 MB), staying within the configured per-session bound (about 1.7 MiB each)
/// plus allocator slack. Before intake pacing, this grew by the whole volume sent.
#[tokio::test]
async fn flooding_clients_do_not_grow_server_memory() {
    let server = ServerProcess::start(&[]);
    let url = server.url("sample_rate=48000&channels=1&encoding=pcm_s16le");
    // Warm up allocator pools and lazily built state with one short session.
    flood(url.clone(), 1).await;
    let before = rss_bytes(server.child.id());
    let (a, b) = tokio::join!(flood(url.clone(), 120), flood(url.clone(), 120));
    let after = rss_bytes(server.child.id());
    for closed in [a, b] {
        assert_eq!(closed["type"], "session.closed", "{closed}");
        assert_eq!(closed["stats"]["chunks_dropped"], 0);
        assert_eq!(closed["stats"]["chunks_in"], 120 * 50);
        assert_eq!(closed["stats"]["chunks_processed"], 120 * 50);
    }
    let growth = after.saturating_sub(before);
    println!("server RSS before {before} after {after} growth {growth}");
    assert!(
        growth < 8 << 20,
        "server RSS grew by {growth} bytes while clients flooded"
    );
}

/// One of many clients streaming at real time when SIGTERM comes: 100 ms chunks of the
/// recording (looped) until the server closes. Returns its events and close code.
async fn stream_until_closed(
    c: Client,
    pcm: std::sync::Arc<Vec<u8>>,
    started: tokio::sync::mpsc::Sender<()>,
) -> (Vec<Value>, Option<u16>) {
    let (mut sink, mut stream) = c.split();
    let (closed_tx, mut closed_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut events = Vec::new();
        let mut closed_tx = Some(closed_tx);
        loop {
            match stream.recv().await {
                Received::Event(v) => {
                    if v["type"] == "session.closed" {
                        closed_tx.take().map(|tx| tx.send(()));
                    }
                    events.push(v);
                }
                Received::Audio(_) => {}
                Received::Closed(c) => return (events, c.map(|c| c.0)),
            }
        }
    });
    let mut ticks = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut first = true;
    for chunk in pcm.chunks(3200).cycle() {
        tokio::select! {
            _ = &mut closed_rx => break,
            _ = ticks.tick() => {}
        }
        if sink
            .try_send(Message::Binary(chunk.to_vec().into()))
            .await
            .is_err()
        {
            break;
        }
        if first {
            first = false;
            let _ = started.send(()).await;
        }
    }
    reader.await.expect("reader")
}

/// SIGTERM with 200 sessions streaming at real time: every one of them gets its final
/// events, `session.closed` (`server_shutdown`) and close 1001, with every chunk the server
/// accepted processed; the server exits 0 and never had to close a session by force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_closes_every_session_cleanly() {
    const SESSIONS: usize = 200;
    // The level meter only: a debug build of the server cannot run VAD for 200 real-time
    // sessions on two cores, and shutdown is about the actors, not the detector.
    let server = ServerProcess::start(&[
        ("VOXRT_SERVER__SHUTDOWN_GRACE_S", "30"),
        ("VOXRT_PIPELINE__PROCESSORS", "level"),
    ]);
    let url = server.url("sample_rate=16000&channels=1&encoding=pcm_s16le");
    let mut connected = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        connected.push(Client::admitted(&url).await);
    }
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let pcm = std::sync::Arc::new(audio::s16le(&audio::resample(&speech, rate, 16_000), 1));
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(SESSIONS);
    let clients: Vec<_> = connected
        .into_iter()
        .map(|c| tokio::spawn(stream_until_closed(c, pcm.clone(), started_tx.clone())))
        .collect();
    for _ in 0..SESSIONS {
        tokio::time::timeout(HANG, started_rx.recv())
            .await
            .expect("every client streaming")
            .expect("clients alive");
    }
    server.signal("TERM");
    for client in clients {
        let (events, code) = tokio::time::timeout(HANG, client)
            .await
            .expect("client hung")
            .expect("client");
        let closed = closed_event(&events);
        assert_eq!(closed["reason"], "server_shutdown", "{events:?}");
        assert_eq!(code, Some(1001));
        assert_eq!(closed["stats"]["chunks_dropped"], 0, "{closed}");
        assert_eq!(
            closed["stats"]["chunks_in"], closed["stats"]["chunks_processed"],
            "{closed}"
        );
        for e in of_type(&events, "error") {
            assert_eq!(e["code"], "audio_after_stop", "{e}");
        }
    }
    let (code, logs) = tokio::task::spawn_blocking(move || server.wait())
        .await
        .expect("wait");
    assert_eq!(code, Some(0));
    assert!(
        !logs.iter().any(|l| l["message"]
            == "sessions did not close within shutdown_grace_s; closing them anyway"),
        "no session had to be closed by force"
    );
}
