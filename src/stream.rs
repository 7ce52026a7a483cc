//! `GET /v1/stream`: the checks a client passes before its WebSocket upgrade, then the
//! session.
//!
//! Order, cheapest first, so a flood costs little: per-address attempt rate, origin, query,
//! credential (failures are rate limited per address and audited), registry admission. Every
//! refusal is HTTP with a JSON body (`refusal`), before any session exists.

use crate::auth::{bearer, Identity};
use crate::client_ip::client_ip;
use crate::refusal::refuse;
use crate::{cors, AppState, Current};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use std::collections::HashMap;
use std::net::IpAddr;
use uuid::Uuid;
use voxrt_actors::error::AdmissionError;
use voxrt_actors::intake::FramePacedPayload;
use voxrt_actors::metrics::ReasonLabel;
use voxrt_actors::protocol::{parse_query, StreamParams};
use voxrt_actors::registry::{Admit, Unregister};
use voxrt_actors::session::{OutgoingMeter, Session};

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/stream", web::get().to(stream));
}

/// Handles `GET /v1/stream`; see the module docs for the order of checks.
async fn stream(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let current = state.current();
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok().map(str::to_owned));
    let Some(peer) = req
        .peer_addr()
        .map(|a| client_ip(a.ip(), forwarded, &current.settings.server.trusted_proxies))
    else {
        return refuse(&AdmissionError::Internal, None, &state.metrics);
    };
    let refuse = |e: &AdmissionError| refuse(e, Some(peer), &state.metrics);
    if ws::handshake(&req).is_err() {
        return refuse(&AdmissionError::NotWebSocket);
    }
    let checked = current
        .address_limits
        .new_session(peer)
        .and_then(|()| cors::check_upgrade(&req, &current.settings.security.allowed_origins))
        .and_then(|()| parse_query(req.query_string()));
    let query = match checked {
        Ok(q) => q,
        Err(e) => return refuse(&e),
    };
    let identity = match authenticate(&req, &query, peer, &current, &state) {
        Ok(identity) => identity,
        Err((e, audited)) => {
            return crate::refusal::refuse_as(&e, Some(peer), &state.metrics, audited)
        }
    };
    let params = match StreamParams::from_query(&query, &current.settings.vad) {
        Ok(p) => p,
        Err(e) => return refuse(&e),
    };
    let id = match state.registry.send(Admit { peer }).await {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => return refuse(&e),
        Err(_) => return refuse(&AdmissionError::Internal),
    };
    if identity.method != crate::auth::AuthMethod::Anonymous {
        tracing::info!(
            target: "voxrt::audit",
            session = %id,
            %peer,
            outcome = "granted",
            method = identity.method.as_str(),
            subject = identity.subject.as_deref().unwrap_or(""),
            "client authenticated"
        );
    }
    let admitted = Admitted {
        id,
        peer,
        params,
        identity,
    };
    start_session(req, payload, &state, &current, admitted)
}

/// A client that passed every check and holds a registry slot.
struct Admitted {
    id: Uuid,
    peer: IpAddr,
    params: StreamParams,
    identity: Identity,
}

/// Checks the credential in the `Authorization` header or, failing that, `access_token`.
/// A failure is counted against `peer`'s allowance and logged as an audit event (never
/// the credential); past the allowance the answer is 429 instead of 401. A refusal comes
/// with the correlation id of its audit line, for the response to carry.
fn authenticate(
    req: &HttpRequest,
    query: &HashMap<String, String>,
    peer: IpAddr,
    current: &Current,
    state: &AppState,
) -> Result<Identity, (AdmissionError, Uuid)> {
    let token = bearer(req).or_else(|| query.get("access_token").map(String::as_str));
    let denied = match current.authenticator.authenticate(token) {
        Ok(identity) => {
            count(state, "granted");
            return Ok(identity);
        }
        Err(e) => e,
    };
    let correlation_id = Uuid::new_v4();
    let reason = denied.code();
    let refusal = match current.address_limits.auth_failure(peer) {
        Ok(()) => denied,
        Err(limited) => limited,
    };
    let outcome = if matches!(refusal, AdmissionError::AuthRateLimited { .. }) {
        "rate_limited"
    } else {
        "denied"
    };
    count(state, outcome);
    tracing::warn!(
        target: "voxrt::audit",
        %correlation_id,
        %peer,
        outcome,
        reason,
        presented = token.is_some(),
        "client authentication failed"
    );
    Err((refusal, correlation_id))
}

fn count(state: &AppState, outcome: &str) {
    state
        .metrics
        .auth
        .get_or_create(&ReasonLabel {
            reason: outcome.to_owned(),
        })
        .inc();
}

/// Upgrades the connection and starts the session's actor, its response body metered so
/// the session can bound what its client has not read.
fn start_session(
    req: HttpRequest,
    payload: web::Payload,
    state: &AppState,
    current: &Current,
    admitted: Admitted,
) -> HttpResponse {
    let Admitted {
        id,
        peer,
        params,
        identity,
    } = admitted;
    let limits = &current.settings.session;
    let max_frame = limits
        .max_binary_frame_bytes
        .max(limits.max_text_frame_bytes);
    // Larger frames are refused at their header, before anything buffers them.
    let paced = FramePacedPayload::new(payload).max_payload(max_frame);
    let session = Session::new(
        id,
        peer,
        params,
        current.session_config.clone(),
        state.catalog.clone(),
        state.registry.clone(),
        state.metrics.clone(),
    )
    .with_ttl_s(identity.session_ttl_s)
    .with_wire_report(paced.report());
    let counters = session.counters();
    let codec = actix_http::ws::Codec::new().max_size(max_frame);
    match ws::handshake(&req) {
        Ok(mut response) => {
            let body = ws::WebsocketContext::with_codec(session, paced, codec);
            response.streaming(OutgoingMeter::new(body, counters))
        }
        Err(e) => {
            tracing::warn!(session = %id, error = %e, "WebSocket upgrade failed");
            state.registry.do_send(Unregister {
                id,
                reason: "upgrade_failed",
            });
            crate::refusal::refuse(&AdmissionError::NotWebSocket, Some(peer), &state.metrics)
        }
    }
}
