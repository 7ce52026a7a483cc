//! The silence gate: digital silence skips the detector's front end, with identical results.
//!
//! # What the detector remembers
//!
//! `earshot::Detector` keeps state from frame to frame: the last input sample (for
//! pre-emphasis), the last 768 pre-emphasised samples (3 frames), the log-mel features of the
//! last 3 frames, and the 128 units of its two minGRU layers. On quiet input most units
//! hold (their update gate is near 0), so the state remembers the last speech for a long
//! time: after 3,000 frames (48 s) of digital silence the score still depended on the speech
//! before it (0.11 to 0.29 over the alsa-utils recordings) and the state was still moving.
//! A frame that skips the network therefore changes the scores of the frames after it.
//! Nor does a frame's level bound its score: inside a recording a frame below -90 dBFS
//! scored 0.65 (the state's hangover), and the recordings turned down by 50 dB (loudest
//! frame about -62 dBFS) still scored up to 0.69, by 60 dB (about -72 dBFS) up to 0.29.
//! Skipping quiet frames (below -80 dBFS) and feeding the last 16 of them to the network
//! when the run ends moved speech onsets by one 16 ms frame on the alsa-utils recordings
//! separated by 1 s of silence, so the gate does not do that.
//!
//! # What the gate skips, and why that is exact
//!
//! The gate looks at the detector's input, the 16-bit frame after the noise floor
//! ([`detector_frame`](super::frame::detector_frame)): it is all zero exactly when every
//! sample plus its floor is under one 16-bit step, i.e. for digital silence and any frame
//! whose peak is below about -90 dBFS (the floor is 40 dB under the frame's RMS, so it
//! cannot lift a frame over that line). After [`SETTLE_FRAMES`] such frames in a row the
//! front end's state is all-silence: the last sample is 0, the 3 frames of samples are 0,
//! and the 3 frames of features are all the features of silence. Another zero frame leaves
//! that state as it is and hands the network the same features again. So from then on the
//! gate does not run the front end (pre-emphasis, window, 1,024-point FFT, mel bands,
//! logarithms, normalisation: about half of the detector's time) and steps the network with
//! the features it last saw ([`SharedNetwork::repeat`](super::network::SharedNetwork)). The
//! recurrent state and the score are the ones the detector would have produced, bit for bit,
//! whatever the threshold; tests/vad_gate.rs checks the events are identical.
//!
//! Anything that is not digital silence to 16 bits, even noise at -80 dBFS, is not gated:
//! its frames differ, so the network must see them.

use super::VAD_FRAME;

/// Zero frames the detector runs on in full before the gate steps in: the first leaves the
/// last sample at 0, the 4th fills the 3-frame sample window with zeros (the first zero
/// frame's first pre-emphasised sample is `-0.97 x` the previous sample), the 6th fills the
/// 3-frame feature window with the features of silence. (5 would do with earshot 1.2,
/// whose analysis window starts with a 0 that hides that one sample; 6 does not depend on
/// it. At 4 the scores differ: detector.rs's test.)
pub(super) const SETTLE_FRAMES: u32 = 6;

/// How many frames the detector ran on in full and how many the gate stepped without the
/// front end, since the processor was created.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateCounts {
    /// Frames the whole detector ran on.
    pub scored: u64,
    /// Frames of digital silence that only stepped the network.
    pub gated: u64,
}

/// How to score a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Run the whole detector.
    Score,
    /// Step the network with the last features ([`SharedNetwork::repeat`](super::network::SharedNetwork)).
    Repeat,
}

/// The gate's state for one stream.
#[derive(Debug)]
pub(super) struct SilenceGate {
    enabled: bool,
    /// All-zero detector frames in a row, up to and including the current one.
    zero_run: u32,
    counts: GateCounts,
}

impl SilenceGate {
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            zero_run: 0,
            counts: GateCounts::default(),
        }
    }

    pub(super) fn counts(&self) -> GateCounts {
        self.counts
    }

    /// How to score `frame`, the detector's input.
    pub(super) fn admit(&mut self, frame: &[i16; VAD_FRAME]) -> Verdict {
        if self.enabled {
            if frame.iter().all(|&s| s == 0) {
                self.zero_run = self.zero_run.saturating_add(1);
                if self.zero_run > SETTLE_FRAMES {
                    self.counts.gated += 1;
                    return Verdict::Repeat;
                }
            } else {
                self.zero_run = 0;
            }
        }
        self.counts.scored += 1;
        Verdict::Score
    }
}
