//! Admission: the one decision on whether a new session may start, which `/ready` reports
//! too ([`SessionRegistry::server_refusal`]), and the per-client limits and the pace on top.

use super::{Admit, Entry, SessionRegistry};
use crate::counters::now_ms;
use crate::error::AdmissionError;
use crate::metrics::ReasonLabel;
use crate::settings::RegistryLimits;
use actix::prelude::*;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;
use uuid::Uuid;

/// The admission pace for `limits` (`None` when off).
pub(super) fn admission_pace(limits: &RegistryLimits) -> Option<DefaultDirectRateLimiter> {
    let per_s = NonZeroU32::new(limits.max_new_sessions_per_s)?;
    Some(RateLimiter::direct(Quota::per_second(per_s)))
}

impl Handler<Admit> for SessionRegistry {
    type Result = Result<Uuid, AdmissionError>;

    /// Reserves a slot if every limit allows it.
    fn handle(&mut self, msg: Admit, ctx: &mut Self::Context) -> Self::Result {
        self.guard(ctx, "admit", |this, _| this.admit(msg))
            .unwrap_or(Err(AdmissionError::Internal))
    }
}

impl SessionRegistry {
    fn refuse(&mut self, error: AdmissionError) -> Result<Uuid, AdmissionError> {
        *self.stats.refused_total.entry(error.code()).or_default() += 1;
        self.metrics
            .sessions_refused
            .get_or_create(&ReasonLabel {
                reason: error.code().to_owned(),
            })
            .inc();
        Err(error)
    }

    /// Why the server would refuse any new session now, whoever asks; `None` if it would
    /// admit one (per-client limits aside). The one decision behind both [`Admit`] and
    /// `/ready` (through [`RegistryStats::refusal`]). In order: draining, `max_sessions`,
    /// the memory budget for one more reservation, then the lag, the only check that is
    /// not a constant-time count (a pass over the worker slots).
    pub(crate) fn server_refusal(&self) -> Option<AdmissionError> {
        if self.draining {
            return Some(AdmissionError::ShuttingDown);
        }
        let total = self.entries.len();
        if total >= self.limits.max_sessions {
            return Some(AdmissionError::ServerFull {
                max: self.limits.max_sessions,
            });
        }
        if total >= self.limits.budget_sessions(self.reserve_bytes) {
            return Some(AdmissionError::MemoryBudgetExceeded);
        }
        let max_lag_ms = self.limits.max_lag_ms;
        if max_lag_ms > 0 && self.lag.lag() > Duration::from_millis(max_lag_ms) {
            return Some(AdmissionError::Overloaded);
        }
        let max_load = u64::from(self.limits.max_worker_load_pct) * 10;
        if max_load > 0 && self.lag.load_permille() >= max_load {
            return Some(AdmissionError::Overloaded);
        }
        None
    }

    fn admit(&mut self, msg: Admit) -> Result<Uuid, AdmissionError> {
        if let Some(refusal) = self.server_refusal() {
            return self.refuse(refusal);
        }
        let from_peer = self.per_ip.get(&msg.peer).copied().unwrap_or(0);
        if from_peer >= self.limits.max_sessions_per_ip {
            return self.refuse(AdmissionError::TooManySessions {
                max: self.limits.max_sessions_per_ip,
            });
        }
        // Last, so only a session that would otherwise be admitted uses up the pace. Not
        // in `server_refusal`: /ready must not spend a token, and a momentary pace is no
        // reason to take a replica out of rotation.
        if self.pace.as_ref().is_some_and(|p| p.check().is_err()) {
            return self.refuse(AdmissionError::Overloaded);
        }
        let id = match msg.takeover {
            Some(id) if self.entries.contains_key(&id) => return Err(AdmissionError::SessionBusy),
            Some(id) => id,
            None => Uuid::new_v4(),
        };
        self.entries.insert(
            id,
            Entry {
                peer: msg.peer,
                admitted_ms: now_ms(),
                live: None,
            },
        );
        *self.per_ip.entry(msg.peer).or_default() += 1;
        self.stats.admitted_total += 1;
        self.metrics.sessions_admitted.inc();
        Ok(id)
    }
}
