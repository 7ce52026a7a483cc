//! The session registry through the real server: admission limits (sessions, per IP, memory
//! budget) with their refusals, idle and TTL expiry, surviving a restart, and dropping
//! clients that vanish.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use voxrt::actors::registry::Restart;

const S16_16K: &str = "sample_rate=16000&channels=1&encoding=pcm_s16le";

/// Connects expecting a refusal.
async fn refused(server: &TestServer) -> Refusal {
    match Client::connect(&server.url(S16_16K)).await {
        Err(r) => r,
        Ok(c) => panic!("admitted: {}", c.started),
    }
}

/// Asserts an HTTP refusal `status`/`code` with a JSON body and correlation id; returns
/// Retry-After in seconds.
fn assert_refusal(r: &Refusal, status: u16, code: &str) -> Option<u64> {
    assert_eq!(r.status, status, "{r:?}");
    let body = r
        .body
        .as_ref()
        .unwrap_or_else(|| panic!("JSON body: {r:?}"));
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    uuid::Uuid::parse_str(
        body["error"]["correlation_id"]
            .as_str()
            .expect("correlation_id"),
    )
    .expect("correlation_id is a UUID");
    r.retry_after
        .as_deref()
        .map(|v| v.parse().expect("Retry-After in whole seconds"))
}

/// Waits until exactly `n` sessions are live and none is half-admitted.
async fn wait_active(server: &TestServer, n: usize) {
    server
        .wait_for_stats(&format!("{n} active sessions"), |s| {
            s.sessions_active == n && s.sessions_reserved == 0
        })
        .await;
}

fn closed<'a>(events: &'a [Value], reason: &str) -> &'a Value {
    let last = events.last().unwrap_or_else(|| panic!("no events"));
    assert_eq!(last["type"], "session.closed", "{events:?}");
    assert_eq!(last["reason"], reason, "{events:?}");
    &last["stats"]
}

/// With `max_sessions=2` a third client gets 503 `server_full` with Retry-After; once one
/// session has closed (and unregistered) the next client is admitted.
#[tokio::test]
async fn over_max_sessions_is_503_server_full_until_a_slot_frees() {
    let server = TestServer::start(&[
        ("registry.max_sessions", "2"),
        ("registry.max_sessions_per_ip", "2"),
    ]);
    let a = server.connect(S16_16K).await;
    let mut b = server.connect(S16_16K).await;
    let retry = assert_refusal(&refused(&server).await, 503, "server_full");
    assert!(retry.is_some_and(|s| s > 0), "Retry-After on server_full");
    let stats = server.registry_stats().await;
    assert_eq!(stats.sessions_active, 2, "{stats:?}");
    assert_eq!(
        stats.refused_total.get("server_full"),
        Some(&1),
        "{stats:?}"
    );

    let (_, code) = a.stop().await;
    assert_eq!(code, Some(1000));
    wait_active(&server, 1).await;
    let c = server.connect(S16_16K).await;
    assert_refusal(&refused(&server).await, 503, "server_full");
    // The sessions admitted around the refusals work.
    b.send_json(ping(json!(1))).await;
    b.until("pong", &mut Vec::new()).await;
    let (_, code) = c.stop().await;
    assert_eq!(code, Some(1000));
}

/// With `max_sessions_per_ip=1` a second session from 127.0.0.1 gets 429
/// `too_many_sessions` with Retry-After; closing the first lets the address in again.
#[tokio::test]
async fn over_max_sessions_per_ip_is_429_too_many_sessions() {
    let server = TestServer::start(&[("registry.max_sessions_per_ip", "1")]);
    let a = server.connect(S16_16K).await;
    let retry = assert_refusal(&refused(&server).await, 429, "too_many_sessions");
    assert!(
        retry.is_some_and(|s| s > 0),
        "Retry-After on too_many_sessions"
    );
    let (_, code) = a.stop().await;
    assert_eq!(code, Some(1000));
    wait_active(&server, 0).await;
    let b = server.connect(S16_16K).await;
    b.stop().await;
}

