//! The client examples as users run them: `mic_capture` and `stream_wav` run as child
//! processes of this test against the real `voxrt` binary (and `custom_processor`, the
//! README's server with a processor of its own), with real audio (the alsa-utils
//! speech recordings). They must report the recording's speech segment, stop the session
//! cleanly, and fail in one line with the documented exit code when there is no input device
//! or the server is unreachable or refuses them (401, 503). Nothing they print may contain
//! panic or backtrace text (they run with `RUST_BACKTRACE=1` so that a panic would show one).
//! Through a proxy that aborts connections (`tests/common/proxy.rs`) they must resume their
//! session, print each event once and still report the recording's segment; the load
//! generator's `--drop-every` must resume every cut without a missing event.
//!
//! `cargo test --test clients` does not build the examples or `voxrt-loadgen`. They come from
//! `cargo build --workspace --examples --bins --features voxrt/mic`, or from
//! `cargo test --workspace --all-targets --features voxrt/mic` (what scripts/test runs),
//! which builds every target before any test runs (`mic_capture` only with the `mic`
//! feature). A missing or stale binary fails the test with what to run.
//!
//! ## A microphone without a sound card
//!
//! alsa-lib reads `~/.asoundrc`, so `mic_capture` runs with a fresh HOME whose `.asoundrc`
//! makes ALSA's `default` PCM the `file` plugin over the `null` PCM, with a named pipe as its
//! `infile`. In every capture period cpal reads one period with `snd_pcm_readi`, and the plugin
//! reads that period from the pipe, blocking until a feeder thread here has written it. The
//! feeder writes one period at a time at real time (absolute deadlines), so cpal captures the
//! pipe's content bit-exactly at 1x. What that takes:
//!
//! - No `plug` with a fixed slave format under cpal: with a conversion in between, alsa-lib
//!   (1.2.8) reads the infile in `mmap_begin` for the whole available area while the converter
//!   commits less of it, and the rest is lost (measured: a third of the samples, and the
//!   capture slower than real time). The `null` PCM takes any format, so cpal's own choice for
//!   the device (its default input config: 48 kHz, stereo, f32 here) reaches the plugin as it
//!   is; the test reads that format from `session.started` and writes the pipe in it.
//! - `defaults.pcm.minperiodtime 10000`: the period is 10 ms, and every write is exactly one
//!   period. A read that finds less than a period in the pipe would make the plugin return the
//!   missing frames as the null PCM's silence. 10 ms of 48 kHz stereo f32 is 3840 bytes, under
//!   `PIPE_BUF`, so every write lands whole.
//! - The feeder holds the pipe open for reading and writing: the plugin opens the pipe each
//!   time cpal opens the device (listing, default config, stream), and an open for reading
//!   only returns once a writer exists; a writer that is also a reader never gets `EPIPE`
//!   between those opens.
//! - After the recording the feeder keeps writing silence, as a quiet room would, until the
//!   example has exited: a capture thread blocked on an empty pipe could not be stopped.
//!
//! Run with `--nocapture` to see the measured onset/end errors and capture rates.

mod common;

use common::process::ServerProcess;
use common::proxy::CutProxy;
use common::*;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Speech truth and tolerances, as in tests/speech.rs (see its module docs for why).
const TRUTH_BELOW_PEAK_DB: f64 = 35.0;
/// Largest allowed |reported speech_start - true onset|, ms.
const ONSET_TOLERANCE_MS: i64 = 150;
/// Largest allowed |reported speech_end - true end|, ms.
const END_TOLERANCE_MS: i64 = 300;
/// Silence fed before the recording, s.
const LEAD_S: f64 = 1.0;
/// Silence fed after the recording, s (more than the VAD's 500 ms to end the segment).
const TAIL_S: f64 = 1.5;
/// The capture period the `.asoundrc` asks for, microseconds.
const PERIOD_US: u64 = 10_000;

/// The exit codes both examples document in their header comments.
const EXIT_SESSION: i32 = 1;
const EXIT_INPUT: i32 = 2;
const EXIT_UNREACHABLE: i32 = 3;
const EXIT_REFUSED: i32 = 4;

// ---------------------------------------------------------------------------------------------
// 1. The microphone path: real cpal capture from a named pipe
// ---------------------------------------------------------------------------------------------

