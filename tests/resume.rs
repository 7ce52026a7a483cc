//! A session outlives its connection: a client that loses its connection resumes it with
//! the token from `session.started`, gets every message it missed exactly once, resends its
//! audio from where the server stood, and the timeline goes on as if nothing happened.
//! Real sockets, real speech, and a proxy that cuts connections the way a network does.

mod common;

use common::proxy::CutProxy;
use common::resume::{resume_query, segments, speech, Seen, CHUNK, QUERY, RATE};
use common::{audio, Client, Received, TestServer};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;
use voxrt::actors::processors::{Processor, ProcessorCatalog, ProcessorContext};
use voxrt::actors::{AudioBlock, ServerEvent};

/// Streams `pcm` whole and stops: the reference events.
async fn reference(server: &TestServer, pcm: &[u8]) -> Vec<Value> {
    let mut c = server.connect(QUERY).await;
    for chunk in pcm.chunks(CHUNK) {
        c.send_audio(chunk.to_vec()).await;
    }
    let (events, code) = c.stop().await;
    assert_eq!(code, Some(1000));
    events
}

/// Reads until the connection ends, keeping every event.
async fn read_until_lost(client: &mut Client, got: &mut Seen) {
    loop {
        match client.recv().await {
            Received::Event(v) => got.add(v),
            Received::Audio(_) => {}
            Received::Closed(_) => return,
        }
    }
}

/// Resumes through `url`, checks `session.resumed`, keeps the replayed events; returns
/// the client and the input position to resend from, in bytes of `QUERY`'s format.
async fn resume(url: &str, got: &mut Seen) -> (Client, usize) {
    let mut client = Client::connect_raw(url).await.expect("resume admitted");
    let resumed = match client.recv().await {
        Received::Event(v) if v["type"] == "session.resumed" => v,
        other => panic!("expected session.resumed, got {other:?}"),
    };
    assert!(resumed.get("seq").is_none(), "session.resumed has no seq");
    let frames = resumed["input_frames"].as_u64().expect("input_frames");
    assert_eq!(resumed["audio_ms"], frames * 1000 / u64::from(RATE));
    for _ in 0..resumed["replayed"].as_u64().expect("replayed") {
        match client.recv().await {
            Received::Event(v) => got.add(v),
            other => panic!("expected a replayed event, got {other:?}"),
        }
    }
    (client, frames as usize * 2)
}

/// The same recording streamed with a cut in the middle of a word gives the same speech
/// segments as without, and the client has every message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_word_resumes_with_the_same_segments_and_no_seq_gap() {
    let server = TestServer::start(&[]);
    let pcm = speech();
    let want = segments(&reference(&server, &pcm).await);
    assert!(want.len() >= 4, "reference has segments: {want:?}");

    let proxy = CutProxy::start(server.addr).await;
    let mut client = Client::admitted(&proxy.url(QUERY)).await;
    let started = client.started.clone();
    assert_eq!(started["seq"], 0);
    assert_eq!(started["resume"]["window_s"], 30);
    let mut got = Seen::default();
    got.add(started.clone());
    // Mid-word: inside the first phrase's speech.
    let cut_at = (RATE as usize * 2) * 9 / 10 / CHUNK * CHUNK;
    for chunk in pcm[..cut_at].chunks(CHUNK) {
        client.send_audio(chunk.to_vec()).await;
    }
    client
        .send_json(json!({"type": "ping", "id": "before"}))
        .await;
    proxy.cut_all();
    read_until_lost(&mut client, &mut got).await;

    let (mut client, from) = resume(
        &server.url(&resume_query(&started, got.last_seq())),
        &mut got,
    )
    .await;
    assert!(
        from <= cut_at,
        "the server cannot have read past what was sent"
    );
    for chunk in pcm[from..].chunks(CHUNK) {
        client.send_audio(chunk.to_vec()).await;
    }
    let all = got.stop_and_check(client).await;
    assert_eq!(
        segments(&all),
        want,
        "segments with a cut equal those without"
    );
    let closed = all.last().expect("events");
    assert_eq!(closed["type"], "session.closed");
    assert_eq!(
        closed["stats"]["audio_ms"].as_u64(),
        Some(pcm.len() as u64 / 96)
    );
}

