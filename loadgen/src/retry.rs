//! `--retry` / `--offer`: when a refused session tries again. A refusal's `Retry-After` is
//! honoured (never earlier), bounded so that a wild header cannot park a session for the
//! rest of the step, and jittered so that the sessions one refusal wave turned away do not
//! come back in one burst.

use crate::resume::random_unit;
use std::time::Duration;

/// `Retry-After` is taken between these bounds, seconds.
const MIN_RETRY_AFTER_S: u64 = 1;
const MAX_RETRY_AFTER_S: u64 = 30;
/// The wait after a refusal without `Retry-After`, seconds.
const DEFAULT_RETRY_AFTER_S: u64 = 1;
/// Backoff after a connect error (no TCP, no upgrade, no `session.started` in time): the
/// first ceiling, doubled per attempt up to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// The wait after a 503 or 429 refusal with `Retry-After: retry_after_s`: the bounded
/// value plus up to half of it again.
pub fn after_refusal(retry_after_s: Option<u64>) -> Duration {
    jitter_up(bounded_retry_after(retry_after_s), random_unit())
}

/// The wait after the `attempt`-th (from 0) consecutive connect error: half to all of a
/// ceiling that doubles per attempt from 0.5 s to 8 s.
pub fn after_connect_error(attempt: u32) -> Duration {
    let ceiling = FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    ceiling / 2 + ceiling.mul_f64(random_unit() / 2.0)
}

fn bounded_retry_after(retry_after_s: Option<u64>) -> Duration {
    Duration::from_secs(
        retry_after_s
            .unwrap_or(DEFAULT_RETRY_AFTER_S)
            .clamp(MIN_RETRY_AFTER_S, MAX_RETRY_AFTER_S),
    )
}

/// `base` plus `unit` (in [0, 1)) times half of it.
fn jitter_up(base: Duration, unit: f64) -> Duration {
    base + base.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_bounded_and_never_shortened() {
        let s = Duration::from_secs;
        assert_eq!(bounded_retry_after(None), s(1));
        assert_eq!(bounded_retry_after(Some(0)), s(1));
        assert_eq!(bounded_retry_after(Some(5)), s(5));
        assert_eq!(bounded_retry_after(Some(86_400)), s(30));
        assert_eq!(jitter_up(s(4), 0.0), s(4));
        assert_eq!(jitter_up(s(4), 0.999_999), s(4) + s(2).mul_f64(0.999_999));
        for _ in 0..100 {
            let d = after_refusal(Some(2));
            assert!(d >= s(2) && d <= s(3), "{d:?}");
        }
    }

    #[test]
    fn connect_errors_back_off_to_a_ceiling() {
        for _ in 0..100 {
            let first = after_connect_error(0);
            assert!(first >= Duration::from_millis(250) && first <= FIRST_BACKOFF);
            let late = after_connect_error(40);
            assert!(late >= MAX_BACKOFF / 2 && late <= MAX_BACKOFF, "{late:?}");
        }
    }
}
