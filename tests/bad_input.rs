//! Bad input: refused query parameters and non-upgrade requests before the WebSocket
//! upgrade, and bad frames inside a session (non-fatal errors keep the session going; fatal
//! ones close it without affecting the server or other sessions).

mod common;
use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const S16_16K: &str = "sample_rate=16000&channels=1&encoding=pcm_s16le";

/// Connects with `query`, expecting a refusal; returns it.
async fn refused(server: &TestServer, query: &str) -> Refusal {
    match Client::connect(&server.url(query)).await {
        Err(r) => r,
        Ok(c) => panic!("{query}: admitted: {}", c.started),
    }
}

/// Asserts a refusal is HTTP `status` with `{"error":{"code","message","correlation_id"}}`
/// and returns the message.
fn error_body(r: &Refusal, status: u16, code: &str) -> String {
    assert_eq!(r.status, status, "{r:?}");
    let body = r
        .body
        .as_ref()
        .unwrap_or_else(|| panic!("JSON body: {r:?}"));
    let err = &body["error"];
    assert_eq!(err["code"], code, "{body}");
    let cid = err["correlation_id"].as_str().expect("correlation_id");
    uuid::Uuid::parse_str(cid).expect("correlation_id is a UUID");
    let message = err["message"].as_str().expect("message").to_owned();
    assert!(!message.is_empty());
    message
}

/// Sends frames, then a ping; returns every event before its pong (the session handles
/// frames in order, so errors about the frames precede the pong).
async fn errors_before_pong(c: &mut Client, frames: Vec<Message>, id: &str) -> Vec<Value> {
    let mut frames = frames;
    frames.push(Message::Text(ping(json!(id)).to_string().into()));
    c.send_batch(frames).await;
    let mut events = c.until("pong", &mut Vec::new()).await;
    let pong = events.pop().unwrap();
    assert_eq!(pong["id"], id, "session still answers pings");
    events
}

/// Asserts `events` is exactly one non-fatal error with `code`; returns its message.
fn one_nonfatal(events: &[Value], code: &str) -> String {
    let errors = of_type(events, "error");
    assert_eq!(errors.len(), 1, "one error expected: {events:?}");
    let e = errors[0];
    assert_eq!(e["code"], code, "{e}");
    assert_eq!(e["fatal"], false, "{e}");
    uuid::Uuid::parse_str(e["correlation_id"].as_str().expect("correlation_id"))
        .expect("correlation_id is a UUID");
    e["message"].as_str().expect("message").to_owned()
}

/// A fresh session on `server` streams, flushes and stops normally.
async fn fresh_session_works(server: &TestServer) {
    let mut c = server.connect(S16_16K).await;
    let pcm = audio::s16le(&audio::tone(16_000, 440.0, 0.3, 0.5), 1);
    let events = c.stream_and_flush(&pcm, 1600).await;
    assert_eq!(events.last().unwrap()["audio_ms"], 500, "{events:?}");
    let (events, code) = c.stop().await;
    assert_eq!(code, Some(1000));
    assert_eq!(
        events.last().unwrap()["stats"],
        json!({"chunks_in": 10, "chunks_processed": 10, "chunks_dropped": 0, "audio_ms": 500})
    );
}

