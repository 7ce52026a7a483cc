//! Input formats and chunking: every encoding, rate and channel count the issue names, chunks
//! from 5 ms to 500 ms and random sizes; speech is detected within bounds and every chunk and
//! millisecond is accounted for. Level events: calibration, interval, silence, off.
//!
//! Speech truth is as in `tests/speech.rs`: `audio::speech_bounds` of the clean 48 kHz
//! recording at 35 dB below the loudest 10 ms window (see that file for why), onset within
//! 150 ms and end within 300 ms. Run with `--nocapture` to see measured figures.

mod common;
use common::*;
use serde_json::Value;

const TRUTH_BELOW_PEAK_DB: f64 = 35.0;
const ONSET_TOLERANCE_MS: i64 = 150;
const END_TOLERANCE_MS: i64 = 300;
const PAD_S: f64 = 1.0;
/// The server's default `session.max_binary_frame_bytes`.
const MAX_FRAME_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy)]
enum Chunking {
    /// Every chunk this many ms (rounded down to whole frames); the last may be shorter.
    Ms(u32),
    /// Log-uniform sizes from 1 frame to 500 ms, from a fixed seed.
    Random(u64),
}

#[derive(Debug, Clone, Copy)]
struct Case {
    encoding: &'static str,
    rate: u32,
    channels: usize,
    chunking: Chunking,
    file: &'static str,
}

/// Chunk sizes in sample frames, summing to `total`.
fn chunk_frames(chunking: Chunking, rate: u32, frame_bytes: usize, total: usize) -> Vec<usize> {
    let half_second = rate as usize / 2;
    let mut sizes = Vec::new();
    let mut left = total;
    let mut rng = match chunking {
        Chunking::Random(seed) => Some(audio::Prng::new(seed)),
        Chunking::Ms(_) => None,
    };
    while left > 0 {
        let size = match (&mut rng, chunking) {
            (Some(rng), _) => rng.log_uniform(1, half_second),
            (None, Chunking::Ms(ms)) => (rate as usize * ms as usize / 1000).max(1),
            (None, Chunking::Random(_)) => unreachable!(),
        };
        assert!(size * frame_bytes <= MAX_FRAME_BYTES, "test case too big");
        let size = size.min(left);
        sizes.push(size);
        left -= size;
    }
    sizes
}

/// What one session returned.
struct Outcome {
    /// Everything up to and including `flushed`.
    events: Vec<Value>,
    /// `session.closed`.
    closed: Value,
}

/// Streams `pcm` in chunks of `frames` frames, flushes, reads to `flushed`, then stops and
/// reads to the close (which must be 1000).
async fn run(
    server: &TestServer,
    query: &str,
    pcm: &[u8],
    frame_bytes: usize,
    frames: &[usize],
) -> Outcome {
    let mut c = server.connect(query).await;
    let mut at = 0;
    for &n in frames {
        c.send_audio(pcm[at..at + n * frame_bytes].to_vec()).await;
        at += n * frame_bytes;
    }
    assert_eq!(at, pcm.len());
    c.send_json(serde_json::json!({"type": "flush"})).await;
    let mut returned = Vec::new();
    let events = c.until("flushed", &mut returned).await;
    let (rest, code) = c.stop().await;
    assert_eq!(code, Some(1000), "{rest:?}");
    let closed = rest.last().cloned().expect("session.closed");
    assert_eq!(closed["type"], "session.closed", "{rest:?}");
    Outcome { events, closed }
}

