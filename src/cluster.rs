//! The server's side of `[nats]`: starting the link, this node's heartbeat, answering other
//! nodes' handover requests, `/v1/cluster`, and taking over a session another node ran
//! when its client resumes here.

use crate::auth::admin::denial;
use crate::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tracing::{info, warn};
use uuid::Uuid;
use voxrt_actors::cluster::log::TakeoverPoint;
use voxrt_actors::cluster::records::{Claim, HandoverReply, NodeRecord, StoredSession};
use voxrt_actors::cluster::{unix_ms, Cluster, ClusterError};
use voxrt_actors::error::{close_code, AdmissionError};
use voxrt_actors::metrics::NatsMetrics;
use voxrt_actors::registry::{Admit, GetStats, Held, LocateSession, Unregister};
use voxrt_actors::session::{EndReason, HandOver, ResumeRequest, SessionRoute, Takeover};
use voxrt_actors::settings::NatsSettings;

/// This node's name: `nats.node`, else the host name (its characters outside
/// `[A-Za-z0-9_-]` made `-`).
pub fn node_name(settings: &NatsSettings) -> String {
    if !settings.node.is_empty() {
        return settings.node.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = host
        .trim()
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                true => c,
                false => '-',
            },
        )
        .collect();
    match name.is_empty() {
        true => format!("voxrt-{}", &Uuid::new_v4().simple().to_string()[..8]),
        false => name,
    }
}

/// Starts the link when `[nats]` is on.
pub fn start(
    settings: &NatsSettings,
    metrics: NatsMetrics,
) -> Result<Option<Cluster>, ClusterError> {
    if !settings.enabled() {
        return Ok(None);
    }
    let node = node_name(settings);
    let cluster = Cluster::start(settings, &node, metrics)?;
    info!(%node, url = %settings.url, "NATS on: logging events, heartbeating, resume on any node");
    Ok(Some(cluster))
}

