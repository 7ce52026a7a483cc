//! Protocol v1 behaviour of a live session: ping/pong, `session.started`, flush ordering,
//! stop, and graceful server shutdown.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const S16_16K: &str = "sample_rate=16000&channels=1&encoding=pcm_s16le";
const S16_48K: &str = "sample_rate=48000&channels=1&encoding=pcm_s16le";

/// 1 s of silence, the speech recording cut to whole 10 ms, then `tail_s` of silence; 48 kHz.
fn speech_clip(tail_s: f64) -> Vec<f32> {
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    assert_eq!(rate, 48_000);
    let whole = speech.len() / 480 * 480;
    let mut clip = audio::silence(rate, 1.0);
    clip.extend_from_slice(&speech[..whole]);
    clip.extend(audio::silence(rate, tail_s));
    clip
}

/// Milliseconds in `samples` samples at 48 kHz; the clips are built in whole milliseconds.
fn ms_48k(samples: usize) -> u64 {
    assert_eq!(samples % 48, 0, "clip must be whole milliseconds");
    samples as u64 / 48
}

fn vad_events<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == "vad" && e["event"] == kind)
        .collect()
}

/// Asserts `v` is a `session.closed` with `reason` and returns its stats.
fn closed_stats<'a>(v: &'a Value, reason: &str) -> &'a Value {
    assert_eq!(v["type"], "session.closed", "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    &v["stats"]
}