/// Runs every case; returns the failures (all cases run so the output shows every figure).
async fn check_cases(cases: &[Case]) -> Vec<String> {
    let server = TestServer::start(&[]);
    let mut failures = Vec::new();
    for case in cases {
        let (clean, file_rate) = audio::read_wav(case.file);
        let (t0, t1) = audio::speech_bounds(&clean, file_rate, TRUTH_BELOW_PEAK_DB);
        let pad_ms = (PAD_S * 1000.0) as i64;
        let truth = (t0 as i64 + pad_ms, t1 as i64 + pad_ms);
        let speech = audio::resample(&clean, file_rate, case.rate);
        let mono = audio::padded(&speech, case.rate, PAD_S, PAD_S);
        let (pcm, sample_bytes) = match case.encoding {
            "pcm_s16le" => (audio::s16le(&mono, case.channels), 2),
            "pcm_f32le" => (audio::f32le(&mono, case.channels), 4),
            other => panic!("{other}"),
        };
        let frame_bytes = sample_bytes * case.channels;
        let frames = chunk_frames(case.chunking, case.rate, frame_bytes, mono.len());
        let query = format!(
            "sample_rate={}&channels={}&encoding={}",
            case.rate, case.channels, case.encoding
        );
        let out = run(&server, &query, &pcm, frame_bytes, &frames).await;
        let label = format!(
            "{} {} Hz x{} {:?} ({} chunks, {}..={} frames) {}",
            case.encoding,
            case.rate,
            case.channels,
            case.chunking,
            frames.len(),
            frames.iter().min().unwrap(),
            frames.iter().max().unwrap(),
            audio::short_name(case.file)
        );
        let mut problems = Vec::new();

        let errors = of_type(&out.events, "error");
        if !errors.is_empty() {
            problems.push(format!("error events {errors:?}"));
        }
        let segs = segments(&out.events);
        let input_ms = mono.len() as f64 * 1000.0 / case.rate as f64;
        let flushed_ms = out.events.last().unwrap()["audio_ms"]
            .as_u64()
            .expect("flushed.audio_ms");
        if segs.len() == 1 {
            let onset_err = segs[0].0 as i64 - truth.0;
            let end_err = segs[0].1 as i64 - truth.1;
            println!(
                "{label}: truth {truth:?} segment {:?} onset {onset_err:+} ms end {end_err:+} ms; \
                 input {input_ms:.2} ms flushed {flushed_ms} ms; closed {}",
                segs[0], out.closed["stats"]
            );
            if onset_err.abs() > ONSET_TOLERANCE_MS || end_err.abs() > END_TOLERANCE_MS {
                problems.push(format!(
                    "segment {:?} vs truth {truth:?}: onset {onset_err:+} ms, end {end_err:+} ms",
                    segs[0]
                ));
            }
        } else {
            println!("{label}: truth {truth:?} segments {segs:?}");
            problems.push(format!("expected one segment near {truth:?}, got {segs:?}"));
        }
        if (flushed_ms as f64 - input_ms).abs() > 1.0 {
            problems.push(format!(
                "flushed.audio_ms {flushed_ms} vs input {input_ms:.2} ms"
            ));
        }
        let stats = &out.closed["stats"];
        // Field by field, so counters added to stats later do not break this test.
        let expected_stats = [
            ("chunks_in", frames.len() as u64),
            ("chunks_processed", frames.len() as u64),
            ("chunks_dropped", 0),
            ("audio_ms", flushed_ms),
        ];
        let stats_ok = expected_stats
            .iter()
            .all(|&(key, want)| stats[key].as_u64() == Some(want));
        if !stats_ok || out.closed["reason"] != "client_stop" {
            problems.push(format!(
                "session.closed {} (expected client_stop with {expected_stats:?})",
                out.closed
            ));
        }
        if !problems.is_empty() {
            failures.push(format!("{label}: {}", problems.join("; ")));
        }
    }
    failures
}