/// Heartbeats and answers handover requests for as long as the server runs.
pub fn serve(state: web::Data<AppState>, cluster: Cluster, addr: SocketAddr) {
    let address = match cluster.settings().advertise.as_str() {
        "" => addr.to_string(),
        a => a.to_owned(),
    };
    let beat = state.clone();
    let beating = cluster.clone();
    actix::spawn(async move {
        let started_ms = unix_ms();
        let every = Duration::from_secs(beating.settings().heartbeat_interval_s);
        let mut failing = false;
        loop {
            if let Ok(stats) = beat.registry.send(GetStats).await {
                let status = beating.status();
                let record = NodeRecord {
                    node: beating.node().to_owned(),
                    address: address.clone(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    started_ms,
                    heartbeat_ms: unix_ms(),
                    sessions: stats.sessions_active + stats.sessions_reserved,
                    detached: stats.sessions_detached,
                    max_sessions: stats.max_sessions,
                    refusal: stats.refusal.map(str::to_owned),
                    lag_ms: beat.lag.lag().as_millis() as u64,
                    pending: status.pending,
                    unpublished: status.unpublished,
                };
                match beating.heartbeat(record).await {
                    Ok(()) if failing => {
                        info!("NATS heartbeat recovered");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        warn!(error = %e, "NATS heartbeat failed; this node drops out of the cluster view until it recovers");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(every).await;
        }
    });
    let Some(mut asks) = cluster.take_handover_requests() else {
        return;
    };
    actix::spawn(async move {
        while let Some(ask) = asks.recv().await {
            let held = state
                .registry
                .send(LocateSession { id: ask.session_id })
                .await;
            let route = match held {
                Ok(Held::Running(route)) => route,
                // This node is taking the session over itself: not the asker's to take.
                Ok(Held::Starting) => {
                    let _ = ask.reply.send(HandoverReply::Busy);
                    continue;
                }
                Ok(Held::Absent) | Err(_) => {
                    let _ = ask.reply.send(HandoverReply::NotHere);
                    continue;
                }
            };
            info!(session = %ask.session_id, to = %ask.to_node, "handing a session over on request");
            route.hand_over.do_send(HandOver {
                code: close_code::TAKEN_OVER,
                reply: ask.reply,
            });
        }
    });
}

/// `GET /v1/cluster` (admin): the live nodes and totals. 404 while `[nats]` is off.
pub async fn cluster_view(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let current = state.current();
    if let Some(denied) = denial(&req, &current.settings.admin.token_sha256) {
        return denied;
    }
    let Some(cluster) = &state.cluster else {
        return HttpResponse::NotFound().json(json!({"error": {
            "code": "cluster_off",
            "message": "this node runs without NATS ([nats] url is empty)",
            "correlation_id": Uuid::new_v4(),
        }}));
    };
    match cluster.nodes().await {
        Ok(nodes) => {
            let sessions: usize = nodes.iter().map(|n| n.sessions).sum();
            let capacity: usize = nodes.iter().map(|n| n.max_sessions).sum();
            HttpResponse::Ok().json(json!({
                "node": cluster.node(),
                "nodes": nodes,
                "totals": {
                    "nodes": nodes.len(),
                    "sessions": sessions,
                    "detached": nodes.iter().map(|n| n.detached).sum::<usize>(),
                    "max_sessions": capacity,
                    "accepting": nodes.iter().filter(|n| n.refusal.is_none()).count(),
                },
            }))
        }
        Err(e) => {
            let correlation_id = Uuid::new_v4();
            warn!(%correlation_id, error = %e, "cluster view unavailable");
            HttpResponse::ServiceUnavailable().json(json!({"error": {
                "code": "cluster_unavailable",
                "message": "NATS did not answer; the cluster view is unavailable",
                "correlation_id": correlation_id,
            }}))
        }
    }
}

/// A resume for a session this node does not hold: take it over from another node (it
/// hands it over if alive, else the stream is all there is). Returns the new session's
/// route; the caller checks `request` against it as for any resume.
pub async fn take_over(
    state: &AppState,
    cluster: &Cluster,
    peer: IpAddr,
    id: Uuid,
    request: &ResumeRequest,
) -> Result<SessionRoute, AdmissionError> {
    let internal = internal_error(id);
    let stored = cluster
        .session_record(id)
        .await
        .map_err(internal)?
        .ok_or(AdmissionError::SessionNotFound)?;
    let presented: [u8; 32] = Sha256::digest(request.token.as_bytes()).into();
    let hash = hex::decode(&stored.record.token_sha256).unwrap_or_default();
    if hash.len() != 32 || !bool::from(presented[..].ct_eq(&hash[..])) {
        return Err(AdmissionError::ResumeTokenInvalid);
    }
    let token_hash: [u8; 32] = hash.try_into().map_err(|_| AdmissionError::Internal)?;
    // A live holder hands the session over first.
    let holder = stored.record.node.clone();
    let live = holder != cluster.node() && cluster.is_live(&holder).await.map_err(internal)?;
    let stored = match live {
        true => ask_holder(cluster, id, &holder).await?,
        false => stored,
    };
    let current = state.current();
    let limits = &current.settings.session;
    let log = cluster
        .session_log(
            id,
            limits.replay_buffer_bytes(),
            request.last_seq,
            stored.record.open_segment_ms,
        )
        .await
        .map_err(internal)?;
    if log.closed || log.last_seq.is_none() {
        return Err(AdmissionError::SessionNotFound);
    }
    let params = stored.record.params.clone();
    let rate = u64::from(params.input.sample_rate);
    if !(8_000..=192_000).contains(&rate) || !(1..=8).contains(&params.input.channels) {
        return Err(AdmissionError::Internal);
    }
    let (input_frames, next_seq, open_segment_ms, node_lost) = match log.point() {
        TakeoverPoint::HandedOver {
            input_frames,
            next_seq,
            ..
        } => (input_frames, next_seq, None, false),
        TakeoverPoint::NodeLost {
            covered_ms,
            last_seq,
        } => {
            // A lost node's session waits for its client as a detached one would.
            let window_ms =
                limits.resume_window_s * 1000 + cluster.settings().heartbeat_interval_s * 3000;
            if unix_ms().saturating_sub(log.newest_ms) > window_ms {
                return Err(AdmissionError::SessionNotFound);
            }
            let next = last_seq.map_or(0, |s| s + 1);
            (covered_ms * rate / 1000, next, log.open_segment_ms, true)
        }
    };
    admit_and_claim(state, cluster, peer, id, &stored).await?;
    let takeover = Takeover {
        token_hash,
        input_frames,
        next_seq,
        recent: log.recent.into_iter().collect(),
        open_segment_ms,
        from_node: holder,
        node_lost,
    };
    state.start_session(&current, id, params, stored.record.ttl_s, Some(takeover))
}

/// Logs a takeover's failure to talk to NATS; the client gets 500 `internal_error`.
fn internal_error(id: Uuid) -> impl Fn(ClusterError) -> AdmissionError + Copy {
    move |e: ClusterError| {
        warn!(session = %id, error = %e, "takeover failed");
        AdmissionError::Internal
    }
}

/// Asks `holder`, a live node other than this one, to hand session `id` over. Returns the
/// session's record as the holder left it, which a claim must still find.
///
/// One that answers `NotHere` no longer has it (it ended there, was never started, or
/// another node took it first): the record and the log decide. One that answers `Busy`
/// may still run it: the client tries again (503 `session_busy`).
async fn ask_holder(
    cluster: &Cluster,
    id: Uuid,
    holder: &str,
) -> Result<StoredSession, AdmissionError> {
    let internal = internal_error(id);
    // A holder that died with the request on its way (it reached NATS before NATS noticed
    // the death) never answers: its heartbeat expiring says so before the request times
    // out. A stopping holder beats until it has answered every request it took.
    let every = Duration::from_secs(cluster.settings().heartbeat_interval_s);
    let asked = cluster.request_handover(holder, id);
    tokio::pin!(asked);
    let answer = loop {
        tokio::select! {
            answer = &mut asked => break answer,
            _ = tokio::time::sleep(every) => {
                if !cluster.is_live(holder).await.map_err(internal)? {
                    break Ok(HandoverReply::NotHere);
                }
            }
        }
    };
    let reply = match answer {
        Ok(reply) => reply,
        // Unanswered in time. Once the holder's heartbeat has expired the log is the
        // whole story; one still beating may still run the session, and the client tries
        // again.
        Err(e) => {
            warn!(session = %id, %holder, error = %e, "handover request unanswered");
            match cluster.is_live(holder).await.map_err(internal)? {
                true => HandoverReply::Busy,
                false => HandoverReply::NotHere,
            }
        }
    };
    // The holder may still run the session: its log is not the whole story yet.
    if reply == HandoverReply::Busy {
        return Err(AdmissionError::SessionBusy);
    }
    // The holder's last writes are in now. A record naming a third node means that node
    // took the session over meanwhile; the client's retry asks it.
    let stored = cluster
        .session_record(id)
        .await
        .map_err(internal)?
        .ok_or(AdmissionError::SessionNotFound)?;
    match stored.record.node == holder {
        true => Ok(stored),
        false => Err(AdmissionError::SessionBusy),
    }
}

/// Admits session `id` here and claims its record (as `stored` was read) for this node.
///
/// Admitted before it is claimed: from the claim on, other nodes ask this one, which
/// answers `Busy` (not `NotHere`) until the session runs. Claimed before the client hears
/// from this node, unless another node claimed it since it was read: that one serves the
/// client, and this admission is released.
async fn admit_and_claim(
    state: &AppState,
    cluster: &Cluster,
    peer: IpAddr,
    id: Uuid,
    stored: &StoredSession,
) -> Result<(), AdmissionError> {
    state
        .registry
        .send(Admit {
            peer,
            takeover: Some(id),
        })
        .await
        .map_err(|_| AdmissionError::Internal)??;
    let refusal = match cluster.claim_session(id, stored).await {
        Ok(Claim::Claimed) => return Ok(()),
        Ok(Claim::Lost) => {
            info!(session = %id, "another node took the session over first");
            AdmissionError::SessionBusy
        }
        Err(e) => internal_error(id)(e),
    };
    state.registry.do_send(Unregister {
        id,
        reason: EndReason::TakeoverLost,
    });
    Err(refusal)
}
