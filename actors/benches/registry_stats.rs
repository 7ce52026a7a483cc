//! What `/v1/stats` costs the registry with 10,000 live sessions: one `GetStats` plus one
//! page of 100 `ListSessions`, each a round trip to the registry actor. Sessions are stand-in
//! actors (the registry only holds their expiry recipient and shared counters), so this
//! measures the registry's side alone.
//!
//!   cargo bench -p voxrt-actors --bench registry_stats

use actix::prelude::*;
use criterion::{criterion_group, criterion_main, Criterion};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use voxrt_actors::audio::{Encoding, InputFormat};
use voxrt_actors::counters::SessionCounters;
use voxrt_actors::metrics::Metrics;
use voxrt_actors::registry::{Admit, GetStats, ListSessions, Register, SessionRegistry};
use voxrt_actors::session::{
    Attach, Attached, CheckResume, ConnectionGone, Expire, FromClient, HandOver, ResumeRefusal,
    SessionRoute,
};
use voxrt_actors::settings::RegistryLimits;

struct StandIn;

impl Actor for StandIn {
    type Context = Context<Self>;
}

impl Handler<Expire> for StandIn {
    type Result = ();
    fn handle(&mut self, _msg: Expire, _ctx: &mut Self::Context) {}
}

impl Handler<Attach> for StandIn {
    type Result = Result<Attached, ResumeRefusal>;
    fn handle(&mut self, _msg: Attach, _ctx: &mut Self::Context) -> Self::Result {
        Err(ResumeRefusal::NotFound)
    }
}

impl Handler<CheckResume> for StandIn {
    type Result = Result<(), ResumeRefusal>;
    fn handle(&mut self, _msg: CheckResume, _ctx: &mut Self::Context) -> Self::Result {
        Err(ResumeRefusal::NotFound)
    }
}

impl Handler<FromClient> for StandIn {
    type Result = ();
    fn handle(&mut self, _msg: FromClient, _ctx: &mut Self::Context) {}
}

impl Handler<ConnectionGone> for StandIn {
    type Result = ();
    fn handle(&mut self, _msg: ConnectionGone, _ctx: &mut Self::Context) {}
}

impl Handler<HandOver> for StandIn {
    type Result = ();
    fn handle(&mut self, _msg: HandOver, _ctx: &mut Self::Context) {}
}

const SESSIONS: usize = 10_000;

fn bench(c: &mut Criterion) {
    let system = actix_rt::System::new();
    let registry = system.block_on(async {
        let limits = RegistryLimits {
            max_sessions: SESSIONS,
            max_sessions_per_ip: SESSIONS,
            memory_budget_mb: 1 << 20,
            session_ttl_s: 3600,
            idle_timeout_s: 3600,
            sweep_interval_ms: 1000,
            handshake_timeout_s: 60,
            max_lag_ms: 0,
            max_new_sessions_per_s: 0,
            max_worker_load_pct: 0,
        };
        let registry = SessionRegistry::new(limits, 1 << 20, Arc::new(Metrics::new())).start();
        let input = InputFormat {
            sample_rate: 48_000,
            channels: 1,
            encoding: Encoding::PcmS16le,
        };
        let stand_in = StandIn.start();
        for _ in 0..SESSIONS {
            let id = registry
                .send(Admit {
                    peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    takeover: None,
                })
                .await
                .expect("registry alive")
                .expect("admitted");
            let stages = ["resampler", "level", "vad"].map(String::from);
            registry
                .send(Register {
                    id,
                    expire: stand_in.clone().recipient(),
                    route: SessionRoute {
                        attach: stand_in.clone().recipient(),
                        check_resume: stand_in.clone().recipient(),
                        from_client: stand_in.clone().recipient(),
                        gone: stand_in.clone().recipient(),
                        hand_over: stand_in.clone().recipient(),
                    },
                    counters: Arc::new(SessionCounters::new(stages)),
                    input,
                    ttl_s: None,
                })
                .await
                .expect("registry alive");
        }
        registry
    });
    c.bench_function("stats_10k_sessions_first_page", |b| {
        b.iter(|| {
            system.block_on(async {
                let stats = registry.send(GetStats).await.expect("stats");
                let page = registry
                    .send(ListSessions {
                        offset: 0,
                        limit: 100,
                        show_peer: false,
                    })
                    .await
                    .expect("page");
                assert_eq!(stats.sessions_active, SESSIONS);
                page.sessions.len()
            })
        })
    });
    c.bench_function("stats_10k_sessions_last_page", |b| {
        b.iter(|| {
            system.block_on(async {
                registry
                    .send(ListSessions {
                        offset: SESSIONS - 100,
                        limit: 100,
                        show_peer: false,
                    })
                    .await
                    .expect("page")
                    .sessions
                    .len()
            })
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