/// `mic_capture --json` captures 1 s of silence, Front_Center.wav and 1.5 s of silence through
/// cpal at real time; the server finds one speech segment at the recording's speech (1 s
/// later than in the file); Ctrl-C sends `stop`, the example prints `session.closed`
/// (`client_stop`) and its summary and exits with 0. What cpal captured is what was fed,
/// sample for sample: the same clip sent straight over the protocol gets the same VAD and
/// level events. The server received as much audio as was fed and the feeder was never held
/// up: cpal captured at 1x, nothing dropped or added.
#[test]
fn mic_capture_streams_what_cpal_captures_and_reports_the_speech_in_it() {
    let server = ServerProcess::start(&[]);
    let mic = PipeMic::new();
    let url = format!("ws://127.0.0.1:{}", server.port);
    let mut run = Run::spawn("mic_capture", mic.home(), &["--json", "--url", &url]);

    let started = run.stdout_event("session.started");
    let format = Format::of(&started);
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let speech = audio::resample(&speech, rate, format.rate);
    let truth = truth_in_padded_clip(&speech, format.rate, LEAD_S);
    let clip = audio::padded(&speech, format.rate, LEAD_S, TAIL_S);
    let pcm = format.encode(&clip);
    let feeder = mic.feed(&format, pcm.clone());

    run.stdout_line("vad speech_end", |v| v["event"] == "speech_end");
    feeder
        .clip_fed
        .recv_timeout(HANG)
        .expect("the feeder writes the whole clip");
    let fed_before_stop = feeder.fed_ms();
    run.interrupt();
    let out = run.finish();
    let fed_at_exit = feeder.fed_ms();
    let lag_ms = feeder.stop();

    out.assert_no_panic();
    assert_eq!(out.code, Some(0), "mic_capture exit code\n{out}");
    let device = out
        .stderr
        .iter()
        .find(|l| l.starts_with("mic_capture: alsa:default: "))
        .unwrap_or_else(|| panic!("no device line\n{out}"));
    assert!(
        !device.contains("converted"),
        "cpal's format must reach the pipe unconverted: {device}"
    );
    let events = out.events();
    let closed = closed_event(&events);
    assert_eq!(closed["reason"], "client_stop", "{closed}");
    assert_eq!(
        events.last().map(|e| e["type"].clone()),
        Some("session.closed".into()),
        "session.closed is the last event\n{out}"
    );
    out.assert_stderr_has("session closed (client_stop): chunks in ");
    out.assert_stderr_has("client: 0 capture buffers dropped");
    out.assert_stderr_has(", 0 overruns reported by the device");
    assert_one_segment_near(
        &format!("mic_capture {} Hz", format.rate),
        &segments(&events),
        truth,
    );

    // Bit-exact: the same clip sent straight over the protocol gets the same events, to the
    // sample: the VAD's times and every level window's RMS and peak within the clip. (Level
    // and VAD events come from different actors: only their order within a type is fixed,
    // so their seqs, which number every message in sending order, are left out.)
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let direct = rt.block_on(async {
        let mut c = Client::connect(&server.url(&format.query()))
            .await
            .expect("direct session admitted");
        let chunk = format.rate as usize / 50 * format.frame_bytes();
        let events = c.stream_and_flush(&pcm, chunk).await;
        c.stop().await;
        events
    });
    let clip_ms = clip.len() as i64 * 1000 / i64::from(format.rate);
    let in_clip = |events: &[Value]| {
        let events: Vec<Value> = events.iter().map(without_seq).collect();
        let mut by = by_type(&events);
        let levels: Vec<Value> = by
            .remove("level")
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["t_ms"].as_i64() < Some(clip_ms - 100))
            .collect();
        (levels, by.remove("vad").unwrap_or_default())
    };
    let (captured, sent) = (in_clip(&events), in_clip(&direct));
    assert!(sent.0.len() >= 30 && sent.1.len() == 2, "{sent:?}");
    assert_eq!(
        captured, sent,
        "what cpal captured differs from the clip sent directly (left: captured)"
    );

    let audio_ms = closed["stats"]["audio_ms"].as_u64().expect("audio_ms") as i64;
    println!(
        "mic_capture: fed {fed_before_stop} ms before Ctrl-C, {fed_at_exit} ms at exit; \
         server got {audio_ms} ms; feeder behind real time by {lag_ms} ms at the end"
    );
    assert!(
        audio_ms >= fed_before_stop - 100 && audio_ms <= fed_at_exit + 20,
        "the server got {audio_ms} ms of audio; {fed_before_stop} ms were fed before Ctrl-C and \
         {fed_at_exit} ms by the time the example exited"
    );
    assert!(
        lag_ms < 500,
        "cpal captured slower than real time: the feeder ended {lag_ms} ms behind the clock"
    );
}

/// `--list-devices` lists the inputs with their formats and says which is the default and
/// its default configuration; `--device` picks an input by name.
#[test]
fn mic_capture_lists_devices_with_their_formats_and_picks_one_by_name() {
    let mic = PipeMic::new();
    let out = Run::spawn("mic_capture", mic.home(), &["--list-devices"]).finish();
    out.assert_no_panic();
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout.iter().any(
            |l| l.starts_with("host ALSA; default input: alsa:default (")
                && l.contains(" Hz, ")
                && l.contains(" ch, ")
        ),
        "the default input and its configuration\n{out}"
    );
    assert!(
        out.stdout.iter().any(|l| l.starts_with("alsa:speechfile ")),
        "the pipe device listed by its id\n{out}"
    );
    assert!(
        out.stdout
            .iter()
            .any(|l| l.trim_start().starts_with("supports: ")
                && l.contains(" Hz, ")
                && l.contains(" ch: ")
                && l.contains("i16")
                && l.contains("f32")),
        "supported formats listed\n{out}"
    );

    // `--device` by name: the stream opens on that device (the server is not there).
    let url = format!("ws://127.0.0.1:{}", closed_port());
    let out = Run::spawn(
        "mic_capture",
        mic.home(),
        &["--device", "speechfile", "--url", &url],
    )
    .finish();
    out.assert_no_panic();
    assert!(
        out.stderr
            .iter()
            .any(|l| l.starts_with("mic_capture: alsa:speechfile: ")),
        "captures from the device it was given\n{out}"
    );
    assert_eq!(out.code, Some(EXIT_UNREACHABLE), "{out}");
}

// ---------------------------------------------------------------------------------------------
// 2. stream_wav
// ---------------------------------------------------------------------------------------------

/// `stream_wav --json` streams a 48 kHz mono 16-bit WAV (Front_Center.wav between 1 s and
/// 1.5 s of silence, as the speech tests stream it) in real time: it takes at least the
/// file's duration. The server finds the recording's speech segment, and the example sends
/// `stop` at the end, prints `session.closed` (`client_stop`) with stats covering the whole
/// file, prints its summary, and exits with 0.
#[test]
fn stream_wav_streams_a_recording_in_real_time_and_reports_its_speech() {
    let server = ServerProcess::start(&[]);
    let home = temp_dir("wav-realtime");
    let url = format!("ws://127.0.0.1:{}", server.port);
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let truth = truth_in_padded_clip(&speech, rate, LEAD_S);
    let clip = audio::padded(&speech, rate, LEAD_S, TAIL_S);
    let duration_ms = clip.len() as u64 * 1000 / u64::from(rate);
    let path = home.path().join("speech.wav");
    write_wav(&path, &clip, rate, 1, false);

    let t0 = Instant::now();
    let out = Run::spawn(
        "stream_wav",
        home.path(),
        &["--json", "--url", &url, path.to_str().expect("UTF-8 path")],
    )
    .finish();
    let elapsed_ms = t0.elapsed().as_millis() as u64;
    println!("stream_wav real time: a {duration_ms} ms file took {elapsed_ms} ms");

    out.assert_no_panic();
    assert_eq!(out.code, Some(0), "{out}");
    let events = out.events();
    assert_eq!(events[0]["type"], "session.started", "{out}");
    assert_eq!(
        events[0]["input"],
        serde_json::json!({"sample_rate": 48000, "channels": 1, "encoding": "pcm_s16le"})
    );
    let closed = closed_event(&events);
    assert_eq!(closed["reason"], "client_stop", "{closed}");
    assert_eq!(
        events.last(),
        Some(closed),
        "session.closed is the last event\n{out}"
    );
    let audio_ms = closed["stats"]["audio_ms"].as_u64().expect("audio_ms");
    assert!(
        audio_ms.abs_diff(duration_ms) <= 20,
        "stats audio_ms {audio_ms} for a {duration_ms} ms file"
    );
    assert_eq!(closed["stats"]["chunks_dropped"], 0, "{closed}");
    out.assert_stderr_has("session closed (client_stop): chunks in ");
    // Chunks of 20 ms each sent on time: the last one goes out 20 ms before the end at most.
    assert!(
        elapsed_ms + 20 >= duration_ms,
        "not real time: a {duration_ms} ms file took only {elapsed_ms} ms"
    );
    assert_one_segment_near("stream_wav 48000 Hz", &segments(&events), truth);
}