/// With a memory budget that holds exactly one session's worst-case reservation, the second
/// client gets 503 `memory_budget_exceeded` with Retry-After.
#[tokio::test]
async fn over_memory_budget_is_503_memory_budget_exceeded() {
    // 4 MiB frames make one reservation ~9 MiB (a frame being read and a message being
    // reassembled): 16 MiB (the smallest budget) holds one.
    let server = TestServer::start(&[
        ("session.max_binary_frame_bytes", "4194304"),
        ("registry.memory_budget_mb", "16"),
    ]);
    let reserve = server.registry_stats().await.reserve_bytes_per_session;
    let budget = 16usize << 20;
    assert!(
        reserve <= budget && 2 * reserve > budget,
        "precondition: the 16 MiB budget holds exactly one reservation of {reserve} bytes"
    );
    let a = server.connect(S16_16K).await;
    let r = refused(&server).await;
    let retry = assert_refusal(&r, 503, "memory_budget_exceeded");
    assert!(
        retry.is_some_and(|s| s > 0),
        "Retry-After on memory_budget_exceeded"
    );
    let stats = server.registry_stats().await;
    assert_eq!(
        stats.refused_total.get("memory_budget_exceeded"),
        Some(&1),
        "{stats:?}"
    );
    a.stop().await;
    wait_active(&server, 0).await;
    server.connect(S16_16K).await.stop().await;
}

/// A session with no audio and no pings for `idle_timeout_s` is closed by the server with
/// `session.closed` reason `idle_timeout` and close 4000 (not before the timeout), after
/// its pending audio has been flushed through the pipeline.
#[tokio::test]
async fn idle_session_is_closed_with_idle_timeout_4000() {
    let server = TestServer::start(&[("registry.idle_timeout_s", "1")]);
    let mut c = server.connect(S16_16K).await;
    let pcm = audio::s16le(&audio::tone(16_000, 440.0, 0.3, 0.3), 1);
    let last_activity = Instant::now();
    c.send_audio(pcm).await;
    let (events, code) = c.drain().await;
    let idle_for = last_activity.elapsed();
    assert_eq!(code, Some(4000), "{events:?}");
    let stats = closed(&events, "idle_timeout");
    assert_eq!(
        stats,
        &json!({"chunks_in": 1, "chunks_processed": 1, "chunks_dropped": 0, "audio_ms": 300}),
        "pending audio is flushed before the idle close"
    );
    assert!(
        idle_for >= Duration::from_secs(1),
        "closed after only {idle_for:?} of inactivity"
    );
    wait_active(&server, 0).await;
}

/// Client pings (every 250 ms for 2.5x the 2 s idle timeout) keep a session alive; so does
/// audio alone (synchronised with `flush`, which by itself is not activity).
#[tokio::test]
async fn pings_or_audio_keep_a_session_from_idling() {
    let server = TestServer::start(&[("registry.idle_timeout_s", "2")]);
    let mut pinger = server.connect(S16_16K).await;
    let mut streamer = server.connect(S16_16K).await;
    let chunk = audio::s16le(&audio::silence(16_000, 0.05), 1);
    let until = Instant::now() + Duration::from_secs(5);
    let mut i = 0u64;
    while Instant::now() < until {
        pinger.send_json(ping(json!(i))).await;
        let events = pinger.until("pong", &mut Vec::new()).await;
        assert_eq!(events.last().unwrap()["id"], i);
        assert!(of_type(&events, "session.closed").is_empty(), "{events:?}");

        streamer.send_audio(chunk.clone()).await;
        streamer.send_json(json!({"type": "flush"})).await;
        let events = streamer.until("flushed", &mut Vec::new()).await;
        assert_eq!(events.last().unwrap()["audio_ms"], 50 * (i + 1));
        i += 1;
        // Lets time pass; the server's idle timer is what is under test.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for c in [pinger, streamer] {
        let (events, code) = c.stop().await;
        assert_eq!(code, Some(1000));
        closed(&events, "client_stop");
    }
}

