//! Scale-out on NATS JetStream, with real processes: a `nats-server -js` per test (Debian's
//! package) and two or three `voxrt` binaries on 127.0.0.1, OS-picked ports everywhere.
//!
//! What users notice: every event a client got is in the stream, in order, for consumers
//! started later; NATS going away costs sessions nothing; a client whose node is killed or
//! drained resumes on another node with every `seq` once; operators see nodes come and go.

mod common;

use common::audio;
use common::nats::NatsServer;
use common::process::ServerProcess;
use common::resume::{resume_query, segments, speech, Seen, CHUNK, QUERY, RATE};
use common::{http, poll_until, Client, Received, Refusal};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

/// A voxrt node on NATS at `nats`, named `node`, plus `extra` settings.
fn node(nats: &NatsServer, name: &str, extra: &[(&str, &str)]) -> ServerProcess {
    let url = nats.url();
    let mut envs = vec![
        ("VOXRT_NATS__URL", url.as_str()),
        ("VOXRT_NATS__NODE", name),
        ("VOXRT_NATS__HEARTBEAT_INTERVAL_S", "1"),
        ("VOXRT_NATS__PUBLISH_TIMEOUT_MS", "1000"),
    ];
    envs.extend_from_slice(extra);
    ServerProcess::start(&envs)
}

/// GET `url` as JSON from async code.
async fn get(url: String) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        let reply = http::request("GET", &url, None);
        (reply.status, reply.json())
    })
    .await
    .expect("request")
}

/// Every message of `session` in the stream: `(events, lifecycle records)`, in stream order.
async fn read_log(js: &async_nats::jetstream::Context, session: &str) -> (Vec<Value>, Vec<Value>) {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let stream = js.get_stream("VOXRT_EVENTS").await.expect("stream exists");
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: format!("voxrt.sessions.{session}.>"),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let (mut events, mut lifecycle) = (Vec::new(), Vec::new());
    if consumer.info().await.expect("info").num_pending == 0 {
        return (events, lifecycle);
    }
    let mut messages = consumer.messages().await.expect("messages");
    loop {
        let message = tokio::time::timeout(common::HANG, messages.next())
            .await
            .expect("stream read hung")
            .expect("stream open")
            .expect("message");
        let value: Value = serde_json::from_slice(&message.payload).expect("JSON");
        if message.subject.ends_with(".events") {
            events.push(value);
        } else {
            lifecycle.push(value);
        }
        if message.info().expect("info").pending == 0 {
            return (events, lifecycle);
        }
    }
}

/// Polls the stream until `session`'s log holds an event with `seq` >= `seq`.
async fn wait_logged(js: &async_nats::jetstream::Context, session: &str, seq: u64) {
    poll_until(
        "the stream to hold the session's events",
        Duration::from_millis(50),
        || async {
            read_log(js, session)
                .await
                .0
                .iter()
                .filter_map(|e| e["seq"].as_u64())
                .max()
        },
        |last| last.is_some_and(|l| l >= seq),
    )
    .await;
}

/// Resumes through `url`; returns the client, the `session.resumed` frame, and the byte
/// offset in `QUERY`'s format to resend from. Replayed events go into `got`.
async fn resume(url: &str, got: &mut Seen) -> (Client, Value, usize) {
    try_resume(url, got).await.expect("resume admitted")
}

/// [`resume`], or the node's refusal.
async fn try_resume(url: &str, got: &mut Seen) -> Result<(Client, Value, usize), Refusal> {
    let mut client = Client::connect_raw(url).await?;
    let resumed = match client.recv().await {
        Received::Event(v) if v["type"] == "session.resumed" => v,
        other => panic!("expected session.resumed, got {other:?}"),
    };
    let frames = resumed["input_frames"].as_u64().expect("input_frames");
    if let Some(seq) = resumed["rewound_to"].as_u64() {
        got.rewind(seq);
    }
    for _ in 0..resumed["replayed"].as_u64().expect("replayed") {
        match client.recv().await {
            Received::Event(v) => got.add(v),
            other => panic!("expected a replayed event, got {other:?}"),
        }
    }
    Ok((client, resumed, frames as usize * 2))
}