/// `stream_wav --fast` streams any rate and channel count: a 44.1 kHz stereo 16-bit WAV
/// (human output: the speech segment line with its start and duration, and the summary) and
/// a 22.05 kHz mono 32-bit float WAV (`--json`), both written here from the recording padded
/// with silence. Each reports the recording's speech segment and ends with `client_stop`, in
/// less time than the audio lasts.
#[test]
fn stream_wav_fast_streams_any_rate_and_channel_count() {
    let server = ServerProcess::start(&[]);
    let home = temp_dir("wav-fast");
    let url = format!("ws://127.0.0.1:{}", server.port);
    let (speech, rate) = audio::read_wav(audio::SPEECH);

    for (rate_out, channels, float) in [(44_100, 2, false), (22_050, 1, true)] {
        let label = format!(
            "stream_wav --fast {rate_out} Hz {channels} ch {}",
            if float { "f32" } else { "i16" }
        );
        let speech = audio::resample(&speech, rate, rate_out);
        let truth = truth_in_padded_clip(&speech, rate_out, LEAD_S);
        let clip = audio::padded(&speech, rate_out, LEAD_S, TAIL_S);
        let path = home
            .path()
            .join(format!("speech-{rate_out}-{channels}.wav"));
        write_wav(&path, &clip, rate_out, channels, float);
        let clip_ms = clip.len() as u128 * 1000 / u128::from(rate_out);
        let path = path.to_str().expect("UTF-8 temp path");

        let t0 = Instant::now();
        let json = float;
        let mut args = vec!["--fast", "--url", &url, path];
        if json {
            args.insert(0, "--json");
        }
        let out = Run::spawn("stream_wav", home.path(), &args).finish();
        let elapsed = t0.elapsed().as_millis();
        println!("{label}: {clip_ms} ms of audio took {elapsed} ms");

        out.assert_no_panic();
        assert_eq!(out.code, Some(0), "{label}\n{out}");
        assert!(elapsed < clip_ms, "{label}: --fast took {elapsed} ms");
        let segs = if json {
            let events = out.events();
            assert_eq!(
                events[0]["input"],
                serde_json::json!({
                    "sample_rate": rate_out, "channels": channels, "encoding": "pcm_f32le"
                }),
                "{label}"
            );
            assert_eq!(closed_event(&events)["reason"], "client_stop", "{label}");
            out.assert_stderr_has("session closed (client_stop): chunks in ");
            segments(&events)
        } else {
            assert!(
                out.stdout
                    .iter()
                    .any(|l| l.contains(&format!("input {rate_out} Hz, {channels} ch, pcm_s16le"))),
                "{label}: the session line\n{out}"
            );
            assert!(
                out.stdout
                    .iter()
                    .any(|l| l.starts_with("session closed (client_stop): chunks in ")),
                "{label}: the summary\n{out}"
            );
            human_segments(&out.stdout)
        };
        assert_one_segment_near(&label, &segs, truth);
    }
}

// ---------------------------------------------------------------------------------------------
// 2b. custom_processor: the README's own-processor server, streamed to by stream_wav
// ---------------------------------------------------------------------------------------------