/// Refusals happen before the upgrade, as HTTP with the documented codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_with_a_wrong_token_unknown_id_or_bad_last_seq_are_refused() {
    let server = TestServer::start(&[]);
    let client = server.connect(QUERY).await;
    let started = client.started.clone();
    let id = started["session_id"].as_str().expect("id");

    let wrong_token = format!("resume={id}&resume_token=00ff&last_seq=0");
    expect_refusal(&server, &wrong_token, 403, "resume_token_invalid").await;
    let unknown = resume_query(&started, 0).replace(id, "6f1c2a6e-0000-4000-8000-000000000000");
    expect_refusal(&server, &unknown, 404, "session_not_found").await;
    expect_refusal(
        &server,
        &resume_query(&started, 999),
        400,
        "invalid_parameter",
    )
    .await;
    let with_format = format!("{}&sample_rate=48000", resume_query(&started, 0));
    expect_refusal(&server, &with_format, 400, "invalid_parameter").await;

    // After stop the session is over for good.
    let (_, code) = client.stop().await;
    assert_eq!(code, Some(1000));
    expect_refusal(
        &server,
        &resume_query(&started, 0),
        404,
        "session_not_found",
    )
    .await;
}

async fn expect_refusal(server: &TestServer, query: &str, status: u16, code: &str) {
    match Client::connect_raw(&server.url(query)).await {
        Ok(_) => panic!("{query}: admitted, expected {status} {code}"),
        Err(r) => {
            assert_eq!(r.status, status, "{query}: {:?}", r.body);
            let body = r.body.expect("JSON body");
            assert_eq!(body["error"]["code"], code, "{query}");
        }
    }
}

/// A resume while the old connection is still attached takes the session over; the old
/// connection is closed 4002.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_takes_over_from_a_live_connection_which_is_closed_4002() {
    let server = TestServer::start(&[]);
    let mut old = server.connect(QUERY).await;
    let started = old.started.clone();
    old.send_json(json!({"type": "ping", "id": 1})).await;
    let pong = match old.recv().await {
        Received::Event(v) => v,
        other => panic!("expected pong, got {other:?}"),
    };
    assert_eq!(
        (pong["type"].as_str(), pong["seq"].as_u64()),
        (Some("pong"), Some(1))
    );

    let mut got = Seen::default();
    got.add(started.clone());
    got.add(pong);
    let (mut new, _) = resume(&server.url(&resume_query(&started, 1)), &mut got).await;
    let (_, code) = old.drain().await;
    assert_eq!(
        code,
        Some(4002),
        "the old connection is closed session_taken_over"
    );
    new.send_json(json!({"type": "ping", "id": 2})).await;
    match new.recv().await {
        Received::Event(v) => {
            assert_eq!(v["type"], "pong");
            assert_eq!(v["seq"], 2, "seq goes on across the takeover");
        }
        other => panic!("expected pong, got {other:?}"),
    }
    let stats = server.registry_stats().await;
    assert_eq!(stats.sessions_active, 1);
    let (_, code) = new.stop().await;
    assert_eq!(code, Some(1000));
}

/// A detached session that nobody resumes ends when its window passes; its slot is freed
/// and a late resume is refused 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_session_expires_after_its_window() {
    let server = TestServer::start(&[("session.resume_window_s", "1")]);
    let proxy = CutProxy::start(server.addr).await;
    let mut client = Client::admitted(&proxy.url(QUERY)).await;
    let started = client.started.clone();
    let mut got = Seen::default();
    proxy.cut_all();
    read_until_lost(&mut client, &mut got).await;
    server
        .wait_for_stats("the session detaches", |s| s.sessions_detached == 1)
        .await;
    let stats = server
        .wait_for_stats("the session expires", |s| s.sessions_active == 0)
        .await;
    assert_eq!(stats.closed_by_reason.get("resume_expired"), Some(&1));
    expect_refusal(
        &server,
        &resume_query(&started, 0),
        404,
        "session_not_found",
    )
    .await;
}

/// Emits one event of `BIG_EVENT_BYTES` when flushed: a detached session's output that
/// cannot fit its resume buffer.
struct BigAtFlush;

const BIG_EVENT_BYTES: usize = 6000;

impl Processor for BigAtFlush {
    fn process(&mut self, _block: &AudioBlock, _events: &mut Vec<ServerEvent>) {}
    fn flush(&mut self, _end_sample: u64, events: &mut Vec<ServerEvent>) {
        events.push(ServerEvent::Custom(
            json!({"type": "big", "pad": "x".repeat(BIG_EVENT_BYTES)}),
        ));
    }
}