/// Reads until the connection ends, keeping every event; returns the close code.
async fn read_until_closed(client: &mut Client, got: &mut Seen) -> Option<u16> {
    loop {
        match client.recv().await {
            Received::Event(v) => got.add(v),
            Received::Audio(_) => {}
            Received::Closed(c) => return c.map(|(code, _)| code),
        }
    }
}

/// Kills node `a` (SIGKILL) once the stream holds every message its client (`client`, of
/// session `id` started with `started`) has, reads that connection to its end, and resumes
/// the session through node `b`: the new client, `session.resumed`, and the byte of the
/// audio to resend from.
async fn kill_and_resume(
    nats: &NatsServer,
    a: &mut ServerProcess,
    b: &ServerProcess,
    (mut client, started, id): (Client, &Value, &str),
    got: &mut Seen,
) -> (Client, Value, usize) {
    let js = nats.jetstream().await;
    wait_logged(&js, id, got.last_seq()).await;
    a.child.kill().expect("kill -9 node A");
    let _ = a.child.wait();
    assert_ne!(read_until_closed(&mut client, got).await, Some(1000));
    resume(&b.url(&resume_query(started, got.last_seq())), got).await
}

/// Sends `rest` (the audio after the resume point) on the resumed `client`, stops, and
/// checks everything the client got: seqs contiguous, and segments those of `want` apart
/// from the split at the takeover point.
async fn finish_resumed(
    client: Client,
    resumed: &Value,
    rest: &[u8],
    got: &mut Seen,
    want: &[(String, u64)],
) {
    resend_and_stop(client, rest, got).await;
    let at_ms = resumed["audio_ms"].as_u64().expect("audio_ms");
    assert_segments_match(&segments(&got.events()), want, at_ms);
}

/// Sends `audio` on the resumed `client`, stops, and checks that the client got every seq
/// once.
async fn resend_and_stop(mut client: Client, audio: &[u8], got: &mut Seen) {
    for chunk in audio.chunks(CHUNK) {
        client.send_audio(chunk.to_vec()).await;
    }
    let (events, code) = client.stop().await;
    assert_eq!(code, Some(1000));
    for e in events {
        got.add(e);
    }
    got.assert_contiguous();
}

/// The reference: `pcm` streamed whole on one node (opened with `query`), without any loss.
async fn reference(server: &ServerProcess, query: &str, pcm: &[u8]) -> Vec<(String, u64)> {
    let mut c = Client::admitted(&server.url(query)).await;
    for chunk in pcm.chunks(CHUNK) {
        c.send_audio(chunk.to_vec()).await;
    }
    let (events, code) = c.stop().await;
    assert_eq!(code, Some(1000));
    segments(&events)
}

/// `got` equals `want` within 64 ms per boundary, except that one segment may be split at
/// `at_ms` (a `speech_end` within 200 ms of it, then a `speech_start` within 600 ms).
fn assert_segments_match(got: &[(String, u64)], want: &[(String, u64)], at_ms: u64) {
    let mut merged: Vec<(String, u64)> = Vec::new();
    let mut i = 0;
    while i < got.len() {
        let split = got[i].0 == "speech_end"
            && got[i].1.abs_diff(at_ms) <= 200
            && got
                .get(i + 1)
                .is_some_and(|(e, t)| e == "speech_start" && t.abs_diff(at_ms) <= 600);
        if split {
            i += 2;
            continue;
        }
        merged.push(got[i].clone());
        i += 1;
    }
    assert_eq!(
        merged.len(),
        want.len(),
        "segments {got:?} (split at {at_ms} allowed) vs reference {want:?}"
    );
    for ((e1, t1), (e2, t2)) in merged.iter().zip(want) {
        assert_eq!(e1, e2, "{merged:?} vs {want:?}");
        assert!(
            t1.abs_diff(*t2) <= 64,
            "{e1} at {t1} ms vs {t2} ms in the reference: {merged:?} vs {want:?}"
        );
    }
}