/// The README's two commands: `custom_processor` serves with `clipping` registered next to
/// the built-ins, and `stream_wav --json` streams 1 s of silence, 0.5 s at full scale and
/// 1 s of silence to it. Before `session.closed` comes the processor's one `clipping` event,
/// at the end of the audio, counting the 0.5 s (8,000 pipeline samples, give or take the
/// resampler's edges); the server exits 0 on SIGTERM.
#[test]
fn custom_processor_example_serves_its_own_event_to_a_client() {
    let mut cmd = Command::new(example("custom_processor"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("VOXRT_PROFILE", "test");
    let server = ServerProcess::spawn(cmd);
    let home = temp_dir("custom-processor");
    let rate = 48_000;
    let mut clip = audio::silence(rate, 1.0);
    clip.extend(std::iter::repeat_n(1.0, rate as usize / 2));
    clip.extend(audio::silence(rate, 1.0));
    let path = home.path().join("clipped.wav");
    write_wav(&path, &clip, rate, 1, false);
    let url = format!("ws://127.0.0.1:{}", server.port);

    let out = Run::spawn(
        "stream_wav",
        home.path(),
        &[
            "--fast",
            "--json",
            "--url",
            &url,
            path.to_str().expect("UTF-8 path"),
        ],
    )
    .finish();
    out.assert_no_panic();
    assert_eq!(out.code, Some(0), "{out}");
    let events = out.events();
    let clipping = of_type(&events, "clipping");
    assert_eq!(clipping.len(), 1, "one clipping event at the end\n{out}");
    let samples = clipping[0]["samples"].as_u64().expect("samples");
    assert!(
        samples.abs_diff(8_000) <= 160,
        "{samples} clipped samples for 0.5 s at full scale\n{out}"
    );
    let t_ms = clipping[0]["t_ms"].as_u64().expect("t_ms");
    println!("custom_processor: {samples} clipped samples, reported at {t_ms} ms");
    assert!(t_ms.abs_diff(2_500) <= 20, "clipping at {t_ms} ms\n{out}");
    let closed = closed_event(&events);
    assert_eq!(closed["reason"], "client_stop", "{out}");
    let position = |e: &Value| events.iter().position(|x| x == e).expect("event");
    assert!(
        position(clipping[0]) < position(closed),
        "the flush event comes before session.closed\n{out}"
    );

    server.signal("TERM");
    let (code, _logs) = server.wait();
    assert_eq!(code, Some(0), "custom_processor exit code");
}

// ---------------------------------------------------------------------------------------------
// 3. No input device
// ---------------------------------------------------------------------------------------------

/// With ALSA's `default` on a card that does not exist, `mic_capture` says in one line that
/// there is no usable input device and what to try (`--list-devices`, `--device`), and exits
/// with 2; a `--device` that matches nothing is the same kind of failure. (alsa-lib may print
/// its own `ALSA lib ...` lines to stderr first.)
#[test]
fn mic_capture_without_an_input_device_says_what_to_try_and_exits_with_2() {
    let home = temp_dir("no-device");
    std::fs::write(
        home.path().join(".asoundrc"),
        "pcm.!default { type hw card \"voxrt_test_no_such_card\" }\n",
    )
    .expect("write .asoundrc");
    let url = format!("ws://127.0.0.1:{}", closed_port());
    let out = Run::spawn("mic_capture", home.path(), &["--url", &url]).finish();
    let line = out.assert_one_failure_line("mic_capture", EXIT_INPUT);
    for needle in [
        "no usable input device",
        "`--list-devices`",
        "`--device NAME`",
    ] {
        assert!(line.contains(needle), "{needle:?} in {line:?}");
    }
    assert_eq!(
        out.stderr
            .iter()
            .filter(|l| !l.starts_with("ALSA lib "))
            .count(),
        1,
        "only the one line besides alsa-lib's own\n{out}"
    );
    assert!(out.stdout.is_empty(), "{out}");

    let mic = PipeMic::new();
    let out = Run::spawn(
        "mic_capture",
        mic.home(),
        &["--device", "no-such-input", "--url", &url],
    )
    .finish();
    let line = out.assert_one_failure_line("mic_capture", EXIT_INPUT);
    for needle in [
        "no input device matches \"no-such-input\"",
        "`--list-devices`",
    ] {
        assert!(line.contains(needle), "{needle:?} in {line:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Server unreachable or refusing
// ---------------------------------------------------------------------------------------------

/// Nothing listens on the port: both examples say the server is unreachable (and where) in
/// one line and exit with 3.
#[test]
fn unreachable_server_is_one_line_and_exit_3() {
    let port = closed_port();
    let url = format!("ws://127.0.0.1:{port}");
    let mic = PipeMic::new();
    for (program, args) in [
        ("mic_capture", vec!["--url", url.as_str()]),
        ("stream_wav", vec!["--url", url.as_str(), audio::SPEECH]),
    ] {
        let out = Run::spawn(program, mic.home(), &args).finish();
        let line = out.assert_one_failure_line(program, EXIT_UNREACHABLE);
        for needle in ["server unreachable", &format!("127.0.0.1:{port}")] {
            assert!(line.contains(needle), "{program}: {needle:?} in {line:?}");
        }
        assert!(out.stdout.is_empty(), "{out}");
    }
}

/// A server with auth on: without a token and with a wrong one, both examples say 401 and
/// point at `--token`, exit 4; with the right `--token` both stream and stop cleanly.
#[test]
fn auth_refusal_is_one_line_pointing_at_token_and_the_right_token_works() {
    const KEY: &str = "vx-clients-test-key-5e1d";
    let hash = voxrt::auth::hash_token(KEY);
    let server = ServerProcess::start(&[
        ("VOXRT_AUTH__REQUIRED", "true"),
        ("VOXRT_AUTH__API_KEYS_SHA256", &hash),
    ]);
    let url = format!("ws://127.0.0.1:{}", server.port);
    let mic = PipeMic::new();
    for (token, why) in [
        (None, "a credential is required"),
        (Some("vx-wrong-key"), "not valid"),
    ] {
        for program in ["mic_capture", "stream_wav"] {
            let mut args = vec!["--url", url.as_str()];
            if let Some(token) = token {
                args.extend(["--token", token]);
            }
            if program == "stream_wav" {
                args.push(audio::SPEECH);
            }
            let out = Run::spawn(program, mic.home(), &args).finish();
            let line = out.assert_one_failure_line(program, EXIT_REFUSED);
            for needle in ["HTTP 401", why, "`--token`"] {
                assert!(line.contains(needle), "{program}: {needle:?} in {line:?}");
            }
            assert!(
                !line.contains(KEY) && token.is_none_or(|t| !line.contains(t)),
                "{program} must not echo a token: {line}"
            );
        }
    }

    let out = Run::spawn(
        "stream_wav",
        mic.home(),
        &[
            "--fast",
            "--json",
            "--url",
            &url,
            "--token",
            KEY,
            audio::SPEECH,
        ],
    )
    .finish();
    out.assert_no_panic();
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(closed_event(&out.events())["reason"], "client_stop");

    let mut run = Run::spawn(
        "mic_capture",
        mic.home(),
        &["--json", "--url", &url, "--token", KEY],
    );
    let format = Format::of(&run.stdout_event("session.started"));
    let feeder = mic.feed(&format, Vec::new());
    run.stdout_event("level");
    run.interrupt();
    let out = run.finish();
    feeder.stop();
    out.assert_no_panic();
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(closed_event(&out.events())["reason"], "client_stop");
}

/// A server at `registry.max_sessions` (1, held by another client): both examples say 503
/// and that the server is full in one line, and exit with 4.
#[test]
fn full_server_is_one_line_saying_503_and_exit_4() {
    let server = ServerProcess::start(&[
        ("VOXRT_REGISTRY__MAX_SESSIONS", "1"),
        ("VOXRT_REGISTRY__MAX_SESSIONS_PER_IP", "1"),
    ]);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let holder = rt.block_on(async {
        Client::connect(&server.url("sample_rate=16000&channels=1&encoding=pcm_s16le"))
            .await
            .expect("the first session is admitted")
    });
    let url = format!("ws://127.0.0.1:{}", server.port);
    let mic = PipeMic::new();
    for (program, args) in [
        ("mic_capture", vec!["--url", url.as_str()]),
        ("stream_wav", vec!["--url", url.as_str(), audio::SPEECH]),
    ] {
        let out = Run::spawn(program, mic.home(), &args).finish();
        let line = out.assert_one_failure_line(program, EXIT_REFUSED);
        for needle in ["HTTP 503", "server_full", "retry after"] {
            assert!(line.contains(needle), "{program}: {needle:?} in {line:?}");
        }
    }
    drop(holder);
}

// ---------------------------------------------------------------------------------------------
// 5. Resume after a connection loss (through a proxy that aborts connections)
// ---------------------------------------------------------------------------------------------

/// `stream_wav --json` streams the recording in real time through a proxy that aborts the
/// connection (RST both ways, no close frame) just after the server reports speech_start:
/// mid-word. The example reconnects and resumes the session, says so in a `client.resumed`
/// line, resends the audio the server did not get and exits 0 after `client_stop`. Every seq
/// is printed exactly once, the session got the file's audio exactly once (its `audio_ms` is
/// the file's length), and the speech events equal those of the same file streamed without
/// a cut, at the recording's speech.
#[test]
fn stream_wav_resumes_across_a_cut_mid_word_and_reports_the_same_speech() {
    let server = ServerProcess::start(&[]);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let proxy = rt.block_on(CutProxy::start(server_addr(&server)));
    let home = temp_dir("wav-resume");
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let truth = truth_in_padded_clip(&speech, rate, LEAD_S);
    let clip = audio::padded(&speech, rate, LEAD_S, TAIL_S);
    let duration_ms = clip.len() as u64 * 1000 / u64::from(rate);
    let path = home.path().join("speech.wav");
    write_wav(&path, &clip, rate, 1, false);
    let path = path.to_str().expect("UTF-8 path");

    let via_proxy = format!("ws://{}", proxy.addr);
    let mut run = Run::spawn(
        "stream_wav",
        home.path(),
        &["--json", "--url", &via_proxy, path],
    );
    run.stdout_line("vad speech_start", |v| v["event"] == "speech_start");
    proxy.cut_all();
    let out = run.finish();

    out.assert_no_panic();
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        proxy.accepted(),
        2,
        "one connection, then one resume\n{out}"
    );
    let events = out.events();
    let resumed = client_resumed(&events, &out);
    assert_eq!(resumed["session_id"], events[0]["session_id"], "{out}");
    out.assert_stderr_has("; resuming session ");
    let server_events = assert_each_seq_once(&events, &out);
    let closed = closed_event(&server_events);
    assert_eq!(closed["reason"], "client_stop", "{closed}");
    let audio_ms = closed["stats"]["audio_ms"].as_u64().expect("audio_ms");
    assert!(
        audio_ms.abs_diff(duration_ms) <= 20,
        "the session got {audio_ms} ms of audio for a {duration_ms} ms file: the resend must \
         continue exactly where the server was\n{out}"
    );
    assert_one_segment_near("stream_wav resumed", &segments(&server_events), truth);

    // The same file without a cut: the same speech events, to the millisecond.
    let direct = format!("ws://127.0.0.1:{}", server.port);
    let uncut = Run::spawn(
        "stream_wav",
        home.path(),
        &["--json", "--fast", "--url", &direct, path],
    )
    .finish();
    assert_eq!(uncut.code, Some(0), "{uncut}");
    assert_eq!(
        of_type(&server_events, "vad")
            .into_iter()
            .map(without_seq)
            .collect::<Vec<_>>(),
        of_type(&uncut.events(), "vad")
            .into_iter()
            .map(without_seq)
            .collect::<Vec<_>>(),
        "speech events with a cut (left) and without"
    );
}

/// Without `--json`, the resume is one human line on stderr, `stream_wav: resumed session ID
/// after N ms, replayed K events`, and the speech segment line still shows the recording's
/// segment once.
#[test]
fn stream_wav_says_in_one_line_that_it_resumed() {
    let server = ServerProcess::start(&[]);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let proxy = rt.block_on(CutProxy::start(server_addr(&server)));
    let home = temp_dir("wav-resume-human");
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let truth = truth_in_padded_clip(&speech, rate, LEAD_S);
    let clip = audio::padded(&speech, rate, LEAD_S, TAIL_S);
    let path = home.path().join("speech.wav");
    write_wav(&path, &clip, rate, 1, false);

    let via_proxy = format!("ws://{}", proxy.addr);
    let mut run = Run::spawn(
        "stream_wav",
        home.path(),
        &["--url", &via_proxy, path.to_str().expect("UTF-8 path")],
    );
    run.line("the speech started line", Stream::Stdout, |l| {
        l.contains("speech started")
    });
    proxy.cut_all();
    let out = run.finish();

    out.assert_no_panic();
    assert_eq!(out.code, Some(0), "{out}");
    let line = out
        .stderr
        .iter()
        .find(|l| l.starts_with("stream_wav: resumed session "))
        .unwrap_or_else(|| panic!("no resumed line\n{out}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(
        matches!(
            words.as_slice(),
            ["stream_wav:", "resumed", "session", _, "after", ms, "ms,", "replayed", k, "events"]
                if ms.parse::<u64>().is_ok() && k.parse::<u64>().is_ok()
        ),
        "{line}"
    );
    assert_one_segment_near(
        "stream_wav resumed (human)",
        &human_segments(&out.stdout),
        truth,
    );
}

/// `mic_capture --json` captures the recording through cpal (the named-pipe microphone) and
/// streams it through the proxy, which aborts the connection just after speech_start. The
/// example keeps capturing, resumes, resends what the server did not get, and after Ctrl-C
/// stops cleanly: each seq printed once, no capture buffer dropped, the recording's speech
/// segment once, and the server got as much audio as was fed (no hole, nothing twice).
#[test]
fn mic_capture_resumes_across_a_cut_mid_word_without_losing_audio() {
    let server = ServerProcess::start(&[]);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let proxy = rt.block_on(CutProxy::start(server_addr(&server)));
    let mic = PipeMic::new();
    let via_proxy = format!("ws://{}", proxy.addr);
    let mut run = Run::spawn("mic_capture", mic.home(), &["--json", "--url", &via_proxy]);

    let started = run.stdout_event("session.started");
    let format = Format::of(&started);
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let speech = audio::resample(&speech, rate, format.rate);
    let truth = truth_in_padded_clip(&speech, format.rate, LEAD_S);
    let clip = audio::padded(&speech, format.rate, LEAD_S, TAIL_S);
    let feeder = mic.feed(&format, format.encode(&clip));

    run.stdout_line("vad speech_start", |v| v["event"] == "speech_start");
    proxy.cut_all();
    run.stdout_event("client.resumed");
    run.stdout_line("vad speech_end", |v| v["event"] == "speech_end");
    feeder
        .clip_fed
        .recv_timeout(HANG)
        .expect("the feeder writes the whole clip");
    let fed_before_stop = feeder.fed_ms();
    run.interrupt();
    let out = run.finish();
    let fed_at_exit = feeder.fed_ms();
    feeder.stop();

    out.assert_no_panic();
    assert_eq!(out.code, Some(0), "mic_capture exit code\n{out}");
    assert_eq!(
        proxy.accepted(),
        2,
        "one connection, then one resume\n{out}"
    );
    let events = out.events();
    client_resumed(&events, &out);
    let server_events = assert_each_seq_once(&events, &out);
    let closed = closed_event(&server_events);
    assert_eq!(closed["reason"], "client_stop", "{closed}");
    out.assert_stderr_has("client: 0 capture buffers dropped");
    assert_one_segment_near(
        &format!("mic_capture resumed {} Hz", format.rate),
        &segments(&server_events),
        truth,
    );
    let audio_ms = closed["stats"]["audio_ms"].as_u64().expect("audio_ms") as i64;
    assert!(
        audio_ms >= fed_before_stop - 100 && audio_ms <= fed_at_exit + 20,
        "the server got {audio_ms} ms of audio; {fed_before_stop} ms were fed before Ctrl-C and \
         {fed_at_exit} ms by the time the example exited"
    );
}

/// With `--no-resume`, a connection cut is the end: `stream_wav` says the connection was
/// lost in one line and exits with 1, without reconnecting.
#[test]
fn no_resume_makes_a_cut_connection_exit_1() {
    let server = ServerProcess::start(&[]);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let proxy = rt.block_on(CutProxy::start(server_addr(&server)));
    let via_proxy = format!("ws://{}", proxy.addr);
    let home = temp_dir("no-resume");
    let mut run = Run::spawn(
        "stream_wav",
        home.path(),
        &["--json", "--no-resume", "--url", &via_proxy, audio::SPEECH],
    );
    run.stdout_event("level");
    proxy.cut_all();
    let out = run.finish();
    let line = out.assert_one_failure_line("stream_wav", EXIT_SESSION);
    assert!(line.contains("connection"), "{line}");
    assert_eq!(proxy.accepted(), 1, "no reconnect\n{out}");
    assert!(
        !out.stdout.iter().any(|l| l.contains("client.resumed")),
        "{out}"
    );
}

/// `voxrt-loadgen --drop-every` against a real server: four sessions cut their own
/// connections (RST) about every second and resume; its JSON summary shows cuts, as many
/// resumes with a resume latency, no failed resume or session, and no event seq missing or
/// duplicated.
#[test]
fn loadgen_drop_every_resumes_every_cut_without_losing_an_event() {
    let server = ServerProcess::start(&[]);
    let url = format!("ws://127.0.0.1:{}", server.port);
    let out = Command::new(built_binary("voxrt-loadgen", &["loadgen/src"]))
        .args([
            "--url",
            &url,
            "--sessions",
            "4",
            "--warmup",
            "1",
            "--duration",
            "4",
            "--drop-every",
            "1",
            "--json",
        ])
        .output()
        .expect("voxrt-loadgen runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "voxrt-loadgen\n{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("one JSON line ({e})\n{stderr}"));
    println!("{summary}");
    let n = |k: &str| {
        summary[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {summary}"))
    };
    assert_eq!(n("sessions_completed"), 4, "{summary}");
    assert_eq!(n("sessions_failed"), 0, "{summary}");
    assert!(n("cuts") >= 4, "every session cut at least once: {summary}");
    assert_eq!(n("resumes"), n("cuts"), "{summary}");
    assert_eq!(n("resumes_failed"), 0, "{summary}");
    assert_eq!(n("seq_gaps"), 0, "{summary}");
    assert_eq!(n("seq_duplicates"), 0, "{summary}");
    assert!(summary["resume_p50_ms"].is_f64(), "{summary}");
    assert!(summary["resume_p99_ms"].is_f64(), "{summary}");
}

/// The `client.resumed` line an example prints with `--json`.
fn client_resumed<'a>(events: &'a [Value], out: &Finished) -> &'a Value {
    let resumed = events
        .iter()
        .find(|e| e["type"] == "client.resumed")
        .unwrap_or_else(|| panic!("no client.resumed line\n{out}"));
    assert!(resumed["after_ms"].is_u64(), "{resumed}");
    assert!(resumed["replayed"].is_u64(), "{resumed}");
    resumed
}

/// The server's events (all but the examples' own `client.*` lines), after asserting that
/// each carries a seq and that they are 0, 1, 2, ... in order: every seq exactly once.
fn assert_each_seq_once(events: &[Value], out: &Finished) -> Vec<Value> {
    let server: Vec<Value> = events
        .iter()
        .filter(|e| !e["type"].as_str().unwrap_or("").starts_with("client."))
        .cloned()
        .collect();
    let seqs: Vec<Option<u64>> = server.iter().map(|e| e["seq"].as_u64()).collect();
    let expected: Vec<Option<u64>> = (0..server.len() as u64).map(Some).collect();
    assert_eq!(seqs, expected, "each seq once, in order\n{out}");
    server
}

/// An event without its `seq`, to compare events of different sessions.
fn without_seq(e: &Value) -> Value {
    let mut e = e.clone();
    if let Some(o) = e.as_object_mut() {
        o.remove("seq");
    }
    e
}

/// The server's address, for the proxy in front of it.
fn server_addr(server: &ServerProcess) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], server.port))
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The example binary `name`, built next to this test binary: `current_exe` is
/// `target/<profile>/deps/clients-HASH`, the examples are `target/<profile>/examples/<name>`.
/// Fails when it is missing or older than one of its sources.
fn example(name: &str) -> PathBuf {
    // Its sources: `examples/<name>.rs` or `examples/<name>/`, and the shared `examples/common/`.
    let rs = format!("examples/{name}.rs");
    let dir = format!("examples/{name}");
    built_binary(&format!("examples/{name}"), &[&rs, &dir, "examples/common"])
}

/// The binary at `target/<profile>/<path>` (an example, or another workspace package's
/// binary such as `voxrt-loadgen`), built next to this test binary; fails when it is missing
/// or older than one of the `.rs` files under `sources` (paths from the workspace root).
fn built_binary(path: &str, sources: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps");
    let path = profile_dir.join(path);
    let build = "build it first: `cargo build --workspace --examples --bins --features voxrt/mic` (scripts/test does)";
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("binary {}: {e}; {build}", path.display()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources: Vec<PathBuf> = sources.iter().map(|s| root.join(s)).collect();
    while let Some(source) = sources.pop() {
        let Ok(meta) = std::fs::metadata(&source) else {
            continue; // `<name>.rs` or `<name>/`, whichever it is not
        };
        if meta.is_dir() {
            let entries =
                std::fs::read_dir(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
            sources.extend(entries.map(|e| e.expect("directory entry").path()));
        } else if source.extension().is_some_and(|x| x == "rs") {
            let changed = meta.modified().expect("modification time");
            assert!(
                changed <= built,
                "binary {} is older than {}; {build}",
                path.display(),
                source.display()
            );
        }
    }
    path
}

/// A port on 127.0.0.1 that nothing listens on (the OS picked it, then it was released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stream {
    Stdout,
    Stderr,
}

/// An example running as a child process: a clean environment (PATH, HOME, RUST_BACKTRACE=1)
/// and its stdout and stderr lines read on threads. Killed on drop if still running.
struct Run {
    program: &'static str,
    child: Child,
    lines: mpsc::Receiver<(Stream, String)>,
    /// Lines taken from `lines` so far, in arrival order.
    seen: Vec<(Stream, String)>,
}

impl Run {
    fn spawn(program: &'static str, home: &Path, args: &[&str]) -> Run {
        let mut child = Command::new(example(program))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} starts: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for (pipe, stream) in [(stdout, Stream::Stdout), (stderr, Stream::Stderr)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send((stream, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Run {
            program,
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until a stdout JSON line satisfies `pred`, and returns it; panics after
    /// [`HANG`] or when the example exits first, showing everything it printed.
    fn stdout_line(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + HANG;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((stream, line)) => {
                    let value = (stream == Stream::Stdout)
                        .then(|| serde_json::from_str::<Value>(&line).ok())
                        .flatten();
                    self.seen.push((stream, line));
                    if let Some(v) = value.filter(|v| pred(v)) {
                        return v;
                    }
                }
                Err(e) => panic!(
                    "{}: no {what} ({e}); output so far:\n{}",
                    self.program,
                    show(&self.seen)
                ),
            }
        }
    }

    /// Reads lines until one on `stream` satisfies `pred`, and returns it; panics after
    /// [`HANG`] or when the example exits first, showing everything it printed.
    fn line(&mut self, what: &str, stream: Stream, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + HANG;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((s, line)) => {
                    let hit = s == stream && pred(&line);
                    self.seen.push((s, line.clone()));
                    if hit {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "{}: no {what} ({e}); output so far:\n{}",
                    self.program,
                    show(&self.seen)
                ),
            }
        }
    }

    /// The next stdout event of type `kind`.
    fn stdout_event(&mut self, kind: &str) -> Value {
        self.stdout_line(kind, |v| v["type"] == kind)
    }

    /// Ctrl-C: SIGINT to the example.
    fn interrupt(&self) {
        let status = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -INT {}", self.child.id());
    }

    /// Reads the rest of the output (until both pipes close: the example exited) and the exit
    /// code; panics after [`HANG`].
    fn finish(mut self) -> Finished {
        let deadline = Instant::now() + HANG;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "{} did not exit within {HANG:?}; output so far:\n{}",
                    self.program,
                    show(&self.seen)
                ),
            }
        }
        let status = self.child.wait().expect("wait for the example");
        let pick = |s: Stream| -> Vec<String> {
            self.seen
                .iter()
                .filter(|(stream, _)| *stream == s)
                .map(|(_, l)| l.clone())
                .collect()
        };
        Finished {
            program: self.program,
            code: status.code(),
            stdout: pick(Stream::Stdout),
            stderr: pick(Stream::Stderr),
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn show(lines: &[(Stream, String)]) -> String {
    lines
        .iter()
        .map(|(s, l)| format!("  {s:?}: {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What an example printed, and how it exited.
struct Finished {
    program: &'static str,
    code: Option<i32>,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} exited with {:?}", self.program, self.code)?;
        writeln!(f, "stdout:")?;
        for l in &self.stdout {
            writeln!(f, "  {l}")?;
        }
        writeln!(f, "stderr:")?;
        for l in &self.stderr {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

impl Finished {
    /// stdout as server events (`--json`).
    fn events(&self) -> Vec<Value> {
        self.stdout
            .iter()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}\n{self}"))
            })
            .collect()
    }

    fn assert_no_panic(&self) {
        for line in self.stdout.iter().chain(&self.stderr) {
            let lower = line.to_lowercase();
            for bad in ["panicked", "backtrace", "thread '", ".rs:"] {
                assert!(!lower.contains(bad), "{bad:?} in the output\n{self}");
            }
        }
    }

    fn assert_stderr_has(&self, needle: &str) {
        assert!(
            self.stderr.iter().any(|l| l.contains(needle)),
            "{needle:?} on stderr\n{self}"
        );
    }

    /// Exit `code`, no panic text, and the example's last stderr line is its failure message
    /// (`program: ...`); returns that line.
    fn assert_one_failure_line(&self, program: &str, code: i32) -> String {
        self.assert_no_panic();
        assert_eq!(self.code, Some(code), "{program} exit code\n{self}");
        let last = self.stderr.last().cloned().unwrap_or_default();
        assert!(
            last.starts_with(&format!("{program}: ")),
            "the failure is {program}'s last line\n{self}"
        );
        println!("{last}");
        last
    }
}

/// The input format the server confirmed in `session.started` (what the example streams).
struct Format {
    rate: u32,
    channels: usize,
    /// `pcm_s16le` or `pcm_f32le`.
    encoding: String,
}

impl Format {
    fn of(started: &Value) -> Format {
        let input = &started["input"];
        let format = Format {
            rate: input["sample_rate"].as_u64().expect("sample_rate") as u32,
            channels: input["channels"].as_u64().expect("channels") as usize,
            encoding: input["encoding"].as_str().expect("encoding").to_owned(),
        };
        assert!(
            matches!(format.encoding.as_str(), "pcm_s16le" | "pcm_f32le"),
            "unexpected encoding in {started}"
        );
        format
    }

    /// The stream query for this format.
    fn query(&self) -> String {
        format!(
            "sample_rate={}&channels={}&encoding={}",
            self.rate, self.channels, self.encoding
        )
    }

    fn frame_bytes(&self) -> usize {
        self.channels * if self.encoding == "pcm_s16le" { 2 } else { 4 }
    }

    /// Mono audio in this format, every channel the same.
    fn encode(&self, mono: &[f32]) -> Vec<u8> {
        if self.encoding == "pcm_s16le" {
            audio::s16le(mono, self.channels)
        } else {
            audio::f32le(mono, self.channels)
        }
    }
}

/// A HOME whose `.asoundrc` makes ALSA's default capture device (also named `speechfile`)
/// read a named pipe that [`PipeMic::feed`] writes; see the module docs.
struct PipeMic {
    home: tempfile::TempDir,
    /// The pipe, open for reading and writing.
    pipe: File,
}

impl PipeMic {
    fn new() -> PipeMic {
        let home = temp_dir("mic");
        let fifo = home.path().join("mic.pipe");
        let status = Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(status.success(), "mkfifo {}", fifo.display());
        let asoundrc = format!(
            "defaults.pcm.minperiodtime {PERIOD_US}\n\
             pcm.speechfile {{\n\
             \ttype file\n\
             \tslave.pcm \"null\"\n\
             \tfile \"/dev/null\"\n\
             \tinfile \"{}\"\n\
             \tformat \"raw\"\n\
             }}\n\
             pcm.!default \"speechfile\"\n",
            fifo.display()
        );
        std::fs::write(home.path().join(".asoundrc"), asoundrc).expect("write .asoundrc");
        let pipe = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .expect("open the pipe");
        PipeMic { home, pipe }
    }

    fn home(&self) -> &Path {
        self.home.path()
    }

    /// Starts writing `clip` (raw, in `format`) to the pipe at real time, one capture period
    /// per write, then silence until stopped.
    fn feed(&self, format: &Format, clip: Vec<u8>) -> Feeder {
        let mut pipe = self.pipe.try_clone().expect("clone the pipe handle");
        let rate = format.rate;
        let period_frames = (u64::from(rate) * PERIOD_US).div_ceil(1_000_000);
        let piece = period_frames as usize * format.frame_bytes();
        let fed_frames = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (clip_tx, clip_fed) = mpsc::channel();
        let start = Instant::now();
        let (fed, stopped) = (fed_frames.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut pieces = clip.chunks(piece).map(|c| {
                let mut c = c.to_vec();
                c.resize(piece, 0); // whole periods only
                c
            });
            let silence = vec![0u8; piece];
            let mut clip_tx = Some(clip_tx);
            let mut n: u64 = 0;
            while !stopped.load(Ordering::SeqCst) {
                let next = pieces.next();
                if next.is_none() {
                    if let Some(tx) = clip_tx.take() {
                        let _ = tx.send(());
                    }
                }
                if pipe.write_all(next.as_deref().unwrap_or(&silence)).is_err() {
                    break;
                }
                n += 1;
                fed.store(n * period_frames, Ordering::SeqCst);
                // Pacing at real time (simulating the microphone), not synchronisation.
                let due =
                    start + Duration::from_micros(n * period_frames * 1_000_000 / u64::from(rate));
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        });
        Feeder {
            fed_frames,
            stop,
            clip_fed,
            rate,
            start,
        }
    }
}

/// The thread writing a [`PipeMic`]'s pipe.
struct Feeder {
    fed_frames: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Receives once the whole clip has been written.
    clip_fed: mpsc::Receiver<()>,
    rate: u32,
    start: Instant,
}

impl Feeder {
    /// Audio written to the pipe so far, ms.
    fn fed_ms(&self) -> i64 {
        (self.fed_frames.load(Ordering::SeqCst) * 1000 / u64::from(self.rate)) as i64
    }

    /// Stops feeding (the thread ends after its current write; it is not joined: a write
    /// into a pipe nobody reads any more could block) and returns how far the feed was
    /// behind the clock, ms: more than a few periods means the reader held it up.
    fn stop(self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        self.start.elapsed().as_millis() as i64 - self.fed_ms()
    }
}

/// True speech span of `speech` (at `rate`) in a clip with `lead_s` of silence before it, ms.
fn truth_in_padded_clip(speech: &[f32], rate: u32, lead_s: f64) -> (i64, i64) {
    let (start, end) = audio::speech_bounds(speech, rate, TRUTH_BELOW_PEAK_DB);
    let lead_ms = (lead_s * 1000.0) as i64;
    (start as i64 + lead_ms, end as i64 + lead_ms)
}

/// Exactly one segment, onset and end within the speech tests' tolerances of `truth`.
fn assert_one_segment_near(label: &str, segs: &[(u64, u64)], truth: (i64, i64)) {
    assert_eq!(
        segs.len(),
        1,
        "{label}: expected one speech segment around {truth:?}, got {segs:?}"
    );
    let (start, end) = (segs[0].0 as i64, segs[0].1 as i64);
    let (onset_err, end_err) = (start - truth.0, end - truth.1);
    println!(
        "{label}: truth {truth:?} reported ({start}, {end}) onset error {onset_err:+} ms, \
         end error {end_err:+} ms"
    );
    assert!(
        onset_err.abs() <= ONSET_TOLERANCE_MS && end_err.abs() <= END_TOLERANCE_MS,
        "{label}: reported ({start}, {end}) vs truth {truth:?}: onset error {onset_err:+} ms \
         (limit ±{ONSET_TOLERANCE_MS}), end error {end_err:+} ms (limit ±{END_TOLERANCE_MS})"
    );
}

/// Segments from the human output's `speech segment: start S s, duration D s` lines, ms
/// (printed with 10 ms resolution).
fn human_segments(stdout: &[String]) -> Vec<(u64, u64)> {
    let seconds = |s: &str| -> u64 {
        let v: f64 = s
            .trim()
            .trim_end_matches(" s")
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("seconds in {s:?}: {e}"));
        (v * 1000.0).round() as u64
    };
    stdout
        .iter()
        .filter_map(|l| l.split_once("speech segment: start "))
        .map(|(_, rest)| {
            let (start, duration) = rest
                .split_once(", duration ")
                .unwrap_or_else(|| panic!("segment line {rest:?}"));
            let start = seconds(start);
            (start, start + seconds(duration))
        })
        .collect()
}

/// Writes mono `clip` as a `channels`-channel WAV at `rate`: 32-bit float or 16-bit int.
fn write_wav(path: &Path, clip: &[f32], rate: u32, channels: u16, float: bool) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: if float { 32 } else { 16 },
        sample_format: if float {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    let mut w = hound::WavWriter::create(path, spec).expect("create WAV");
    for &s in clip {
        for _ in 0..channels {
            if float {
                w.write_sample(s).expect("write sample");
            } else {
                let v = (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
                w.write_sample(v).expect("write sample");
            }
        }
    }
    w.finalize().expect("finalize WAV");
}
