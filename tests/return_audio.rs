//! `return_audio=true`: the server sends the 16 kHz mono pcm_s16le pipeline audio back. Its
//! length is exactly the resampled length, it all arrives before `flushed`, tones keep their
//! level, frequency and timing, out-of-band tones are removed, and nothing is sent without
//! the option. Run with `--nocapture` to see measured figures.

mod common;
use common::*;
use serde_json::Value;
use voxrt::actors::audio::{ResamplerKind, StreamResampler};

const PIPELINE_RATE: u32 = 16_000;

/// What a session sent back.
struct Returned {
    /// Binary frames received before `flushed`, concatenated.
    before_flushed: Vec<u8>,
    /// Events up to and including `flushed`.
    events: Vec<Value>,
    /// Binary bytes received after `flushed` (through the close).
    after_flushed: usize,
    /// Binary frames received before `flushed`.
    frames: usize,
}

/// Streams `pcm` in chunks of `chunk_bytes`, flushes, reads to `flushed` keeping binary
/// frames, then stops and reads to the close, counting any later binary frames.
async fn stream(server: &TestServer, query: &str, pcm: &[u8], chunk_bytes: usize) -> Returned {
    let mut c = server.connect(query).await;
    for chunk in pcm.chunks(chunk_bytes) {
        c.send_audio(chunk.to_vec()).await;
    }
    c.send_json(serde_json::json!({"type": "flush"})).await;
    let mut before_flushed = Vec::new();
    let mut events = Vec::new();
    let mut frames = 0;
    loop {
        match c.recv().await {
            Received::Event(v) => {
                let done = v["type"] == "flushed";
                events.push(v);
                if done {
                    break;
                }
            }
            Received::Audio(b) => {
                frames += 1;
                before_flushed.extend_from_slice(&b);
            }
            Received::Closed(c) => panic!("closed before flushed: {c:?} {events:?}"),
        }
    }
    assert!(
        of_type(&events, "error").is_empty(),
        "{:?}",
        of_type(&events, "error")
    );
    c.send_json(serde_json::json!({"type": "stop"})).await;
    let mut after_flushed = 0;
    loop {
        match c.recv().await {
            Received::Event(_) => {}
            Received::Audio(b) => after_flushed += b.len(),
            Received::Closed(code) => {
                assert_eq!(code.map(|c| c.0), Some(1000));
                break;
            }
        }
    }
    Returned {
        before_flushed,
        events,
        after_flushed,
        frames,
    }
}

fn query(rate: u32, encoding: &str, extra: &str) -> String {
    format!("sample_rate={rate}&channels=1&encoding={encoding}{extra}")
}

/// After flush, the returned sample count is round(input_frames * 16000 / rate) (±1) for
/// FFT-path rates, the sinc-path rate 44056 Hz and 16 kHz passthrough, with an odd number of
/// input frames in random-size chunks; all of it arrives before `flushed`, none after.
#[tokio::test]
async fn returned_audio_has_the_resampled_length_and_arrives_before_flushed() {
    assert_eq!(
        StreamResampler::new(44_056).expect("44056").kind(),
        ResamplerKind::Sinc,
        "44056 Hz is meant to exercise the sinc path"
    );
    let server = TestServer::start(&[]);
    let mut rng = audio::Prng::new(0xA0D10);
    for rate in [
        8_000, 11_025, 16_000, 22_050, 37_800, 44_056, 44_100, 48_000, 96_000,
    ] {
        let kind = StreamResampler::new(rate).expect("rate").kind();
        let frames = (rate as f64 * 1.2345) as usize | 1;
        let tone = audio::tone(rate, 440.0, 0.3, frames as f64 / rate as f64);
        assert_eq!(tone.len(), frames);
        let pcm = audio::s16le(&tone, 1);
        let chunk_frames = rng.log_uniform(1, rate as usize / 10);
        let out = stream(
            &server,
            &query(rate, "pcm_s16le", "&return_audio=true"),
            &pcm,
            chunk_frames * 2,
        )
        .await;
        let expected = (frames as f64 * PIPELINE_RATE as f64 / rate as f64).round() as i64;
        let got = out.before_flushed.len() as i64 / 2;
        let flushed_ms = out.events.last().unwrap()["audio_ms"].as_u64().unwrap();
        println!(
            "{rate} Hz ({kind:?}): {frames} frames in {chunk_frames}-frame chunks -> {got} \
             samples in {} binary frames before flushed (expected {expected}), {} bytes after; \
             flushed.audio_ms {flushed_ms}",
            out.frames, out.after_flushed
        );
        assert_eq!(out.before_flushed.len() % 2, 0);
        assert!(
            (got - expected).abs() <= 1,
            "{rate} Hz: {got} samples, expected {expected}"
        );
        assert_eq!(out.after_flushed, 0, "{rate} Hz: audio after flushed");
        assert_eq!(flushed_ms, got as u64 / 16, "{rate} Hz");
    }
}

/// 16 kHz pcm_s16le input needs no resampling and comes back bit-exact.
#[tokio::test]
async fn sixteen_khz_s16_input_comes_back_bit_exact() {
    let server = TestServer::start(&[]);
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let speech = audio::resample(&speech, rate, PIPELINE_RATE);
    let pcm = audio::s16le(&audio::padded(&speech, PIPELINE_RATE, 0.5, 0.5), 1);
    let out = stream(
        &server,
        &query(PIPELINE_RATE, "pcm_s16le", "&return_audio=true"),
        &pcm,
        3_202,
    )
    .await;
    assert_eq!(out.before_flushed.len(), pcm.len());
    assert!(
        out.before_flushed == pcm,
        "returned audio differs from input"
    );
}

