//! Speech to text (`pipeline.processors = ["level", "vad", "stt"]`) end to end: real
//! sockets, real recorded and synthesized speech, the real Moonshine tiny model
//! (`scripts/fetch-models` installs it), no mocks.
//!
//! - the alsa-utils recordings: each transcript has the words spoken, at 48 and 8 kHz, in
//!   20 ms and random-sized chunks, before `session.closed`, covering its VAD segment;
//! - espeak-ng sentences: word error rate over the set under a measured bound;
//! - silence and pink noise: no transcript;
//! - 20 real-time sessions: levels and VAD keep their cadence and latency while the model
//!   runs (compared with the same load without `stt`);
//! - a full queue drops the oldest segment, tells its client, and nothing else is lost;
//! - a missing library or model, or `stt` before `vad`, stops the real binary at startup;
//! - `/v1/stats` and `/metrics` count what was transcribed.
//!
//! Run with `--nocapture` to see the transcripts, the WER and the latency figures.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use voxrt::actors::processors::ProcessorCatalog;

/// What the sessions run.
const WITH_STT: &str = "level,vad,stt";
/// `stt.pre_roll_ms` and `stt.post_roll_ms` of every server here (set explicitly, so the
/// timing checks do not depend on the defaults).
const PRE_ROLL_MS: u64 = 200;
const POST_ROLL_MS: u64 = 200;

/// Taken for reading by every test that runs the model, and for writing by the real-time
/// test (4), which measures how late levels and VAD events are: on a 2-core machine the
/// other tests' streaming and transcribing would otherwise be what it measures.
static CPU: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A server running `processors` with `overrides` on top of the pre/post roll above.
fn server(processors: &str, overrides: &[(&str, &str)]) -> TestServer {
    let (pre, post) = (PRE_ROLL_MS.to_string(), POST_ROLL_MS.to_string());
    let mut all = vec![
        ("stt.pre_roll_ms", pre.as_str()),
        ("stt.post_roll_ms", post.as_str()),
    ];
    all.extend_from_slice(overrides);
    TestServer::start_with_env(
        &[("VOXRT_PIPELINE__PROCESSORS", processors)],
        &all,
        ProcessorCatalog::with_builtins(),
    )
}

fn query(rate: u32) -> String {
    format!("sample_rate={rate}&channels=1&encoding=pcm_s16le")
}

/// Lowercase words, punctuation stripped ("We're, Right." -> ["we're", "right"]).
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .map(|w| w.trim_matches('\'').to_owned())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Word-level Levenshtein distance (substitutions, insertions, deletions).
fn word_distance(reference: &[String], hypothesis: &[String]) -> usize {
    let mut row: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, h) in hypothesis.iter().enumerate() {
            let substitute = diagonal + usize::from(r != h);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[hypothesis.len()]
}

/// Sends `pcm` in chunks of `sizes()` bytes (rounded to whole s16 samples, at least one) as
/// fast as the server takes them.
async fn send_all(c: &mut Client, pcm: &[u8], mut sizes: impl FnMut() -> usize) {
    let mut at = 0;
    while at < pcm.len() {
        let n = (sizes() & !1).max(2).min(pcm.len() - at);
        c.send_audio(pcm[at..at + n].to_vec()).await;
        at += n;
    }
}

/// Streams `mono` at `rate` in chunks of `sizes()` bytes as fast as possible, then `stop`;
/// returns every event. The session must close normally, with `session.closed` last and no
/// error event.
async fn transcribe(
    server: &TestServer,
    rate: u32,
    mono: &[f32],
    sizes: impl FnMut() -> usize,
) -> Vec<Value> {
    let mut c = server.connect(&query(rate)).await;
    send_all(&mut c, &audio::s16le(mono, 1), sizes).await;
    let (events, code) = c.stop().await;
    assert_eq!(code, Some(1000), "{events:?}");
    assert_eq!(closed_event(&events)["reason"], "client_stop", "{events:?}");
    assert_eq!(
        events.last().map(|e| &e["type"]),
        Some(&json!("session.closed")),
        "session.closed last: {events:?}"
    );
    let errors = of_type(&events, "error");
    assert!(errors.is_empty(), "unexpected errors: {errors:?}");
    events
}

/// Checks one transcript against the VAD segment it belongs to: it covers the segment with
/// at most the pre/post roll around it, stays within the audio, is final, and arrives
/// after the segment's `speech_end`. `at` and `end_at` are positions in the event list.
fn check_covers(label: &str, t: &Value, at: usize, seg: (u64, u64), end_at: usize, audio_ms: u64) {
    let (t_ms, end_ms) = (
        t["t_ms"].as_u64().expect("t_ms"),
        t["end_ms"].as_u64().expect("end_ms"),
    );
    assert_eq!(t["final"], true, "{label}: {t}");
    assert!(
        t["text"].as_str().is_some_and(|s| !s.trim().is_empty()),
        "{label}: empty text {t}"
    );
    assert!(
        t_ms <= seg.0 && seg.0 <= t_ms + PRE_ROLL_MS,
        "{label}: transcript from {t_ms} ms, speech_start at {} ms (pre-roll {PRE_ROLL_MS})",
        seg.0
    );
    assert!(
        end_ms >= seg.1 && end_ms <= seg.1 + POST_ROLL_MS,
        "{label}: transcript to {end_ms} ms, speech_end at {} ms (post-roll {POST_ROLL_MS})",
        seg.1
    );
    assert!(
        end_ms <= audio_ms,
        "{label}: transcript ends at {end_ms} ms, after the audio ({audio_ms} ms)"
    );
    assert!(
        at > end_at,
        "{label}: transcript (event #{at}) before its speech_end (event #{end_at})"
    );
}