/// Opens a session on `server` (with `query`), streams `pcm[..cut_at]` (as fast as the
/// node takes it, or paced at real time) and waits for a pong, which follows every frame
/// before it: the node has read all that audio. Returns the client, its
/// `session.started`, the session id and what it got.
async fn stream_until_read(
    server: &ServerProcess,
    query: &str,
    pcm: &[u8],
    cut_at: usize,
    real_time: bool,
) -> (Client, Value, String, Seen) {
    let mut client = Client::admitted(&server.url(query)).await;
    let started = client.started.clone();
    let id = started["session_id"].as_str().expect("id").to_owned();
    let mut got = Seen::default();
    got.add(started.clone());
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for chunk in pcm[..cut_at].chunks(CHUNK) {
        if real_time {
            tick.tick().await;
        }
        client.send_audio(chunk.to_vec()).await;
    }
    client
        .send_json(json!({"type": "ping", "id": "read"}))
        .await;
    let mut audio_out = Vec::new();
    for e in client.until("pong", &mut audio_out).await {
        got.add(e);
    }
    (client, started, id, got)
}

/// Every event each of 50 sessions streaming speech in real time got is in the stream,
/// whole and in seq order, for a consumer that starts reading after they ended; lifecycle
/// records say which node ran each and how it closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_fifty_real_time_sessions_are_in_the_stream_in_seq_order() {
    let nats = NatsServer::start();
    let server = node(&nats, "solo", &[]);
    // Three seconds of a recording, paced at real time.
    let pcm = speech();
    let pcm = pcm[..(RATE as usize * 2 * 3).min(pcm.len())].to_vec();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (url, pcm) = (server.url(QUERY), pcm.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::admitted(&url).await;
            let started = c.started.clone();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for chunk in pcm.chunks(CHUNK) {
                tick.tick().await;
                c.send_audio(chunk.to_vec()).await;
            }
            let (mut events, code) = c.stop().await;
            assert_eq!(code, Some(1000));
            events.insert(0, started);
            events
        }));
    }
    let js = nats.jetstream().await;
    let mut ids = Vec::new();
    for task in tasks {
        let got = task.await.expect("client");
        let id = got[0]["session_id"].as_str().expect("id").to_owned();
        let last = got.last().expect("events")["seq"].as_u64().expect("seq");
        wait_logged(&js, &id, last).await;
        let (logged, lifecycle) = read_log(&js, &id).await;
        // As the client got them, except that the token is not logged.
        let mut want = got.clone();
        want[0].as_object_mut().expect("object").remove("resume");
        assert_eq!(
            logged, want,
            "session {id}: the stream holds what the client got"
        );
        assert!(logged.iter().any(|e| e["type"] == "level"));
        let kinds: Vec<&str> = lifecycle
            .iter()
            .filter_map(|r| r["type"].as_str())
            .collect();
        assert_eq!(kinds, ["started", "closed"], "session {id}");
        assert_eq!(lifecycle[0]["node"], "solo");
        assert_eq!(lifecycle[0]["params"]["input"]["sample_rate"], RATE);
        assert_eq!(lifecycle[1]["reason"], "client_stop");
        assert_eq!(lifecycle[1]["stats"], got.last().expect("closed")["stats"]);
        ids.push(id);
    }
    // A session that ended leaves no state behind for a takeover to find.
    let records = js.get_key_value("voxrt_sessions").await.expect("bucket");
    poll_until(
        "ended sessions' records to be deleted",
        Duration::from_millis(50),
        || async {
            let mut left = 0;
            for id in &ids {
                if records.get(id.as_str()).await.expect("get").is_some() {
                    left += 1;
                }
            }
            left
        },
        |left| *left == 0,
    )
    .await;
    let (status, ready) = get(format!("{}/ready", server.http())).await;
    assert_eq!(status, 200);
    assert_eq!(ready["nats"]["connected"], true);
    assert_eq!(ready["nats"]["unpublished"], 0);
}

