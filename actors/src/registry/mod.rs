//! The SessionRegistry actor: admission, limits, TTL and idle sweeps, orderly shutdown.
//!
//! One per server, started under an actix `Supervisor`. Sessions are admitted *before* the
//! WebSocket upgrade ([`Admit`] reserves a slot), confirm with [`Register`] once their actor
//! runs, and leave with [`Unregister`]. A reservation whose upgrade never completes is
//! released after `handshake_timeout_s`. Sweeps read each session's shared counters, so they
//! cost no messages per session unless one must be expired.
//!
//! If the registry restarts, it keeps its table and rebuilds everything derived from it
//! from the sessions that are still alive: no session is forgotten and limits keep holding.
//! A panic in any handler or sweep is caught at that call (it never unwinds through the
//! actor system, which would lose the table) and turned into such a restart; the caller
//! gets a refusal (`Admit`: 500 `internal_error`) or an empty answer (queries). Sweeps also
//! drop entries whose session actor is gone without unregistering, so a lost `Unregister`
//! cannot leak a slot.
//!
//! Whether a new session could be admitted right now is decided in one place,
//! [`SessionRegistry::server_refusal`] (draining, session count, memory budget, the
//! server's own lag from [`lag::LagMonitor`]): [`Admit`] asks it before the per-client
//! limits, and [`GetStats`] carries its answer, which `/ready` reports. So readiness and
//! admission cannot disagree.

mod admission;
use admission::admission_pace;
pub mod lag;
mod messages;
mod queries;
#[cfg(test)]
mod tests;

pub use lag::LagMonitor;
pub use messages::*;

use crate::audio::InputFormat;
use crate::cluster::records::HandoverReply;
use crate::counters::{now_ms, SessionCounters};
use crate::metrics::{Metrics, ReasonLabel, StageStats};
use crate::protocol::CloseReason;
use crate::settings::RegistryLimits;
use actix::prelude::*;
use governor::DefaultDirectRateLimiter;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{error, info, warn};
use uuid::Uuid;

struct Entry {
    peer: IpAddr,
    admitted_ms: u64,
    live: Option<Live>,
}

struct Live {
    session: Recipient<Expire>,
    route: SessionRoute,
    counters: Arc<SessionCounters>,
    input: InputFormat,
    /// The session's own TTL, if shorter than the configured one.
    ttl_ms: Option<u64>,
    expiring: bool,
}

/// Admits, tracks and expires sessions; see the module docs.
pub struct SessionRegistry {
    limits: RegistryLimits,
    reserve_bytes: usize,
    entries: HashMap<Uuid, Entry>,
    /// Live sessions by (start time, id): stable, oldest-first pages without sorting.
    order: BTreeSet<(u64, Uuid)>,
    per_ip: HashMap<IpAddr, usize>,
    draining: bool,
    drain_waiters: Vec<oneshot::Sender<()>>,
    stats: RegistryStats,
    metrics: Arc<Metrics>,
    stage: Arc<StageStats>,
    sweep_handle: Option<SpawnHandle>,
    lag: Arc<LagMonitor>,
    /// `max_new_sessions_per_s`, if on.
    pace: Option<DefaultDirectRateLimiter>,
}

impl SessionRegistry {
    /// A registry enforcing `limits`, reserving `reserve_bytes` of the memory budget per
    /// session (the session's worst case; see `SessionConfig::worst_case_bytes`).
    pub fn new(limits: RegistryLimits, reserve_bytes: usize, metrics: Arc<Metrics>) -> Self {
        let pace = admission_pace(&limits);
        Self {
            limits,
            reserve_bytes,
            stage: metrics.stage("registry", 0),
            metrics,
            order: BTreeSet::new(),
            sweep_handle: None,
            entries: HashMap::new(),
            per_ip: HashMap::new(),
            draining: false,
            drain_waiters: Vec::new(),
            stats: RegistryStats {
                reserve_bytes_per_session: reserve_bytes,
                ..RegistryStats::default()
            },
            lag: LagMonitor::disabled(),
            pace,
        }
    }

    /// Admission also refuses while `lag` reports more than `max_lag_ms` (503
    /// `overloaded`). Without it, the registry sees no lag.
    pub fn with_lag_monitor(mut self, lag: Arc<LagMonitor>) -> Self {
        self.lag = lag;
        self
    }

    /// Starts the registry under a supervisor on the current arbiter.
    pub fn start_supervised(self) -> Addr<Self> {
        Supervisor::start(|_| self)
    }

