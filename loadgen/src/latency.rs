//! Event latency attribution: which chunk's send instant a VAD event is measured from.
//!
//! The server can only emit an event once it has the audio that decides it. The VAD works
//! on 16 ms frames of 16 kHz pipeline audio (docs/protocol.md):
//! - `speech_start` with `t_ms` is decided by the frame that brings the burst to
//!   `min_speech_ms` (at least one frame): the one ending at
//!   `t_ms + ceil(min_speech_ms / 16) * 16`.
//! - `speech_end` with `t_ms` (where speech stopped) is decided by the frame that completes
//!   `silence_ms` of silence: the one ending at `t_ms + ceil(silence_ms / 16) * 16`.
//!
//! The resampler needs `pipeline.resampler_delay_ms` (announced in `session.started`) of input
//! beyond a pipeline sample before it can emit that sample, so the input the server needs is
//! up to the deciding frame's end plus that delay. The latency of an event is its receive
//! time minus the send time of the chunk holding that last needed input sample. It includes
//! the rest of the resampler's block (it works on 10 ms blocks) and every queue on the way,
//! but none of the audio the VAD or the filter has to hear first. When speech is interrupted by short pauses before
//! `min_speech_ms` is reached, the real deciding frame is later than the one assumed here and
//! the figure overstates the latency (never understates it).

use std::time::Instant;

/// The VAD's frame, milliseconds (256 samples at 16 kHz).
pub const VAD_FRAME_MS: u64 = 16;
/// Pipeline samples per millisecond (16 kHz).
const PIPELINE_SAMPLES_PER_MS: u64 = 16;

/// Which VAD event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    SpeechStart,
    SpeechEnd,
}

/// The numbers needed to map an event's `t_ms` to a chunk index.
#[derive(Debug, Clone, Copy)]
pub struct Attribution {
    /// Input sample frames per second.
    pub rate: u32,
    /// Input sample frames per chunk.
    pub frames_per_chunk: u64,
    /// The session's `vad.min_speech_ms`.
    pub min_speech_ms: u64,
    /// The session's `vad.silence_ms`.
    pub silence_ms: u64,
    /// The resampler's filter delay, ms (`pipeline.resampler_delay_ms`).
    pub resampler_delay_ms: f64,
}

impl Attribution {
    /// Index of the chunk (0 = first chunk of the session) whose arrival let the server
    /// decide `event` at stream time `t_ms`.
    pub fn chunk_index(&self, event: VadEvent, t_ms: u64) -> u64 {
        let wait_ms = match event {
            VadEvent::SpeechStart => self.min_speech_ms.div_ceil(VAD_FRAME_MS).max(1),
            VadEvent::SpeechEnd => self.silence_ms.div_ceil(VAD_FRAME_MS).max(1),
        } * VAD_FRAME_MS;
        // Last pipeline sample of the deciding frame, plus the filter delay, then the input
        // frame at that time.
        let delay_samples =
            (self.resampler_delay_ms * PIPELINE_SAMPLES_PER_MS as f64).ceil() as u64;
        let last_sample = (t_ms + wait_ms) * PIPELINE_SAMPLES_PER_MS - 1 + delay_samples;
        let input_frame = u128::from(last_sample) * u128::from(self.rate) / u128::from(16_000u32);
        (input_frame / u128::from(self.frames_per_chunk.max(1))) as u64
    }
}

/// Send instants of a session's most recent chunks, by chunk index; older ones are
/// forgotten. Sized to a few seconds of audio: an event whose chunk is older than that
/// cannot be attributed (counted as such instead).
#[derive(Debug)]
pub struct SendRing {
    slots: Vec<Option<(u64, Instant)>>,
    /// Chunks sent so far: the next chunk's index.
    sent: u64,
}

impl SendRing {
    /// A ring remembering the last `capacity` chunks (at least 1).
    pub fn new(capacity: usize) -> Self {
        SendRing {
            slots: vec![None; capacity.max(1)],
            sent: 0,
        }
    }

    /// Records that chunk `self.sent()` went out at `at`.
    pub fn push(&mut self, at: Instant) {
        let len = self.slots.len() as u64;
        self.slots[(self.sent % len) as usize] = Some((self.sent, at));
        self.sent += 1;
    }