/// A 1 kHz tone at amplitude 0.5 keeps its level (returned RMS within 0.5 dB of the input's
/// -9.03 dBFS), its frequency (zero crossings of a 1 kHz sine; a fitted 1 kHz sinusoid leaves
/// a residual at least 40 dB down) and its timing (phase within 1/16 ms of the input's), at
/// 8, 44.1, 44.056 (sinc), 48 and 96 kHz; measured over the steady middle 100..900 ms.
#[tokio::test]
async fn a_1_khz_tone_keeps_its_level_frequency_and_timing() {
    let server = TestServer::start(&[]);
    let amp = 0.5f32;
    let input_dbfs = 20.0 * (amp as f64 / 2f64.sqrt()).log10();
    for rate in [8_000, 44_100, 44_056, 48_000, 96_000] {
        let tone = audio::tone(rate, 1000.0, amp, 1.0);
        let out = stream(
            &server,
            &query(rate, "pcm_f32le", "&return_audio=true"),
            &audio::f32le(&tone, 1),
            (rate as usize / 50) * 4,
        )
        .await;
        let returned = audio::from_s16le(&out.before_flushed);
        assert_eq!(returned.len(), 16_000, "{rate} Hz");
        let (from, to) = (1_600, 14_400);
        let middle = &returned[from..to];
        let rms = audio::rms_dbfs(middle);
        let crossings = audio::zero_crossings(middle);
        let (fit_amp, phase, residual_db) = audio::fit_sine(middle, PIPELINE_RATE, 1000.0, from);
        let offset_us = -phase / (2.0 * std::f64::consts::PI * 1000.0) * 1e6;
        println!(
            "1 kHz @{rate}: RMS {rms:.3} dBFS (input {input_dbfs:.3}, diff {:+.3} dB), \
             {crossings} zero crossings (expect 1600), fitted amplitude {fit_amp:.4}, \
             residual {residual_db:.1} dB, time offset {offset_us:+.1} us",
            rms - input_dbfs
        );
        assert!(
            (rms - input_dbfs).abs() <= 0.5,
            "{rate} Hz: RMS {rms:.3} vs {input_dbfs:.3} dBFS"
        );
        assert!(
            (1_598..=1_602).contains(&crossings),
            "{rate} Hz: {crossings} zero crossings in 800 ms"
        );
        assert!(
            residual_db <= -40.0,
            "{rate} Hz: residual {residual_db:.1} dB"
        );
        assert!(
            offset_us.abs() <= 62.5,
            "{rate} Hz: returned tone is {offset_us:+.1} us off the input's timing"
        );
    }
}

/// A 20 kHz tone (amplitude 0.5, -9 dBFS RMS, f32) at 48 kHz, far above the 8 kHz pipeline
/// Nyquist limit, comes back at most -85 dBFS RMS in the steady middle, i.e. no audible alias
/// (at 4 kHz): the returned audio is s16, whose floor is about -96 dBFS (an LSB is -90 dBFS,
/// rounding noise about -101 dBFS), so -85 dBFS means "at most a few LSB", at least 76 dB
/// below the input. Also checked at 44.1 and 96 kHz.
#[tokio::test]
async fn a_20_khz_tone_at_48_khz_is_rejected() {
    let server = TestServer::start(&[]);
    for rate in [48_000, 44_100, 96_000] {
        let tone = audio::tone(rate, 20_000.0, 0.5, 1.0);
        let input_dbfs = audio::rms_dbfs(&tone);
        let out = stream(
            &server,
            &query(rate, "pcm_f32le", "&return_audio=true"),
            &audio::f32le(&tone, 1),
            (rate as usize / 50) * 4,
        )
        .await;
        let returned = audio::from_s16le(&out.before_flushed);
        let middle = &returned[1_600..14_400];
        let rms = audio::rms_dbfs(middle);
        let peak = middle.iter().fold(0f32, |m, s| m.max(s.abs()));
        println!(
            "20 kHz @{rate}: input {input_dbfs:.2} dBFS, returned {rms:.1} dBFS RMS \
             (peak {} LSB), rejection {:.1} dB",
            (peak * 32768.0).round(),
            input_dbfs - rms
        );
        assert!(rms <= -85.0, "{rate} Hz: 20 kHz came back at {rms:.1} dBFS");
    }
}

/// Without return_audio (absent or false) no binary frame arrives, before or after flushed.
#[tokio::test]
async fn no_binary_frames_without_return_audio() {
    let server = TestServer::start(&[]);
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let pcm = audio::s16le(&audio::padded(&speech, rate, 0.5, 0.5), 1);
    for extra in ["", "&return_audio=false"] {
        let out = stream(&server, &query(rate, "pcm_s16le", extra), &pcm, 1_920).await;
        assert!(
            !of_type(&out.events, "vad").is_empty(),
            "audio was processed"
        );
        assert_eq!(
            (out.frames, out.after_flushed),
            (0, 0),
            "binary frames with {extra:?}"
        );
    }
}