/// pcm_s16le at every rate (8, 16, 22.05, 44.1, 48, 96 kHz), 1/2/6 channels, chunks of 5, 10,
/// 20, 50, 100 and 500 ms and random sizes: one speech segment within bounds, `flushed`
/// audio_ms = input duration (±1 ms), and session.closed counts every chunk, none dropped.
#[tokio::test]
async fn pcm_s16le_at_every_rate_and_channel_count_is_detected_and_fully_accounted() {
    use Chunking::*;
    let f = audio::SPEECH_FILES;
    let cases = [
        (8_000, 1, Ms(5), f[0]),
        (16_000, 6, Ms(10), f[1]),
        (22_050, 2, Ms(20), f[2]),
        (44_100, 1, Random(1), f[3]),
        (48_000, 6, Ms(50), f[4]),
        (96_000, 2, Ms(100), f[5]),
        // 400 ms of 96 kHz 6-channel s16 is 460 800 bytes: under the 512 KiB frame limit.
        (96_000, 6, Ms(400), f[6]),
        (8_000, 2, Random(2), f[7]),
    ]
    .map(|(rate, channels, chunking, file)| Case {
        encoding: "pcm_s16le",
        rate,
        channels,
        chunking,
        file,
    });
    let failures = check_cases(&cases).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// pcm_f32le at every rate, 1/2/6 channels, chunks of 5 to 500 ms and random sizes: one
/// speech segment within bounds, exact duration accounting, every chunk processed.
#[tokio::test]
async fn pcm_f32le_at_every_rate_and_channel_count_is_detected_and_fully_accounted() {
    use Chunking::*;
    let f = audio::SPEECH_FILES;
    let cases = [
        (8_000, 6, Ms(500), f[7]),
        (16_000, 1, Random(3), f[6]),
        (22_050, 6, Random(4), f[5]),
        (44_100, 2, Ms(5), f[4]),
        (48_000, 1, Ms(10), f[3]),
        (48_000, 2, Random(5), f[2]),
        // 96 kHz 6-channel f32 is 2.3 MB/s: 20 ms chunks (46 080 bytes).
        (96_000, 6, Ms(20), f[1]),
        (96_000, 1, Random(6), f[0]),
    ]
    .map(|(rate, channels, chunking, file)| Case {
        encoding: "pcm_f32le",
        rate,
        channels,
        chunking,
        file,
    });
    let failures = check_cases(&cases).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Streams `mono` (f32, one channel) in 20 ms chunks and returns the events up to `flushed`.
async fn level_events(server: &TestServer, rate: u32, mono: &[f32]) -> Vec<Value> {
    let pcm = audio::f32le(mono, 1);
    let frames = chunk_frames(Chunking::Ms(20), rate, 4, mono.len());
    let query = format!("sample_rate={rate}&channels=1&encoding=pcm_f32le");
    run(server, &query, &pcm, 4, &frames).await.events
}

fn level_fields(e: &Value) -> (u64, f64, f64) {
    (
        e["t_ms"].as_u64().expect("t_ms"),
        e["rms_dbfs"].as_f64().expect("rms_dbfs"),
        e["peak_dbfs"].as_f64().expect("peak_dbfs"),
    )
}

/// A full-scale 1 kHz sine at 48 kHz reads -3.0 dBFS RMS and 0.0 dBFS peak (±0.2) in every
/// level event, and events come every 100 ms of audio (t_ms = 100, 200, ..., end).
#[tokio::test]
async fn full_scale_sine_reads_minus_3_dbfs_rms_and_0_dbfs_peak_every_100_ms() {
    let server = TestServer::start(&[]);
    let events = level_events(&server, 48_000, &audio::tone(48_000, 1000.0, 1.0, 2.0)).await;
    let levels: Vec<_> = of_type(&events, "level")
        .into_iter()
        .map(level_fields)
        .collect();
    println!("full-scale 1 kHz sine: {levels:?}");
    let times: Vec<u64> = levels.iter().map(|l| l.0).collect();
    assert_eq!(times, (1..=20).map(|i| i * 100).collect::<Vec<_>>());
    for (t, rms, peak) in levels {
        assert!((rms + 3.0).abs() <= 0.2, "t={t}: rms {rms}");
        assert!(peak.abs() <= 0.2, "t={t}: peak {peak}");
    }
}

/// With level.interval_ms=250, events advance by 250 ms; digital silence reads -120 dBFS RMS
/// and peak, and a 0.5-amplitude sine reads -9.03 dBFS RMS / -6.02 dBFS peak (±0.2).
#[tokio::test]
async fn level_events_follow_the_configured_interval_and_silence_reads_minus_120() {
    let server = TestServer::start(&[("level.interval_ms", "250")]);
    let mut mono = audio::silence(48_000, 1.0);
    mono.extend(audio::tone(48_000, 1000.0, 0.5, 1.0));
    let events = level_events(&server, 48_000, &mono).await;
    let levels: Vec<_> = of_type(&events, "level")
        .into_iter()
        .map(level_fields)
        .collect();
    println!("interval 250 ms, 1 s silence then 1 s sine at 0.5: {levels:?}");
    let times: Vec<u64> = levels.iter().map(|l| l.0).collect();
    assert_eq!(times, (1..=8).map(|i| i * 250).collect::<Vec<_>>());
    // Intervals ending at 250, 500, 750 ms hold only silence. (The one ending at 1000 ms also
    // holds the resampling filter's pre-ringing of the tone's onset, a few ms long.)
    for &(t, rms, peak) in &levels[..3] {
        assert_eq!((rms, peak), (-120.0, -120.0), "t={t}");
    }
    // Intervals ending at 1250..2000 ms hold only the tone.
    let sine_rms = 20.0 * (0.5f64 / 2f64.sqrt()).log10();
    let sine_peak = 20.0 * 0.5f64.log10();
    for &(t, rms, peak) in &levels[4..] {
        assert!((rms - sine_rms).abs() <= 0.2, "t={t}: rms {rms}");
        assert!((peak - sine_peak).abs() <= 0.2, "t={t}: peak {peak}");
    }
}

/// level.interval_ms=0 turns level events off, while the rest of the pipeline (VAD, flush)
/// still works.
#[tokio::test]
async fn level_interval_zero_sends_no_level_events() {
    let server = TestServer::start(&[("level.interval_ms", "0")]);
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let mut mono = audio::padded(&speech, rate, PAD_S, PAD_S);
    mono.extend(audio::tone(rate, 1000.0, 0.5, 0.5));
    let events = level_events(&server, rate, &mono).await;
    assert!(
        of_type(&events, "level").is_empty(),
        "{:?}",
        of_type(&events, "level")
    );
    assert!(
        !of_type(&events, "vad").is_empty(),
        "VAD still runs: {events:?}"
    );
}
