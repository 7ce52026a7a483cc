//! Native TLS (`[server.tls]`): the certificate and key files, loaded into a rustls server
//! configuration whose certificate can be replaced while the server runs.
//!
//! Every listener's rustls configuration resolves its certificate through one
//! [`CertStore`]; a reload reads the files again and swaps the certified key in one step.
//! Handshakes from then on get the new certificate; connections already open keep theirs.
//! A file that cannot be read or parsed is an error naming the key and the file, and the
//! certificate in use stays.

use crate::settings::{SettingsError, TlsSettings};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::sync::{Arc, RwLock};

/// The certified key every TLS listener presents, replaceable at run time.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl CertStore {
    /// Reads the configured files; `Ok(None)` when TLS is off.
    pub fn load(settings: &TlsSettings) -> Result<Option<Arc<Self>>, SettingsError> {
        if !settings.enabled() {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = certified_key(settings, &provider)?;
        Ok(Some(Arc::new(Self {
            current: RwLock::new(Arc::new(key)),
            provider,
        })))
    }

    /// Reads the files again and, if they are valid, presents them from the next handshake
    /// on. On error nothing changes.
    pub fn reload(&self, settings: &TlsSettings) -> Result<(), SettingsError> {
        let key = Arc::new(certified_key(settings, &self.provider)?);
        match self.current.write() {
            Ok(mut c) => *c = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
        Ok(())
    }

    /// A rustls server configuration that resolves through this store (TLS 1.2 and 1.3;
    /// actix-web adds the ALPN protocols h2 and http/1.1).
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, SettingsError> {
        let config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| SettingsError::Invalid {
                key: "server.tls.cert_file",
                value: String::new(),
                allowed: format!("no usable TLS protocol version: {e}"),
            })?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(config)
    }

    fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The chain and key from the files, checked to belong together.
fn certified_key(
    settings: &TlsSettings,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, SettingsError> {
    let bad = |key: &'static str, path: &str, why: String| SettingsError::Invalid {
        key,
        value: format!("\"{path}\""),
        allowed: why,
    };
    let cert_path = &settings.cert_file;
    let key_path = &settings.key_file;
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            bad(
                "server.tls.cert_file",
                cert_path,
                format!("cannot be read as a PEM certificate chain: {e}"),
            )
        })?;
    if chain.is_empty() {
        return Err(bad(
            "server.tls.cert_file",
            cert_path,
            "holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        bad(
            "server.tls.key_file",
            key_path,
            format!("cannot be read as a PEM private key: {e}"),
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        bad(
            "server.tls.key_file",
            key_path,
            format!("is not a usable key for the certificate in server.tls.cert_file: {e}"),
        )
    })
}
