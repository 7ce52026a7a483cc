//! What the detector hears: one 16 ms frame as 16-bit PCM with a quiet noise floor.

use super::VAD_FRAME;

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
///
/// `rng` advances one step per sample on every frame, gated or not, so the noise a later
/// frame gets does not depend on the gate.
pub(super) fn detector_frame(frame: &[f32], rng: &mut u64) -> [i16; VAD_FRAME] {
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
