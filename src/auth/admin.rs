//! The admin bearer token for `/v1/stats*`, `/metrics` and `/v1/admin/reload`.

use super::keys::{bearer, KeyHashes};
use actix_web::{http::header, HttpRequest, HttpResponse};
use serde_json::json;

/// The 401 to send, or `None` when `expected_sha256` is empty (admin open) or the request
/// carries `Authorization: Bearer <token>` whose hash matches.
pub fn denial(req: &HttpRequest, expected_sha256: &str) -> Option<HttpResponse> {
    if expected_sha256.is_empty() {
        return None;
    }
    let keys = KeyHashes::from_hex(&[expected_sha256]);
    if bearer(req).is_some_and(|token| keys.matches(token)) {
        return None;
    }
    let correlation_id = uuid::Uuid::new_v4();
    tracing::info!(target: "voxrt::audit", %correlation_id, path = req.path(), peer = ?req.peer_addr(), outcome = "denied", "admin request without a valid token");
    Some(
        HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"voxrt admin\""))
            .json(json!({"error": {
                "code": "unauthorized",
                "message": "this endpoint needs Authorization: Bearer <admin token>",
                "correlation_id": correlation_id,
            }})),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_token;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_token_must_match() {
        let expected = hash_token("s3cret");
        let with = |auth: &str| {
            let req = actix_web::test::TestRequest::default()
                .insert_header((header::AUTHORIZATION, auth))
                .to_http_request();
            denial(&req, &expected).is_none()
        };
        assert!(with("Bearer s3cret"));
        assert!(with("bearer s3cret"));
        assert!(!with("Bearer s3cre"));
        assert!(!with("Basic s3cret"));
        assert!(!with(&format!("Bearer {expected}")));
    }
}
