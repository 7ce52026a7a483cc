//! earshot's detector with the silence gate in front: one score per 16 ms frame.

use super::gate::{GateCounts, SilenceGate, Verdict};
use super::network::SharedNetwork;
use super::VAD_FRAME;

/// The detector, its network handle and the gate; scores are exactly those of a plain
/// `earshot::Detector` on the same frames (see `gate.rs`).
pub(super) struct GatedDetector {
    detector: Box<earshot::Detector<SharedNetwork>>,
    /// The detector's network, for gated frames.
    network: SharedNetwork,
    gate: SilenceGate,
}

impl GatedDetector {
    /// A detector with fresh state; the gate on or off.
    pub(super) fn new(gate: bool) -> Self {
        let network = SharedNetwork::new();
        Self {
            detector: earshot::Detector::new_boxed(network.clone()),
            network,
            gate: SilenceGate::new(gate),
        }
    }

    /// earshot's speech probability (0..=1) for the next frame of the stream.
    pub(super) fn score(&mut self, frame: &[i16; VAD_FRAME]) -> f32 {
        match self.gate.admit(frame) {
            Verdict::Score => self.detector.predict_i16(frame),
            Verdict::Repeat => self.network.repeat(),
        }
    }

    pub(super) fn counts(&self) -> GateCounts {
        self.gate.counts()
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::detector_frame;
    use super::*;

    /// A 48 kHz alsa-utils recording as 16 kHz (every 3rd sample: real speech is all this
    /// needs, not a clean passband).
    fn speech(name: &str) -> Vec<f32> {
        let path = format!("/usr/share/sounds/alsa/{name}.wav");
        let bytes =
            std::fs::read(&path).expect("alsa-utils recordings (apt-get install alsa-utils)");
        let data = bytes
            .windows(4)
            .position(|w| w == b"data")
            .expect("data chunk")
            + 8;
        bytes[data..]
            .chunks_exact(2)
            .step_by(3)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect()
    }

    /// Every score, gated or not, is the plain detector's to the bit: on speech, digital
    /// silence of several lengths, speech again, sub-LSB noise and a lone click. Fails with
    /// `SETTLE_FRAMES` at 4.
    #[test]
    fn gated_scores_are_the_plain_detectors_bit_for_bit() {
        let mut audio = Vec::new();
        for (name, silence_frames) in [
            ("Front_Center", 7),
            ("Rear_Left", 62),
            ("Side_Right", 3),
            ("Front_Left", 400),
        ] {
            audio.extend(speech(name));
            // Silence from a frame boundary right after a non-zero sample: the case that
            // needs all of SETTLE_FRAMES (the first zero frame's pre-emphasis is not 0).
            audio.resize(audio.len().next_multiple_of(VAD_FRAME), 0.01);
            audio.resize(audio.len() + silence_frames * VAD_FRAME, 0.0);
        }
        // Noise under one 16-bit step, then a click inside a long silence.
        audio.extend((0..20 * VAD_FRAME).map(|i| if i % 2 == 0 { 1e-5 } else { -1e-5 }));
        audio.resize(audio.len() + 30 * VAD_FRAME, 0.0);
        audio.push(0.5);
        audio.resize(audio.len() + 30 * VAD_FRAME, 0.0);

        let mut plain = earshot::Detector::default_boxed();
        let mut gated = GatedDetector::new(true);
        let (mut rng_plain, mut rng_gated) = (1u64, 1u64);
        for (i, frame) in audio.chunks_exact(VAD_FRAME).enumerate() {
            let want = plain.predict_i16(&detector_frame(frame, &mut rng_plain));
            let got = gated.score(&detector_frame(frame, &mut rng_gated));
            assert_eq!(got.to_bits(), want.to_bits(), "frame {i}: {got} != {want}");
        }
        let counts = gated.counts();
        assert!(counts.gated > 400, "{counts:?}");
    }
}