/// NATS killed under load and started again: every session goes on and ends normally,
/// what could not be queued is counted as unpublished (`/ready`, `/metrics`), and
/// publishing recovers: the sessions' ends are in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted_under_load_costs_sessions_nothing() {
    let mut nats = NatsServer::start();
    // The clients are read one at a time here, so each sits unread (no pong, no audio)
    // while the others work and while NATS recovers; on a slow machine that outlasts the
    // default heartbeat and idle timeouts, which are not what this test is about.
    let server = node(
        &nats,
        "solo",
        &[
            ("VOXRT_NATS__MAX_PENDING", "50"),
            ("VOXRT_SESSION__HEARTBEAT_TIMEOUT_S", "3600"),
            ("VOXRT_REGISTRY__IDLE_TIMEOUT_S", "3600"),
        ],
    );
    let ready = || get(format!("{}/ready", server.http()));
    poll_until(
        "publishing to start",
        Duration::from_millis(50),
        ready,
        |(_, r)| r["nats"]["connected"] == true,
    )
    .await;
    let tone = audio::s16le(&audio::tone(RATE, 440.0, 0.3, 1.0), 1);
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(Client::admitted(&server.url(QUERY)).await);
    }
    // Audio keeps flowing while NATS is down: each second of it makes ten level events
    // per session, far more than the 50 records the queue holds.
    nats.kill();
    let mut rounds = 0;
    loop {
        for c in &mut clients {
            for chunk in tone.chunks(CHUNK) {
                c.send_audio(chunk.to_vec()).await;
            }
            c.send_json(json!({"type": "flush"})).await;
            let mut audio = Vec::new();
            let events = c.until("flushed", &mut audio).await;
            assert!(
                events.iter().all(|e| e["type"] != "error"),
                "no session fails while NATS is down: {events:?}"
            );
        }
        rounds += 1;
        let (status, r) = ready().await;
        assert_eq!(status, 200, "NATS down does not make the node unready");
        if r["nats"]["connected"] == false && r["nats"]["unpublished"].as_u64() > Some(0) {
            break;
        }
        assert!(rounds < 600, "unpublished never counted: {r}");
    }
    let metrics = tokio::task::spawn_blocking({
        let url = format!("{}/metrics", server.http());
        move || http::request("GET", &url, None).body
    })
    .await
    .expect("metrics");
    let unpublished = metrics
        .lines()
        .find(|l| l.starts_with("voxrt_nats_unpublished_total "))
        .expect("unpublished counter");
    assert_ne!(unpublished, "voxrt_nats_unpublished_total 0", "{metrics}");
    assert!(metrics.contains("voxrt_nats_connected 0"));

    nats.restart();
    poll_until(
        "publishing to recover",
        Duration::from_millis(50),
        ready,
        |(_, r)| r["nats"]["connected"] == true && r["nats"]["pending"] == 0,
    )
    .await;
    let js = nats.jetstream().await;
    let stopped = futures_util::future::join_all(clients.into_iter().map(|c| async move {
        let id = c.started["session_id"].as_str().expect("id").to_owned();
        (id, c.stop().await)
    }))
    .await;
    for (id, (events, code)) in stopped {
        assert_eq!(code, Some(1000));
        let closed = events.last().expect("session.closed");
        assert_eq!(closed["type"], "session.closed");
        assert_eq!(closed["reason"], "client_stop");
        let last = closed["seq"].as_u64().expect("seq");
        wait_logged(&js, &id, last).await;
        let (logged, lifecycle) = read_log(&js, &id).await;
        assert_eq!(
            logged.last(),
            Some(closed),
            "the end is logged after recovery"
        );
        assert!(lifecycle.iter().any(|r| r["type"] == "closed"));
    }
}