    /// Goes back to chunk `index` (after a resume, the server wants the audio from there):
    /// the next push records that chunk's new send instant.
    pub fn rewind(&mut self, index: u64) {
        self.sent = self.sent.min(index);
    }

    /// When chunk `index` was sent, if it was and is still remembered.
    pub fn get(&self, index: u64) -> Option<Instant> {
        let len = self.slots.len() as u64;
        match self.slots[(index % len) as usize] {
            Some((i, at)) if i == index => Some(at),
            _ => None,
        }
    }

    /// Chunks sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at48k_20ms() -> Attribution {
        Attribution {
            rate: 48_000,
            frames_per_chunk: 960,
            min_speech_ms: 100,
            silence_ms: 500,
            resampler_delay_ms: 0.0,
        }
    }

    #[test]
    fn speech_end_waits_for_whole_frames_of_silence() {
        let a = at48k_20ms();
        // 500 ms is 31.25 frames: the 32nd frame decides, ending at 1008 + 512 = 1520 ms.
        // Its last sample is at 1519.94 ms, in chunk 75 (1500..1520 ms).
        assert_eq!(a.chunk_index(VadEvent::SpeechEnd, 1008), 75);
        // Ending exactly on a chunk boundary does not spill into the next chunk.
        assert_eq!(a.chunk_index(VadEvent::SpeechEnd, 1488), 99);
    }

    #[test]
    fn speech_start_waits_for_min_speech() {
        let a = at48k_20ms();
        // 100 ms is 6.25 frames: 7 frames = 112 ms after 1072 ms is 1184 ms -> chunk 59.
        assert_eq!(a.chunk_index(VadEvent::SpeechStart, 1072), 59);
        // min_speech_ms 0 still needs the first speech frame.
        let zero = Attribution {
            min_speech_ms: 0,
            ..a
        };
        assert_eq!(zero.chunk_index(VadEvent::SpeechStart, 0), 0);
        assert_eq!(zero.chunk_index(VadEvent::SpeechStart, 16), 1);
    }

    #[test]
    fn odd_rates_and_chunk_sizes() {
        // 44.1 kHz, 20 ms = 882 frames; deciding frame ends at 512 ms -> input frame 22576
        // (512 * 44.1 - a sample) -> chunk 25.
        let a = Attribution {
            rate: 44_100,
            frames_per_chunk: 882,
            min_speech_ms: 100,
            silence_ms: 500,
            resampler_delay_ms: 0.0,
        };
        assert_eq!(a.chunk_index(VadEvent::SpeechEnd, 0), 25);
    }

    #[test]
    fn the_resampler_delay_moves_the_deciding_chunk() {
        // 48 kHz, 20 ms chunks. speech_end at 1008 ms is decided by the frame ending at
        // 1520 ms (512 ms of silence later): input up to 1520 ms is chunk 75 (1500-1520 ms);
        // with a 5 ms filter delay the server needs input up to 1525 ms, in chunk 76.
        let mut a = at48k_20ms();
        a.resampler_delay_ms = 5.0;
        assert_eq!(a.chunk_index(VadEvent::SpeechEnd, 1008), 76);
        a.resampler_delay_ms = 0.0;
        assert_eq!(a.chunk_index(VadEvent::SpeechEnd, 1008), 75);
    }

    #[test]
    fn ring_forgets_old_chunks() {
        let t0 = Instant::now();
        let mut ring = SendRing::new(3);
        for k in 0..5u64 {
            ring.push(t0 + Duration::from_millis(k * 20));
        }
        assert_eq!(ring.sent(), 5);
        assert_eq!(ring.get(1), None);
        assert_eq!(ring.get(2), Some(t0 + Duration::from_millis(40)));
        assert_eq!(ring.get(4), Some(t0 + Duration::from_millis(80)));
        assert_eq!(ring.get(5), None);
        ring.rewind(3);
        ring.push(t0 + Duration::from_millis(500));
        assert_eq!(ring.sent(), 4);
        assert_eq!(ring.get(3), Some(t0 + Duration::from_millis(500)));
    }
}
