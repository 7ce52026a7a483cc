//! Deployment behaviour: the container health check and client addresses behind proxies.

mod common;

use common::process::{voxrt, ServerProcess};
use common::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// `voxrt healthcheck` exits 0 against a running server configured like it.
#[test]
fn healthcheck_exits_0_when_the_server_is_up() {
    let server = ServerProcess::start(&[]);
    let out = voxrt()
        .arg("healthcheck")
        .env("VOXRT_SERVER__PORT", server.port.to_string())
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With nothing listening it exits 1 and says why in one line naming the URL.
#[test]
fn healthcheck_exits_1_with_one_line_when_the_server_is_down() {
    // A port that was free a moment ago: bound, read, released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = voxrt()
        .arg("healthcheck")
        .env("VOXRT_SERVER__PORT", port.to_string())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("http://127.0.0.1:{port}/health")),
        "{stderr}"
    );
}

/// Connects with an `X-Forwarded-For` header; the HTTP status on refusal.
async fn connect_as(server: &TestServer, forwarded_for: &str) -> Result<Client, u16> {
    let mut request = server
        .url("sample_rate=16000&channels=1&encoding=pcm_s16le")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("x-forwarded-for", forwarded_for.parse().expect("header"));
    match tokio::time::timeout(HANG, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect hung")
    {
        Ok((ws, _)) => Ok(Client::from_stream(ws).await),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// Behind a trusted proxy, per-IP limits count the forwarded client address: two clients
/// behind the same proxy each get their session, and the same client twice is refused (429).
#[tokio::test]
async fn per_ip_limit_uses_forwarded_address_from_trusted_proxy() {
    let server = TestServer::start_with_env(
        &[("VOXRT_SERVER__TRUSTED_PROXIES", "127.0.0.0/8")],
        &[("registry.max_sessions_per_ip", "1")],
        voxrt::actors::processors::ProcessorCatalog::with_builtins(),
    );
    let _a = connect_as(&server, "198.51.100.1")
        .await
        .expect("first client");
    let _b = connect_as(&server, "198.51.100.2")
        .await
        .expect("second client");
    // A forged left-most entry does not help: the proxy's right-most entry counts.
    assert_eq!(
        connect_as(&server, "203.0.113.66, 198.51.100.1")
            .await
            .err(),
        Some(429)
    );
}

/// Without trusted proxies the header is ignored: a client cannot dodge per-IP limits by
/// claiming another address.
#[tokio::test]
async fn forwarded_header_from_untrusted_peer_is_ignored() {
    let server = TestServer::start(&[("registry.max_sessions_per_ip", "1")]);
    let _a = connect_as(&server, "198.51.100.1")
        .await
        .expect("first client");
    assert_eq!(connect_as(&server, "198.51.100.2").await.err(), Some(429));
}
