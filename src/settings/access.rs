//! `[auth]` and `[security]`: who may open sessions, from which pages, and how fast.

use super::SettingsError;
use serde::{Deserialize, Serialize, Serializer};

/// `[auth]`: credentials clients present on `GET /v1/stream`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Refuse clients without a valid credential (401).
    pub required: bool,
    /// Hex SHA-256 of each accepted API key (`voxrt hash-token` prints one).
    pub api_keys_sha256: Vec<String>,
    /// Failed credentials one address may present per minute before it gets 429.
    pub failures_per_minute_per_ip: u32,
    /// Short-lived tokens for browsers.
    pub jwt: JwtSettings,
}

/// `[auth.jwt]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// "" (JWTs off), "HS256", "RS256" or "ES256".
    pub algorithm: String,
    /// HS256 shared secret, at least 32 bytes. Shown only as a digest when settings are
    /// printed or fingerprinted.
    #[serde(serialize_with = "digest_of_secret")]
    pub hs256_secret: String,
    /// PEM file with the RS256/ES256 public key.
    pub public_key_file: String,
    /// Required `aud` claim.
    pub audience: String,
    /// Required `iss` claim; "" accepts any issuer.
    pub issuer: String,
    /// Clock skew tolerated on `exp` and `nbf`, seconds.
    pub leeway_s: u64,
}

impl JwtSettings {
    /// Whether JWTs are accepted.
    pub fn enabled(&self) -> bool {
        !self.algorithm.is_empty()
    }
}

/// `--print-config` and the config fingerprint must not reveal the secret itself.
fn digest_of_secret<S: Serializer>(secret: &str, s: S) -> Result<S::Ok, S::Error> {
    if secret.is_empty() {
        return s.serialize_str("");
    }
    s.serialize_str(&format!("sha256:{}", crate::auth::hash_token(secret)))
}

/// `[security]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// Browser origins (`scheme://host[:port]`) allowed to open sessions and to read the
    /// HTTP endpoints cross-origin; empty allows any origin to open sessions and sends no
    /// CORS headers.
    pub allowed_origins: Vec<String>,
    /// New sessions one client address may open per minute (in bursts of as many).
    pub new_sessions_per_minute_per_ip: u32,
}

fn invalid(key: &'static str, value: String, allowed: &str) -> SettingsError {
    SettingsError::Invalid {
        key,
        value,
        allowed: allowed.into(),
    }
}

/// Whether `hash` is 64 hex digits.
pub(super) fn is_sha256_hex(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

impl AuthSettings {
    /// Checks the shape of every value; key files are read when the server builds its
    /// authenticator (`crate::auth::Authenticator::new`), which names the key on failure.
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        if let Some(bad) = self.api_keys_sha256.iter().find(|h| !is_sha256_hex(h)) {
            return Err(invalid(
                "auth.api_keys_sha256",
                format!("(an entry of {} characters)", bad.len()),
                "each entry must be 64 hex digits, the SHA-256 that `voxrt hash-token` prints",
            ));
        }
        super::check(
            "auth.failures_per_minute_per_ip",
            self.failures_per_minute_per_ip,
            1,
            100_000,
            "",
        )?;
        let j = &self.jwt;
        match j.algorithm.as_str() {
            "" => {}
            "HS256" if j.hs256_secret.len() < 32 => {
                return Err(invalid(
                    "auth.jwt.hs256_secret",
                    format!("({} bytes)", j.hs256_secret.len()),
                    "must be at least 32 bytes when auth.jwt.algorithm is HS256 \
                     (set VOXRT_AUTH__JWT__HS256_SECRET)",
                ))
            }
            "HS256" => {}
            "RS256" | "ES256" if j.public_key_file.is_empty() => {
                return Err(invalid(
                    "auth.jwt.public_key_file",
                    "\"\"".into(),
                    "must name a PEM public key file when auth.jwt.algorithm is RS256 or ES256",
                ))
            }
            "RS256" | "ES256" => {}
            other => {
                return Err(invalid(
                    "auth.jwt.algorithm",
                    format!("\"{other}\""),
                    "must be \"\" (off), HS256, RS256 or ES256",
                ))
            }
        }
        if j.enabled() && j.audience.is_empty() {
            return Err(invalid(
                "auth.jwt.audience",
                "\"\"".into(),
                "must be set when JWTs are on: tokens must name this service in `aud`",
            ));
        }
        super::check("auth.jwt.leeway_s", j.leeway_s, 0, 300, " s")?;
        if self.required && self.api_keys_sha256.is_empty() && !j.enabled() {
            return Err(invalid(
                "auth.required",
                "true".into(),
                "needs at least one credential: set auth.api_keys_sha256 (see `voxrt \
                 hash-token`) or auth.jwt, or set auth.required = false",
            ));
        }
        Ok(())
    }
}

impl SecuritySettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        if let Some(bad) = self.allowed_origins.iter().find(|o| !is_origin(o)) {
            return Err(invalid(
                "security.allowed_origins",
                format!("\"{bad}\""),
                "each entry must be an origin: scheme://host[:port], lowercase, no path \
                 (e.g. https://app.example.com)",
            ));
        }
        super::check(
            "security.new_sessions_per_minute_per_ip",
            self.new_sessions_per_minute_per_ip,
            1,
            1_000_000,
            "",
        )
    }
}

/// `scheme://host[:port]` as browsers send it in `Origin`.
fn is_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
        && o.bytes().all(|b| !b.is_ascii_uppercase())
}
