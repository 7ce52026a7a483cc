//! JWT verification for browsers: short-lived tokens a backend mints, so no long-lived key
//! reaches a web page. Signature first, then `exp`, `nbf`, `aud` (and `iss` if configured).

use crate::settings::{JwtSettings, SettingsError};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use voxrt_actors::error::AdmissionError;

/// Claims voxrt reads; any others are ignored. Optional claims can only tighten limits.
#[derive(Debug, Deserialize)]
pub struct Claims {
    /// Who the token was minted for (audit log only).
    pub sub: Option<String>,
    /// This session's TTL, seconds; applies only when shorter than `registry.session_ttl_s`.
    pub session_ttl_s: Option<u64>,
}

/// A configured verifier.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl JwtVerifier {
    /// Builds the verifier, reading the public key file for RS256/ES256. `Ok(None)` when
    /// JWTs are off.
    pub fn new(settings: &JwtSettings) -> Result<Option<Self>, SettingsError> {
        let bad_key = |allowed: &str| SettingsError::Invalid {
            key: "auth.jwt.public_key_file",
            value: format!("\"{}\"", settings.public_key_file),
            allowed: allowed.into(),
        };
        let read_pem = || {
            std::fs::read(&settings.public_key_file)
                .map_err(|e| bad_key(&format!("cannot be read: {e}")))
        };
        let (algorithm, key) = match settings.algorithm.as_str() {
            "" => return Ok(None),
            "HS256" => (
                Algorithm::HS256,
                // Empty is the only secret refused here; validation asks for 32 bytes anyway.
                DecodingKey::from_secret(settings.hs256_secret.as_bytes()).map_err(|_| {
                    SettingsError::Invalid {
                        key: "auth.jwt.hs256_secret",
                        value: "(0 bytes)".into(),
                        allowed: "must not be empty with algorithm HS256".into(),
                    }
                })?,
            ),
            "RS256" => (
                Algorithm::RS256,
                DecodingKey::from_rsa_pem(&read_pem()?)
                    .map_err(|_| bad_key("is not a PEM RSA public key"))?,
            ),
            "ES256" => (
                Algorithm::ES256,
                DecodingKey::from_ec_pem(&read_pem()?)
                    .map_err(|_| bad_key("is not a PEM EC (P-256) public key"))?,
            ),
            other => {
                return Err(SettingsError::Invalid {
                    key: "auth.jwt.algorithm",
                    value: format!("\"{other}\""),
                    allowed: "must be \"\" (off), HS256, RS256 or ES256".into(),
                })
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.set_audience(&[&settings.audience]);
        if !settings.issuer.is_empty() {
            validation.set_issuer(&[&settings.issuer]);
        }
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = settings.leeway_s;
        Ok(Some(Self { key, validation }))
    }

    /// Verifies `token`. Errors say what a legitimate client should fix, never the
    /// library's text.
    pub fn verify(&self, token: &str) -> Result<Claims, AdmissionError> {
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AdmissionError::TokenExpired,
                ErrorKind::ImmatureSignature => {
                    AdmissionError::Unauthorized("the token is not valid yet (nbf)")
                }
                ErrorKind::InvalidAudience => {
                    AdmissionError::Unauthorized("the token's audience (aud) is not this service")
                }
                ErrorKind::InvalidIssuer => {
                    AdmissionError::Unauthorized("the token's issuer (iss) is not accepted")
                }
                ErrorKind::MissingRequiredClaim(_) => {
                    AdmissionError::Unauthorized("the token must carry exp and aud claims")
                }
                _ => AdmissionError::Unauthorized("the credential is not valid"),
            })
    }
}
