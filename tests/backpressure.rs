//! Backpressure with a deliberately slow processor registered through the public
//! `ProcessorCatalog::register` API: `block` loses nothing, `drop_newest` reports exactly
//! what it dropped, and a slow session does not hold up a normal one.
//!
//! Not tested here: that `block` bounds server memory. A session's stages share its worker
//! thread, so a processor slow enough to overrun the pipeline also stops the session from
//! reading; measured with 49 MB flooded into a 100 ms/block processor, resident memory grew
//! by < 2 MiB and the client was never more than ~4-6 MB (the kernel socket buffers) ahead
//! of the processor, even with `max_inflight_bytes` = 64 MiB and `mailbox_capacity` = 4096.
//! An in-process memory assertion here would pass for an unbounded pipeline too. Server
//! memory under flooding clients is measured from outside in `tests/process.rs`.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const S16_16K: &str = "sample_rate=16000&channels=1&encoding=pcm_s16le";

/// Flood settings: small stage mailboxes and in-flight budget, so a fast client overruns
/// a slow pipeline at once.
const FLOOD: [(&str, &str); 2] = [
    ("pipeline.mailbox_capacity", "2"),
    ("pipeline.max_inflight_bytes", "4096"),
];

/// `n` chunks of 100 ms at 16 kHz mono s16 (one 1600-sample pipeline block each); chunk `i`
/// is the constant `(i + 1) * 8` so the processor can tell which chunk a block came from.
fn tagged_chunks(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let v = ((i + 1) * 8) as i16;
            std::iter::repeat_n(v.to_le_bytes(), 1600)
                .flatten()
                .collect()
        })
        .collect()
}

/// The chunk index a block's first sample tags (see [`tagged_chunks`]).
fn tag_of(first: f32) -> usize {
    let v = (first * 32768.0).round() as i64;
    assert!(v > 0 && v % 8 == 0, "not a tagged block: {first}");
    (v / 8 - 1) as usize
}

/// Sends `frames` back to back with one write, then `flush`; returns the events up to
/// `flushed`.
async fn flood_and_flush(c: &mut Client, frames: Vec<Message>) -> Vec<Value> {
    let mut frames = frames;
    frames.push(Message::Text(json!({"type": "flush"}).to_string().into()));
    c.send_batch(frames).await;
    c.until("flushed", &mut Vec::new()).await
}

fn binary(chunks: &[Vec<u8>]) -> Vec<Message> {
    chunks
        .iter()
        .map(|c| Message::Binary(c.clone().into()))
        .collect()
}

/// `block` mode: a client flooding 6 s of audio as fast as it can into a pipeline that takes
/// 5 ms per 100 ms block loses nothing: no error events, every sample reaches the slow
/// processor in order, `flushed.audio_ms` is the audio sent, and `session.closed` stats have
/// `chunks_processed == chunks_in` and no drops. Control: the same flood on a `drop_newest`
/// server drops chunks, so the pipeline really was overrun.
#[tokio::test]
async fn block_mode_slows_a_flooding_client_and_loses_nothing() {
    let chunks = tagged_chunks(60);

    let (catalog, probe) = slow_catalog(Duration::from_millis(5), None);
    let server = TestServer::start_with_env(
        &[("VOXRT_PIPELINE__PROCESSORS", "level,slow")],
        &[FLOOD[0], FLOOD[1], ("pipeline.backpressure", "block")],
        catalog,
    );
    let mut c = server.connect(S16_16K).await;
    assert_eq!(c.started["limits"]["backpressure"], "block");
    let events = flood_and_flush(&mut c, binary(&chunks)).await;
    assert!(of_type(&events, "error").is_empty(), "{events:?}");
    assert_mailboxes_within_bound(&server, &["resampler", "level", "slow"], "slow");
    assert_eq!(events.last().unwrap()["audio_ms"], 6000);
    let slow = of_type(&events, "slow.flushed");
    assert_eq!(slow.len(), 1, "{events:?}");
    assert_eq!(slow[0]["samples"], 60 * 1600, "every sample processed");
    let order: Vec<usize> = probe
        .firsts
        .lock()
        .unwrap()
        .iter()
        .map(|&f| tag_of(f))
        .collect();
    assert_eq!(order, (0..60).collect::<Vec<_>>(), "every chunk, in order");
    assert_eq!(
        of_type(&events, "level").len(),
        60,
        "every 100 ms level interval reported"
    );
    let (events, code) = c.stop().await;
    assert_eq!(code, Some(1000));
    assert_eq!(
        closed_event(&events)["stats"],
        json!({"chunks_in": 60, "chunks_processed": 60, "chunks_dropped": 0, "audio_ms": 6000})
    );

    // Control: identical server and flood, drop_newest.
    let (catalog, _) = slow_catalog(Duration::from_millis(5), None);
    let control = TestServer::start_with_env(
        &[("VOXRT_PIPELINE__PROCESSORS", "level,slow")],
        &[FLOOD[0], FLOOD[1], ("pipeline.backpressure", "drop_newest")],
        catalog,
    );
    let mut c = control.connect(S16_16K).await;
    let events = flood_and_flush(&mut c, binary(&chunks)).await;
    assert!(
        !errors_with_code(&events, "audio_dropped").is_empty(),
        "control: the same flood overruns the pipeline under drop_newest: {events:?}"
    );
}

