//! `--drop-every`: when each session cuts its connection, and how it gets its session back
//! (docs/protocol.md, "Resume"): reconnect with exponential backoff and jitter, within the
//! session's resume window.

use crate::connect::{self, Resumed, Ws};
use crate::metrics::Outcome;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;
use tokio::time::{sleep, Instant};
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The longest delay between two resume attempts. The first attempt goes at once: the load
/// generator measures how fast the server resumes, not how long a client waits.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// The second attempt's delay ceiling; each later one doubles it.
const FIRST_DELAY: Duration = Duration::from_millis(50);

/// What a session needs to be resumed, from its `session.started`.
#[derive(Debug, Clone)]
pub struct ResumeOffer {
    pub session_id: String,
    pub token: String,
    /// `resume.window_s`: how long after a loss the server keeps the session.
    pub window: Duration,
}

/// A random number in [0, 1): std's randomly keyed hasher, fresh keys per call, is random
/// enough for jitter and needs no dependency.
pub fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// The time until a session's next cut: `every` jittered uniformly to between half and one
/// and a half times it, so that sessions do not cut in step.
pub fn next_cut(every: Duration) -> Duration {
    every.mul_f64(0.5 + random_unit())
}

/// Resumes `offer`'s session after the events up to `last_seq`, trying again with backoff
/// (after no connection, a lost upgrade, 429 or 503) until `lost_at` plus the resume window.
/// `Err` says why it did not work.
pub async fn reconnect(
    stream_path: &str,
    auth: Option<&HeaderValue>,
    rate: u32,
    offer: &ResumeOffer,
    last_seq: u64,
    lost_at: Instant,
) -> Result<(Ws, Resumed), String> {
    let deadline = lost_at + offer.window;
    let url = format!(
        "{stream_path}?resume={}&resume_token={}&last_seq={last_seq}",
        encode(&offer.session_id),
        encode(&offer.token)
    );
    let mut attempt: u32 = 0;
    loop {
        let error = match connect::resume(&url, auth, rate).await {
            Ok(resumed) => return Ok(resumed),
            Err(Outcome::Refused { status, code, .. }) if status != 429 && status != 503 => {
                return Err(format!("refused: HTTP {status} {code}"));
            }
            Err(Outcome::Refused { status, code, .. }) => format!("HTTP {status} {code}"),
            Err(Outcome::ConnectError(e)) => e,
            Err(other) => format!("{other:?}"),
        };
        let ceiling = FIRST_DELAY
            .saturating_mul(1u32 << attempt.min(16))
            .min(MAX_DELAY);
        let delay = ceiling / 2 + ceiling.mul_f64(random_unit() / 2.0);
        attempt += 1;
        if Instant::now() + delay >= deadline {
            return Err(format!(
                "not resumed within the {} s window after {attempt} attempts (last: {error})",
                offer.window.as_secs()
            ));
        }
        sleep(delay).await;
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a query value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("a-b_c.d~9"), "a-b_c.d~9");
        assert_eq!(encode("a+b/c="), "a%2Bb%2Fc%3D");
    }

    #[test]
    fn cuts_are_jittered_around_the_interval() {
        let every = Duration::from_secs(2);
        for _ in 0..100 {
            let d = next_cut(every);
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_secs(3),
                "{d:?}"
            );
        }
    }
}