/// A detached session whose events overflow `resume_buffer_bytes` ends
/// (`resume_buffer_overflow`) rather than growing: here its TTL passes while detached and
/// the closing flush produces more than the buffer holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_session_that_overflows_its_resume_buffer_ends() {
    let mut catalog = ProcessorCatalog::with_builtins();
    catalog.register("big", |_: &ProcessorContext| Box::new(BigAtFlush));
    let server = TestServer::start_with_env(
        &[("VOXRT_PIPELINE__PROCESSORS", "vad,big")],
        &[
            ("session.resume_buffer_bytes", "4096"),
            ("registry.session_ttl_s", "2"),
        ],
        catalog,
    );
    let proxy = CutProxy::start(server.addr).await;
    let mut client = Client::admitted(&proxy.url(QUERY)).await;
    let started = client.started.clone();
    proxy.cut_all();
    read_until_lost(&mut client, &mut Seen::default()).await;
    server
        .wait_for_stats("the session detaches", |s| s.sessions_detached == 1)
        .await;
    let stats = server
        .wait_for_stats("the session ends", |s| s.sessions_active == 0)
        .await;
    assert_eq!(
        stats.closed_by_reason.get("resume_buffer_overflow"),
        Some(&1),
        "{stats:?}"
    );
    expect_refusal(
        &server,
        &resume_query(&started, 0),
        404,
        "session_not_found",
    )
    .await;
}

/// A client that stops reading does not freeze its session: its connection is cut as a
/// slow consumer, the session detaches, and the client resumes and gets every event; a
/// neighbour session streaming alongside gets its segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_detached_and_resumes_with_every_event() {
    let server = TestServer::start(&[
        ("session.max_outgoing_bytes", "16384"),
        ("session.slow_consumer_timeout_s", "1"),
        ("session.heartbeat_interval_s", "1"),
        ("session.heartbeat_timeout_s", "120"),
        // The flood runs far faster than real time, so its events outgrow the default
        // buffer (minutes of events at real time) before the socket is cut.
        ("session.resume_buffer_bytes", "16777216"),
    ]);
    let neighbour = {
        let url = server.url(QUERY);
        tokio::spawn(async move {
            let mut c = Client::admitted(&url).await;
            let events = c.stream_and_flush(&speech(), CHUNK).await;
            let (_, code) = c.stop().await;
            (events, code)
        })
    };

    // The client that stops reading: a small receive buffer, returned audio flooding in.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(server.addr).await.expect("connect");
    let request = server
        .url(&format!("{QUERY}&return_audio=true"))
        .into_client_request()
        .expect("request");
    let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp))
        .await
        .expect("upgrade");
    let (mut sink, mut stream) = ws.split();
    let started: Value = match stream.next().await {
        Some(Ok(Message::Text(t))) => serde_json::from_str(&t).expect("JSON"),
        other => panic!("expected session.started: {other:?}"),
    };
    let tone = audio::s16le(&audio::tone(RATE, 440.0, 0.3, 10.0), 1);
    let flood = tokio::spawn(async move {
        for chunk in tone.chunks(CHUNK * 5).cycle() {
            if sink
                .send(Message::Binary(chunk.to_vec().into()))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    server
        .wait_for_stats("the slow reader's session detaches", |s| {
            s.sessions_detached == 1
        })
        .await;
    flood.abort();

    // Now the client reads what reached it, then resumes from there.
    let mut got = Seen::default();
    got.add(started.clone());
    while let Some(Ok(message)) = stream.next().await {
        if let Message::Text(t) = message {
            got.add(serde_json::from_str(&t).expect("JSON"));
        }
    }
    let (client, _) = resume(
        &server.url(&resume_query(&started, got.last_seq())),
        &mut got,
    )
    .await;
    let all = got.stop_and_check(client).await;
    assert!(
        all.iter()
            .any(|e| e["type"] == "error" && e["code"] == "slow_consumer" && e["fatal"] == false),
        "the client is told why its connection was closed"
    );
    assert_eq!(all.last().expect("events")["type"], "session.closed");

    let (events, code) = neighbour.await.expect("neighbour");
    assert!(
        !segments(&events).is_empty(),
        "the neighbour gets its segments"
    );
    assert_eq!(code, Some(1000));
}