    /// Runs `body`; if it panics, logs which call did, and stops the actor so the supervisor
    /// restarts it (see [`Supervised::restarting`]), returning `None`. The table survives:
    /// it is changed by single `HashMap` operations, each complete or not done; what the
    /// panic may have left half-updated is derived, and the restart recomputes it.
    fn guard<R>(
        &mut self,
        ctx: &mut Context<Self>,
        call: &'static str,
        body: impl FnOnce(&mut Self, &mut Context<Self>) -> R,
    ) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(|| body(self, ctx))) {
            Ok(r) => Some(r),
            Err(_) => {
                error!(call, "session registry panicked; restarting it");
                ctx.stop();
                None
            }
        }
    }

    fn remove(&mut self, id: &Uuid, reason: EndReason) {
        let reason = reason.as_str();
        if let Some(entry) = self.entries.remove(id) {
            if let Some(live) = &entry.live {
                self.order.remove(&(live.counters.started_ms, *id));
                self.metrics.sessions_active.dec();
                self.metrics
                    .sessions_closed
                    .get_or_create(&ReasonLabel {
                        reason: reason.to_owned(),
                    })
                    .inc();
            }
            if let Some(n) = self.per_ip.get_mut(&entry.peer) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&entry.peer);
                }
            }
            if entry.live.is_some() {
                self.stats.closed_total += 1;
                *self.stats.closed_by_reason.entry(reason).or_default() += 1;
            }
        }
        if self.draining && self.entries.is_empty() {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// Derived state from the table: per-IP counts. Entries whose session is gone are dropped.
    fn rebuild(&mut self) {
        self.entries
            .retain(|_, e| e.live.as_ref().is_none_or(|l| l.session.connected()));
        self.per_ip.clear();
        self.order.clear();
        for (id, entry) in &self.entries {
            *self.per_ip.entry(entry.peer).or_default() += 1;
            if let Some(live) = &entry.live {
                self.order.insert((live.counters.started_ms, *id));
            }
        }
        self.metrics.sessions_active.set(self.order.len() as i64);
    }

    fn arm_sweep(&mut self, ctx: &mut Context<Self>) {
        let every = Duration::from_millis(self.limits.sweep_interval_ms);
        self.sweep_handle = Some(ctx.run_interval(every, |act, ctx| {
            act.guard(ctx, "sweep", |act, _| act.sweep());
        }));
    }

    /// Expires sessions past their TTL or idle timeout; releases stale reservations.
    fn sweep(&mut self) {
        let now = now_ms();
        let ttl_ms = self.limits.session_ttl_s * 1000;
        let idle_ms = self.limits.idle_timeout_s * 1000;
        let handshake_ms = self.limits.handshake_timeout_s * 1000;
        let mut stale = Vec::new();
        let mut gone = Vec::new();
        for (id, entry) in &mut self.entries {
            let Some(live) = entry.live.as_mut() else {
                if now.saturating_sub(entry.admitted_ms) > handshake_ms {
                    stale.push(*id);
                }
                continue;
            };
            if !live.session.connected() {
                gone.push(*id);
                continue;
            }
            if live.expiring {
                continue;
            }
            let ttl_ms = live.ttl_ms.map_or(ttl_ms, |own| own.min(ttl_ms));
            // A detached session's clock is its resume window, kept by the session itself.
            let attached = live
                .counters
                .attached
                .load(std::sync::atomic::Ordering::Relaxed);
            let reason = if live.counters.age_ms(now) >= ttl_ms {
                CloseReason::TtlExpired
            } else if attached && live.counters.idle_ms(now) >= idle_ms {
                CloseReason::IdleTimeout
            } else {
                continue;
            };
            live.expiring = true;
            info!(session = %id, ?reason, "expiring session");
            live.session.do_send(Expire { reason });
        }
        for id in stale {
            warn!(session = %id, "admitted client never completed the upgrade; slot released");
            self.remove(&id, EndReason::HandshakeTimeout);
        }
        for id in gone {
            warn!(session = %id, "session stopped without unregistering; slot released");
            self.remove(&id, EndReason::ConnectionLost);
        }
    }
}

impl Actor for SessionRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.stage.started();
        self.arm_sweep(ctx);
    }
}

impl Supervised for SessionRegistry {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.stats.restarts += 1;
        self.stage.restarted();
        // `started` runs again after this and counts the actor alive again.
        self.stage.stopped(0);
        self.rebuild();
        warn!(
            sessions = self.entries.len(),
            "session registry restarted; view rebuilt from live sessions"
        );
    }
}

impl Handler<Register> for SessionRegistry {
    type Result = ();

    /// Marks an admitted session as running. If that fails, the session is ended: it would
    /// run outside the limits.
    fn handle(&mut self, msg: Register, ctx: &mut Self::Context) {
        let session = msg.expire.clone();
        if self
            .guard(ctx, "register", |this, _| this.register(msg))
            .is_none()
        {
            session.do_send(Expire {
                reason: CloseReason::Error,
            });
        }
    }
}

impl SessionRegistry {
    fn register(&mut self, msg: Register) {
        let Some(entry) = self.entries.get_mut(&msg.id) else {
            // Its reservation timed out before the actor started: it is over the limits
            // it was admitted under, so it ends at once.
            warn!(session = %msg.id, "session registered after its reservation expired");
            msg.expire.do_send(Expire {
                reason: CloseReason::ServerShutdown,
            });
            return;
        };
        let expiring = self.draining;
        if expiring {
            msg.expire.do_send(Expire {
                reason: CloseReason::ServerShutdown,
            });
        }
        if entry.live.is_none() {
            self.metrics.sessions_active.inc();
        }
        self.order.insert((msg.counters.started_ms, msg.id));
        entry.live = Some(Live {
            session: msg.expire,
            route: msg.route,
            counters: msg.counters,
            input: msg.input,
            ttl_ms: msg.ttl_s.map(|s| s.saturating_mul(1000)),
            expiring,
        });
    }
}