/// A node killed (SIGKILL) mid-speech: its client resumes through another node, resends
/// from where the new node says, and ends with every seq exactly once and the speech
/// segments of the same audio streamed without a loss (one may be split at the takeover
/// point).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_client_resumes_on_another_node_with_every_seq_once() {
    let nats = NatsServer::start();
    let mut a = node(&nats, "node-a", &[]);
    let b = node(&nats, "node-b", &[]);
    let pcm = speech();
    let want = reference(&b, QUERY, &pcm).await;
    assert!(want.len() >= 4, "reference has segments: {want:?}");

    // Mid-word: inside the first phrase's speech.
    let cut_at = (RATE as usize * 2) * 9 / 10 / CHUNK * CHUNK;
    let (client, started, id, mut got) = stream_until_read(&a, QUERY, &pcm, cut_at, false).await;
    // Node A dies once the stream holds what its client had at the pong. Events A made
    // after it may reach the client and not the stream (the client is then told to rewind)
    // or the stream and not the client (replayed): either way nothing is lost or repeated.
    let (client, resumed, from) =
        kill_and_resume(&nats, &mut a, &b, (client, &started, &id), &mut got).await;
    assert!(
        from <= cut_at,
        "the new node cannot resume past what A read"
    );
    finish_resumed(client, &resumed, &pcm[from..], &mut got, &want).await;
    let all = got.events();
    let closed = all.last().expect("events");
    assert_eq!(closed["type"], "session.closed");
    // The stream tells the story: started on A, taken over by B after A was lost.
    let (logged, lifecycle) = read_log(&nats.jetstream().await, &id).await;
    let logged_seqs: Vec<u64> = logged.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(logged_seqs, (0..=got.last_seq()).collect::<Vec<_>>());
    let taken = lifecycle
        .iter()
        .find(|r| r["type"] == "taken_over")
        .expect("a taken_over record");
    assert_eq!(taken["node"], "node-b");
    assert_eq!(taken["from_node"], "node-a");
    assert_eq!(taken["node_lost"], true);
}

/// A client that stopped sending audio and only pinged for a while before its node died:
/// the last moment of its log is pongs, which do not say where the audio stands, so the
/// new node reads further back and resumes it where its audio ended, not at the start:
/// from the widest tail by default, from the whole log when the pongs fill that too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_only_pinged_for_a_while_resumes_where_its_audio_ended() {
    let nats = NatsServer::start();
    resume_after_pings(&nats, "default", &[]).await;
    resume_after_pings(&nats, "tail-1s", &[("VOXRT_NATS__TAKEOVER_TAIL_S", "1")]).await;
}

/// One round of the test above, on nodes `<name>-a` and `<name>-b` with `extra` settings.
async fn resume_after_pings(nats: &NatsServer, name: &str, extra: &[(&str, &str)]) {
    let mut a = node(nats, &format!("{name}-a"), extra);
    let b = node(nats, &format!("{name}-b"), extra);
    let pcm = speech();
    let cut_at = (RATE as usize * 2) * 9 / 10 / CHUNK * CHUNK;
    let (mut client, started, id, mut got) =
        stream_until_read(&a, QUERY, &pcm, cut_at, false).await;
    // Pings for 1.5 s of wall time (more than the first tail a takeover reads): the
    // newest logged events are pongs, the last level event is older.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for i in 0..15 {
        tick.tick().await;
        client.send_json(json!({"type": "ping", "id": i})).await;
        let mut audio_out = Vec::new();
        for e in client.until("pong", &mut audio_out).await {
            got.add(e);
        }
    }
    let (client, resumed, from) =
        kill_and_resume(nats, &mut a, &b, (client, &started, &id), &mut got).await;
    let level_ms = 100;
    let streamed_ms = (cut_at / 2) as u64 * 1000 / u64::from(RATE);
    let resumed_ms = resumed["audio_ms"].as_u64().expect("audio_ms");
    assert!(
        resumed_ms + level_ms >= streamed_ms && resumed_ms <= streamed_ms,
        "{name}: resumed at {resumed_ms} ms of {streamed_ms} ms streamed"
    );
    resend_and_stop(client, &pcm[from..cut_at], &mut got).await;
}