/// `pong` echoes the ping's `id` verbatim whatever its JSON type, in order, and a missing
/// `id` comes back as `null`.
#[tokio::test]
async fn pong_echoes_any_json_id_and_missing_id_as_null() {
    let server = TestServer::start(&[]);
    let mut c = server.connect(S16_16K).await;
    let ids = vec![
        json!(7),
        json!(-3.25),
        json!(18446744073709551615u64),
        json!("abc"),
        json!(""),
        json!(true),
        json!(null),
        json!([1, "two", null]),
        json!({"nested": {"k": [1, 2, {"x": "y"}]}, "n": 0.5}),
    ];
    let mut batch: Vec<Message> = ids
        .iter()
        .map(|id| Message::Text(ping(id.clone()).to_string().into()))
        .collect();
    batch.push(Message::Text(r#"{"type":"ping"}"#.into()));
    c.send_batch(batch).await;
    let mut expected = ids.clone();
    expected.push(Value::Null);
    for want in &expected {
        match c.recv().await {
            Received::Event(v) => {
                assert_eq!(v["type"], "pong", "{v}");
                let obj = v.as_object().expect("pong is an object");
                assert!(
                    obj.contains_key("id"),
                    "pong must carry id (null when absent): {v}"
                );
                assert_eq!(&v["id"], want, "pong id");
                assert!(v["seq"].is_u64(), "every message carries seq: {v}");
                assert_eq!(obj.len(), 3, "pong has only type, id and seq: {v}");
            }
            other => panic!("expected pong for {want}, got {other:?}"),
        }
    }
    let (events, code) = c.stop().await;
    assert_eq!(code, Some(1000));
    closed_stats(events.last().expect("session.closed"), "client_stop");
}

/// `session.started` carries a fresh UUID session id, echoes the declared input, reports the
/// 16 kHz mono pipeline, the VAD defaults, and every limit as configured.
#[tokio::test]
async fn session_started_reports_id_input_pipeline_vad_defaults_and_configured_limits() {
    let server = TestServer::start(&[
        ("session.max_binary_frame_bytes", "50000"),
        ("session.max_text_frame_bytes", "3000"),
        ("registry.session_ttl_s", "900"),
        ("registry.idle_timeout_s", "77"),
        ("session.heartbeat_interval_s", "3"),
        ("session.heartbeat_timeout_s", "11"),
        ("pipeline.mailbox_capacity", "5"),
        ("pipeline.max_inflight_bytes", "70000"),
        ("pipeline.backpressure", "drop_newest"),
        ("session.max_json_depth", "5"),
        ("session.max_control_messages_per_s", "30"),
        ("session.max_realtime_factor", "2.5"),
        ("session.realtime_burst_s", "20"),
        ("session.max_outgoing_bytes", "100000"),
    ]);
    let a = server
        .connect("sample_rate=44100&channels=2&encoding=pcm_f32le")
        .await;
    let b = server.connect(S16_16K).await;
    let s = &a.started;
    assert_eq!(s["type"], "session.started");
    let id = s["session_id"].as_str().expect("session_id is a string");
    let uuid = uuid::Uuid::parse_str(id).expect("session_id is a UUID");
    assert!(!uuid.is_nil(), "{id}");
    assert_ne!(
        b.started["session_id"], s["session_id"],
        "every session gets its own id"
    );
    assert_eq!(
        s["input"],
        json!({"sample_rate": 44100, "channels": 2, "encoding": "pcm_f32le"})
    );
    assert_eq!(
        b.started["input"],
        json!({"sample_rate": 16000, "channels": 1, "encoding": "pcm_s16le"})
    );
    // 44.1 kHz goes through rubato's Fft with a 10 ms filter delay; 16 kHz passes through.
    assert_eq!(
        s["pipeline"],
        json!({"sample_rate": 16000, "channels": 1, "resampler_delay_ms": 10.0})
    );
    assert_eq!(b.started["pipeline"]["resampler_delay_ms"], 0.0);
    assert_eq!(
        s["vad"],
        json!({"threshold": 0.5, "silence_ms": 500, "min_speech_ms": 100}),
        "config/default.toml [vad]"
    );
    assert_eq!(
        s["limits"],
        json!({
            "max_binary_frame_bytes": 50000,
            "max_text_frame_bytes": 3000,
            "session_ttl_s": 900,
            "idle_timeout_s": 77,
            "heartbeat_interval_s": 3,
            "heartbeat_timeout_s": 11,
            "mailbox_capacity": 5,
            "max_inflight_bytes": 70000,
            "backpressure": "drop_newest",
            "max_json_depth": 5,
            "max_control_messages_per_s": 30,
            "max_realtime_factor": 2.5,
            "realtime_burst_s": 20,
            "max_outgoing_bytes": 100000,
        })
    );
}

/// With no overrides the limits in `session.started` are the test profile's settings, and the
/// client's `vad_*` query parameters replace the VAD defaults for that session only.
#[tokio::test]
async fn session_started_reflects_profile_limits_and_client_vad_overrides() {
    let server = TestServer::start(&[]);
    let settings =
        voxrt::Settings::load_from(Some("test"), &Default::default(), &[]).expect("settings");
    let tuned = server
        .connect(&format!(
            "{S16_48K}&vad_threshold=0.25&vad_silence_ms=300&vad_min_speech_ms=0"
        ))
        .await;
    let plain = server.connect(S16_48K).await;
    assert_eq!(
        tuned.started["vad"],
        json!({"threshold": 0.25, "silence_ms": 300, "min_speech_ms": 0})
    );
    assert_eq!(
        plain.started["vad"],
        json!({
            "threshold": settings.vad.threshold,
            "silence_ms": settings.vad.silence_ms,
            "min_speech_ms": settings.vad.min_speech_ms,
        }),
        "another session keeps the defaults"
    );
    let l = &plain.started["limits"];
    assert_eq!(
        l["max_binary_frame_bytes"],
        settings.session.max_binary_frame_bytes
    );
    assert_eq!(
        l["max_text_frame_bytes"],
        settings.session.max_text_frame_bytes
    );
    assert_eq!(l["session_ttl_s"], settings.registry.session_ttl_s);
    assert_eq!(l["idle_timeout_s"], settings.registry.idle_timeout_s);
    assert_eq!(
        l["heartbeat_interval_s"],
        settings.session.heartbeat_interval_s
    );
    assert_eq!(
        l["heartbeat_timeout_s"],
        settings.session.heartbeat_timeout_s
    );
    assert_eq!(
        l["mailbox_capacity"],
        settings.pipeline.mailbox_capacity.get()
    );
    assert_eq!(
        l["max_inflight_bytes"],
        settings.pipeline.max_inflight_bytes.get()
    );
    assert_eq!(l["backpressure"], "block");
}

/// A speech segment still open when the client flushes is closed by the flush: its
/// `speech_end` (and the level of the last partial interval) arrive before `flushed`, and
/// `flushed.audio_ms` equals the audio sent.
#[tokio::test]
async fn flush_emits_events_of_the_flushed_audio_before_flushed_with_audio_ms_sent() {
    let server = TestServer::start(&[]);
    let mut c = server.connect(S16_48K).await;
    // 230 ms of trailing silence (last speech ends ~2.35 s into the clip) is less than the
    // 500 ms vad.silence_ms: only the flush can end the segment.
    let clip = speech_clip(0.23);
    let sent_ms = ms_48k(clip.len());
    let events = c.stream_and_flush(&audio::s16le(&clip, 1), 1920).await;
    let flushed = events.last().expect("flushed");
    assert_eq!(flushed["type"], "flushed");
    assert_eq!(
        flushed["audio_ms"], sent_ms,
        "flushed.audio_ms is the audio sent"
    );
    assert!(
        of_type(&events, "error").is_empty(),
        "no errors: {events:?}"
    );
    let starts = vad_events(&events, "speech_start");
    let ends = vad_events(&events, "speech_end");
    assert_eq!(starts.len(), 1, "one segment: {events:?}");
    assert_eq!(
        ends.len(),
        1,
        "the open segment is closed before flushed: {events:?}"
    );
    let end_ms = ends[0]["t_ms"].as_u64().expect("t_ms");
    assert!(
        end_ms + 500 > sent_ms,
        "speech_end at {end_ms} ms is less than silence_ms before the end ({sent_ms} ms): \
         it can only come from the flush"
    );
    let last_level = of_type(&events, "level")
        .iter()
        .filter_map(|e| e["t_ms"].as_u64())
        .max()
        .expect("level events");
    assert_eq!(
        last_level, sent_ms,
        "levels cover the flushed audio to its end"
    );
    // The flush did not end the session: a ping is still answered.
    c.send_json(ping(json!("after-flush"))).await;
    let after = c.until("pong", &mut Vec::new()).await;
    assert_eq!(
        after.len(),
        1,
        "nothing else pending after flushed: {after:?}"
    );
    assert_eq!(after[0]["id"], "after-flush");
}

/// A second `flush` with no audio in between is answered with the same `audio_ms` and no
/// new events; audio after it adds up.
#[tokio::test]
async fn second_flush_without_new_audio_reports_the_same_audio_ms() {
    let server = TestServer::start(&[]);
    let mut c = server.connect(S16_16K).await;
    let first = audio::s16le(&audio::tone(16_000, 440.0, 0.3, 1.25), 1);
    let events = c.stream_and_flush(&first, 3200).await;
    assert_eq!(events.last().unwrap()["audio_ms"], 1250);
    let again = c.stream_and_flush(&[], 1).await;
    assert_eq!(again.len(), 1, "only flushed: {again:?}");
    assert_eq!(again[0]["type"], "flushed");
    assert_eq!(again[0]["audio_ms"], 1250);
    let third = c.stream_and_flush(&[], 1).await;
    assert_eq!(third.len(), 1, "only flushed: {third:?}");
    assert_eq!(third[0]["audio_ms"], again[0]["audio_ms"]);
    assert_eq!(
        third[0]["seq"].as_u64(),
        again[0]["seq"].as_u64().map(|s| s + 1),
        "seq counts every message"
    );
    let more = audio::s16le(&audio::silence(16_000, 0.5), 1);
    let events = c.stream_and_flush(&more, 1600).await;
    assert_eq!(events.last().unwrap()["audio_ms"], 1750);
    let (events, code) = c.stop().await;
    assert_eq!(code, Some(1000));
    let stats = closed_stats(events.last().unwrap(), "client_stop");
    assert_eq!(stats["audio_ms"], 1750);
}

/// `stop` flushes (an open speech segment ends first), then `session.closed` is the last
/// event with reason `client_stop` and stats equal to what was sent (block mode drops
/// nothing), then the connection closes with 1000.
#[tokio::test]
async fn stop_ends_with_session_closed_last_exact_stats_and_close_1000() {
    let server = TestServer::start(&[]);
    let mut c = server.connect(S16_48K).await;
    let clip = audio::s16le(&speech_clip(0.1), 1);
    // Uneven chunk sizes, each a whole number of samples.
    let sizes = [1920usize, 96, 4800, 2, 9600, 17_998];
    let mut chunks = 0u64;
    let mut rest = &clip[..];
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        c.send_audio(rest[..n].to_vec()).await;
        rest = &rest[n..];
        chunks += 1;
        i += 1;
    }
    let (events, code) = c.stop().await;
    assert_eq!(code, Some(1000), "stop closes with 1000");
    let closed_at = events
        .iter()
        .position(|e| e["type"] == "session.closed")
        .expect("session.closed");
    assert_eq!(
        closed_at,
        events.len() - 1,
        "session.closed is the last event: {events:?}"
    );
    let stats = closed_stats(&events[closed_at], "client_stop");
    assert_eq!(
        stats,
        &json!({
            "chunks_in": chunks,
            "chunks_processed": chunks,
            "chunks_dropped": 0,
            "audio_ms": ms_48k(clip.len() / 2),
        })
    );
    assert!(
        of_type(&events, "error").is_empty(),
        "no errors: {events:?}"
    );
    assert_eq!(
        vad_events(&events, "speech_end").len(),
        1,
        "the open segment is closed by the stop's flush, before session.closed: {events:?}"
    );
    assert!(
        of_type(&events, "flushed").is_empty(),
        "stop's own flush is not answered with flushed: {events:?}"
    );
}

/// Graceful shutdown with a client connected and audio unflushed: the client's audio is
/// flushed through the pipeline, then it gets `session.closed` with reason `server_shutdown`
/// and close 1001, and the shutdown completes.
#[tokio::test]
async fn shutdown_flushes_and_closes_connected_sessions_with_server_shutdown_1001() {
    let server = TestServer::start(&[]);
    let mut c = server.connect(S16_48K).await;
    let clip = audio::s16le(&speech_clip(0.1), 1);
    let mut chunks = 0u64;
    for chunk in clip.chunks(4800) {
        c.send_audio(chunk.to_vec()).await;
        chunks += 1;
    }
    // Every chunk is in the session before shutdown starts: a ping after them is answered.
    c.send_json(ping(json!(1))).await;
    c.until("pong", &mut Vec::new()).await;
    let shutdown = tokio::task::spawn_blocking(move || server.shutdown());
    let (events, code) = c.drain().await;
    assert_eq!(code, Some(1001), "shutdown closes with 1001: {events:?}");
    let closed = events.last().expect("session.closed");
    let stats = closed_stats(closed, "server_shutdown");
    assert_eq!(stats["chunks_in"], chunks);
    assert_eq!(stats["chunks_processed"], chunks);
    assert_eq!(stats["chunks_dropped"], 0);
    assert_eq!(stats["audio_ms"], ms_48k(clip.len() / 2));
    assert_eq!(
        vad_events(&events, "speech_end").len(),
        1,
        "pending audio was flushed: {events:?}"
    );
    tokio::time::timeout(HANG, shutdown)
        .await
        .expect("shutdown hung")
        .expect("shutdown task");
}

/// While shutdown waits for a session whose pipeline is still busy, a new client is refused
/// before the upgrade with 503 `shutting_down` and a Retry-After; the busy session still gets
/// all its audio processed and closes with `server_shutdown` 1001.
///
/// Ordering: the refused connect is made after another session has been closed by the
/// shutdown (so draining has begun), while a session with ≥ 3 s of guaranteed pipeline work
/// (328 blocks, 10 ms sleep each) keeps the drain open.
#[tokio::test]
async fn connect_during_shutdown_is_refused_with_503_shutting_down() {
    // Only 16 kHz sessions are slow: the busy one. The quick one sends at 48 kHz.
    let (catalog, probe) = slow_catalog(Duration::from_millis(10), Some(16_000));
    let server = TestServer::start_with_env(
        &[("VOXRT_PIPELINE__PROCESSORS", "level,slow")],
        &[("server.shutdown_grace_s", "60")],
        catalog,
    );
    let url = server.url(S16_16K);
    let mut quick = server.connect(S16_48K).await;
    let mut busy = server.connect(S16_16K).await;
    // One frame of the largest allowed size: 32.768 s of 16 kHz audio, 328 pipeline blocks.
    let max = busy.started["limits"]["max_binary_frame_bytes"]
        .as_u64()
        .unwrap() as usize;
    let frame = audio::s16le(
        &audio::tone(16_000, 300.0, 0.2, (max / 2) as f64 / 16_000.0),
        1,
    );
    assert_eq!(frame.len(), max);
    busy.send_audio(frame).await;
    busy.send_json(ping(json!("in"))).await;
    busy.until("pong", &mut Vec::new()).await;

    let shutdown = tokio::task::spawn_blocking(move || server.shutdown());
    let (events, code) = quick.drain().await;
    assert_eq!(code, Some(1001));
    closed_stats(events.last().unwrap(), "server_shutdown");

    let refusal = match Client::connect(&url).await {
        Err(r) => r,
        Ok(c) => panic!("admitted during shutdown: {}", c.started),
    };
    let processed = probe.samples();
    assert!(
        processed < (max / 2) as u64,
        "precondition: the busy session was still draining ({processed} samples done)"
    );
    assert_eq!(refusal.status, 503, "{refusal:?}");
    let body = refusal.body.as_ref().expect("JSON body");
    assert_eq!(body["error"]["code"], "shutting_down", "{body}");
    assert!(body["error"]["correlation_id"].is_string(), "{body}");
    let retry: u64 = refusal
        .retry_after
        .as_deref()
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry > 0);

    let (events, code) = busy.drain().await;
    assert_eq!(code, Some(1001));
    let stats = closed_stats(events.last().unwrap(), "server_shutdown");
    assert_eq!(stats["chunks_processed"], 1);
    assert_eq!(stats["audio_ms"], (max / 2 / 16) as u64);
    let slow = of_type(&events, "slow.flushed");
    assert_eq!(slow.len(), 1, "{:?}", slow);
    assert_eq!(slow[0]["samples"], (max / 2) as u64, "all audio processed");
    tokio::time::timeout(HANG, shutdown)
        .await
        .expect("shutdown hung")
        .expect("shutdown task");
}
