//! Limits per client address, across sessions: how fast it may open sessions and how many
//! failed credentials it may present. GCRA keyed limiters (governor); an IPv6 client is
//! keyed by its /64, the block one subscriber usually holds, so it cannot dodge the limit
//! by rotating addresses.
//!
//! Memory: one small entry per address seen recently; [`AddressLimits::forget_idle`]
//! (called every minute) drops addresses whose buckets have refilled.

use crate::settings::Settings;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::IpAddr;
use std::num::NonZeroU32;
use voxrt_actors::error::AdmissionError;

/// The per-address limiters of one configuration.
pub struct AddressLimits {
    new_sessions: DefaultKeyedRateLimiter<IpAddr>,
    new_per_minute: u32,
    auth_failures: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

/// The key an address is limited under.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
        v4 => v4,
    }
}

impl AddressLimits {
    /// Limiters for `settings`, all buckets full.
    pub fn new(settings: &Settings) -> Self {
        let new_per_minute = settings.security.new_sessions_per_minute_per_ip;
        Self {
            new_sessions: DefaultKeyedRateLimiter::keyed(per_minute(new_per_minute)),
            new_per_minute,
            auth_failures: DefaultKeyedRateLimiter::keyed(per_minute(
                settings.auth.failures_per_minute_per_ip,
            )),
            clock: DefaultClock::default(),
        }
    }

    /// `wait` in whole seconds, rounded up, at least 1 (for `Retry-After`).
    fn retry_after(&self, wait: std::time::Duration) -> u64 {
        (wait.as_secs_f64().ceil() as u64).max(1)
    }

    /// Charges one session attempt to `ip`.
    pub fn new_session(&self, ip: IpAddr) -> Result<(), AdmissionError> {
        self.new_sessions
            .check_key(&key(ip))
            .map_err(|e| AdmissionError::RateLimited {
                per_minute: self.new_per_minute,
                retry_after_s: self.retry_after(e.wait_time_from(self.clock.now())),
            })
    }

    /// Charges one failed credential to `ip`; `Err` once it has used its allowance.
    pub fn auth_failure(&self, ip: IpAddr) -> Result<(), AdmissionError> {
        self.auth_failures
            .check_key(&key(ip))
            .map_err(|e| AdmissionError::AuthRateLimited {
                retry_after_s: self.retry_after(e.wait_time_from(self.clock.now())),
            })
    }

    /// Drops addresses whose buckets are full again.
    pub fn forget_idle(&self) {
        for limiter in [&self.new_sessions, &self.auth_failures] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Addresses currently tracked (both limiters).
    pub fn tracked(&self) -> usize {
        self.new_sessions.len() + self.auth_failures.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_v4_is_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_burst_is_the_per_minute_limit_and_retry_after_is_whole_seconds() {
        let mut settings = Settings::load(Some("test"), &[]).unwrap();
        settings.security.new_sessions_per_minute_per_ip = 3;
        let limits = AddressLimits::new(&settings);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            limits.new_session(ip).unwrap();
        }
        match limits.new_session(ip) {
            Err(AdmissionError::RateLimited {
                per_minute: 3,
                retry_after_s,
            }) => assert!((1..=20).contains(&retry_after_s), "{retry_after_s}"),
            other => panic!("{other:?}"),
        }
        limits.new_session("192.0.2.8".parse().unwrap()).unwrap();
    }
}