/// `/v1/stats` for each of `stages` (`level` is in the session's light stage, the slow
/// processor in one of its own): no session's mailbox ever held more than its capacity plus
/// the one message a blocked sender holds, and the mailbox of `full` did fill up (so the
/// bound was tested).
fn assert_mailboxes_within_bound(server: &TestServer, stages: &[&str], full: &str) {
    let stats =
        common::http::request("GET", &format!("http://{}/v1/stats", server.addr), None).expect(200);
    let actors = stats["actors"].as_array().expect("actors");
    for &name in stages {
        let stage = actors
            .iter()
            .find(|a| a["stage"] == name)
            .unwrap_or_else(|| panic!("stage {name} in {stats}"));
        let capacity = stage["mailbox_capacity"].as_i64().expect("capacity");
        let peak = stage["session_peak_depth"].as_i64().expect("peak");
        assert!(peak <= capacity + 1, "{name}: {stage}");
        if name == full {
            assert!(peak >= capacity, "{name} was never full: {stage}");
        }
    }
}

/// `drop_newest` mode: every dropped chunk is reported by a non-fatal `audio_dropped` error
/// whose `seq` is the chunk's 0-based binary-frame index (an invalid frame counts too);
/// exactly the chunks not reported reach the processor; `session.closed` has
/// `chunks_dropped` == number of `audio_dropped` events and
/// `chunks_in == chunks_processed + chunks_dropped`.
#[tokio::test]
async fn drop_newest_reports_each_dropped_chunk_by_seq_and_stats_add_up() {
    let (catalog, probe) = slow_catalog(Duration::from_millis(5), None);
    let server = TestServer::start_with_env(
        &[("VOXRT_PIPELINE__PROCESSORS", "level,slow")],
        &[FLOOD[0], FLOOD[1], ("pipeline.backpressure", "drop_newest")],
        catalog,
    );
    let mut c = server.connect(S16_16K).await;
    assert_eq!(c.started["limits"]["backpressure"], "drop_newest");
    let n = 60;
    let chunks = tagged_chunks(n);
    // Binary frame 0 is invalid (odd length): chunk i is binary frame i + 1.
    let mut frames = vec![Message::Binary(vec![0u8; 3].into())];
    frames.extend(binary(&chunks));
    let events = flood_and_flush(&mut c, frames).await;

    let invalid = errors_with_code(&events, "invalid_audio_frame");
    assert_eq!(invalid.len(), 1, "{events:?}");
    let drops = errors_with_code(&events, "audio_dropped");
    assert!(
        !drops.is_empty(),
        "the flood overruns the pipeline: {events:?}"
    );
    let mut dropped = Vec::new();
    for d in &drops {
        assert_eq!(d["fatal"], false, "{d}");
        let seq = d["chunk_seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("chunk_seq: {d}")) as usize;
        assert!(
            (1..=n).contains(&seq),
            "seq {seq} is a binary-frame index of an audio chunk: {d}"
        );
        assert!(
            d["message"].as_str().unwrap().contains(&seq.to_string()),
            "{d}"
        );
        dropped.push(seq - 1);
    }
    let mut sorted = dropped.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, dropped, "one report per chunk, in order");
    let kept: Vec<usize> = (0..n).filter(|i| !dropped.contains(i)).collect();
    let processed: Vec<usize> = probe
        .firsts
        .lock()
        .unwrap()
        .iter()
        .map(|&f| tag_of(f))
        .collect();
    assert_eq!(
        processed, kept,
        "exactly the chunks not reported as dropped were processed, in order"
    );
    let kept_ms = kept.len() as u64 * 100;
    assert_eq!(events.last().unwrap()["audio_ms"], kept_ms);
    assert_eq!(
        of_type(&events, "slow.flushed")[0]["samples"],
        kept.len() as u64 * 1600
    );

    let (closed, code) = c.stop().await;
    assert_eq!(code, Some(1000));
    let stats = &closed_event(&closed)["stats"];
    assert_eq!(stats["chunks_in"], n as u64, "{stats}");
    assert_eq!(stats["chunks_dropped"], drops.len() as u64, "{stats}");
    assert_eq!(stats["chunks_processed"], kept.len() as u64, "{stats}");
    assert_eq!(
        stats["chunks_in"].as_u64().unwrap(),
        stats["chunks_processed"].as_u64().unwrap() + stats["chunks_dropped"].as_u64().unwrap()
    );
    assert_eq!(stats["audio_ms"], kept_ms);
}

