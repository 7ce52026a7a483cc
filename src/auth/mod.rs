//! Who may open a session: API keys (hashed, constant-time) and JWTs, presented as
//! `Authorization: Bearer ...` or, from browsers that cannot set WebSocket headers, as the
//! `access_token` query parameter. The admin token for operators' endpoints is [`admin`].

pub mod admin;
mod jwt;
mod keys;

pub use keys::{bearer, hash_token, KeyHashes};

use crate::settings::{AuthSettings, SettingsError};
use jwt::JwtVerifier;
use voxrt_actors::error::AdmissionError;

/// How a client proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// No credential configured, or none required and none presented.
    Anonymous,
    /// A configured API key.
    ApiKey,
    /// A verified JWT.
    Jwt,
}

impl AuthMethod {
    /// For logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Anonymous => "anonymous",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
        }
    }
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// How.
    pub method: AuthMethod,
    /// The JWT's `sub`, clipped to 64 characters (audit log only).
    pub subject: Option<String>,
    /// A session TTL the credential asked for (shorter ones only take effect).
    pub session_ttl_s: Option<u64>,
}

impl Identity {
    fn of(method: AuthMethod) -> Self {
        Self {
            method,
            subject: None,
            session_ttl_s: None,
        }
    }
}

/// Checks credentials against `[auth]`; built once per configuration.
pub struct Authenticator {
    required: bool,
    keys: KeyHashes,
    jwt: Option<JwtVerifier>,
}

impl Authenticator {
    /// Builds from validated settings; reads the JWT public key file, naming it on failure.
    pub fn new(settings: &AuthSettings) -> Result<Self, SettingsError> {
        Ok(Self {
            required: settings.required,
            keys: KeyHashes::from_hex(&settings.api_keys_sha256),
            jwt: JwtVerifier::new(&settings.jwt)?,
        })
    }

    /// Whether any credential is configured (otherwise presented ones are ignored).
    fn configured(&self) -> bool {
        !self.keys.is_empty() || self.jwt.is_some()
    }

    /// Decides on the credential presented, if any. A presented credential must be valid
    /// even when none is required: a client with a wrong key learns it at once.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, AdmissionError> {
        let token = token.filter(|t| !t.is_empty() && self.configured());
        let Some(token) = token else {
            return if self.required {
                Err(AdmissionError::Unauthorized(
                    "a credential is required: send Authorization: Bearer <key or token>, \
                     or ?access_token= from a browser",
                ))
            } else {
                Ok(Identity::of(AuthMethod::Anonymous))
            };
        };
        if self.keys.matches(token) {
            return Ok(Identity::of(AuthMethod::ApiKey));
        }
        match &self.jwt {
            // A JWT is three dot-separated parts; anything else is a wrong key.
            Some(jwt) if token.matches('.').count() == 2 => {
                let claims = jwt.verify(token)?;
                Ok(Identity {
                    method: AuthMethod::Jwt,
                    subject: claims.sub.map(|s| s.chars().take(64).collect()),
                    session_ttl_s: claims.session_ttl_s,
                })
            }
            _ => Err(AdmissionError::Unauthorized("the credential is not valid")),
        }
    }
}
