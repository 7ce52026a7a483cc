//! Native TLS (`[server.tls]`): a certificate made at test time, real TLS clients that trust
//! only it, `wss://` sessions streaming recorded speech, renewal on reload, the admin
//! listener, startup errors, and `voxrt healthcheck` over https.

mod common;
use common::process::{voxrt, ServerProcess};
use common::tls::{https, presented_certificate, tls_overrides, wss_client, TestCert};
use common::*;
use std::io::{Read, Write};

const S16_48K: &str = "sample_rate=48000&channels=1&encoding=pcm_s16le";

/// The speech recording with a second of silence each side, s16 48 kHz mono (as
/// tests/speech.rs streams it).
fn speech_pcm() -> Vec<u8> {
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    assert_eq!(rate, 48_000);
    audio::s16le(&audio::padded(&speech, 48_000, 1.0, 1.0), 1)
}

/// A `wss://` session, its client trusting only the test certificate, streams the speech
/// recording and gets the session's events over TLS: one speech segment and level events.
#[tokio::test]
async fn wss_session_streams_speech_and_gets_speech_events() {
    let dir = temp_dir("tls");
    let cert = TestCert::new("voxrt test");
    let (cert_path, key_path) = cert.write(dir.path());
    let server = TestServer::start(&tls_overrides(&cert_path, &key_path));
    let url = format!("wss://{}/v1/stream?{S16_48K}", server.addr);

    let mut client = wss_client(&url, &[&cert]).await;
    let events = client.stream_and_flush(&speech_pcm(), 9600).await;
    let found = segments(&events);
    assert_eq!(found.len(), 1, "one utterance: {found:?}");
    let (start, end) = found[0];
    assert!(end - start >= 300, "a word-long segment: {found:?}");
    assert!(!of_type(&events, "level").is_empty(), "{events:?}");
    let (events, code) = client.stop().await;
    assert_eq!(code, Some(1000), "{events:?}");
    assert_eq!(closed_event(&events)["reason"], "client_stop");
}

/// A client speaking plain HTTP to the TLS port gets no HTTP answer (the server expects a
/// TLS handshake), and the port keeps serving TLS clients afterwards.
#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_http_answer() {
    let dir = temp_dir("tls");
    let cert = TestCert::new("voxrt test");
    let (cert_path, key_path) = cert.write(dir.path());
    let server = TestServer::start(&tls_overrides(&cert_path, &key_path));

    let addr = server.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(HANG)).expect("timeout");
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut answer = Vec::new();
        // The server closes (or resets) the connection; either ends the read.
        let _ = tcp.read_to_end(&mut answer);
        answer
    })
    .await
    .expect("plain request");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );

    let base = format!("https://{}", server.addr);
    let health = https("GET", &format!("{base}/health"), &[&cert], None);
    assert_eq!(health.expect(200)["status"], "ok");
}

/// With `admin.bind`, the admin listener serves TLS with the same certificate: `/v1/stats`
/// answers over https there (and not on the main listener).
#[tokio::test]
async fn admin_listener_serves_tls() {
    let dir = temp_dir("tls");
    let cert = TestCert::new("voxrt test");
    let (cert_path, key_path) = cert.write(dir.path());
    let mut overrides = tls_overrides(&cert_path, &key_path).to_vec();
    overrides.push(("admin.bind", "127.0.0.1:0"));
    let server = TestServer::start(&overrides);
    let admin = server.admin_addr.expect("admin listener");

    assert_eq!(presented_certificate(admin, &[&cert]).await, cert.der);
    let stats = https("GET", &format!("https://{admin}/v1/stats"), &[&cert], None);
    assert_eq!(stats.expect(200)["registry"]["sessions_active"], 0);
    let main = https(
        "GET",
        &format!("https://{}/v1/stats", server.addr),
        &[&cert],
        None,
    );
    assert_eq!(main.status, 404, "{main:?}");
}

