//! The admin bearer token. Config holds only its SHA-256; requests are checked in constant
//! time so response timing says nothing about how much of a guess was right.

use actix_web::{http::header, HttpRequest, HttpResponse};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Hex SHA-256 of `token`: what goes into `admin.token_sha256`.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The 401 to send, or `None` when `expected_sha256` is empty (admin open) or the request
/// carries `Authorization: Bearer <token>` whose hash matches.
pub fn denial(req: &HttpRequest, expected_sha256: &str) -> Option<HttpResponse> {
    if expected_sha256.is_empty() {
        return None;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        // The scheme is case-insensitive (RFC 7235).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        .map(|t| Sha256::digest(t.trim().as_bytes()));
    let expected = hex::decode(expected_sha256).unwrap_or_default();
    let ok = presented.is_some_and(|p| bool::from(p.as_slice().ct_eq(&expected)));
    if ok {
        return None;
    }
    let correlation_id = uuid::Uuid::new_v4();
    tracing::info!(%correlation_id, path = req.path(), peer = ?req.peer_addr(), "admin request without a valid token");
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

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