/// Every malformed, missing, out-of-range or unknown query parameter is refused with 400
/// `invalid_parameter` whose message names the parameter and what is allowed, with a
/// correlation id; no slot is taken.
#[tokio::test]
async fn bad_query_parameters_get_400_naming_parameter_and_range() {
    let server = TestServer::start(&[]);
    let cases: &[(&str, &[&str])] = &[
        (
            "channels=1&encoding=pcm_s16le",
            &["sample_rate", "8000..=192000"],
        ),
        (
            "sample_rate=7999&channels=1&encoding=pcm_s16le",
            &["sample_rate", "8000..=192000", "7999"],
        ),
        (
            "sample_rate=192001&channels=1&encoding=pcm_s16le",
            &["sample_rate", "8000..=192000", "192001"],
        ),
        (
            "sample_rate=abc&channels=1&encoding=pcm_s16le",
            &["sample_rate", "8000..=192000"],
        ),
        (
            "sample_rate=&channels=1&encoding=pcm_s16le",
            &["sample_rate", "8000..=192000"],
        ),
        (
            "sample_rate=16000&encoding=pcm_s16le",
            &["channels", "1..=8"],
        ),
        (
            "sample_rate=16000&channels=0&encoding=pcm_s16le",
            &["channels", "1..=8"],
        ),
        (
            "sample_rate=16000&channels=9&encoding=pcm_s16le",
            &["channels", "1..=8"],
        ),
        (
            "sample_rate=16000&channels=-1&encoding=pcm_s16le",
            &["channels", "1..=8"],
        ),
        (
            "sample_rate=16000&channels=1",
            &["encoding", "pcm_s16le", "pcm_f32le"],
        ),
        (
            "sample_rate=16000&channels=1&encoding=mp3",
            &["encoding", "pcm_s16le", "pcm_f32le", "mp3"],
        ),
        (
            "sample_rate=16000&channels=1&encoding=PCM_S16LE",
            &["encoding", "pcm_s16le", "pcm_f32le"],
        ),
        (
            "sample_rate=16000&channels=1&encoding=pcm_s16le&vad_threshold=1.5",
            &["vad_threshold", "0..=1"],
        ),
        (
            "sample_rate=16000&channels=1&encoding=pcm_s16le&vad_threshold=-0.1",
            &["vad_threshold", "0..=1"],
        ),
        (
            "sample_rate=16000&channels=1&encoding=pcm_s16le&vad_silence_ms=49",
            &["vad_silence_ms", "50..=10000"],
        ),
        (
            "sample_rate=16000&channels=1&encoding=pcm_s16le&vad_min_speech_ms=10001",
            &["vad_min_speech_ms", "0..=10000"],
        ),
        (
            "sample_rate=16000&channels=1&encoding=pcm_s16le&return_audio=maybe",
            &["return_audio", "true", "false"],
        ),
        (
            "sample_rate=16000&channels=1&encoding=pcm_s16le&bitrate=64",
            &[
                "unknown parameter",
                "bitrate",
                "sample_rate",
                "channels",
                "encoding",
            ],
        ),
    ];
    for (query, needles) in cases {
        let r = refused(&server, query).await;
        let message = error_body(&r, 400, "invalid_parameter");
        for needle in *needles {
            assert!(
                message.contains(needle),
                "{query}: message {message:?} should mention {needle:?}"
            );
        }
        assert!(r.retry_after.is_none(), "{query}: no Retry-After on 400");
    }
    let stats = server.registry_stats().await;
    assert_eq!(
        (
            stats.sessions_active,
            stats.sessions_reserved,
            stats.admitted_total
        ),
        (0, 0, 0),
        "refused before admission: {stats:?}"
    );
    // Boundaries are inclusive.
    for query in [
        "sample_rate=8000&channels=8&encoding=pcm_f32le&vad_threshold=0&vad_silence_ms=50",
        "sample_rate=192000&channels=1&encoding=pcm_s16le&vad_threshold=1&vad_min_speech_ms=10000",
    ] {
        let c = server.connect(query).await;
        let (_, code) = c.stop().await;
        assert_eq!(code, Some(1000), "{query}");
    }
}

