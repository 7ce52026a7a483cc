//! TLS for tests: certificates made at test time (rcgen), and clients that trust exactly
//! those certificates (rustls): HTTPS requests (ureq), `wss://` sessions
//! (tokio-tungstenite) and bare handshakes that report the certificate the server showed.

use super::http::Reply;
use super::{Client, HANG};
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A self-signed certificate for `localhost` and `127.0.0.1`, and its key.
pub struct TestCert {
    /// The certificate, DER.
    pub der: CertificateDer<'static>,
    /// PEM of the certificate and of its key.
    pub cert_pem: String,
    pub key_pem: String,
    /// base64 SHA-256 of the key's SubjectPublicKeyInfo (Chromium's
    /// `--ignore-certificate-errors-spki-list`).
    pub spki_sha256: String,
}

impl TestCert {
    /// A fresh key and certificate whose subject CN is `name`.
    pub fn new(name: &str) -> TestCert {
        use rcgen::PublicKeyData;
        use sha2::Digest;
        let key = rcgen::KeyPair::generate().expect("key pair");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("certificate parameters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed certificate");
        let spki = sha2::Sha256::digest(key.subject_public_key_info());
        TestCert {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            spki_sha256: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, spki),
        }
    }

    /// Writes `cert.pem` and `key.pem` into `dir` (replacing them); returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert.pem");
        std::fs::write(&key, &self.key_pem).expect("write key.pem");
        (cert, key)
    }
}

/// The settings overrides for TLS with the files at `cert` and `key`.
pub fn tls_overrides<'a>(cert: &'a Path, key: &'a Path) -> [(&'static str, &'a str); 2] {
    [
        ("server.tls.cert_file", cert.to_str().expect("UTF-8 path")),
        ("server.tls.key_file", key.to_str().expect("UTF-8 path")),
    ]
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration trusting only `roots`.
pub fn client_config(roots: &[&TestCert]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for cert in roots {
        store.add(cert.der.clone()).expect("trust anchor");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    Arc::new(config)
}

/// `method` `url` (https) trusting only `roots`, with an optional `Authorization` value.
pub fn https(method: &str, url: &str, roots: &[&TestCert], authorization: Option<&str>) -> Reply {
    let certs: Vec<ureq::tls::Certificate<'static>> = roots
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.der.as_ref()).to_owned())
        .collect();
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(provider())
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build();
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections(0)
            .timeout_global(Some(HANG))
            .tls_config(tls)
            .build(),
    );
    super::http::request_via(&agent, method, url, authorization)
}

/// Opens a `wss://` session at `url` trusting only `roots`; panics if it is refused.
pub async fn wss_client(url: &str, roots: &[&TestCert]) -> Client {
    let connector = tokio_tungstenite::Connector::Rustls(client_config(roots));
    let connect =
        tokio_tungstenite::connect_async_tls_with_config(url, None, true, Some(connector));
    let (ws, _) = tokio::time::timeout(HANG, connect)
        .await
        .expect("wss connect hung")
        .unwrap_or_else(|e| panic!("wss connect to {url}: {e}"));
    Client::from_stream(ws).await
}

/// The certificate `addr` presents in a TLS handshake for `127.0.0.1`, verified against
/// `roots`.
pub async fn presented_certificate(
    addr: std::net::SocketAddr,
    roots: &[&TestCert],
) -> CertificateDer<'static> {
    let connector = tokio_rustls::TlsConnector::from(client_config(roots));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    let tls = tokio::time::timeout(HANG, connector.connect(name, tcp))
        .await
        .expect("handshake hung")
        .unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"));
    let (_, conn) = tls.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .expect("the server presents a certificate")
        .clone()
        .into_owned()
}
