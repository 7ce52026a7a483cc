//! The registry's read-only side for operators: counts, pages of live sessions, one
//! session. Each answer is a snapshot of the sessions' shared counters taken by the registry
//! actor; none costs the sessions a message.

use super::{
    GetSession, GetStats, ListSessions, Live, LiveSessions, RegistryStats, SessionPage,
    SessionRegistry, SessionSnapshot, StageDepth,
};
use crate::counters::now_ms;
use actix::prelude::*;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use uuid::Uuid;

impl Live {
    fn snapshot(&self, id: Uuid, peer: Option<IpAddr>, now: u64) -> SessionSnapshot {
        let c = &self.counters;
        let stats = c.stats();
        SessionSnapshot {
            id,
            state: if c.attached.load(Relaxed) {
                "attached"
            } else {
                "detached"
            },
            resumes: c.resumes.load(Relaxed),
            takeovers: c.takeovers.load(Relaxed),
            peer: peer.map(|p| p.to_string()),
            age_ms: c.age_ms(now),
            idle_ms: c.idle_ms(now),
            input: self.input,
            audio_ms: stats.audio_ms,
            chunks_in: stats.chunks_in,
            chunks_processed: stats.chunks_processed,
            chunks_dropped: stats.chunks_dropped,
            mailbox_depth: c
                .stage_depths
                .iter()
                .map(|(stage, d)| StageDepth {
                    stage: stage.clone(),
                    depth: d.load(Relaxed).max(0),
                })
                .collect(),
            events_sent: c.events_sent.load(Relaxed),
            bytes_in: c.bytes_in.load(Relaxed),
            bytes_out: c.bytes_out.load(Relaxed),
            outgoing_bytes: c.outgoing_bytes.load(Relaxed),
            outgoing_dropped: c.outgoing_dropped.load(Relaxed),
            last_error: c.last_error.lock().ok().and_then(|e| *e),
        }
    }
}

impl Handler<LiveSessions> for SessionRegistry {
    type Result = Vec<Uuid>;

    fn handle(&mut self, _msg: LiveSessions, ctx: &mut Self::Context) -> Self::Result {
        self.guard(ctx, "live_sessions", |this, _| {
            this.entries.keys().copied().collect()
        })
        .unwrap_or_default()
    }
}

impl Handler<GetStats> for SessionRegistry {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _msg: GetStats, ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.guard(ctx, "stats", |this, _| this.stats())
                .unwrap_or_default(),
        )
    }
}

impl SessionRegistry {
    fn stats(&self) -> RegistryStats {
        let live = self.entries.values().filter(|e| e.live.is_some()).count();
        let mut stats = self.stats.clone();
        stats.sessions_active = live;
        stats.sessions_detached = self
            .entries
            .values()
            .filter_map(|e| e.live.as_ref())
            .filter(|l| !l.counters.attached.load(Relaxed))
            .count();
        stats.sessions_reserved = self.entries.len() - live;
        stats.max_sessions = self.limits.max_sessions;
        stats.draining = self.draining;
        stats.refusal = self.server_refusal().map(|e| e.code());
        stats.event_loop_lag_ms = u64::try_from(self.lag.lag().as_millis()).unwrap_or(u64::MAX);
        stats.worker_load_pct = self.lag.load_permille() / 10;
        stats
    }
}

impl Handler<ListSessions> for SessionRegistry {
    type Result = MessageResult<ListSessions>;

    /// Snapshots one page: O(offset + limit), whatever the number of sessions.
    fn handle(&mut self, msg: ListSessions, ctx: &mut Self::Context) -> Self::Result {
        let (offset, limit) = (msg.offset, msg.limit);
        MessageResult(
            self.guard(ctx, "list_sessions", |this, _| this.page(msg))
                .unwrap_or(SessionPage {
                    total: 0,
                    offset,
                    limit,
                    sessions: Vec::new(),
                }),
        )
    }
}

impl SessionRegistry {
    fn page(&self, msg: ListSessions) -> SessionPage {
        let now = now_ms();
        let sessions = self
            .order
            .iter()
            .skip(msg.offset)
            .take(msg.limit)
            .filter_map(|(_, id)| {
                let entry = self.entries.get(id)?;
                let peer = msg.show_peer.then_some(entry.peer);
                Some(entry.live.as_ref()?.snapshot(*id, peer, now))
            })
            .collect();
        SessionPage {
            total: self.order.len(),
            offset: msg.offset,
            limit: msg.limit,
            sessions,
        }
    }
}

impl Handler<GetSession> for SessionRegistry {
    type Result = Option<SessionSnapshot>;

    fn handle(&mut self, msg: GetSession, ctx: &mut Self::Context) -> Self::Result {
        self.guard(ctx, "get_session", |this, _| {
            let entry = this.entries.get(&msg.id)?;
            let peer = msg.show_peer.then_some(entry.peer);
            Some(entry.live.as_ref()?.snapshot(msg.id, peer, now_ms()))
        })
        .flatten()
    }
}
