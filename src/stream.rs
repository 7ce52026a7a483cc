//! `GET /v1/stream`: admission, then WebSocket upgrade.

use crate::client_ip::client_ip;
use crate::refusal::refuse;
use crate::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use voxrt_actors::error::AdmissionError;
use voxrt_actors::intake::FramePacedPayload;
use voxrt_actors::protocol::{parse_query, StreamParams};
use voxrt_actors::registry::{Admit, Unregister};
use voxrt_actors::session::{OutgoingMeter, Session};

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/stream", web::get().to(stream));
}

/// `GET /v1/stream`: validates the upgrade and the parameters, asks the registry for a slot,
/// then hands the connection to a new [`Session`]. Every refusal happens here, before the
/// upgrade, as HTTP with a JSON body.
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
    let peer = req
        .peer_addr()
        .map(|a| client_ip(a.ip(), forwarded, &current.settings.server.trusted_proxies));
    let refuse = |e: &AdmissionError, peer| refuse(e, peer, &state.metrics);
    if ws::handshake(&req).is_err() {
        return refuse(&AdmissionError::NotWebSocket, peer);
    }
    let query = match parse_query(req.query_string()) {
        Ok(q) => q,
        Err(e) => return refuse(&e, peer),
    };
    let params = match StreamParams::from_query(&query, &current.settings.vad) {
        Ok(p) => p,
        Err(e) => return refuse(&e, peer),
    };
    let Some(peer) = peer else {
        return refuse(&AdmissionError::Internal, None);
    };
    let id = match state.registry.send(Admit { peer }).await {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => return refuse(&e, Some(peer)),
        Err(_) => return refuse(&AdmissionError::Internal, Some(peer)),
    };
    let limits = &current.settings.session;
    let session = Session::new(
        id,
        peer,
        params,
        current.session_config.clone(),
        state.catalog.clone(),
        state.registry.clone(),
        state.metrics.clone(),
    );
    let counters = session.counters();
    let codec = actix_http::ws::Codec::new().max_size(
        limits
            .max_binary_frame_bytes
            .max(limits.max_text_frame_bytes),
    );
    match ws::handshake(&req) {
        Ok(mut response) => {
            let body =
                ws::WebsocketContext::with_codec(session, FramePacedPayload::new(payload), codec);
            response.streaming(OutgoingMeter::new(body, counters))
        }
        Err(e) => {
            tracing::warn!(session = %id, error = %e, "WebSocket upgrade failed");
            state.registry.do_send(Unregister {
                id,
                reason: "upgrade_failed",
            });
            refuse(&AdmissionError::NotWebSocket, Some(peer))
        }
    }
}