/// A node that stops answering without leaving NATS (frozen: SIGSTOP) while its client
/// resumes elsewhere, with a handover timeout shorter than a heartbeat's expiry: the
/// request goes unanswered, and the client is told to try again (503 `session_busy`) until
/// the frozen node's heartbeat expires, then resumes from the log with every seq once.
/// Never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_nodes_client_is_asked_to_retry_then_resumes() {
    resume_from_a_frozen_node("1000").await;
}

/// The same with a handover timeout of a minute: the new node stops waiting for the
/// frozen one once its heartbeat expires (a few seconds), not when the request times out
/// (a wait the client would take for a hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_is_waited_for_only_until_its_heartbeat_expires() {
    resume_from_a_frozen_node("60000").await;
}

/// Freezes the node a session runs on and resumes it through another node whose
/// `nats.handover_timeout_ms` is `handover_timeout_ms`, retrying while it is busy.
async fn resume_from_a_frozen_node(handover_timeout_ms: &str) {
    let nats = NatsServer::start();
    let a = node(&nats, "node-a", &[]);
    let b = node(
        &nats,
        "node-b",
        &[("VOXRT_NATS__HANDOVER_TIMEOUT_MS", handover_timeout_ms)],
    );
    let pcm = speech();
    let cut_at = (RATE as usize * 2) * 9 / 10 / CHUNK * CHUNK;
    let (client, started, id, mut got) = stream_until_read(&a, QUERY, &pcm, cut_at, false).await;
    wait_logged(&nats.jetstream().await, &id, got.last_seq()).await;
    a.signal("STOP");
    drop(client);
    let url = b.url(&resume_query(&started, got.last_seq()));
    let mut refusals = 0;
    let (client, resumed, from) = loop {
        match try_resume(&url, &mut got).await {
            Ok(resumed) => break resumed,
            Err(refusal) => {
                assert_busy(&refusal);
                refusals += 1;
                assert!(refusals < 60, "still busy after {refusals} tries");
                tokio::time::sleep(Duration::from_secs(1)).await; // its Retry-After
            }
        }
    };
    assert!(from <= cut_at);
    assert_eq!(resumed["type"], "session.resumed");
    resend_and_stop(client, &pcm[from..cut_at], &mut got).await;
    a.signal("KILL");
}

