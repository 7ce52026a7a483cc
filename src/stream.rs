//! `GET /v1/stream`: the checks a client passes before its WebSocket upgrade, then the
//! session and its connection.
//!
//! Order, cheapest first, so a flood costs little: per-address attempt rate, origin, query,
//! credential (failures are rate limited per address and audited), registry admission (or,
//! for `resume=`, the session's own check of the resume token and `last_seq`). Every
//! refusal is HTTP with a JSON body (`refusal`), before any session or connection exists.

use crate::auth::{bearer, Identity};
use crate::client_ip::client_ip;
use crate::refusal::refuse;
use crate::{cors, AppState, Current};
use actix_web::{web, HttpRequest, HttpResponse};
use std::collections::HashMap;
use std::net::IpAddr;
use uuid::Uuid;
use voxrt_actors::connection::{is_upgrade, Connection, ConnectionSpec};
use voxrt_actors::error::AdmissionError;
use voxrt_actors::metrics::ReasonLabel;
use voxrt_actors::protocol::{parse_query, parse_resume, StreamParams};
use voxrt_actors::registry::{Admit, FindSession};
use voxrt_actors::session::{CheckResume, ResumeRefusal, ResumeRequest, SessionRoute};

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
    if !is_upgrade(&req) {
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
    if query.contains_key("resume") {
        return match resume(&query, &state, peer).await {
            Ok((id, route, request)) => {
                connect(req, payload, &state, &current, id, route, Some(request))
            }
            Err(e) => refuse(&e),
        };
    }
    let params = match StreamParams::from_query(&query, &current.settings.vad) {
        Ok(p) => p,
        Err(e) => return refuse(&e),
    };
    let admit = Admit {
        peer,
        takeover: None,
    };
    let id = match state.registry.send(admit).await {
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

/// Finds the session a resume names and lets it check the token and `last_seq`.
/// With `[nats]`, a session another node holds (or held) is taken over here.
async fn resume(
    query: &HashMap<String, String>,
    state: &AppState,
    peer: IpAddr,
) -> Result<(Uuid, SessionRoute, ResumeRequest), AdmissionError> {
    let (id, request) = parse_resume(query)?;
    let found = state
        .registry
        .send(FindSession { id })
        .await
        .map_err(|_| AdmissionError::Internal)?;
    let route = match (found, &state.cluster) {
        (Some(route), _) => route,
        (None, Some(cluster)) => {
            crate::cluster::take_over(state, cluster, peer, id, &request).await?
        }
        (None, None) => return Err(AdmissionError::SessionNotFound),
    };
    let checked = route
        .check_resume
        .send(CheckResume(request.clone()))
        .await
        .map_err(|_| AdmissionError::SessionNotFound)?;
    match checked {
        Ok(()) => {}
        Err(ResumeRefusal::NotFound) => return Err(AdmissionError::SessionNotFound),
        Err(ResumeRefusal::TokenInvalid) => return Err(AdmissionError::ResumeTokenInvalid),
        Err(e @ ResumeRefusal::SeqOutOfRange { .. }) => {
            return Err(AdmissionError::InvalidParameter {
                param: "last_seq",
                message: e.to_string(),
            })
        }
    }
    Ok((id, route, request))
}

/// Starts the session's actor (its pipeline first: a pipeline that cannot be built is a
/// refusal, before the upgrade), then its connection.
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
    match state.start_session(current, id, params, identity.session_ttl_s, None) {
        Ok(route) => connect(req, payload, state, current, id, route, None),
        Err(e) => crate::refusal::refuse(&e, Some(peer), &state.metrics),
    }
}

/// Upgrades the request and runs a connection carrying the session `route` reaches.
fn connect(
    req: HttpRequest,
    payload: web::Payload,
    state: &AppState,
    current: &Current,
    session_id: Uuid,
    route: SessionRoute,
    resume: Option<ResumeRequest>,
) -> HttpResponse {
    let abort = req
        .conn_data::<crate::server::SocketAbortHandle>()
        .map(|handle| handle.abort());
    let connection = Connection::new(ConnectionSpec {
        session_id,
        route,
        resume,
        limits: current.settings.session,
        pipeline: current.settings.pipeline.clone(),
        metrics: state.metrics.clone(),
        abort,
    });
    connection.serve(&req, payload)
}