/// `flush` is not activity: a session that only flushes is still closed for idleness.
#[tokio::test]
async fn flushes_alone_do_not_keep_a_session_alive() {
    let server = TestServer::start(&[("registry.idle_timeout_s", "1")]);
    let mut c = server.connect(S16_16K).await;
    let started = Instant::now();
    let mut events = Vec::new();
    let code = 'outer: loop {
        if c.try_send(Message::Text(json!({"type": "flush"}).to_string().into()))
            .await
            .is_err()
        {
            break c.drain().await.1;
        }
        loop {
            match c.recv().await {
                Received::Event(v) if v["type"] == "flushed" => break,
                Received::Event(v) => events.push(v),
                Received::Audio(_) => {}
                Received::Closed(code) => break 'outer code.map(|(c, _)| c),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code, Some(4000), "{events:?}");
    closed(&events, "idle_timeout");
    assert!(started.elapsed() >= Duration::from_secs(1));
}

/// A session reaching `session_ttl_s` is closed with `ttl_expired` and 4001 even while it
/// streams audio, after the audio it had sent was processed.
#[tokio::test]
async fn session_is_closed_at_ttl_even_while_streaming() {
    let server = TestServer::start(&[("registry.session_ttl_s", "1")]);
    let connecting = Instant::now();
    let mut c = server.connect(S16_16K).await;
    let chunk = audio::s16le(&audio::tone(16_000, 440.0, 0.3, 0.05), 1);
    let mut events = Vec::new();
    let mut sent = 0u64;
    let code = 'outer: loop {
        if c.try_send(Message::Binary(chunk.clone().into()))
            .await
            .is_err()
        {
            break c.drain().await.1;
        }
        sent += 1;
        let sync = Message::Text(json!({"type": "flush"}).to_string().into());
        if c.try_send(sync).await.is_err() {
            break c.drain().await.1;
        }
        // Once the session is closing, flush is no longer answered: session.closed comes.
        loop {
            match c.recv().await {
                Received::Event(v) if v["type"] == "flushed" => break,
                Received::Event(v) => events.push(v),
                Received::Audio(_) => {}
                Received::Closed(code) => break 'outer code.map(|(c, _)| c),
            }
        }
        // Stream at about real time; the server's TTL timer is what is under test.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lived = connecting.elapsed();
    assert_eq!(code, Some(4001), "{events:?}");
    let closed_at = events
        .iter()
        .position(|e| e["type"] == "session.closed")
        .expect("session.closed");
    assert_eq!(
        closed_at,
        events.len() - 1,
        "session.closed is last: {events:?}"
    );
    let stats = &events[closed_at]["stats"];
    assert_eq!(events[closed_at]["reason"], "ttl_expired");
    let chunks_in = stats["chunks_in"].as_u64().unwrap();
    assert!(chunks_in >= 2, "it was streaming: {stats}");
    assert!(chunks_in <= sent, "{stats}");
    assert_eq!(
        stats["chunks_processed"], chunks_in,
        "accepted audio was processed: {stats}"
    );
    assert_eq!(stats["chunks_dropped"], 0);
    assert_eq!(stats["audio_ms"], chunks_in * 50);
    assert!(lived >= Duration::from_secs(1), "closed after {lived:?}");
    // Audio that arrived after the close began is refused, not processed.
    for e in of_type(&events, "error") {
        assert_eq!(e["code"], "audio_after_stop", "{e}");
        assert_eq!(e["fatal"], false, "{e}");
    }
}

/// After a supervisor restart of the registry, both live sessions are still counted,
/// `restarts` is 1, `max_sessions` still refuses a third client, sessions that close are
/// unregistered, and a freed slot is admitted again.
#[tokio::test]
async fn registry_restart_keeps_live_sessions_and_limits() {
    let server = TestServer::start(&[
        ("registry.max_sessions", "2"),
        ("registry.max_sessions_per_ip", "2"),
    ]);
    let mut a = server.connect(S16_16K).await;
    let b = server.connect(S16_16K).await;
    wait_active(&server, 2).await;
    server
        .registry
        .send(Restart)
        .await
        .expect("restart delivered");
    let stats = server.registry_stats().await;
    assert_eq!(stats.restarts, 1, "{stats:?}");
    assert_eq!(stats.sessions_active, 2, "{stats:?}");
    assert_eq!(stats.admitted_total, 2, "{stats:?}");
    assert_refusal(&refused(&server).await, 503, "server_full");

    // Sessions keep working through the restart.
    let pcm = audio::s16le(&audio::silence(16_000, 0.2), 1);
    let events = a.stream_and_flush(&pcm, 3200).await;
    assert_eq!(events.last().unwrap()["audio_ms"], 200);

    let (_, code) = b.stop().await;
    assert_eq!(code, Some(1000));
    wait_active(&server, 1).await;
    let c = server.connect(S16_16K).await;
    assert_refusal(&refused(&server).await, 503, "server_full");
    a.stop().await;
    c.stop().await;
    let stats = server
        .wait_for_stats("all sessions gone", |s| s.sessions_active == 0)
        .await;
    assert_eq!(stats.closed_total, 3, "{stats:?}");
    assert_eq!(stats.restarts, 1, "{stats:?}");
}

/// The registry's idle sweep keeps running after a restart.
#[tokio::test]
async fn idle_expiry_still_works_after_registry_restart() {
    let server = TestServer::start(&[("registry.idle_timeout_s", "1")]);
    let mut c = server.connect(S16_16K).await;
    wait_active(&server, 1).await;
    server
        .registry
        .send(Restart)
        .await
        .expect("restart delivered");
    let (events, code) = c.drain().await;
    assert_eq!(code, Some(4000), "{events:?}");
    closed(&events, "idle_timeout");
    let stats = server.registry_stats().await;
    assert_eq!(stats.restarts, 1, "{stats:?}");
}

/// A client that goes silent without closing (TCP stays open, nothing is read or sent, so
/// no pong) is dropped after `heartbeat_timeout_s` and unregistered, long before the idle
/// timeout would apply.
#[tokio::test]
async fn silent_client_is_dropped_after_heartbeat_timeout() {
    let server = TestServer::start(&[
        ("session.heartbeat_interval_s", "1"),
        ("session.heartbeat_timeout_s", "2"),
        ("registry.idle_timeout_s", "3600"),
    ]);
    let connecting = Instant::now();
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp connect");
    let (mut ws, _) = tokio_tungstenite::client_async(server.url(S16_16K), tcp)
        .await
        .expect("upgrade");
    use futures_util::StreamExt;
    let first = tokio::time::timeout(HANG, ws.next())
        .await
        .expect("session.started hung")
        .expect("a frame")
        .expect("no error");
    assert!(first.to_text().unwrap().contains("session.started"));
    wait_active(&server, 1).await;
    // From here `ws` is neither read nor written: the client has vanished.
    server
        .wait_for_stats("the silent session to be dropped", |s| {
            s.sessions_active == 0
        })
        .await;
    let gone_after = connecting.elapsed();
    assert!(
        gone_after >= Duration::from_secs(2),
        "dropped after {gone_after:?}, before heartbeat_timeout_s"
    );
    let stats = server.registry_stats().await;
    assert_eq!(stats.closed_total, 1, "{stats:?}");
    drop(ws);
}

/// A client whose TCP connection disappears without a WebSocket close is unregistered and
/// its slot freed.
#[tokio::test]
async fn dropped_connection_frees_its_slot() {
    let server = TestServer::start(&[
        ("registry.max_sessions", "1"),
        ("registry.max_sessions_per_ip", "1"),
    ]);
    let mut c = server.connect(S16_16K).await;
    c.send_audio(audio::s16le(&audio::silence(16_000, 0.1), 1))
        .await;
    drop(c);
    wait_active(&server, 0).await;
    let c = server.connect(S16_16K).await;
    let (_, code) = c.stop().await;
    assert_eq!(code, Some(1000));
}