/// Two resumes of one session racing through two nodes after its node died: one node
/// takes it over; the other refuses 503 `session_busy` (its client tries again) or, coming
/// second, takes it over from the first, whose connection then closes 4002. Never do both
/// run it. Raced for several sessions, so that both orders and the refusal all get a chance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_racing_through_two_nodes_leave_the_session_on_one() {
    const SESSIONS: usize = 4;
    let nats = NatsServer::start();
    let mut a = node(&nats, "node-a", &[]);
    let b = node(&nats, "node-b", &[]);
    let c = node(&nats, "node-c", &[]);
    let pcm = speech();
    let cut_at = (RATE as usize * 2) * 9 / 10 / CHUNK * CHUNK;
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(stream_until_read(&a, QUERY, &pcm, cut_at, false).await);
    }
    let js = nats.jetstream().await;
    for (_, _, id, got) in &sessions {
        wait_logged(&js, id, got.last_seq()).await;
    }
    a.child.kill().expect("kill -9 node A");
    let _ = a.child.wait();
    for (mut client, started, id, mut got) in sessions {
        assert_ne!(read_until_closed(&mut client, &mut got).await, Some(1000));
        let query = resume_query(&started, got.last_seq());
        let (mut via_b, mut via_c) = (got.clone(), got.clone());
        let (url_b, url_c) = (b.url(&query), c.url(&query));
        let (on_b, on_c) = tokio::join!(
            try_resume(&url_b, &mut via_b),
            try_resume(&url_c, &mut via_c)
        );
        let (holder, mut seen) = match (on_b, on_c) {
            (Ok((first, ..)), Ok((second, ..))) => {
                // Both served it, one after the other: the log says in which order.
                let lifecycle = poll_until(
                    "both takeovers to be logged",
                    Duration::from_millis(50),
                    || async { read_log(&js, &id).await.1 },
                    |l| l.iter().filter(|r| r["type"] == "taken_over").count() >= 2,
                )
                .await;
                let taken: Vec<&Value> = lifecycle
                    .iter()
                    .filter(|r| r["type"] == "taken_over")
                    .collect();
                assert_eq!(taken.len(), 2, "{lifecycle:?}");
                assert_eq!(taken[0]["from_node"], "node-a");
                assert_eq!(
                    taken[1]["from_node"], taken[0]["node"],
                    "the second node took the session from the first, not from the log"
                );
                let (mut taken_from, holder, seen) = match taken[1]["node"].as_str() {
                    Some("node-b") => (second, first, via_b),
                    _ => (first, second, via_c),
                };
                let (_, code) = taken_from.drain().await;
                assert_eq!(
                    code,
                    Some(4002),
                    "the first holder's connection was taken over"
                );
                (holder, seen)
            }
            (Ok((holder, ..)), Err(refusal)) => {
                assert_busy(&refusal);
                (holder, via_b)
            }
            (Err(refusal), Ok((holder, ..))) => {
                assert_busy(&refusal);
                (holder, via_c)
            }
            (Err(on_b), Err(on_c)) => panic!("neither node took it over: {on_b:?} {on_c:?}"),
        };
        resend_and_stop(holder, &[], &mut seen).await;
        assert_eq!(
            seen.events().last().expect("events")["type"],
            "session.closed"
        );
    }
}

/// A 503 `session_busy` refusal, to be retried after a second.
fn assert_busy(refusal: &Refusal) {
    assert_eq!(refusal.status, 503, "{refusal:?}");
    let body = refusal.body.as_ref().expect("error body");
    assert_eq!(body["error"]["code"], "session_busy");
    assert_eq!(refusal.retry_after.as_deref(), Some("1"));
}

/// A takeover reads only the tail of the log (`nats.takeover_tail_s`, 1 s here); a speech
/// segment that opened before the tail and is still open when the node dies is closed at
/// the takeover point all the same (the session's record says it is open), and the client
/// ends with every seq once and the segments of a loss-free run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_open_since_before_the_read_tail_is_closed_at_the_takeover() {
    let nats = NatsServer::start();
    let tail = [("VOXRT_NATS__TAKEOVER_TAIL_S", "1")];
    let mut a = node(&nats, "node-a", &tail);
    let b = node(&nats, "node-b", &tail);
    // Pauses shorter than 3 s do not end a segment: both phrases are one.
    let query = format!("{QUERY}&vad_silence_ms=3000");
    let pcm = speech();
    let want = reference(&b, &query, &pcm).await;
    assert_eq!(want.len(), 2, "one segment: {want:?}");

    // Inside the second phrase, at real time: the segment opened (about 0.5 s in) more
    // than the 1 s tail before the newest event.
    let cut_at = (RATE as usize * 2) * 38 / 10 / CHUNK * CHUNK;
    let (client, started, id, mut got) = stream_until_read(&a, &query, &pcm, cut_at, true).await;
    assert_eq!(segments(&got.events()).len(), 1, "the segment is open");
    let (client, resumed, from) =
        kill_and_resume(&nats, &mut a, &b, (client, &started, &id), &mut got).await;
    finish_resumed(client, &resumed, &pcm[from..], &mut got, &want).await;
}

