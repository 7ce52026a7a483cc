//! Admission and the registry's stats agree: for every server-wide cause, the code `Admit`
//! refuses with is the `refusal` `GetStats` reports (what `/ready` shows), and neither
//! refuses while the other admits.

use super::*;
use crate::error::AdmissionError;
use std::net::Ipv4Addr;

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const MIB: usize = 1 << 20;

fn limits() -> RegistryLimits {
    RegistryLimits {
        max_sessions: 100,
        max_sessions_per_ip: 100,
        memory_budget_mb: 1024,
        session_ttl_s: 3600,
        idle_timeout_s: 3600,
        sweep_interval_ms: 60_000,
        handshake_timeout_s: 300,
        max_lag_ms: 20,
        max_new_sessions_per_s: 0,
        max_worker_load_pct: 0,
    }
}

fn start(limits: RegistryLimits, reserve: usize, lag: &Arc<LagMonitor>) -> Addr<SessionRegistry> {
    SessionRegistry::new(limits, reserve, Arc::new(Metrics::new()))
        .with_lag_monitor(lag.clone())
        .start()
}

/// Asserts the registry would refuse with `code` (or admit, `None`) by both views: stats
/// first (they change nothing), then an actual `Admit`.
async fn agree(registry: &Addr<SessionRegistry>, code: Option<&'static str>) {
    let stats = registry.send(GetStats).await.expect("stats");
    assert_eq!(stats.refusal, code, "{stats:?}");
    let admitted = registry
        .send(Admit {
            peer: PEER,
            takeover: None,
        })
        .await
        .expect("admit");
    assert_eq!(admitted.err().map(|e: AdmissionError| e.code()), code);
}

#[actix::test]
async fn session_count_and_memory_budget() {
    let lag = LagMonitor::new(1);
    let full = start(
        RegistryLimits {
            max_sessions: 2,
            ..limits()
        },
        MIB,
        &lag,
    );
    agree(&full, None).await;
    agree(&full, None).await;
    agree(&full, Some("server_full")).await;

    // 16 MiB holds two reservations of 6 MiB, not a third.
    let budget = start(
        RegistryLimits {
            memory_budget_mb: 16,
            ..limits()
        },
        6 * MIB,
        &lag,
    );
    agree(&budget, None).await;
    agree(&budget, None).await;
    agree(&budget, Some("memory_budget_exceeded")).await;
}

#[actix::test]
async fn lag_over_the_bound_refuses_until_it_falls() {
    let lag = LagMonitor::new(1);
    let registry = start(limits(), MIB, &lag);
    let held = lag.hold_lag(Duration::from_millis(20)); // at the bound, not over it
    agree(&registry, None).await;
    drop(held);
    let held = lag.hold_lag(Duration::from_millis(200));
    agree(&registry, Some("overloaded")).await;
    let stats = registry.send(GetStats).await.expect("stats");
    assert!(stats.event_loop_lag_ms >= 200, "{stats:?}");
    drop(held);
    agree(&registry, None).await;

    // 0 turns the check off.
    let off = start(
        RegistryLimits {
            max_lag_ms: 0,
            max_new_sessions_per_s: 0,
            max_worker_load_pct: 0,
            ..limits()
        },
        MIB,
        &lag,
    );
    let _held = lag.hold_lag(Duration::from_millis(200));
    agree(&off, None).await;
}

#[actix::test]
async fn draining_comes_first() {
    let lag = LagMonitor::new(1);
    let registry = start(
        RegistryLimits {
            max_sessions: 1,
            ..limits()
        },
        MIB,
        &lag,
    );
    let _held = lag.hold_lag(Duration::from_millis(200));
    agree(&registry, Some("overloaded")).await;
    registry.send(Shutdown::default()).await.expect("drained");
    agree(&registry, Some("shutting_down")).await;
}

/// The admission pace: a burst beyond `max_new_sessions_per_s` is refused `overloaded`
/// (counted as such), while `/ready` stays ready: a momentary pace is no reason to take the
/// replica out of rotation, and asking for stats spends no admission.
#[actix::test]
async fn admission_pace_refuses_a_burst_without_turning_ready_off() {
    let lag = LagMonitor::new(1);
    let registry = start(
        RegistryLimits {
            max_new_sessions_per_s: 3,
            ..limits()
        },
        MIB,
        &lag,
    );
    for _ in 0..10 {
        let stats = registry.send(GetStats).await.expect("stats");
        assert_eq!(stats.refusal, None, "{stats:?}");
    }
    let mut admitted = 0;
    let mut overloaded = 0;
    for _ in 0..30 {
        match registry
            .send(Admit {
                peer: PEER,
                takeover: None,
            })
            .await
            .expect("admit")
        {
            Ok(_) => admitted += 1,
            Err(e) => {
                assert_eq!(e.code(), "overloaded");
                overloaded += 1;
            }
        }
    }
    // A burst of 3 goes through at once; tokens come back at 3 a second, so only 30
    // attempts spread over 10 s could all be admitted.
    assert!(admitted >= 3 && overloaded >= 1, "{admitted} {overloaded}");
    let stats = registry.send(GetStats).await.expect("stats");
    assert_eq!(stats.refusal, None, "{stats:?}");
    assert_eq!(stats.refused_total.get("overloaded"), Some(&overloaded));
}

/// A session admitted to be taken over is `Starting` until it runs (another node asking
/// for it is told to wait), a second takeover of it here is refused `session_busy`, and
/// once released it is `Absent`.
#[actix::test]
async fn a_takeover_in_progress_is_starting_and_not_admitted_twice() {
    let lag = LagMonitor::new(1);
    let registry = start(limits(), MIB, &lag);
    let id = Uuid::new_v4();
    let locate = || registry.send(LocateSession { id });
    assert!(matches!(locate().await, Ok(Held::Absent)));
    let takeover = Admit {
        peer: PEER,
        takeover: Some(id),
    };
    assert_eq!(registry.send(takeover).await.expect("admit"), Ok(id));
    assert!(matches!(locate().await, Ok(Held::Starting)));
    let again = registry.send(takeover).await.expect("admit");
    assert_eq!(again.err().map(|e| e.code()), Some("session_busy"));
    registry.do_send(Unregister {
        id,
        reason: EndReason::TakeoverLost,
    });
    assert!(matches!(locate().await, Ok(Held::Absent)));
}
