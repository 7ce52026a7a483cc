//! `security.allowed_origins`: which browser pages may open sessions (checked on the
//! WebSocket upgrade, where CORS does not apply) and read the HTTP endpoints (CORS).
//!
//! Requests without an `Origin` header (non-browser clients) are not affected: they are
//! held to `[auth]` instead. Both checks read the configuration in force, so a reload
//! changes the list without a restart.

use crate::AppState;
use actix_cors::Cors;
use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest};
use voxrt_actors::error::AdmissionError;

/// Whether a page at `origin` may use the server under `allowed` (empty: any origin).
pub fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.is_empty() || allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
}

/// Refuses a WebSocket upgrade from a page whose origin is not allowed.
pub fn check_upgrade(req: &HttpRequest, allowed: &[String]) -> Result<(), AdmissionError> {
    match req.headers().get(header::ORIGIN) {
        None => Ok(()),
        Some(origin) => match origin.to_str() {
            Ok(o) if origin_allowed(allowed, o) => Ok(()),
            _ => Err(AdmissionError::OriginNotAllowed),
        },
    }
}

/// CORS for the HTTP endpoints: headers only for listed origins; with an empty list, none.
/// Requests from other origins still reach the handler (browsers then refuse to show the
/// answer to the page), so the WebSocket route can answer its own 403.
pub fn middleware(state: web::Data<AppState>) -> Cors {
    Cors::default()
        .allowed_origin_fn(move |origin, _| {
            let allowed = &state.current().settings.security.allowed_origins;
            !allowed.is_empty() && origin.to_str().is_ok_and(|o| origin_allowed(allowed, o))
        })
        .allowed_methods([Method::GET, Method::POST])
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(600)
        .block_on_origin_mismatch(false)
}