/// A session whose pipeline is slow (20 ms per 100 ms block) and flooded does not stop a
/// normal session on the same server: the normal one streams speech, flushes and stops with
/// the same events as on an idle server, while the slow one still has ≥ 10 s of work queued.
#[tokio::test]
async fn slow_session_does_not_hold_up_a_normal_session() {
    // Only 16 kHz sessions sleep; the normal session sends 48 kHz.
    let (catalog, probe) = slow_catalog(Duration::from_millis(20), Some(16_000));
    let env = [("VOXRT_PIPELINE__PROCESSORS", "level,vad,slow")];
    let overrides = [
        ("pipeline.mailbox_capacity", "4"),
        ("server.shutdown_grace_s", "2"),
    ];
    let server = TestServer::start_with_env(&env, &overrides, catalog);
    let normal_query = "sample_rate=48000&channels=1&encoding=pcm_s16le";
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let mut clip = audio::silence(rate, 0.5);
    clip.extend_from_slice(&speech[..speech.len() / 4800 * 4800]);
    clip.extend(audio::silence(rate, 1.0));
    let pcm = audio::s16le(&clip, 1);
    let clip_ms = clip.len() as u64 / 48;

    let reference = {
        let (catalog, _) = slow_catalog(Duration::from_millis(20), Some(16_000));
        let quiet = TestServer::start_with_env(&env, &overrides, catalog);
        let mut c = quiet.connect(normal_query).await;
        let events = c.stream_and_flush(&pcm, 9600).await;
        c.stop().await;
        events
    };

    // 60 s of audio: at least 600 * 20 ms = 12 s of pipeline work.
    let total_samples = 600 * 1600u64;
    let mut slow = server.connect(S16_16K).await;
    slow.send_batch(binary(&tagged_chunks(600))).await;
    assert!(probe.samples() < total_samples);

    let mut normal = server.connect(normal_query).await;
    let events = normal.stream_and_flush(&pcm, 9600).await;
    let (closed, code) = normal.stop().await;
    let slow_done = probe.samples();

    assert!(of_type(&events, "error").is_empty(), "{events:?}");
    assert_eq!(events.last().unwrap()["audio_ms"], clip_ms);
    assert_eq!(
        by_type(&events),
        by_type(&reference),
        "same events (per processor, in order) as on a quiet server"
    );
    assert_eq!(code, Some(1000));
    let chunks = pcm.chunks(9600).count() as u64;
    assert_eq!(
        closed_event(&closed)["stats"],
        json!({"chunks_in": chunks, "chunks_processed": chunks, "chunks_dropped": 0, "audio_ms": clip_ms})
    );
    assert!(
        slow_done < total_samples,
        "the slow session was still working when the normal one finished \
         ({slow_done} of {total_samples} samples)"
    );
    drop(slow);
}
