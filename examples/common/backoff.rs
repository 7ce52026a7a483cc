//! Delays between reconnect attempts: exponential, capped, with jitter so that many clients
//! cut off by the same network event do not all come back in the same instant.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The first delay's upper bound; each later one doubles it, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The largest delay between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(4);

/// The delays of one reconnect: attempt `n` (from 0) waits a random time between half and
/// all of `min(FIRST_DELAY * 2^n, MAX_DELAY)`.
pub(super) struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Backoff { attempt: 0 }
    }

    /// The delay before the next attempt.
    pub(super) fn next_delay(&mut self) -> Duration {
        let ceiling = FIRST_DELAY
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(MAX_DELAY);
        self.attempt += 1;
        ceiling / 2 + ceiling.mul_f64(random_unit() / 2.0)
    }
}

/// A random number in [0, 1): std's randomly keyed hasher, fresh keys per call, is random
/// enough for jitter and needs no dependency.
fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}