/// A plain HTTP GET of the stream endpoint (no upgrade headers) gets 400 with the JSON error
/// body `websocket_upgrade_required`.
#[tokio::test]
async fn plain_http_get_without_upgrade_gets_400_json() {
    let server = TestServer::start(&[]);
    let request = format!(
        "GET /v1/stream?{S16_16K} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    let text = common::http::raw_exchange(server.addr, &request).await;
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let body: Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(
        body["error"]["code"], "websocket_upgrade_required",
        "{body}"
    );
    assert!(body["error"]["message"].is_string(), "{body}");
    uuid::Uuid::parse_str(body["error"]["correlation_id"].as_str().unwrap())
        .expect("correlation_id");
    let stats = server.registry_stats().await;
    assert_eq!(stats.admitted_total, 0, "{stats:?}");
}

/// Binary frames that are not whole sample frames (odd length for mono s16; not a multiple
/// of 8 for stereo f32) get a non-fatal `invalid_audio_frame` naming the sizes; they are not
/// counted or processed, and the session goes on: flush works and later audio is processed.
#[tokio::test]
async fn partial_sample_frames_are_non_fatal_invalid_audio_frame() {
    let server = TestServer::start(&[]);

    let mut c = server.connect(S16_16K).await;
    let good = audio::s16le(&audio::tone(16_000, 440.0, 0.3, 0.25), 1);
    let events = errors_before_pong(&mut c, vec![Message::Binary(vec![1u8; 3].into())], "a").await;
    let message = one_nonfatal(&events, "invalid_audio_frame");
    assert!(message.contains("3 bytes"), "{message}");
    let events = c.stream_and_flush(&good, 800).await;
    assert_eq!(events.last().unwrap()["audio_ms"], 250);
    let events =
        errors_before_pong(&mut c, vec![Message::Binary(vec![0u8; 1601].into())], "b").await;
    one_nonfatal(&events, "invalid_audio_frame");
    let events = c.stream_and_flush(&good, 800).await;
    assert_eq!(events.last().unwrap()["audio_ms"], 500);
    let (events, code) = c.stop().await;
    assert_eq!(code, Some(1000));
    assert_eq!(
        events.last().unwrap()["stats"],
        json!({"chunks_in": 20, "chunks_processed": 20, "chunks_dropped": 0, "audio_ms": 500}),
        "invalid frames are neither counted nor processed"
    );

    let mut c = server
        .connect("sample_rate=16000&channels=2&encoding=pcm_f32le")
        .await;
    for bad in [4usize, 12, 801 * 8 + 4] {
        let events =
            errors_before_pong(&mut c, vec![Message::Binary(vec![0u8; bad].into())], "f").await;
        let message = one_nonfatal(&events, "invalid_audio_frame");
        assert!(message.contains(&format!("{bad} bytes")), "{message}");
        assert!(
            message.contains('8'),
            "names the 8-byte sample frame: {message}"
        );
    }
    let stereo = audio::f32le(&audio::tone(16_000, 440.0, 0.3, 0.1), 2);
    let events = c.stream_and_flush(&stereo, 800).await;
    assert_eq!(events.last().unwrap()["audio_ms"], 100);
    let (events, code) = c.stop().await;
    assert_eq!(code, Some(1000));
    assert_eq!(events.last().unwrap()["stats"]["chunks_in"], 16);
}

/// An empty binary frame gets a non-fatal `empty_audio_frame` and the session goes on.
#[tokio::test]
async fn empty_binary_frame_is_non_fatal_empty_audio_frame() {
    let server = TestServer::start(&[]);
    let mut c = server.connect(S16_16K).await;
    let events = errors_before_pong(&mut c, vec![Message::Binary(Vec::new().into())], "e").await;
    one_nonfatal(&events, "empty_audio_frame");
    let good = audio::s16le(&audio::silence(16_000, 0.2), 1);
    let events = c.stream_and_flush(&good, 3200).await;
    assert_eq!(events.last().unwrap()["audio_ms"], 200);
    let (events, code) = c.stop().await;
    assert_eq!(code, Some(1000));
    assert_eq!(events.last().unwrap()["stats"]["chunks_in"], 2);
}

/// Bad control messages are non-fatal: invalid JSON -> `invalid_json` (without echoing the
/// input), non-objects and objects without a string `type` -> `invalid_message`, an unknown
/// type -> `unknown_message_type` naming it; the session then flushes and stops normally.
#[tokio::test]
async fn bad_control_messages_are_non_fatal_with_specific_codes() {
    let server = TestServer::start(&[]);
    let mut c = server.connect(S16_16K).await;

    for text in [
        "{not json",
        "",
        "{\"type\":\"ping\",\"id\":\"secret-token-xyz\"",
        "ping",
    ] {
        let events = errors_before_pong(&mut c, vec![Message::Text(text.into())], "j").await;
        let message = one_nonfatal(&events, "invalid_json");
        assert!(
            !message.contains("secret-token-xyz"),
            "input must not be echoed: {message}"
        );
    }
    for text in [
        r#"{"id":1}"#,
        r#"{"type":5}"#,
        r#"{"type":null}"#,
        r#"{"type":["ping"]}"#,
        "[1,2]",
        r#""ping""#,
        "42",
        "null",
    ] {
        let events = errors_before_pong(&mut c, vec![Message::Text(text.into())], "m").await;
        one_nonfatal(&events, "invalid_message");
    }
    let events = errors_before_pong(
        &mut c,
        vec![Message::Text(r#"{"type":"subscribe","topic":"x"}"#.into())],
        "u",
    )
    .await;
    let message = one_nonfatal(&events, "unknown_message_type");
    assert!(message.contains("subscribe"), "names the type: {message}");
    let events = errors_before_pong(
        &mut c,
        vec![Message::Text(r#"{"type":"PING"}"#.into())],
        "u2",
    )
    .await;
    let message = one_nonfatal(&events, "unknown_message_type");
    assert!(message.contains("PING"), "{message}");

    let pcm = audio::s16le(&audio::silence(16_000, 0.3), 1);
    let events = c.stream_and_flush(&pcm, 1600).await;
    assert_eq!(events.last().unwrap()["audio_ms"], 300);
    let (events, code) = c.stop().await;
    assert_eq!(code, Some(1000));
    assert_eq!(events.last().unwrap()["reason"], "client_stop");
}

/// A text frame over `session.max_text_frame_bytes` is fatal: `text_frame_too_large`, then
/// `session.closed` (reason `error`) and close 1009; a frame of exactly the limit is fine;
/// a fresh session on the same server then works.
#[tokio::test]
async fn text_frame_over_limit_is_fatal_1009_and_server_keeps_serving() {
    let server = TestServer::start(&[("session.max_text_frame_bytes", "256")]);
    let mut c = server.connect(S16_16K).await;
    let at_limit = {
        let base = ping(json!("")).to_string();
        ping(json!("x".repeat(256 - base.len()))).to_string()
    };
    assert_eq!(at_limit.len(), 256);
    c.send_text(&at_limit).await;
    let events = c.until("pong", &mut Vec::new()).await;
    assert_eq!(
        events.len(),
        1,
        "a 256-byte frame is within the limit: {events:?}"
    );

    let over = ping(json!("x".repeat(1000))).to_string();
    c.send_text(&over).await;
    expect_fatal(&mut c, "text_frame_too_large", 1009).await;
    server
        .wait_for_stats("the closed session to unregister", |s| {
            s.sessions_active == 0
        })
        .await;
    fresh_session_works(&server).await;
}

/// A binary frame just over `session.max_binary_frame_bytes` (4096), but still under the
/// text limit (8192), closes the session with 1009 (a frame of exactly the limit is fine).
#[tokio::test]
async fn binary_frame_just_over_binary_limit_is_fatal_1009() {
    let server = TestServer::start(&[("session.max_binary_frame_bytes", "4096")]);
    let mut c = server.connect(S16_16K).await;
    assert_eq!(c.started["limits"]["max_binary_frame_bytes"], 4096);
    assert_eq!(c.started["limits"]["max_text_frame_bytes"], 8192);
    c.send_audio(vec![0u8; 4096]).await;
    c.send_json(ping(json!("at-limit"))).await;
    let events = c.until("pong", &mut Vec::new()).await;
    assert!(
        of_type(&events, "error").is_empty(),
        "a frame of exactly the limit is accepted: {events:?}"
    );
    // The ping after the oversized frame must never be answered: the session ends first.
    let _ = c.try_send(Message::Binary(vec![0u8; 4098].into())).await;
    let _ = c
        .try_send(Message::Text(ping(json!("after")).to_string().into()))
        .await;
    let mut events = Vec::new();
    let code = loop {
        match c.recv().await {
            Received::Event(v) if v["type"] == "pong" => panic!(
                "a 4098-byte binary frame over max_binary_frame_bytes=4096 was accepted \
                 (session still answering); events {events:?}"
            ),
            Received::Event(v) => events.push(v),
            Received::Audio(_) => {}
            Received::Closed(c) => break c.map(|(code, _)| code),
        }
    };
    assert_eq!(code, Some(1009), "events {events:?}");
    assert_eq!(
        errors_with_code(&events, "frame_too_large").len(),
        1,
        "{events:?}"
    );
}

/// A binary frame far over `session.max_binary_frame_bytes` (and every frame limit) gets
/// `frame_too_large` (fatal), `session.closed` and close 1009; the server keeps serving.
#[tokio::test]
async fn binary_frame_over_every_limit_is_fatal_frame_too_large_1009() {
    let server = TestServer::start(&[("session.max_binary_frame_bytes", "4096")]);
    let mut c = server.connect(S16_16K).await;
    let _ = c.try_send(Message::Binary(vec![0u8; 20_000].into())).await;
    expect_fatal(&mut c, "frame_too_large", 1009).await;
    server
        .wait_for_stats("the closed session to unregister", |s| {
            s.sessions_active == 0
        })
        .await;
    fresh_session_works(&server).await;
}

/// A healthy session streaming speech alongside sessions that send every kind of bad input
/// (including fatal ones) gets exactly its normal events and stats.
#[tokio::test]
async fn misbehaving_sessions_do_not_affect_a_concurrent_healthy_session() {
    let server = TestServer::start(&[("session.max_text_frame_bytes", "256")]);
    let url = server.url("sample_rate=48000&channels=1&encoding=pcm_s16le");
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let mut clip = audio::silence(rate, 0.5);
    clip.extend_from_slice(&speech[..speech.len() / 480 * 480]);
    clip.extend(audio::silence(rate, 1.0));
    let pcm = audio::s16le(&clip, 1);
    let clip_ms = clip.len() as u64 / 48;

    // Reference run on a quiet server: the events the healthy session must see.
    let reference = {
        let quiet = TestServer::start(&[("session.max_text_frame_bytes", "256")]);
        let mut c = quiet
            .connect("sample_rate=48000&channels=1&encoding=pcm_s16le")
            .await;
        let events = c.stream_and_flush(&pcm, 1920).await;
        c.stop().await;
        events
    };

    let healthy = {
        let pcm = pcm.clone();
        tokio::spawn(async move {
            let mut c = Client::connect(&url).await.expect("healthy admitted");
            let mut events = Vec::new();
            for (i, chunk) in pcm.chunks(1920).enumerate() {
                c.send_audio(chunk.to_vec()).await;
                if i % 25 == 0 {
                    // Interleave with the others.
                    tokio::task::yield_now().await;
                }
            }
            c.send_json(json!({"type": "flush"})).await;
            events.extend(c.until("flushed", &mut Vec::new()).await);
            let (closed, code) = c.stop().await;
            (events, closed, code)
        })
    };

    for round in 0..3 {
        let mut bad = server.connect(S16_16K).await;
        let frames = vec![
            Message::Binary(vec![1u8; 3].into()),
            Message::Binary(Vec::new().into()),
            Message::Text("{oops".into()),
            Message::Text("[]".into()),
            Message::Text(r#"{"type":"nope"}"#.into()),
        ];
        let events = errors_before_pong(&mut bad, frames, "bad").await;
        assert_eq!(of_type(&events, "error").len(), 5, "{events:?}");
        if round % 2 == 0 {
            bad.send_text(&"x".repeat(300)).await;
            expect_fatal(&mut bad, "text_frame_too_large", 1009).await;
        } else {
            drop(bad); // vanishes without a close
        }
    }

    let (events, closed, code) = tokio::time::timeout(HANG, healthy)
        .await
        .expect("healthy session hung")
        .expect("healthy task");
    assert!(of_type(&events, "error").is_empty(), "{events:?}");
    assert_eq!(events.last().unwrap()["audio_ms"], clip_ms);
    assert_eq!(
        by_type(&events),
        by_type(&reference),
        "same events (per processor, in order) as on a quiet server"
    );
    assert_eq!(code, Some(1000));
    let chunks = pcm.chunks(1920).count() as u64;
    assert_eq!(
        closed.last().unwrap()["stats"],
        json!({"chunks_in": chunks, "chunks_processed": chunks, "chunks_dropped": 0, "audio_ms": clip_ms})
    );
}
