//! `vad`: speech segments from the earshot detector.

use super::{Processor, SAMPLES_PER_MS};
use crate::audio::AudioBlock;
use crate::protocol::{ServerEvent, VadEventKind};
use crate::settings::VadSettings;

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
pub struct VadProcessor {
    detector: Box<earshot::Detector>,
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
            .finish()
    }
}

impl VadProcessor {
    /// A detector with fresh state; its first [`VAD_WARMUP_MS`] are masked.
    pub fn new(settings: VadSettings) -> Self {
        Self {
            detector: earshot::Detector::default_boxed(),
            settings,
            frame: Vec::with_capacity(VAD_FRAME),
            frame_start: 0,
            warmup_end: VAD_WARMUP_MS * SAMPLES_PER_MS,
            floor: 0,
            state: State::Silence,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
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

/// Level of the noise floor added to each frame before detection, relative to the frame's
/// own RMS (-40 dB).
const NOISE_FLOOR: f32 = 0.01;

/// The frame as the detector should see it: 16-bit PCM (earshot's model works at that scale;
/// rounding and saturating also clamps resampler overshoot past full scale, which its f32
/// entry point rejects) with white noise 40 dB below the frame's RMS.
///
/// Why the noise: audio from a narrowband client (8 kHz input has nothing above 4 kHz) reaches
/// the detector with an exactly empty upper band, and earshot then scored pink noise at
/// -30 dBFS as speech for seconds. A floor that quiet fills the band without changing how
/// speech scores (measured over the alsa-utils recordings at 8-48 kHz). Digital silence stays
/// silent. Only the detector sees it; levels and returned audio are untouched.
fn detector_frame(frame: &[f32], rng: &mut u64) -> [i16; VAD_FRAME] {
    let energy: f32 = frame.iter().map(|s| s * s).sum();
    let floor = (energy / VAD_FRAME as f32).sqrt() * NOISE_FLOOR * 3f32.sqrt();
    let mut out = [0i16; VAD_FRAME];
    for (o, &s) in out.iter_mut().zip(frame) {
        // xorshift64: uniform in -1..1 (RMS 1/sqrt(3), hence the factor above).
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let white = (*rng >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        // `as` saturates at the i16 range; truncation instead of rounding is inaudible to
        // the detector and avoids a libm call per sample (seen in profiles).
        *o = ((s + white * floor) * 32768.0) as i16;
    }
    out
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
                let score = self.detector.predict_i16(&frame);
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
