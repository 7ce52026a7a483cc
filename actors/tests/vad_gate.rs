//! The VAD's silence gate changes no result: the same events (kind, `t_ms`, `duration_ms`)
//! with and without it, on speech, speech in noise, speech with pauses of silence and of
//! quiet noise, silence and noise, at several settings; and it does skip the detector's
//! front end on the pauses of digital silence.

#[path = "support/vad_audio.rs"]
mod vad_audio;

use std::sync::Arc;
use vad_audio::{pink_noise, recording, silence, with_noise, RATE, RECORDINGS};
use voxrt_actors::processors::{Processor, VadProcessor};
use voxrt_actors::settings::VadSettings;
use voxrt_actors::{AudioBlock, ServerEvent};

/// Server defaults (config/default.toml).
const DEFAULTS: VadSettings = VadSettings {
    threshold: 0.5,
    silence_ms: 500,
    min_speech_ms: 100,
};

/// What a run reports: each event's kind, `t_ms` and `duration_ms`, and the frame counts.
struct Run {
    events: Vec<String>,
    /// Frames decided.
    frames: u64,
    /// Frames that skipped the detector's front end.
    gated: u64,
}

/// Runs a fresh processor over `audio` in 20 ms blocks and flushes at the end.
fn run(audio: &[f32], settings: VadSettings, gate: bool) -> Run {
    let mut vad = VadProcessor::with_gate(settings, gate);
    let mut events = Vec::new();
    let mut start = 0u64;
    for block in audio.chunks(RATE as usize / 50) {
        let block = AudioBlock {
            samples: Arc::from(block),
            start,
            received: None,
        };
        start += block.samples.len() as u64;
        vad.process(&block, &mut events);
    }
    vad.flush(start, &mut events);
    let events = events
        .iter()
        .map(|e| match e {
            ServerEvent::Vad {
                event,
                t_ms,
                duration_ms,
            } => format!("{event:?} t_ms={t_ms} duration_ms={duration_ms:?}"),
            other => panic!("the VAD reported {other:?}"),
        })
        .collect();
    let counts = vad.gate_counts();
    Run {
        events,
        frames: counts.scored + counts.gated,
        gated: counts.gated,
    }
}

/// The recordings joined by pauses: digital silence and pink noise from -60 to -90 dBFS,
/// 0.3 to 3 s long.
fn with_pauses() -> Vec<(String, Vec<f32>)> {
    let pauses: [(&str, f64, Option<f64>); 6] = [
        ("silence", 1.0, None),
        ("silence", 0.3, None),
        ("silence", 3.0, None),
        ("noise", 1.0, Some(-60.0)),
        ("noise", 1.5, Some(-75.0)),
        ("noise", 2.0, Some(-90.0)),
    ];
    let mut cases = Vec::new();
    for (kind, secs, level) in pauses {
        let name = match level {
            None => format!("speech with {secs} s pauses of digital silence"),
            Some(db) => format!("speech with {secs} s pauses of {kind} at {db} dBFS"),
        };
        let mut audio = Vec::new();
        for (i, rec) in RECORDINGS.iter().enumerate() {
            audio.extend(recording(rec));
            audio.extend(match level {
                None => silence(secs),
                Some(db) => pink_noise(secs, db, 7 + i as u64),
            });
        }
        cases.push((name, audio));
    }
    // Pauses around the gate's line, so it opens and closes often.
    let mut audio = Vec::new();
    for (i, rec) in RECORDINGS.iter().enumerate() {
        audio.extend(recording(rec));
        audio.extend(pink_noise(1.0, -80.0, 40 + i as u64));
    }
    cases.push(("speech with 1 s pauses of noise at -80 dBFS".into(), audio));
    cases
}

/// Every input of the proof: name and 16 kHz audio.
fn cases() -> Vec<(String, Vec<f32>)> {
    let mut cases = Vec::new();
    for (i, rec) in RECORDINGS.iter().enumerate() {
        let speech = recording(rec);
        cases.push((
            format!("{rec} with 20 dB SNR pink noise"),
            with_noise(&speech, 20.0, i as u64 + 1),
        ));
        cases.push((rec.to_string(), speech));
    }
    cases.extend(with_pauses());
    cases.push(("5 s digital silence".into(), silence(5.0)));
    cases.push((
        "5 s pink noise at -30 dBFS".into(),
        pink_noise(5.0, -30.0, 3),
    ));
    cases.push((
        "5 s pink noise at -60 dBFS".into(),
        pink_noise(5.0, -60.0, 5),
    ));
    cases.push((
        "5 s pink noise at -90 dBFS".into(),
        pink_noise(5.0, -90.0, 9),
    ));
    cases
}

/// Asserts identical events on every case with `settings`; returns how many events there were.
fn assert_same_events(settings: VadSettings) -> usize {
    let mut total = 0;
    for (name, audio) in cases() {
        let without = run(&audio, settings, false);
        let with = run(&audio, settings, true);
        assert_eq!(
            with.events, without.events,
            "{name}, {settings:?}: the gate changed the events"
        );
        assert_eq!(without.gated, 0, "{name}: the gate was off");
        total += with.events.len();
    }
    total
}

#[test]
fn the_gate_changes_no_event_at_the_default_settings() {
    let events = assert_same_events(DEFAULTS);
    // The comparison means something only if there was speech to find.
    assert!(events >= 2 * 18, "only {events} events over all cases");
}

#[test]
fn the_gate_changes_no_event_at_other_thresholds_and_short_windows() {
    for settings in [
        VadSettings {
            threshold: 0.1,
            ..DEFAULTS
        },
        VadSettings {
            threshold: 0.3,
            ..DEFAULTS
        },
        VadSettings {
            threshold: 0.7,
            ..DEFAULTS
        },
        VadSettings {
            threshold: 0.5,
            silence_ms: 50,
            min_speech_ms: 0,
        },
    ] {
        assert_same_events(settings);
    }
}

#[test]
fn silence_and_noise_below_16_bits_stay_silent_and_are_gated() {
    for audio in [silence(5.0), pink_noise(5.0, -110.0, 11)] {
        let with = run(&audio, DEFAULTS, true);
        assert!(with.events.is_empty(), "{:?}", with.events);
        // 312 frames; the first SETTLE_FRAMES (6) run in full.
        assert_eq!(with.frames, 312);
        assert_eq!(with.gated, 312 - 6);
    }
}

#[test]
fn quiet_noise_is_not_gated() {
    let run = run(&pink_noise(5.0, -70.0, 13), DEFAULTS, true);
    assert_eq!(run.gated, 0);
}

#[test]
fn the_gate_saves_front_end_runs_on_speech_with_pauses() {
    // The load generator's audio: the recordings, each followed by 1 s of digital silence.
    let (name, audio) = with_pauses().swap_remove(0);
    let with = run(&audio, DEFAULTS, true);
    let without = run(&audio, DEFAULTS, false);
    assert_eq!(with.events, without.events, "{name}");
    let saved = with.gated as f64 / with.frames as f64;
    println!(
        "{name}: {} frames, {} gated ({:.0} %)",
        with.frames,
        with.gated,
        saved * 100.0
    );
    assert!(saved >= 0.25, "{name}: only {:.0} % gated", saved * 100.0);
}