impl Handler<Unregister> for SessionRegistry {
    type Result = ();

    /// Forgets a stopped session.
    fn handle(&mut self, msg: Unregister, ctx: &mut Self::Context) {
        self.guard(ctx, "unregister", |this, _| {
            this.remove(&msg.id, msg.reason)
        });
    }
}

impl SessionRegistry {
    /// Where session `id` stands here: what both a resume and another node's handover
    /// request ask.
    fn held(&self, id: &Uuid) -> Held {
        match self.entries.get(id).map(|e| &e.live) {
            Some(Some(live)) if !live.expiring => Held::Running(live.route.clone()),
            Some(Some(_)) | None => Held::Absent,
            Some(None) => Held::Starting,
        }
    }
}

impl Handler<FindSession> for SessionRegistry {
    type Result = Option<SessionRoute>;

    /// The route of a live session, for a resume; `None` (404) for anything else.
    fn handle(&mut self, msg: FindSession, ctx: &mut Self::Context) -> Self::Result {
        self.guard(ctx, "find_session", |this, _| match this.held(&msg.id) {
            Held::Running(route) => Some(route),
            Held::Starting | Held::Absent => {
                this.stats.resumes_not_found += 1;
                None
            }
        })
        .flatten()
    }
}

impl Handler<LocateSession> for SessionRegistry {
    type Result = MessageResult<LocateSession>;

    fn handle(&mut self, msg: LocateSession, ctx: &mut Self::Context) -> Self::Result {
        let held = self.guard(ctx, "locate_session", |this, _| this.held(&msg.id));
        MessageResult(held.unwrap_or(Held::Absent))
    }
}

impl Handler<Shutdown> for SessionRegistry {
    type Result = ResponseFuture<()>;

    /// Drains: refuses new sessions and closes every live one with `server_shutdown`.
    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        let drained = self.guard(ctx, "shutdown", |this, _| this.drain(msg.hand_over));
        Box::pin(async move {
            if let Some(rx) = drained {
                let _ = rx.await;
            }
        })
    }
}

impl SessionRegistry {
    /// Refuses new sessions from now on and asks every live one to close; the receiver
    /// fires once the table is empty.
    fn drain(&mut self, hand_over: bool) -> oneshot::Receiver<()> {
        self.draining = true;
        let reserved: Vec<Uuid> = self
            .entries
            .iter()
            .filter(|(_, e)| e.live.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in reserved {
            self.remove(&id, EndReason::Closed(CloseReason::ServerShutdown));
        }
        for live in self.entries.values_mut().filter_map(|e| e.live.as_mut()) {
            if live.expiring {
                continue;
            }
            live.expiring = true;
            let expire = live.session.clone();
            let close = move || {
                expire.do_send(Expire {
                    reason: CloseReason::ServerShutdown,
                })
            };
            if !hand_over {
                close();
                continue;
            }
            let (reply, answer) = oneshot::channel();
            live.route.hand_over.do_send(HandOver {
                code: crate::error::close_code::SERVICE_RESTART,
                reply,
            });
            actix::spawn(async move {
                if answer.await != Ok(HandoverReply::HandedOver) {
                    close();
                }
            });
        }
        let (tx, rx) = oneshot::channel();
        if self.entries.is_empty() {
            let _ = tx.send(());
        } else {
            self.drain_waiters.push(tx);
        }
        rx
    }
}

impl Handler<UpdateLimits> for SessionRegistry {
    type Result = ();

    /// Applies to admissions and sweeps from now on; live sessions are not touched.
    fn handle(&mut self, msg: UpdateLimits, ctx: &mut Self::Context) {
        let sweep_changed = msg.limits.sweep_interval_ms != self.limits.sweep_interval_ms;
        if msg.limits.max_new_sessions_per_s != self.limits.max_new_sessions_per_s {
            self.pace = admission_pace(&msg.limits);
        }
        self.limits = msg.limits;
        self.reserve_bytes = msg.reserve_bytes;
        self.stats.reserve_bytes_per_session = msg.reserve_bytes;
        if sweep_changed {
            if let Some(handle) = self.sweep_handle.take() {
                ctx.cancel_future(handle);
            }
            self.arm_sweep(ctx);
        }
    }
}

impl Handler<Restart> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, _msg: Restart, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Panics inside the registry, as a bug in a handler would (fault injection for the tests
/// of its supervision; not built into release binaries).
#[cfg(feature = "fault-injection")]
impl Handler<InjectPanic> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, _msg: InjectPanic, ctx: &mut Self::Context) {
        self.guard(ctx, "inject_panic", |this, _| {
            // Half an update, as a real bug might leave: the per-address count drifts.
            if let Some(n) = this.per_ip.values_mut().next() {
                *n += 100;
            }
            panic!("injected registry fault")
        });
    }
}