/// With `nats.handover_on_shutdown`, a node sent SIGTERM hands its sessions over instead of
/// closing them: each connection closes 1012, and each client resumes on another node at
/// once, while the old node is still stopping, without losing or repeating anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_hands_its_sessions_over() {
    /// Sessions on the draining node: enough that some clients' resumes reach B while A
    /// is still handing sessions over or about to exit, and B's request to A must be
    /// answered then.
    const SESSIONS: usize = 6;
    let nats = NatsServer::start();
    let a = node(
        &nats,
        "node-a",
        &[("VOXRT_NATS__HANDOVER_ON_SHUTDOWN", "true")],
    );
    let b = node(&nats, "node-b", &[]);
    let pcm = speech();
    let want = reference(&b, QUERY, &pcm).await;

    let cut_at = (RATE as usize * 2) * 9 / 10 / CHUNK * CHUNK;
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(stream_until_read(&a, QUERY, &pcm, cut_at, false).await);
    }
    a.signal("TERM");
    let resumed = sessions
        .into_iter()
        .map(|(mut client, started, id, mut got)| {
            let (b, pcm, want) = (&b, &pcm, &want);
            async move {
                let code = read_until_closed(&mut client, &mut got).await;
                assert_eq!(code, Some(1012), "a handed-over connection closes 1012");
                assert!(
                    got.events().iter().all(|e| e["type"] != "session.closed"),
                    "the session was not closed"
                );
                let (client, resumed, from) =
                    resume(&b.url(&resume_query(&started, got.last_seq())), &mut got).await;
                assert_eq!(
                    from, cut_at,
                    "every byte A read was processed before the handover"
                );
                finish_resumed(client, &resumed, &pcm[from..], &mut got, want).await;
                id
            }
        });
    let ids = futures_util::future::join_all(resumed).await;
    let (exit, _) = a.wait();
    assert_eq!(exit, Some(0));
    let js = nats.jetstream().await;
    for id in ids {
        let (_, lifecycle) = read_log(&js, &id).await;
        let kinds: Vec<&str> = lifecycle
            .iter()
            .filter_map(|r| r["type"].as_str())
            .collect();
        assert_eq!(kinds, ["started", "handed_over", "taken_over", "closed"]);
        assert_eq!(lifecycle[2]["node_lost"], false);
    }
}

/// `/v1/cluster` lists the nodes whose heartbeats are live: one that stops cleanly leaves
/// at once, one that is killed drops out once its heartbeat expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_shows_nodes_appearing_and_disappearing() {
    let nats = NatsServer::start();
    let a = node(&nats, "node-a", &[]);
    let names = |v: &Value| -> Vec<String> {
        v["nodes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter_map(|n| n["node"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let view = || get(format!("{}/v1/cluster", a.http()));
    let wait_for = |want: Vec<&'static str>| {
        poll_until(
            "the cluster view",
            Duration::from_millis(100),
            view,
            move |(s, v)| *s == 200 && names(v) == want,
        )
    };
    wait_for(vec!["node-a"]).await;
    let b = node(&nats, "node-b", &[]);
    let mut c = node(&nats, "node-c", &[]);
    let (_, v) = wait_for(vec!["node-a", "node-b", "node-c"]).await;
    assert_eq!(v["node"], "node-a");
    assert_eq!(v["totals"]["nodes"], 3);
    let client = Client::admitted(&b.url(QUERY)).await;
    let (_, v) = poll_until(
        "node-b's session in the view",
        Duration::from_millis(100),
        view,
        |(_, v)| v["totals"]["sessions"] == 1,
    )
    .await;
    let b_record = &v["nodes"][1];
    assert_eq!(b_record["sessions"], 1);
    assert_eq!(b_record["address"], format!("127.0.0.1:{}", b.port));
    drop(client);
    b.signal("TERM");
    let _ = b.wait();
    wait_for(vec!["node-a", "node-c"]).await;
    c.child.kill().expect("kill -9 node C");
    let _ = c.child.wait();
    wait_for(vec!["node-a"]).await;
    // Without NATS the endpoint says so.
    let solo = ServerProcess::start(&[]);
    let (status, body) = get(format!("{}/v1/cluster", solo.http())).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "cluster_off");
}
