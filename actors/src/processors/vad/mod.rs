//! `vad`: speech segments from the earshot detector.
//!
//! - `frame`: the 16 ms frame as the detector hears it (16-bit, quiet noise floor).
//! - `detector`: earshot's detector with the silence gate in front, a score per frame.
//! - `gate`: digital silence skips the detector's front end, with identical results.
//! - `network`: earshot's recurrent network behind a handle the gate can step.

mod detector;
mod frame;
mod gate;
mod network;

use super::{Processor, SAMPLES_PER_MS};
use crate::audio::AudioBlock;
use crate::protocol::{ServerEvent, VadEventKind};
use crate::settings::VadSettings;
use detector::GatedDetector;
use frame::detector_frame;

#[doc(hidden)]
pub use gate::GateCounts;

/// earshot's frame: 256 samples (16 ms) at 16 kHz.
pub const VAD_FRAME: usize = 256;
/// earshot's scores are unreliable for about this long after creation; they count as silence.
pub const VAD_WARMUP_MS: u64 = 250;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No speech.
    Silence,
    /// Speech seen since `start`, not yet `min_speech_ms` long.
    Candidate { start: u64, last_speech_end: u64 },
    /// A reported segment that began at `start`.
    Speech { start: u64, last_speech_end: u64 },
}

/// Reports `speech_start` once a burst of speech frames spans `min_speech_ms` (with `t_ms`
/// where the burst began) and `speech_end` once `silence_ms` of silence follows (with `t_ms`
/// where the last speech frame ended), or at flush. All positions are pipeline samples, so
/// times are on the input audio timeline, exact to one 16 ms frame.
///
/// Digital silence (frames below about -90 dBFS) skips most of the detector's work after
/// 96 ms (the silence gate, see `gate.rs`); scores and events are the same as without it.
pub struct VadProcessor {
    detector: GatedDetector,
    settings: VadSettings,
    frame: Vec<f32>,
    /// Pipeline sample index of `frame[0]`.
    frame_start: u64,
    warmup_end: u64,
    /// No segment may start before this pipeline sample: the last flush point. A frame that
    /// spans a flush holds audio from before it, but the segment that was open then has
    /// been closed and reported; `t_ms` must not go back behind the `flushed` event.
    floor: u64,
    state: State,
    /// Noise floor generator state (fixed seed: results are reproducible).
    rng: u64,
}

impl std::fmt::Debug for VadProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VadProcessor")
            .field("settings", &self.settings)
            .field("state", &self.state)
            .field("gate", &self.detector.counts())
            .finish()
    }
}

impl VadProcessor {
    /// A detector with fresh state; its first [`VAD_WARMUP_MS`] are masked.
    pub fn new(settings: VadSettings) -> Self {
        Self::with_gate(settings, true)
    }

    /// As [`new`](Self::new), with the silence gate on or off: for the tests and benchmarks
    /// that compare the two.
    #[doc(hidden)]
    pub fn with_gate(settings: VadSettings, gate: bool) -> Self {
        Self {
            detector: GatedDetector::new(gate),
            settings,
            frame: Vec::with_capacity(VAD_FRAME),
            frame_start: 0,
            warmup_end: VAD_WARMUP_MS * SAMPLES_PER_MS,
            floor: 0,
            state: State::Silence,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// Frames scored in full and gated so far (see [`GateCounts`]).
    #[doc(hidden)]
    pub fn gate_counts(&self) -> GateCounts {
        self.detector.counts()
    }

    fn on_frame(&mut self, is_speech: bool, start: u64, events: &mut Vec<ServerEvent>) {
        let end = start + VAD_FRAME as u64;
        let min_speech = u64::from(self.settings.min_speech_ms) * SAMPLES_PER_MS;
        let silence = u64::from(self.settings.silence_ms) * SAMPLES_PER_MS;
        self.state = match (self.state, is_speech) {
            (State::Silence, false) => State::Silence,
            (State::Silence, true) => Self::promote(start.max(self.floor), end, min_speech, events),
            (State::Candidate { start: s, .. }, true) => Self::promote(s, end, min_speech, events),
            (
                State::Candidate {
                    last_speech_end, ..
                },
                false,
            ) if end - last_speech_end >= silence => State::Silence,
            (State::Speech { start: s, .. }, true) => State::Speech {
                start: s,
                last_speech_end: end,
            },
            (
                State::Speech {
                    start: s,
                    last_speech_end,
                },
                false,
            ) if end - last_speech_end >= silence => {
                events.push(end_event(s, last_speech_end));
                State::Silence
            }
            (state, false) => state,
        };
    }

    /// A burst from `start` to `end`: reported once it is long enough.
    fn promote(start: u64, end: u64, min_speech: u64, events: &mut Vec<ServerEvent>) -> State {
        if end - start >= min_speech {
            events.push(ServerEvent::Vad {
                event: VadEventKind::SpeechStart,
                t_ms: start / SAMPLES_PER_MS,
                duration_ms: None,
            });
            State::Speech {
                start,
                last_speech_end: end,
            }
        } else {
            State::Candidate {
                start,
                last_speech_end: end,
            }
        }
    }
}

fn end_event(start: u64, end: u64) -> ServerEvent {
    ServerEvent::Vad {
        event: VadEventKind::SpeechEnd,
        t_ms: end / SAMPLES_PER_MS,
        duration_ms: Some((end - start) / SAMPLES_PER_MS),
    }
}

impl Processor for VadProcessor {
    fn process(&mut self, block: &AudioBlock, events: &mut Vec<ServerEvent>) {
        let mut rest = &block.samples[..];
        if self.frame.is_empty() {
            self.frame_start = block.start;
        }
        while !rest.is_empty() {
            let take = (VAD_FRAME - self.frame.len()).min(rest.len());
            self.frame.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.frame.len() == VAD_FRAME {
                let frame = detector_frame(&self.frame, &mut self.rng);
                let score = self.detector.score(&frame);
                let start = self.frame_start;
                let is_speech = start >= self.warmup_end && score >= self.settings.threshold;
                self.on_frame(is_speech, start, events);
                self.frame.clear();
                self.frame_start = start + VAD_FRAME as u64;
            }
        }
    }

    fn flush(&mut self, end_sample: u64, events: &mut Vec<ServerEvent>) {
        // A candidate is shorter than `min_speech_ms` by construction: not reported.
        if let State::Speech {
            start,
            last_speech_end,
        } = self.state
        {
            events.push(end_event(start, last_speech_end.min(end_sample)));
        }
        self.state = State::Silence;
        self.floor = self.floor.max(end_sample);
    }
}
