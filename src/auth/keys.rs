//! Bearer secrets stored as SHA-256 hashes and compared in constant time, so neither the
//! config nor response timing says anything about a key.

use actix_web::{http::header, HttpRequest};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Hex SHA-256 of `token`: what goes into `auth.api_keys_sha256` or `admin.token_sha256`.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive, RFC 7235).
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// The accepted keys, as their SHA-256 digests.
#[derive(Debug, Clone, Default)]
pub struct KeyHashes(Vec<[u8; 32]>);

impl KeyHashes {
    /// Decodes hex digests; entries that are not 64 hex digits are skipped (settings
    /// validation refuses them before this runs).
    pub fn from_hex<S: AsRef<str>>(hashes: &[S]) -> Self {
        Self(
            hashes
                .iter()
                .filter_map(|h| hex::decode(h.as_ref()).ok())
                .filter_map(|d| <[u8; 32]>::try_from(d).ok())
                .collect(),
        )
    }

    /// No keys configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `token` hashes to one of the keys. Every key is compared, in constant time,
    /// whichever matches.
    pub fn matches(&self, token: &str) -> bool {
        let presented = Sha256::digest(token.as_bytes());
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |found, key| {
                found | presented.as_slice().ct_eq(key)
            })
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn any_configured_key_matches_and_nothing_else() {
        let keys = KeyHashes::from_hex(&[hash_token("one"), hash_token("two")]);
        assert!(keys.matches("one"));
        assert!(keys.matches("two"));
        assert!(!keys.matches("three"));
        assert!(
            !keys.matches(&hash_token("one")),
            "the hash itself is not a key"
        );
        assert!(!KeyHashes::default().matches(""));
    }
}
