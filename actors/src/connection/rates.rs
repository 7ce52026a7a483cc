//! Per-session rate limits: control messages per second and audio as a multiple of real
//! time. Both are GCRA buckets (governor) local to the session's actor, so a check is a
//! few arithmetic operations and no lock is shared with other sessions.

use crate::audio::InputFormat;
use crate::error::RateLimit;
use crate::settings::SessionLimits;
use governor::{DefaultDirectRateLimiter, Quota};
use std::num::NonZeroU32;
use std::time::Duration;

/// The two buckets of one session.
pub struct SessionRates {
    control: DefaultDirectRateLimiter,
    control_per_s: u32,
    /// Cells are milliseconds of input audio.
    audio: DefaultDirectRateLimiter,
    factor: f32,
    burst_s: u32,
    sample_rate: u64,
    /// Sample frames accepted so far, and the whole milliseconds of them already charged:
    /// frames shorter than a millisecond are charged once they add up to one.
    frames: u64,
    charged_ms: u64,
}

fn non_zero(n: u64) -> NonZeroU32 {
    NonZeroU32::new(n.clamp(1, u64::from(u32::MAX)) as u32).unwrap_or(NonZeroU32::MIN)
}

impl SessionRates {
    /// Buckets for a session sending `input`, full at the start.
    pub fn new(limits: &SessionLimits, input: &InputFormat) -> Self {
        let control_per_s = limits.max_control_messages_per_s.max(1);
        let factor = limits.max_realtime_factor.max(1.0);
        // One cell (1 ms of audio) every 1/factor ms of wall time.
        let cell =
            Duration::from_nanos((1e6 / f64::from(factor)) as u64).max(Duration::from_nanos(1));
        let burst_ms = u64::from(limits.realtime_burst_s) * 1000;
        let audio_quota = Quota::with_period(cell)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(non_zero(burst_ms));
        Self {
            control: DefaultDirectRateLimiter::direct(Quota::per_second(non_zero(
                control_per_s.into(),
            ))),
            control_per_s,
            audio: DefaultDirectRateLimiter::direct(audio_quota),
            factor,
            burst_s: limits.realtime_burst_s,
            sample_rate: u64::from(input.sample_rate.max(1)),
            frames: 0,
            charged_ms: 0,
        }
    }

    /// Charges one control message.
    pub fn control(&self) -> Result<(), RateLimit> {
        self.control
            .check()
            .map_err(|_| RateLimit::ControlMessages {
                per_s: self.control_per_s,
            })
    }

    /// Charges `frames` sample frames of audio.
    pub fn audio(&mut self, frames: u64) -> Result<(), RateLimit> {
        self.frames += frames;
        let total_ms = self.frames * 1000 / self.sample_rate;
        let due = total_ms - self.charged_ms;
        self.charged_ms = total_ms;
        if due == 0 {
            return Ok(());
        }
        match self.audio.check_n(non_zero(due)) {
            Ok(Ok(())) => Ok(()),
            // Over the rate, or one frame longer than the whole burst.
            Ok(Err(_)) | Err(_) => Err(RateLimit::Audio {
                factor: self.factor,
                burst_s: self.burst_s,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::Encoding;

    fn limits(factor: f32, burst_s: u32, control: u32) -> SessionLimits {
        SessionLimits {
            max_binary_frame_bytes: 1 << 20,
            max_text_frame_bytes: 8192,
            heartbeat_interval_s: 5,
            heartbeat_timeout_s: 15,
            max_json_depth: 8,
            max_control_messages_per_s: control,
            max_realtime_factor: factor,
            realtime_burst_s: burst_s,
            max_outgoing_bytes: 1 << 18,
            slow_consumer_timeout_s: 10,
            resume_window_s: 30,
            resume_buffer_bytes: 1 << 15,
        }
    }

    const INPUT: InputFormat = InputFormat {
        sample_rate: 48_000,
        channels: 1,
        encoding: Encoding::PcmS16le,
    };

    #[test]
    fn audio_burst_is_allowed_then_sustained_excess_is_refused() {
        let mut rates = SessionRates::new(&limits(2.0, 3, 10), &INPUT);
        // 3 s of audio at once: the burst.
        for _ in 0..150 {
            rates.audio(960).unwrap();
        }
        // Instantly more: over it (the test runs far faster than 2x real time refills).
        let over = (0..10).map(|_| rates.audio(960)).find(Result::is_err);
        assert!(
            matches!(over, Some(Err(RateLimit::Audio { .. }))),
            "{over:?}"
        );
    }

    #[test]
    fn sub_millisecond_frames_are_charged_as_they_add_up() {
        let mut rates = SessionRates::new(&limits(1.0, 1, 10), &INPUT);
        // 1 s of audio in 1-frame chunks fits the 1 s burst exactly...
        for _ in 0..48_000 {
            rates.audio(1).unwrap();
        }
        // ...and then a few more milliseconds do not.
        assert!((0..480).map(|_| rates.audio(1)).any(|r| r.is_err()));
    }

    #[test]
    fn control_messages_burst_to_the_per_second_limit() {
        let rates = SessionRates::new(&limits(4.0, 60, 5), &INPUT);
        for _ in 0..5 {
            rates.control().unwrap();
        }
        assert_eq!(
            rates.control(),
            Err(RateLimit::ControlMessages { per_s: 5 })
        );
    }
}