/// Pairs each VAD segment with the transcript of the same segment (in order: a session's
/// transcripts come in the order it spoke) and checks each pair ([`check_covers`]).
/// Every segment of these recordings has words, so every one must have its transcript.
/// Returns the transcripts' texts.
fn transcripts_per_segment(label: &str, events: &[Value], audio_ms: u64) -> Vec<String> {
    let segs = segments(events);
    let ends: Vec<usize> = positions(events, |e| e["type"] == "vad" && e["event"] == "speech_end");
    let texts: Vec<usize> = positions(events, |e| e["type"] == "transcript");
    assert_eq!(
        texts.len(),
        segs.len(),
        "{label}: one transcript per speech segment {segs:?}: {:?}",
        of_type(events, "transcript")
    );
    for (i, (&at, &seg)) in texts.iter().zip(&segs).enumerate() {
        check_covers(
            &format!("{label} segment {i}"),
            &events[at],
            at,
            seg,
            ends[i],
            audio_ms,
        );
    }
    texts
        .iter()
        .map(|&i| events[i]["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn positions(events: &[Value], pred: impl Fn(&Value) -> bool) -> Vec<usize> {
    (0..events.len()).filter(|&i| pred(&events[i])).collect()
}

/// `GET {path}` on `server` (blocking client on tokio's blocking pool).
async fn get(server: &TestServer, path: &str) -> http::Reply {
    let url = format!("http://{}{path}", server.addr);
    tokio::task::spawn_blocking(move || http::request("GET", &url, None))
        .await
        .expect("request")
}

async fn stt_stats(server: &TestServer) -> Value {
    let stats = get(server, "/v1/stats").await.expect(200);
    assert!(stats["stt"].is_object(), "stt in /v1/stats: {stats:#}");
    stats["stt"].clone()
}

/// The value of the `/metrics` sample named exactly `name` (with labels, if any).
fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

// ---------------------------------------------------------------------------------------------
// 1. The alsa-utils recordings.
// ---------------------------------------------------------------------------------------------

/// The words the tiny model reliably gets in each alsa-utils recording, at 48 kHz and at
/// 8 kHz alike (with 0.5 s of silence before and after, 20 ms or random chunks). What it
/// outputs (measured; the same words in every run and both chunkings, though punctuation
/// may change with the chunking, e.g. "Front, right." in random chunks at 48 kHz):
///
/// | file         | 48 kHz             | 8 kHz              |
/// |--------------|--------------------|--------------------|
/// | Front_Center | "Front, center,"   | "Front, center,"   |
/// | Front_Left   | "Brunt left."      | "Front left."      |
/// | Front_Right  | "Front right."     | "Front right."     |
/// | Rear_Center  | "Rear, center."    | "Rear hunter."     |
/// | Rear_Left    | "Rear, laughed."   | "Rear, laugh,"     |
/// | Rear_Right   | "We're right."     | "We're right."     |
/// | Side_Left    | "Side left."       | "Side left."       |
/// | Side_Right   | "Signed right."    | "Side, right."     |
///
/// With 1 s of silence around them some change ("Rear, laugh." at 48 kHz, "Sighed right."
/// and "Sign right." for Side_Right), so only the words that survive all of these are
/// asserted: "left" of Rear_Left, "rear" of Rear_Right, "side" of Side_Right, "front" of
/// Front_Left and "center" of Rear_Center are not.
const EXPECTED_WORDS: [(&str, &[&str]); 8] = [
    ("Front_Center", &["front", "center"]),
    ("Front_Left", &["left"]),
    ("Front_Right", &["front", "right"]),
    ("Rear_Center", &["rear"]),
    ("Rear_Left", &["rear"]),
    ("Rear_Right", &["right"]),
    ("Side_Left", &["side", "left"]),
    ("Side_Right", &["right"]),
];

/// Silence before and after each recording in test 1, s.
const PAD_S: f64 = 0.5;

/// Every alsa-utils recording, streamed at 48 kHz and resampled to 8 kHz, in 20 ms chunks
/// and in random-sized chunks (fixed seed), as fast as the server takes them and then
/// `stop`: one transcript per speech segment, before `session.closed`, with the words the
/// model reliably hears in it (no more than four words: the recordings say two), covering
/// its segment (from at most `pre_roll` before `speech_start` to at most `post_roll` after
/// `speech_end`, within the audio), after its `speech_end`.
#[tokio::test]
async fn recordings_are_transcribed_with_their_words_at_48_and_8_khz_in_any_chunking() {
    let _cpu = CPU.read().await;
    let started = Instant::now();
    let server = server(WITH_STT, &[]);
    let mut rng = audio::Prng::new(0x5EED_0057);
    let mut failures = Vec::new();
    for rate in [48_000u32, 8_000] {
        for chunking in ["20 ms", "random"] {
            for (path, (name, expected)) in audio::SPEECH_FILES.iter().zip(EXPECTED_WORDS) {
                assert_eq!(audio::short_name(path), name);
                let (speech, file_rate) = audio::read_wav(path);
                let clip = audio::padded(
                    &audio::resample(&speech, file_rate, rate),
                    rate,
                    PAD_S,
                    PAD_S,
                );
                let audio_ms = clip.len() as u64 * 1000 / u64::from(rate);
                let twenty_ms = rate as usize / 50 * 2;
                // 1 sample to 200 ms, log-uniform: tiny and large chunks alike.
                let max_bytes = rate as usize / 5 * 2;
                let events = match chunking {
                    "20 ms" => transcribe(&server, rate, &clip, || twenty_ms).await,
                    _ => transcribe(&server, rate, &clip, || rng.log_uniform(2, max_bytes)).await,
                };
                let label = format!("{name} @{rate} {chunking}");
                let texts = transcripts_per_segment(&label, &events, audio_ms);
                println!("{label}: {texts:?} segments {:?}", segments(&events));
                let heard: Vec<String> = texts.iter().flat_map(|t| words(t)).collect();
                let missing: Vec<&&str> = expected
                    .iter()
                    .filter(|w| !heard.iter().any(|h| h == *w))
                    .collect();
                if !missing.is_empty() || heard.len() > 4 {
                    failures.push(format!(
                        "{label}: heard {texts:?}, expected the words {expected:?} \
                         (missing {missing:?}) and at most 4 words"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!("recordings: {:.1} s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// 2. Synthesized sentences: word error rate.
// ---------------------------------------------------------------------------------------------

/// What espeak-ng says; plain words (no digits, names or contractions, which the model may
/// spell differently from the reference).
const SENTENCES: [&str; 6] = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back when you get home tonight.",
    "The weather is nice and warm this afternoon.",
    "I would like a cup of coffee with milk and sugar.",
    "We need to leave the house early in the morning.",
    "She opened the window to let some fresh air in.",
];

/// Largest word error rate accepted over [`SENTENCES`]. Measured: 0.193 (11 errors in 57
/// words, the same in every run; espeak-ng 1.51, its default English voice), the model
/// hearing:
///
/// - "The quick brown fox jumped over the lazy knot."
/// - "Please call me back when you get home to hide."
/// - "But when there is ice and warm this afternoon,"
/// - "I will die a cup on coffee with milk and sugar."
/// - "We need to leave the house early in the morning,"
/// - "She opened the window to let some fresh air in."
///
/// The bound leaves room for another espeak-ng version or voice, and still fails a broken
/// pipeline: a missing transcript costs its sentence's every word, audio cut short or
/// garbled gives a WER near 1.
const MAX_WER: f64 = 0.4;

/// `text` spoken by espeak-ng into a WAV in `dir` (22050 Hz mono s16).
fn espeak(dir: &std::path::Path, i: usize, text: &str) -> String {
    let path = dir.join(format!("sentence-{i}.wav"));
    let status = std::process::Command::new("espeak-ng")
        .arg("-w")
        .arg(&path)
        .arg(text)
        .status()
        .unwrap_or_else(|e| {
            panic!("espeak-ng: {e} (apt-get install espeak-ng; scripts/test installs it)")
        });
    assert!(status.success(), "espeak-ng {text:?}: {status}");
    path.to_str().expect("UTF-8 path").to_owned()
}

/// Six sentences spoken by espeak-ng, each streamed in its own session (22050 Hz, 20 ms
/// chunks, as fast as possible, then `stop`): every segment has its transcript, and the
/// word error rate over all six (case and punctuation ignored) is under [`MAX_WER`].
#[tokio::test]
async fn synthesized_sentences_are_transcribed_with_a_low_word_error_rate() {
    let _cpu = CPU.read().await;
    let started = Instant::now();
    let dir = temp_dir("stt-espeak");
    let server = server(WITH_STT, &[]);
    let (mut errors, mut reference_words) = (0, 0);
    for (i, sentence) in SENTENCES.iter().enumerate() {
        let (mono, rate) = audio::read_wav(&espeak(dir.path(), i, sentence));
        let clip = audio::padded(&mono, rate, PAD_S, PAD_S);
        let audio_ms = clip.len() as u64 * 1000 / u64::from(rate);
        let chunk = rate as usize / 50 * 2;
        let events = transcribe(&server, rate, &clip, || chunk).await;
        let texts = transcripts_per_segment(&format!("sentence {i}"), &events, audio_ms);
        let reference = words(sentence);
        let hypothesis = words(&texts.join(" "));
        let distance = word_distance(&reference, &hypothesis);
        println!(
            "{sentence:?} ({rate} Hz, segments {:?}) -> {texts:?}: {distance} error(s) in {} words",
            segments(&events),
            reference.len()
        );
        errors += distance;
        reference_words += reference.len();
    }
    let wer = errors as f64 / reference_words as f64;
    println!(
        "WER {wer:.3} ({errors}/{reference_words}), bound {MAX_WER}; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(wer <= MAX_WER, "word error rate {wer:.3} > {MAX_WER}");
}

/// The distance and word normalization the WER relies on.
#[test]
fn word_distance_counts_substitutions_insertions_and_deletions() {
    let w = |s: &str| words(s);
    assert_eq!(w("We're, Right."), ["we're", "right"]);
    assert_eq!(w("  'Front'  -- center?! "), ["front", "center"]);
    assert_eq!(word_distance(&w("a b c"), &w("A, b. c!")), 0);
    assert_eq!(word_distance(&w("a b c"), &w("a x c")), 1);
    assert_eq!(word_distance(&w("a b c"), &w("a c")), 1);
    assert_eq!(word_distance(&w("a b c"), &w("a b c d")), 1);
    assert_eq!(word_distance(&w("a b c"), &w("")), 3);
    assert_eq!(word_distance(&w(""), &w("x y")), 2);
    assert_eq!(word_distance(&w("the cat sat"), &w("cat sat on")), 2);
}

// ---------------------------------------------------------------------------------------------
// 3. Silence and noise.
// ---------------------------------------------------------------------------------------------

/// 5 s of digital silence and 5 s of pink noise at -30 dBFS RMS (48 kHz, 20 ms chunks, then
/// `stop`): no transcript and no error, and the server transcribed nothing.
#[tokio::test]
async fn silence_and_pink_noise_give_no_transcript() {
    let _cpu = CPU.read().await;
    let server = server(WITH_STT, &[]);
    let rate = 48_000;
    let chunk = rate as usize / 50 * 2;
    for (label, mono) in [
        ("silence", audio::silence(rate, 5.0)),
        (
            "pink noise -30 dBFS",
            audio::pink_noise(rate, 5.0, -30.0, 0xC0FFEE),
        ),
    ] {
        let events = transcribe(&server, rate, &mono, || chunk).await;
        println!(
            "{label}: {} vad, {} level events",
            of_type(&events, "vad").len(),
            of_type(&events, "level").len()
        );
        assert!(
            of_type(&events, "transcript").is_empty(),
            "{label}: {events:?}"
        );
        assert_eq!(
            of_type(&events, "level").len(),
            50,
            "{label}: audio went through"
        );
    }
    let stt = stt_stats(&server).await;
    assert_eq!(stt["segments_transcribed"], 0, "{stt}");
    assert_eq!(stt["segments_dropped"], 0, "{stt}");
    assert_eq!(stt["segments_failed"], 0, "{stt}");
}

// ---------------------------------------------------------------------------------------------
// 4. The light path under load.
// ---------------------------------------------------------------------------------------------

/// Concurrent real-time sessions in test 4.
const REALTIME_SESSIONS: usize = 20;
/// Length of each of their streams, s.
const REALTIME_S: f64 = 6.0;
/// Largest gap between two `level` events (nominally 100 ms apart) and largest delay from
/// sending the chunk that ends a segment to its `speech_end`, with `stt` running. Generous:
/// only "the light path waits for transcriptions" (multi-second stalls) must fail.
const MAX_LIGHT_PATH_STALL: Duration = Duration::from_secs(1);

/// What one real-time session saw.
struct Paced {
    /// When each 20 ms chunk was sent.
    sent: Vec<Instant>,
    /// Every event with its arrival time.
    events: Vec<(Instant, Value)>,
    /// When `stop` was sent.
    stopped: Instant,
    audio_ms: u64,
}

/// Session `i`'s audio at 48 kHz: two recordings (1.3-1.5 s each) with silence around and
/// between them (lead-in varied per session, so segments do not all end at the same
/// moment), padded with silence to [`REALTIME_S`]; at least 1 s of silence at the end, so
/// every segment ends by silence before `stop`.
fn realtime_audio(i: usize) -> Vec<f32> {
    let rate = 48_000;
    let mut mono = audio::silence(rate, 0.2 + 0.05 * (i % 10) as f64);
    for file in [i % 8, (i + 3) % 8] {
        let (speech, file_rate) = audio::read_wav(audio::SPEECH_FILES[file]);
        mono.extend(audio::resample(&speech, file_rate, rate));
        mono.extend(audio::silence(rate, 0.8));
    }
    let total = (REALTIME_S * f64::from(rate)) as usize;
    assert!(
        mono.len() + rate as usize / 5 <= total,
        "fits in {REALTIME_S} s"
    );
    mono.resize(total, 0.0);
    mono
}

/// Streams `mono` (48 kHz) in 20 ms chunks paced by a tokio interval (real time), then
/// `stop`; reads everything (with arrival times) on another task until the close.
async fn paced_session(server: &TestServer, mono: Vec<f32>) -> Paced {
    let c = server.connect(&query(48_000)).await;
    let (mut sink, mut stream) = c.split();
    let reader = tokio::spawn(async move {
        let mut events = Vec::new();
        loop {
            match stream.recv().await {
                Received::Event(v) => events.push((Instant::now(), v)),
                Received::Audio(_) => {}
                Received::Closed(c) => return (events, c.map(|(code, _)| code)),
            }
        }
    });
    let pcm = audio::s16le(&mono, 1);
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let mut sent = Vec::new();
    for chunk in pcm.chunks(48_000 / 50 * 2) {
        ticks.tick().await;
        sink.send_audio(chunk.to_vec()).await;
        sent.push(Instant::now());
    }
    let stopped = Instant::now();
    sink.send_json(json!({"type": "stop"})).await;
    let (events, code) = tokio::time::timeout(HANG, reader)
        .await
        .expect("reader hung")
        .expect("reader");
    assert_eq!(code, Some(1000), "{events:?}");
    Paced {
        sent,
        events,
        stopped,
        audio_ms: mono.len() as u64 / 48,
    }
}

/// Light-path figures of a set of sessions.
#[derive(Debug, Default)]
struct LightPath {
    /// Largest gap between consecutive `level` events of one session.
    max_level_gap: Duration,
    /// Largest delay from sending the chunk that ends a segment to its `speech_end`.
    max_end_delay: Duration,
    /// Median of those delays.
    median_end_delay: Duration,
    speech_ends: usize,
    transcripts: usize,
    /// Transcripts that arrived before their session's `stop` was sent.
    transcripts_while_streaming: usize,
}

/// Runs [`REALTIME_SESSIONS`] paced sessions at once on `server` and measures them; with
/// `stt`, checks every session has a transcript for every segment.
async fn realtime_load(server: &TestServer, stt: bool) -> LightPath {
    let silence_ms = {
        let c = server.connect(&query(48_000)).await;
        let ms = c.started["vad"]["silence_ms"]
            .as_u64()
            .expect("vad.silence_ms");
        c.stop().await;
        ms
    };
    let runs = futures_util::future::join_all(
        (0..REALTIME_SESSIONS).map(|i| paced_session(server, realtime_audio(i))),
    )
    .await;
    let mut figures = LightPath::default();
    let mut delays = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let events: Vec<Value> = run.events.iter().map(|(_, v)| v.clone()).collect();
        let errors = of_type(&events, "error");
        assert!(errors.is_empty(), "session {i}: {errors:?}");
        let levels: Vec<Instant> = run
            .events
            .iter()
            .filter(|(_, v)| v["type"] == "level")
            .map(|(at, _)| *at)
            .collect();
        assert_eq!(
            levels.len() as u64,
            run.audio_ms.div_ceil(100),
            "session {i}: one level per 100 ms"
        );
        for pair in levels.windows(2) {
            figures.max_level_gap = figures.max_level_gap.max(pair[1] - pair[0]);
        }
        // The VAD reports speech_end once `silence_ms` of silence follows the segment: the
        // earliest chunk that can end a segment at `t_ms` is the one holding
        // `t_ms + silence_ms` (timing from it over-estimates by up to a VAD frame).
        let mut ends = 0;
        for (at, e) in run
            .events
            .iter()
            .filter(|(_, v)| v["event"] == "speech_end")
        {
            let trigger_ms = e["t_ms"].as_u64().expect("t_ms") + silence_ms;
            let chunk = (trigger_ms.div_ceil(20) as usize).saturating_sub(1);
            let sent = run.sent[chunk.min(run.sent.len() - 1)];
            delays.push(at.saturating_duration_since(sent));
            ends += 1;
        }
        assert_eq!(ends, 2, "session {i}: a segment per recording: {events:?}");
        figures.speech_ends += ends;
        if stt {
            transcripts_per_segment(&format!("session {i}"), &events, run.audio_ms);
            figures.transcripts += of_type(&events, "transcript").len();
            figures.transcripts_while_streaming += run
                .events
                .iter()
                .filter(|(at, v)| v["type"] == "transcript" && *at < run.stopped)
                .count();
        } else {
            assert!(of_type(&events, "transcript").is_empty());
        }
    }
    delays.sort();
    figures.max_end_delay = *delays.last().expect("speech ends");
    figures.median_end_delay = delays[delays.len() / 2];
    figures
}

/// 20 sessions streaming speech in real time (20 ms chunks) at once: without `stt` (the
/// reference), then with it on a server with one transcription thread. With `stt`, every
/// `speech_end` gets its transcript, some while the sessions are still streaming (so the
/// model ran alongside them), and the light path is not held up: the largest gap between
/// `level` events and the largest chunk-to-`speech_end` delay stay under 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn levels_and_vad_keep_their_pace_while_20_realtime_sessions_are_transcribed() {
    let _cpu = CPU.write().await;
    let started = Instant::now();
    let reference = {
        let server = server("level,vad", &[]);
        realtime_load(&server, false).await
    };
    println!("without stt: {reference:?}");
    let server = server(WITH_STT, &[("stt.max_queued_segments", "1000")]);
    let with_stt = realtime_load(&server, true).await;
    println!("with stt:    {with_stt:?}");
    let stt = stt_stats(&server).await;
    println!("stt stats: {stt}; {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(with_stt.transcripts, with_stt.speech_ends);
    assert_eq!(stt["segments_dropped"], 0, "{stt}");
    assert!(
        with_stt.transcripts_while_streaming > 0,
        "transcription overlapped the streaming: {with_stt:?}"
    );
    assert!(
        with_stt.max_level_gap < MAX_LIGHT_PATH_STALL,
        "levels stalled with stt: {with_stt:?} (without: {reference:?})"
    );
    assert!(
        with_stt.max_end_delay < MAX_LIGHT_PATH_STALL,
        "speech_end delayed with stt: {with_stt:?} (without: {reference:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. A full queue.
// ---------------------------------------------------------------------------------------------

/// Sessions and recordings each in the overflow test.
const OVERFLOW_SESSIONS: usize = 4;
const OVERFLOW_FILES: usize = 4;

/// `(t_ms, end_ms)` named in a `transcript_dropped` message ("speech from T ms to E ms ...").
fn dropped_span(error: &Value) -> (u64, u64) {
    let message = error["message"].as_str().expect("message");
    let tokens: Vec<&str> = message.split_whitespace().collect();
    match tokens[..] {
        ["speech", "from", t, "ms", "to", e, "ms", ..] => {
            (t.parse().expect("start ms"), e.parse().expect("end ms"))
        }
        _ => panic!("unexpected transcript_dropped message: {message}"),
    }
}

/// One transcription thread behind a queue of one segment; 4 sessions each send 4
/// recordings (0.8 s of silence between, so each is its own segment) as fast as possible,
/// then `stop`. Segments come much faster than one thread transcribes them, so some are
/// dropped: at least one `transcript_dropped` (non-fatal) arrives, every segment gets
/// exactly one outcome (its transcript, or a `transcript_dropped` naming its span), every
/// level event is there, every session closes normally, and `/v1/stats` counts what the
/// clients saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_oldest_segment_and_tells_its_client() {
    let _cpu = CPU.read().await;
    let started = Instant::now();
    let server = server(
        WITH_STT,
        &[("stt.threads", "1"), ("stt.max_queued_segments", "1")],
    );
    let rate = 48_000;
    let clip = |s: usize| {
        let mut mono = audio::silence(rate, 0.3);
        for f in 0..OVERFLOW_FILES {
            let (speech, file_rate) = audio::read_wav(audio::SPEECH_FILES[(s + f) % 8]);
            mono.extend(audio::resample(&speech, file_rate, rate));
            mono.extend(audio::silence(rate, 0.8));
        }
        mono
    };
    let runs = futures_util::future::join_all((0..OVERFLOW_SESSIONS).map(|s| {
        let server = &server;
        let mono = clip(s);
        async move {
            let mut c = server.connect(&query(rate)).await;
            let chunk = rate as usize / 10 * 2;
            send_all(&mut c, &audio::s16le(&mono, 1), || chunk).await;
            let (events, code) = c.stop().await;
            (events, code, mono.len() as u64 * 1000 / u64::from(rate))
        }
    }))
    .await;
    let (mut transcribed, mut dropped, mut total) = (0, 0, 0);
    for (s, (events, code, audio_ms)) in runs.iter().enumerate() {
        assert_eq!(code, &Some(1000), "session {s}: {events:?}");
        assert_eq!(closed_event(events)["reason"], "client_stop", "{events:?}");
        let drops = errors_with_code(events, "transcript_dropped");
        let errors = of_type(events, "error");
        assert_eq!(
            errors.len(),
            drops.len(),
            "session {s}: only drops: {errors:?}"
        );
        assert!(drops.iter().all(|e| e["fatal"] == false), "{drops:?}");
        let levels = of_type(events, "level").len() as u64;
        assert_eq!(
            levels,
            audio_ms.div_ceil(100),
            "session {s}: every level event"
        );
        let segs = segments(events);
        assert_eq!(segs.len(), OVERFLOW_FILES, "session {s}: {segs:?}");
        let texts = of_type(events, "transcript");
        for (i, &(start, end)) in segs.iter().enumerate() {
            let covers = |(t, e): (u64, u64)| t <= start && e >= end && start - t <= PRE_ROLL_MS;
            let heard = texts
                .iter()
                .filter(|t| covers((t["t_ms"].as_u64().unwrap(), t["end_ms"].as_u64().unwrap())))
                .count();
            let lost = drops.iter().filter(|d| covers(dropped_span(d))).count();
            assert_eq!(
                heard + lost,
                1,
                "session {s} segment {i} ({start}..{end}): one outcome; transcripts {texts:?}, \
                 drops {drops:?}"
            );
        }
        assert_eq!(texts.len() + drops.len(), segs.len(), "session {s}");
        let starts: Vec<u64> = texts.iter().map(|t| t["t_ms"].as_u64().unwrap()).collect();
        assert!(
            starts.windows(2).all(|w| w[0] < w[1]),
            "session {s}: transcripts in the order spoken: {texts:?}"
        );
        println!(
            "session {s}: {} segments, {} transcripts {:?}, {} dropped {:?}",
            segs.len(),
            texts.len(),
            texts.iter().map(|t| &t["text"]).collect::<Vec<_>>(),
            drops.len(),
            drops.iter().map(|d| dropped_span(d)).collect::<Vec<_>>()
        );
        transcribed += texts.len();
        dropped += drops.len();
        total += segs.len();
    }
    assert!(dropped >= 1, "the queue of one overflowed");
    let stt = stt_stats(&server).await;
    println!("stt stats: {stt}; {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(stt["segments_dropped"], dropped, "{stt}");
    assert_eq!(stt["segments_transcribed"], transcribed, "{stt}");
    assert_eq!(stt["segments_failed"], 0, "{stt}");
    assert_eq!(stt["segments_empty"], 0, "{stt}");
    assert_eq!(stt["queue_depth"], 0, "{stt}");
    assert_eq!(transcribed + dropped, total);
}

// ---------------------------------------------------------------------------------------------
// 6. Startup refusals (the real binary).
// ---------------------------------------------------------------------------------------------

/// Runs `voxrt` (test profile, clean environment) with `envs`: it must exit on its own,
/// non-zero; returns its stderr.
fn refused_startup(envs: &[(&str, &str)]) -> String {
    let started = Instant::now();
    let mut child = process::voxrt()
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("voxrt starts");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut out).expect("stderr");
        out
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("voxrt with {envs:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().expect("stderr reader");
    println!(
        "{envs:?}: {status} after {:.2} s: {stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(!status.success(), "{envs:?}: {status}\n{stderr}");
    stderr
}

/// With `stt` listed: a model directory that does not exist, or one without the model's
/// files, or a library that does not exist, stops the server at startup, naming the
/// setting and `scripts/fetch-models`; `stt` listed before `vad` is refused, naming
/// `pipeline.processors`.
#[test]
fn missing_model_or_library_or_stt_before_vad_stops_the_server() {
    let processors = ("VOXRT_PIPELINE__PROCESSORS", WITH_STT);
    let empty = temp_dir("stt-empty-model");
    let empty = empty.path().to_str().expect("UTF-8 path");
    for (key, env, value) in [
        ("stt.model_dir", "VOXRT_STT__MODEL_DIR", "/nonexistent"),
        ("stt.model_dir", "VOXRT_STT__MODEL_DIR", empty),
        (
            "stt.library",
            "VOXRT_STT__LIBRARY",
            "/nonexistent/libmoonshine.so",
        ),
    ] {
        let stderr = refused_startup(&[processors, (env, value)]);
        assert!(stderr.contains(key), "names {key}: {stderr}");
        assert!(stderr.contains(value), "names {value}: {stderr}");
        assert!(
            stderr.contains("scripts/fetch-models"),
            "says to run scripts/fetch-models: {stderr}"
        );
    }
    let stderr = refused_startup(&[("VOXRT_PIPELINE__PROCESSORS", "level,stt,vad")]);
    assert!(stderr.contains("pipeline.processors"), "{stderr}");
    assert!(stderr.contains("vad"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// 7. Stats and metrics.
// ---------------------------------------------------------------------------------------------

/// Two recordings in one session (48 kHz, 20 ms chunks, then `stop`): `/v1/stats` shows
/// two segments transcribed, none dropped, empty or failed, the audio transcribed (the
/// transcripts' spans), time spent and latency percentiles; `/metrics` the same under
/// `voxrt_stt_*`.
#[tokio::test]
async fn stats_and_metrics_count_transcribed_segments() {
    let _cpu = CPU.read().await;
    let server = server(WITH_STT, &[]);
    let before = get(&server, "/metrics").await;
    assert_eq!(before.status, 200);
    assert_eq!(
        metric(
            &before.body,
            "voxrt_stt_segments_total{outcome=\"transcribed\"}"
        ),
        0.0
    );
    let rate = 48_000;
    let mut mono = audio::silence(rate, PAD_S);
    for path in [audio::SPEECH, audio::SPEECH_2] {
        let (speech, file_rate) = audio::read_wav(path);
        mono.extend(audio::resample(&speech, file_rate, rate));
        mono.extend(audio::silence(rate, 1.0));
    }
    let chunk = rate as usize / 50 * 2;
    let events = transcribe(&server, rate, &mono, || chunk).await;
    let audio_ms = mono.len() as u64 * 1000 / u64::from(rate);
    let texts = transcripts_per_segment("stats", &events, audio_ms);
    assert_eq!(texts.len(), 2, "{texts:?}");
    let spans_s: f64 = of_type(&events, "transcript")
        .iter()
        .map(|t| (t["end_ms"].as_u64().unwrap() - t["t_ms"].as_u64().unwrap()) as f64 / 1000.0)
        .sum();

    let stt = stt_stats(&server).await;
    println!("stt stats: {stt}");
    assert_eq!(stt["threads"], 1, "{stt}");
    assert_eq!(stt["queue_depth"], 0, "{stt}");
    assert_eq!(stt["segments_transcribed"], 2, "{stt}");
    assert_eq!(stt["segments_empty"], 0, "{stt}");
    assert_eq!(stt["segments_dropped"], 0, "{stt}");
    assert_eq!(stt["segments_failed"], 0, "{stt}");
    let audio_s = stt["audio_s"].as_f64().expect("audio_s");
    assert!(
        (audio_s - spans_s).abs() < 0.01,
        "audio_s {audio_s} vs spans {spans_s}"
    );
    assert!(stt["busy_s"].as_f64().expect("busy_s") > 0.0, "{stt}");
    let latency = &stt["latency_ms"];
    let (p50, p99, max) = (
        latency["p50"].as_u64().expect("p50"),
        latency["p99"].as_u64().expect("p99"),
        latency["max"].as_u64().expect("max"),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{stt}");

    let reply = get(&server, "/metrics").await;
    assert_eq!(reply.status, 200);
    let body = &reply.body;
    let m = |name: &str| metric(body, name);
    assert_eq!(m("voxrt_stt_segments_total{outcome=\"transcribed\"}"), 2.0);
    for outcome in ["empty", "dropped", "failed"] {
        assert_eq!(
            m(&format!(
                "voxrt_stt_segments_total{{outcome=\"{outcome}\"}}"
            )),
            0.0
        );
    }
    assert_eq!(m("voxrt_stt_queue_depth"), 0.0);
    assert!(
        (m("voxrt_stt_audio_seconds_total") - audio_s).abs() < 0.01,
        "{body}"
    );
    assert!(m("voxrt_stt_busy_seconds_total") > 0.0, "{body}");
    assert_eq!(m("voxrt_stt_latency_seconds_count"), 2.0);
    assert!(m("voxrt_stt_latency_seconds_sum") > 0.0, "{body}");
}

// ---------------------------------------------------------------------------------------------
// Resume
// ---------------------------------------------------------------------------------------------

/// The connection is cut right after a segment's `speech_end`, while its transcript is
/// being made, and the client resumes once it is made: the transcript is replayed (unless
/// it reached the client before the cut), the client has it exactly once, and every seq
/// from 0 once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcript_made_while_the_connection_is_lost_arrives_once_after_the_resume() {
    let _cpu = CPU.read().await;
    let server = server(WITH_STT, &[]);
    let proxy = proxy::CutProxy::start(server.addr).await;
    let (mono, rate) = audio::read_wav(audio::SPEECH);
    // 1 s after the speech: the VAD's 500 ms of silence ends the segment before the audio does.
    let pcm = audio::s16le(&audio::padded(&mono, rate, PAD_S, 1.0), 1);
    let mut client = Client::admitted(&proxy.url(&query(rate))).await;
    let started = client.started.clone();
    let mut seen = std::collections::BTreeMap::new();
    let keep = |e: Value, seen: &mut std::collections::BTreeMap<u64, Value>| {
        let seq = e["seq"].as_u64().expect("seq");
        if let Some(before) = seen.insert(seq, e.clone()) {
            assert_eq!(before, e, "seq {seq} twice with different content");
        }
    };
    keep(started.clone(), &mut seen);
    for chunk in pcm.chunks(rate as usize / 50 * 2) {
        client.send_audio(chunk.to_vec()).await;
    }
    let end_seq = loop {
        match client.recv().await {
            Received::Event(e) => {
                let is_end = e["type"] == "vad" && e["event"] == "speech_end";
                let seq = e["seq"].as_u64().expect("seq");
                keep(e, &mut seen);
                if is_end {
                    break seq;
                }
            }
            Received::Audio(_) => {}
            Received::Closed(c) => panic!("closed before speech_end: {c:?}"),
        }
    };
    proxy.cut_all();
    loop {
        match client.recv().await {
            Received::Event(e) => keep(e, &mut seen),
            Received::Audio(_) => {}
            Received::Closed(_) => break,
        }
    }
    let last_seq = *seen.keys().next_back().expect("events");
    let before_cut = seen.values().any(|e| e["type"] == "transcript");
    // Resume once the transcript exists, so that (unless it beat the cut) it is made while
    // the session is detached and must come back in the replay.
    let deadline = Instant::now() + HANG;
    while stt_stats(&server).await["segments_transcribed"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the segment was never transcribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = server.url(&format!(
        "resume={}&resume_token={}&last_seq={last_seq}",
        started["session_id"].as_str().expect("id"),
        started["resume"]["token"].as_str().expect("token"),
    ));
    let mut client = Client::connect_raw(&url).await.expect("resume admitted");
    let replayed = match client.recv().await {
        Received::Event(v) if v["type"] == "session.resumed" => v["replayed"].as_u64(),
        other => panic!("expected session.resumed, got {other:?}"),
    };
    let mut replay = Vec::new();
    for _ in 0..replayed.expect("replayed") {
        match client.recv().await {
            Received::Event(e) => replay.push(e),
            other => panic!("expected a replayed event, got {other:?}"),
        }
    }
    assert_eq!(
        replay.iter().any(|e| e["type"] == "transcript"),
        !before_cut,
        "the transcript is replayed unless it reached the client before the cut: {replay:?}"
    );
    for e in replay {
        keep(e, &mut seen);
    }
    let (events, code) = client.stop().await;
    assert_eq!(code, Some(1000), "{events:?}");
    for e in events {
        keep(e, &mut seen);
    }
    let seqs: Vec<u64> = seen.keys().copied().collect();
    let all: Vec<u64> = (0..=*seqs.last().expect("seq")).collect();
    assert_eq!(seqs, all, "seq gap");
    let transcripts: Vec<&Value> = seen
        .values()
        .filter(|e| e["type"] == "transcript")
        .collect();
    assert_eq!(
        transcripts.len(),
        1,
        "exactly one transcript: {transcripts:?}"
    );
    let t = transcripts[0];
    assert!(t["seq"].as_u64() > Some(end_seq), "{t}");
    let text = t["text"].as_str().unwrap_or("");
    assert!(words(text).iter().any(|w| w == "center"), "{t}");
    println!(
        "transcript {text:?} {}; {replayed:?} replayed after the resume",
        if before_cut {
            "reached the client before the cut"
        } else {
            "was replayed"
        }
    );
}