/// Renewal: a new certificate and key written to the same paths, then `POST
/// /v1/admin/reload` (over TLS, on the admin listener): new connections to both listeners
/// get the new certificate, and a session opened before the reload keeps streaming.
#[tokio::test]
async fn reload_presents_a_renewed_certificate_to_new_connections() {
    let dir = temp_dir("tls");
    let old = TestCert::new("voxrt test before renewal");
    let new = TestCert::new("voxrt test after renewal");
    let (cert_path, key_path) = old.write(dir.path());
    let mut overrides = tls_overrides(&cert_path, &key_path).to_vec();
    overrides.push(("admin.bind", "127.0.0.1:0"));
    let server = TestServer::start(&overrides);
    let admin = server.admin_addr.expect("admin listener");
    let both = [&old, &new];
    assert_eq!(presented_certificate(server.addr, &both).await, old.der);

    let url = format!("wss://{}/v1/stream?{S16_48K}", server.addr);
    let mut before = wss_client(&url, &[&old]).await;
    new.write(dir.path());
    let reload = format!("https://{admin}/v1/admin/reload");
    let reply = https("POST", &reload, &[&old], None);
    assert_eq!(reply.expect(200)["status"], "reloaded");

    assert_eq!(presented_certificate(server.addr, &both).await, new.der);
    assert_eq!(presented_certificate(admin, &both).await, new.der);
    let mut after = wss_client(&url, &[&new]).await;
    let pcm = speech_pcm();
    for client in [&mut before, &mut after] {
        let events = client.stream_and_flush(&pcm, 9600).await;
        assert_eq!(segments(&events).len(), 1, "{events:?}");
    }
    before.stop().await;
    after.stop().await;
}

/// A reload that finds an invalid certificate file is refused (400 `invalid_config` naming
/// the key), and the running certificate stays.
#[tokio::test]
async fn reload_with_an_invalid_certificate_keeps_the_running_one() {
    let dir = temp_dir("tls");
    let cert = TestCert::new("voxrt test");
    let (cert_path, key_path) = cert.write(dir.path());
    let server = TestServer::start(&tls_overrides(&cert_path, &key_path));
    let base = format!("https://{}", server.addr);

    std::fs::write(&cert_path, "not a certificate\n").expect("write");
    let reply = https("POST", &format!("{base}/v1/admin/reload"), &[&cert], None);
    let message = reply.expect_error(400, "invalid_config");
    assert!(message.contains("server.tls.cert_file"), "{message}");
    assert_eq!(presented_certificate(server.addr, &[&cert]).await, cert.der);
}

/// Startup refuses TLS settings it cannot use, naming the key (and the file): only one of
/// the two files set, a file that is not PEM, a key that is not the certificate's.
#[test]
fn unusable_tls_settings_stop_startup_naming_the_key() {
    let dir = temp_dir("tls");
    let cert = TestCert::new("voxrt test");
    let other = TestCert::new("another");
    let (cert_path, key_path) = cert.write(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN NONSENSE-----\n").expect("write");
    let other_key = dir.path().join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).expect("write");
    let path = |p: &std::path::Path| p.to_str().expect("UTF-8").to_owned();
    let cases = [
        (path(&cert_path), String::new(), "server.tls.key_file", None),
        (String::new(), path(&key_path), "server.tls.cert_file", None),
        (
            path(&garbage),
            path(&key_path),
            "server.tls.cert_file",
            Some(path(&garbage)),
        ),
        (
            path(&cert_path),
            path(&garbage),
            "server.tls.key_file",
            Some(path(&garbage)),
        ),
        (
            path(&cert_path),
            path(&other_key),
            "server.tls.key_file",
            Some(path(&other_key)),
        ),
    ];
    for (cert_file, key_file, key, file) in cases {
        let out = voxrt()
            .env("VOXRT_SERVER__TLS__CERT_FILE", &cert_file)
            .env("VOXRT_SERVER__TLS__KEY_FILE", &key_file)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{cert_file:?} {key_file:?}: {stderr}"
        );
        assert!(stderr.contains(key), "names {key}: {stderr}");
        if let Some(file) = file {
            assert!(stderr.contains(&file), "names {file}: {stderr}");
        }
    }
}

/// `voxrt healthcheck` with the server's own TLS settings speaks https to it and exits 0.
#[test]
fn healthcheck_speaks_https_when_tls_is_on() {
    let dir = temp_dir("tls");
    let cert = TestCert::new("voxrt test");
    let (cert_path, key_path) = cert.write(dir.path());
    let (cert_file, key_file) = (
        cert_path.to_str().expect("UTF-8"),
        key_path.to_str().expect("UTF-8"),
    );
    let tls = [
        ("VOXRT_SERVER__TLS__CERT_FILE", cert_file),
        ("VOXRT_SERVER__TLS__KEY_FILE", key_file),
    ];
    let server = ServerProcess::start(&tls);
    let out = voxrt()
        .arg("healthcheck")
        .envs(tls)
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
