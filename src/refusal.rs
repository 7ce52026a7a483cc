//! HTTP refusals before the WebSocket upgrade: `{"error":{"code","message","correlation_id"}}`.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::json;
use uuid::Uuid;
use voxrt_actors::error::AdmissionError;
use voxrt_actors::metrics::{Metrics, StatusLabel};

/// Answers a refused client: counts it (`voxrt_http_refusals_total{status}`) and logs it
/// under the correlation id the response carries.
pub fn refuse(
    error: &AdmissionError,
    peer: Option<std::net::IpAddr>,
    metrics: &Metrics,
) -> HttpResponse {
    refuse_as(error, peer, metrics, Uuid::new_v4())
}

/// Like [`refuse`], under a correlation id already logged elsewhere (an audit line), so an
/// operator handed the id from the response finds every line about the refusal.
pub fn refuse_as(
    error: &AdmissionError,
    peer: Option<std::net::IpAddr>,
    metrics: &Metrics,
    correlation_id: Uuid,
) -> HttpResponse {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    metrics
        .http_refusals
        .get_or_create(&StatusLabel {
            status: status.as_u16(),
        })
        .inc();
    // A refusal of the query string as a whole quotes parameter names the client chose,
    // and a credential put in the wrong place (`?<token>`) would be such a name: the client
    // gets the message, the log only says what kind of error it was.
    let logged = match error {
        AdmissionError::InvalidParameter { param: "query", .. } => {
            "the query string was refused (its parameter names are not logged)".to_owned()
        }
        other => other.to_string(),
    };
    if matches!(error, AdmissionError::Internal) {
        tracing::error!(%correlation_id, code = error.code(), ?peer, "refused: {logged}");
    } else {
        tracing::info!(%correlation_id, code = error.code(), ?peer, status = status.as_u16(), "refused: {logged}");
    }
    let mut response = HttpResponse::build(status);
    if let Some(secs) = error.retry_after_s() {
        response.insert_header(("Retry-After", secs.to_string()));
    }
    if status == StatusCode::UNAUTHORIZED {
        response.insert_header(("WWW-Authenticate", "Bearer realm=\"voxrt\""));
    }
    response.json(json!({
        "error": {
            "code": error.code(),
            "message": error.to_string(),
            "correlation_id": correlation_id,
        }
    }))
}
