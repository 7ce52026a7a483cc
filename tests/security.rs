//! Security rules, each proven from both sides: the legitimate client is served, the bad one
//! gets the documented status or error code, and where a client misbehaves, a concurrent
//! well-behaved session streaming real speech keeps getting its VAD segments and `flushed`
//! (the second half of its recording is sent only after the bad client was dealt with).

mod common;
use common::process::ServerProcess;
use common::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::MaybeTlsStream;
use voxrt::actors::processors::ProcessorCatalog;
use voxrt::actors::registry::GetSession;
use voxrt::auth::hash_token;

const S16_16K: &str = "sample_rate=16000&channels=1&encoding=pcm_s16le";
const SPEECH_48K: &str = "sample_rate=48000&channels=1&encoding=pcm_s16le";

// ---------------------------------------------------------------------------------------------
// Connecting with headers, refusals, raw HTTP.
// ---------------------------------------------------------------------------------------------

/// An HTTP refusal of the upgrade, with its headers.
#[derive(Debug)]
struct Refused {
    status: u16,
    body: Value,
    headers: HeaderMap,
}

impl Refused {
    /// Asserts HTTP `status` and error `code`; returns the correlation id.
    fn expect(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.body["error"]["code"], code, "{self:?}");
        self.body["error"]["correlation_id"]
            .as_str()
            .expect("correlation_id")
            .to_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a 429 with `code` and a `Retry-After` of at least one whole second.
    fn expect_retry_after(&self, code: &str) -> u64 {
        self.expect(429, code);
        let secs: u64 = self
            .header("retry-after")
            .unwrap_or_else(|| panic!("Retry-After on 429: {self:?}"))
            .parse()
            .expect("Retry-After is whole seconds");
        assert!(secs >= 1, "{self:?}");
        secs
    }
}

/// Opens `url` with extra request `headers`: the session, or the refusal.
async fn attempt(url: &str, headers: &[(&str, &str)]) -> Result<Client, Refused> {
    let mut request = url.into_client_request().expect("request");
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    let connect = tokio::time::timeout(HANG, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect hung");
    match connect {
        Ok((ws, _)) => Ok(Client::from_stream(ws).await),
        Err(tungstenite::Error::Http(response)) => {
            let raw = response.body().clone().unwrap_or_default();
            let text = String::from_utf8_lossy(&raw).into_owned();
            assert_no_leak("HTTP refusal", &text);
            Err(Refused {
                status: response.status().as_u16(),
                body: serde_json::from_str(&text).unwrap_or(Value::Null),
                headers: response.headers().clone(),
            })
        }
        Err(e) => panic!("connect failed: {e}"),
    }
}

async fn admitted(url: &str, headers: &[(&str, &str)]) -> Client {
    match attempt(url, headers).await {
        Ok(c) => c,
        Err(r) => panic!("{url} {headers:?}: refused {r:?}"),
    }
}

async fn refused(url: &str, headers: &[(&str, &str)]) -> Refused {
    match attempt(url, headers).await {
        Err(r) => r,
        Ok(c) => panic!("{url} {headers:?}: admitted {}", c.started),
    }
}

/// Pings and stops an admitted session: it really works.
async fn works(mut c: Client) {
    c.send_json(ping(json!("ok"))).await;
    let events = c.until("pong", &mut Vec::new()).await;
    assert!(of_type(&events, "error").is_empty(), "{events:?}");
    let (events, code) = c.stop().await;
    assert_eq!(code, Some(1000), "{events:?}");
}

/// A raw HTTP/1.1 exchange (`Connection: close`): status and lower-cased headers.
async fn http(addr: std::net::SocketAddr, head: &str) -> (u16, Vec<(String, String)>) {
    let text = common::http::raw_exchange(addr, head).await;
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("HTTP response: {text}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------------
// The well-behaved concurrent session.
// ---------------------------------------------------------------------------------------------

/// 50 ms of 48 kHz mono s16.
const HEALTHY_CHUNK: usize = 4800;

/// Real speech (alsa Front_Center) with 0.5 s of silence before and 1 s after, as 48 kHz
/// mono s16; and its length in ms.
fn speech_clip() -> (Vec<u8>, u64) {
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    assert_eq!(rate, 48_000);
    let clip = audio::padded(&speech[..speech.len() / 480 * 480], rate, 0.5, 1.0);
    let ms = clip.len() as u64 / 48;
    (audio::s16le(&clip, 1), ms)
}

/// A session streaming speech: the first half of the recording is sent before
/// [`Healthy::start`] returns, the rest (then `flush` and `stop`) only after
/// [`Healthy::finish`] is called. A reader task reads everything meanwhile.
struct Healthy {
    go: oneshot::Sender<()>,
    sender: JoinHandle<()>,
    reader: JoinHandle<(Vec<Value>, Option<u16>)>,
    clip_ms: u64,
    half_ms: u64,
    chunks: u64,
}

impl Healthy {
    /// `paced`: send at real time (for servers that limit the audio rate).
    async fn start(client: Client, paced: bool) -> Healthy {
        let (pcm, clip_ms) = speech_clip();
        let chunks: Vec<Vec<u8>> = pcm.chunks(HEALTHY_CHUNK).map(<[u8]>::to_vec).collect();
        let n = chunks.len();
        let half = n / 2;
        let (mut sink, mut stream) = client.split();
        let reader = tokio::spawn(async move {
            let mut events = Vec::new();
            loop {
                match stream.recv().await {
                    Received::Event(v) => events.push(v),
                    Received::Audio(_) => {}
                    Received::Closed(c) => return (events, c.map(|(code, _)| code)),
                }
            }
        });
        let (half_tx, half_rx) = oneshot::channel();
        let (go_tx, go_rx) = oneshot::channel::<()>();
        let sender = tokio::spawn(async move {
            let mut tick = paced.then(|| {
                let mut t = tokio::time::interval(Duration::from_millis(50));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let (mut half_tx, mut go_rx) = (Some(half_tx), Some(go_rx));
            for (i, chunk) in chunks.into_iter().enumerate() {
                if i == half {
                    let _ = half_tx.take().expect("once").send(());
                    go_rx.take().expect("once").await.expect("go");
                }
                if let Some(t) = &mut tick {
                    t.tick().await;
                }
                sink.send_audio(chunk).await;
            }
            sink.send_json(json!({"type": "flush"})).await;
            sink.send_json(json!({"type": "stop"})).await;
        });
        half_rx.await.expect("first half sent");
        Healthy {
            go: go_tx,
            sender,
            reader,
            clip_ms,
            half_ms: (half * HEALTHY_CHUNK / 96) as u64,
            chunks: n as u64,
        }
    }

    /// Sends the rest; asserts the session got its speech segments (ending after the
    /// second half was sent), `flushed` for all of it, no error, and closed normally.
    async fn finish(self) {
        self.go.send(()).expect("sender waiting");
        tokio::time::timeout(HANG, self.sender)
            .await
            .expect("healthy sender hung")
            .expect("healthy sender");
        let (events, code) = tokio::time::timeout(HANG, self.reader)
            .await
            .expect("healthy reader hung")
            .expect("healthy reader");
        assert!(
            of_type(&events, "error").is_empty(),
            "healthy session got errors: {:?}",
            of_type(&events, "error")
        );
        let segs = segments(&events);
        assert!(!segs.is_empty(), "speech was detected: {events:?}");
        let last_end = segs.last().expect("segment").1;
        assert!(
            last_end > self.half_ms && last_end <= self.clip_ms,
            "speech_end {last_end} ms from audio sent after the bad client (half at {} ms, clip {} ms)",
            self.half_ms,
            self.clip_ms
        );
        let flushed = of_type(&events, "flushed");
        assert_eq!(flushed.len(), 1, "{events:?}");
        assert_eq!(flushed[0]["audio_ms"], self.clip_ms, "{events:?}");
        let closed = closed_event(&events);
        assert_eq!(closed["reason"], "client_stop", "{closed}");
        assert_eq!(closed["stats"]["chunks_in"], self.chunks, "{closed}");
        assert_eq!(closed["stats"]["chunks_dropped"], 0, "{closed}");
        assert_eq!(code, Some(1000));
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials.
// ---------------------------------------------------------------------------------------------

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

const HS_SECRET: &str = "a-test-hs256-secret-of-at-least-32-bytes!";

fn hs256(secret: &str, claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

/// Claims valid for an hour, for audience `voxrt`, merged with `extra`.
fn claims(extra: Value) -> Value {
    let mut c = json!({"sub": "user-42", "aud": "voxrt", "exp": unix_now() + 3600});
    for (k, v) in extra.as_object().expect("object") {
        c[k] = v.clone();
    }
    c
}

/// Unpadded base64url, for hand-made tokens.
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..=group.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// An openssl-generated key pair (`genpkey` args): (PKCS#8 private PEM, public PEM path).
fn openssl_keypair(
    dir: &tempfile::TempDir,
    name: &str,
    genpkey: &[&str],
) -> Option<(Vec<u8>, String)> {
    let private = dir.path().join(format!("{name}.key"));
    let public = dir.path().join(format!("{name}.pub.pem"));
    let ok = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(genpkey)
        .arg("-out")
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?
        .success()
        && std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .ok()?
            .success();
    ok.then(|| {
        (
            std::fs::read(&private).expect("private key"),
            public.to_str().expect("UTF-8 path").to_owned(),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// 1-3: API keys and JWTs.
// ---------------------------------------------------------------------------------------------

/// Rule 1. With `auth.required` and one API key: no credential, a wrong key, or anything
/// but exactly the key (case, prefix, extension, trailing space, its hash, another scheme)
/// gets 401 `unauthorized` with `WWW-Authenticate: Bearer`; the key as `Authorization:
/// Bearer` (scheme in any case) or as `?access_token=` opens a session. A session already
/// streaming is unaffected.
#[tokio::test]
async fn api_key_required_exact_key_passes_anything_else_gets_401() {
    let hash = hash_token("key-one");
    let server = TestServer::start_with_env(
        &[("VOXRT_AUTH__API_KEYS_SHA256", &hash)],
        &[
            ("auth.required", "true"),
            ("auth.failures_per_minute_per_ip", "1000"),
        ],
        ProcessorCatalog::with_builtins(),
    );
    let url = server.url(S16_16K);
    let healthy = Healthy::start(
        admitted(
            &server.url(SPEECH_48K),
            &[("authorization", &bearer("key-one"))],
        )
        .await,
        false,
    )
    .await;

    let wrong: Vec<(String, Vec<(&str, String)>)> = vec![
        (url.clone(), vec![]),
        (url.clone(), vec![("authorization", bearer("key-two"))]),
        (url.clone(), vec![("authorization", bearer("Key-one"))]),
        (url.clone(), vec![("authorization", bearer("key-on"))]),
        (url.clone(), vec![("authorization", bearer("key-one2"))]),
        (url.clone(), vec![("authorization", bearer(&hash))]),
        (url.clone(), vec![("authorization", "Basic key-one".into())]),
        (url.clone(), vec![("authorization", "key-one".into())]),
        (format!("{url}&access_token=key-two"), vec![]),
        (format!("{url}&access_token=key-one%20"), vec![]),
        (format!("{url}&access_token=KEY-ONE"), vec![]),
    ];
    for (url, headers) in &wrong {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = refused(url, &headers).await;
        r.expect(401, "unauthorized");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer"),
            "{url} {headers:?}: WWW-Authenticate {challenge:?}"
        );
        assert!(r.header("retry-after").is_none(), "{r:?}");
    }

    works(admitted(&url, &[("authorization", &bearer("key-one"))]).await).await;
    works(admitted(&url, &[("authorization", "bearer key-one")]).await).await;
    works(admitted(&format!("{url}&access_token=key-one"), &[]).await).await;
    healthy.finish().await;
}

/// Rule 2. With keys configured but `auth.required=false`, a client without a credential
/// is admitted anonymously, but a wrong credential (header or `access_token`) is never
/// silently downgraded to anonymous: 401. The right key still works.
#[tokio::test]
async fn optional_auth_admits_anonymous_but_refuses_a_wrong_credential() {
    let server = TestServer::start_with_env(
        &[("VOXRT_AUTH__API_KEYS_SHA256", &hash_token("key-one"))],
        &[("auth.required", "false")],
        ProcessorCatalog::with_builtins(),
    );
    let url = server.url(S16_16K);
    let healthy = Healthy::start(admitted(&server.url(SPEECH_48K), &[]).await, false).await;
    works(admitted(&url, &[]).await).await;
    refused(&url, &[("authorization", "Bearer not-the-key")])
        .await
        .expect(401, "unauthorized");
    refused(&format!("{url}&access_token=not-the-key"), &[])
        .await
        .expect(401, "unauthorized");
    works(admitted(&url, &[("authorization", "Bearer key-one")]).await).await;
    healthy.finish().await;
}

/// Rule 3. HS256 JWTs (audience `voxrt`): a valid token passes as a Bearer header and as
/// `access_token`; expired -> 401 `token_expired`; wrong `aud`, `nbf` in the future, a bad
/// signature, a missing `exp`, and `alg: none` -> 401 `unauthorized`. A `session_ttl_s`
/// claim shorter than the configured TTL is reported in `session.started.limits` and
/// enforced (close 4001); a longer one does not raise the configured TTL. RS256 and ES256
/// with `auth.jwt.public_key_file`: the key pair's tokens pass, another key's and an HS256
/// token keyed with the public key (algorithm confusion) do not.
#[tokio::test]
async fn jwt_valid_tokens_pass_invalid_ones_get_401_and_claims_only_tighten_ttl() {
    let server = TestServer::start(&[
        ("auth.required", "true"),
        ("auth.failures_per_minute_per_ip", "1000"),
        ("auth.jwt.algorithm", "HS256"),
        ("auth.jwt.hs256_secret", HS_SECRET),
        ("auth.jwt.audience", "voxrt"),
        ("auth.jwt.leeway_s", "5"),
    ]);
    let url = server.url(S16_16K);
    let good = hs256(HS_SECRET, &claims(json!({})));
    let healthy = Healthy::start(
        admitted(
            &server.url(SPEECH_48K),
            &[("authorization", &bearer(&good))],
        )
        .await,
        false,
    )
    .await;

    works(admitted(&url, &[("authorization", &bearer(&good))]).await).await;
    works(admitted(&format!("{url}&access_token={good}"), &[]).await).await;

    let expired = hs256(
        HS_SECRET,
        &claims(json!({"exp": unix_now() - 3600, "iat": unix_now() - 7200})),
    );
    refused(&url, &[("authorization", &bearer(&expired))])
        .await
        .expect(401, "token_expired");
    refused(&format!("{url}&access_token={expired}"), &[])
        .await
        .expect(401, "token_expired");
    let mut no_exp = claims(json!({}));
    no_exp.as_object_mut().expect("object").remove("exp");
    let alg_none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims(json!({})).to_string().as_bytes())
    );
    let unauthorized = [
        (
            "wrong aud",
            hs256(HS_SECRET, &claims(json!({"aud": "other"}))),
        ),
        (
            "nbf ahead",
            hs256(HS_SECRET, &claims(json!({"nbf": unix_now() + 3600}))),
        ),
        (
            "other secret",
            hs256(
                "another-secret-of-at-least-32-bytes-long",
                &claims(json!({})),
            ),
        ),
        ("no exp", hs256(HS_SECRET, &no_exp)),
        ("alg none", alg_none),
        ("truncated signature", good[..good.len() - 4].to_owned()),
    ];
    for (what, token) in &unauthorized {
        let r = refused(&url, &[("authorization", &bearer(token))]).await;
        assert_eq!(r.body["error"]["code"], "unauthorized", "{what}: {r:?}");
        r.expect(401, "unauthorized");
    }

    // TTL claims can only tighten.
    let configured = 14_400;
    let c = admitted(
        &url,
        &[(
            "authorization",
            &bearer(&hs256(HS_SECRET, &claims(json!({"session_ttl_s": 60})))),
        )],
    )
    .await;
    assert_eq!(c.started["limits"]["session_ttl_s"], 60, "{}", c.started);
    works(c).await;
    let c = admitted(
        &url,
        &[(
            "authorization",
            &bearer(&hs256(
                HS_SECRET,
                &claims(json!({"session_ttl_s": 10 * configured})),
            )),
        )],
    )
    .await;
    assert_eq!(
        c.started["limits"]["session_ttl_s"], configured,
        "{}",
        c.started
    );
    works(c).await;
    let mut c = admitted(
        &url,
        &[(
            "authorization",
            &bearer(&hs256(HS_SECRET, &claims(json!({"session_ttl_s": 1})))),
        )],
    )
    .await;
    let (events, code) = c.drain().await;
    assert_eq!(closed_event(&events)["reason"], "ttl_expired", "{events:?}");
    assert_eq!(code, Some(4001), "the token's TTL is enforced");
    healthy.finish().await;

    // Asymmetric keys.
    let dir = temp_dir("jwt");
    let kinds = [
        (
            "ES256",
            Algorithm::ES256,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
        ),
        (
            "RS256",
            Algorithm::RS256,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
        ),
    ];
    for (name, alg, genpkey) in kinds {
        let (Some((private, public)), Some((other_private, _))) = (
            openssl_keypair(&dir, name, genpkey),
            openssl_keypair(&dir, &format!("{name}-other"), genpkey),
        ) else {
            panic!("openssl could not make a {name} key pair (scripts/test installs openssl)");
        };
        let key = |pem: &[u8]| match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem).expect("EC key"),
            _ => EncodingKey::from_rsa_pem(pem).expect("RSA key"),
        };
        let server = TestServer::start(&[
            ("auth.required", "true"),
            ("auth.failures_per_minute_per_ip", "1000"),
            ("auth.jwt.algorithm", name),
            ("auth.jwt.public_key_file", &public),
            ("auth.jwt.audience", "voxrt"),
        ]);
        let url = server.url(S16_16K);
        let token = encode(&Header::new(alg), &claims(json!({})), &key(&private)).expect("sign");
        works(admitted(&url, &[("authorization", &bearer(&token))]).await).await;
        works(admitted(&format!("{url}&access_token={token}"), &[]).await).await;
        let forged =
            encode(&Header::new(alg), &claims(json!({})), &key(&other_private)).expect("sign");
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims(json!({})),
            &EncodingKey::from_secret(&std::fs::read(&public).expect("public key")),
        )
        .expect("sign");
        let expired = encode(
            &Header::new(alg),
            &claims(json!({"exp": unix_now() - 3600})),
            &key(&private),
        )
        .expect("sign");
        for (what, token, code) in [
            ("another key", forged, "unauthorized"),
            ("HS256 keyed with the public key", confused, "unauthorized"),
            ("expired", expired, "token_expired"),
        ] {
            let r = refused(&url, &[("authorization", &bearer(&token))]).await;
            assert_eq!(r.body["error"]["code"], code, "{name} {what}: {r:?}");
            r.expect(401, code);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4-5: failed-credential limit, audit log, redaction (the real binary's logs).
// ---------------------------------------------------------------------------------------------

/// Reads log lines into `seen` until `done(seen)`; panics after [`HANG`].
fn read_logs(
    server: &ServerProcess,
    seen: &mut Vec<Value>,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) {
    let deadline = Instant::now() + HANG;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.logs.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(e) => panic!("waiting for {what}: {e}; lines so far: {seen:#?}"),
        }
    }
}

/// Asserts no log line mentions any of `secrets`.
fn assert_logs_never_contain(lines: &[Value], secrets: &[&str]) {
    for line in lines {
        let text = line.to_string();
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "a log line holds the credential {secret:?}: {text}"
            );
        }
    }
}

fn audit_failures(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l["target"] == "voxrt::audit" && l["outcome"] != "granted")
        .collect()
}

/// Rule 4. With `auth.failures_per_minute_per_ip=3`: three wrong keys get 401, the fourth
/// 429 `auth_rate_limited` with `Retry-After` >= 1; the right key still connects and a
/// session already open keeps streaming. Each failure is an audit line (target
/// `voxrt::audit`) with peer, outcome and the correlation id of its refusal body, and no log
/// line holds a presented key.
#[tokio::test]
async fn failed_credentials_are_rate_limited_per_address_and_audited_without_the_key() {
    const GOOD: &str = "vx-good-key-3f9a1c";
    let wrong = [
        "vx-wrong-key-a17e",
        "vx-wrong-key-b28f",
        "vx-wrong-key-c39d",
        "vx-wrong-key-d40b",
    ];
    let hash = hash_token(GOOD);
    let server = ServerProcess::start(&[
        ("VOXRT_AUTH__REQUIRED", "true"),
        ("VOXRT_AUTH__API_KEYS_SHA256", &hash),
        ("VOXRT_AUTH__FAILURES_PER_MINUTE_PER_IP", "3"),
    ]);
    let url = server.url(S16_16K);
    let healthy = Healthy::start(
        admitted(&server.url(SPEECH_48K), &[("authorization", &bearer(GOOD))]).await,
        false,
    )
    .await;

    let mut refusals = Vec::new();
    for key in &wrong[..3] {
        let r = refused(&url, &[("authorization", &bearer(key))]).await;
        let cid = r.expect(401, "unauthorized");
        refusals.push((cid, "denied"));
    }
    let r = refused(&format!("{url}&access_token={}", wrong[3]), &[]).await;
    r.expect_retry_after("auth_rate_limited");
    refusals.push((r.expect(429, "auth_rate_limited"), "rate_limited"));
    // Still limited, even without a credential (a failure too).
    refused(&url, &[])
        .await
        .expect_retry_after("auth_rate_limited");

    // The right key is not a failure: it still gets in, and the open session streams on.
    works(admitted(&url, &[("authorization", &bearer(GOOD))]).await).await;
    healthy.finish().await;

    let mut lines = Vec::new();
    read_logs(&server, &mut lines, "5 audit failure lines", |l| {
        audit_failures(l).len() >= 5
    });
    read_logs(&server, &mut lines, "the granted audit line", |l| {
        l.iter()
            .filter(|l| l["target"] == "voxrt::audit" && l["outcome"] == "granted")
            .count()
            >= 2
    });
    lines.extend(server.logs.try_iter());
    let mut secrets = wrong.to_vec();
    secrets.push(GOOD);
    assert_logs_never_contain(&lines, &secrets);
    let failures = audit_failures(&lines);
    let outcomes: Vec<&str> = failures
        .iter()
        .map(|l| l["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        outcomes,
        ["denied", "denied", "denied", "rate_limited", "rate_limited"],
        "{failures:#?}"
    );
    for line in &failures {
        assert_eq!(line["peer"], "127.0.0.1", "{line}");
        let cid = line["correlation_id"].as_str().unwrap_or("");
        uuid::Uuid::parse_str(cid).unwrap_or_else(|_| panic!("correlation id: {line}"));
    }
    // An operator handed a refusal's correlation id finds its audit line.
    for (cid, outcome) in &refusals {
        assert!(
            failures
                .iter()
                .any(|l| l["correlation_id"] == cid.as_str() && l["outcome"] == *outcome),
            "no voxrt::audit line carries the correlation id {cid} of the {outcome} refusal \
             the client got; audit lines: {failures:#?}"
        );
    }
}

/// Rule 5. With every log line enabled (trace), `access_token` values never reach the log:
/// a valid key (a session that streams and stops), an invalid one (401), and a key in the
/// `Authorization` header. The access log line for `/v1/stream` carries
/// `access_token=%5Bredacted%5D` in its query.
#[tokio::test]
async fn access_token_never_reaches_the_log_even_at_trace() {
    const VALID: &str = "vxSECRETq7Hc2Lm9Zt4W";
    const INVALID: &str = "vxINVALIDp3Kd8Rn1Yb6";
    const HEADER_KEY: &str = "vxHEADERr5Jf0Tw2Nc8";
    let keys = format!("{},{}", hash_token(VALID), hash_token(HEADER_KEY));
    let server = ServerProcess::start(&[
        ("VOXRT_LOG__LEVEL", "trace"),
        ("VOXRT_AUTH__REQUIRED", "true"),
        ("VOXRT_AUTH__API_KEYS_SHA256", &keys),
    ]);
    let url = server.url(S16_16K);

    refused(&format!("{url}&access_token={INVALID}"), &[])
        .await
        .expect(401, "unauthorized");
    let mut c = admitted(&format!("{url}&access_token={VALID}"), &[]).await;
    let id = c.started["session_id"].as_str().expect("id").to_owned();
    let pcm = audio::s16le(&audio::tone(16_000, 440.0, 0.3, 0.3), 1);
    let events = c.stream_and_flush(&pcm, 1600).await;
    assert_eq!(events.last().expect("flushed")["audio_ms"], 300);
    let (_, code) = c.stop().await;
    assert_eq!(code, Some(1000));
    works(admitted(&url, &[("authorization", &bearer(HEADER_KEY))]).await).await;

    let mut lines = Vec::new();
    let closed = |l: &Value| l["message"] == "session closed";
    read_logs(&server, &mut lines, "both sessions to close", |l| {
        l.iter().filter(|l| closed(l)).count() >= 2
    });
    lines.extend(server.logs.try_iter());
    assert!(
        lines
            .iter()
            .any(|l| closed(l) && l.to_string().contains(&id)),
        "the streamed session's close is logged"
    );
    assert_logs_never_contain(&lines, &[VALID, INVALID, HEADER_KEY]);
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "voxrt::access" && l["path"] == "/v1/stream")
        .collect();
    let redacted = |status: u64| {
        access.iter().any(|l| {
            l["status"] == status
                && l["query"]
                    .as_str()
                    .is_some_and(|q| q.contains("access_token=%5Bredacted%5D"))
        })
    };
    assert!(redacted(101), "accepted: {access:#?}");
    assert!(redacted(401), "refused: {access:#?}");
}

// ---------------------------------------------------------------------------------------------
// 6-7: origins, CORS, new sessions per address.
// ---------------------------------------------------------------------------------------------

/// Rule 6. `security.allowed_origins=["https://app.example"]`: an upgrade from another
/// origin gets 403 `origin_not_allowed`; from the allowed origin, or without `Origin`
/// (non-browser clients), the session starts. HTTP endpoints send CORS headers to the
/// allowed origin only, and answer its preflight for `POST /v1/admin/reload`.
#[tokio::test]
async fn only_allowed_origins_open_sessions_and_get_cors_headers() {
    let server = TestServer::start_with_env(
        &[("VOXRT_SECURITY__ALLOWED_ORIGINS", "https://app.example")],
        &[],
        ProcessorCatalog::with_builtins(),
    );
    let url = server.url(S16_16K);
    let healthy = Healthy::start(server.connect(SPEECH_48K).await, false).await;
    for evil in [
        "https://evil.example",
        "http://app.example",
        "https://app.example.evil.example",
        "https://app.example:8443",
        "null",
    ] {
        let r = refused(&url, &[("origin", evil)]).await;
        r.expect(403, "origin_not_allowed");
    }
    works(admitted(&url, &[("origin", "https://app.example")]).await).await;
    works(admitted(&url, &[]).await).await;
    healthy.finish().await;

    for path in ["/health", "/v1/stats"] {
        let get = |origin: &str| {
            format!(
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n"
            )
        };
        let (status, headers) = http(server.addr, &get("https://app.example")).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            Some("https://app.example"),
            "{path}: {headers:?}"
        );
        let (_, headers) = http(server.addr, &get("https://evil.example")).await;
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            None,
            "{path}: {headers:?}"
        );
    }
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /v1/admin/reload HTTP/1.1\r\nHost: localhost\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: authorization\r\nConnection: close\r\n\r\n"
        )
    };
    let (status, headers) = http(server.addr, &preflight("https://app.example")).await;
    assert!((200..300).contains(&status), "{status} {headers:?}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example"),
        "{headers:?}"
    );
    let methods = header(&headers, "access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("POST"), "{headers:?}");
    let allowed = header(&headers, "access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{headers:?}");
    let (_, headers) = http(server.addr, &preflight("https://evil.example")).await;
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        None,
        "{headers:?}"
    );
}

/// Rule 7. `security.new_sessions_per_minute_per_ip=3`: the fourth session within the
/// minute gets 429 `rate_limited` with `Retry-After`; the sessions already open are
/// unaffected and stream on.
#[tokio::test]
async fn new_sessions_per_minute_per_address_are_limited_open_ones_go_on() {
    let server = TestServer::start(&[("security.new_sessions_per_minute_per_ip", "3")]);
    let url = server.url(S16_16K);
    let healthy = Healthy::start(server.connect(SPEECH_48K).await, false).await;
    let second = admitted(&url, &[]).await;
    let third = admitted(&url, &[]).await;
    let r = refused(&url, &[]).await;
    let secs = r.expect_retry_after("rate_limited");
    assert!(secs <= 60, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains('3')),
        "names the limit: {r:?}"
    );
    works(second).await;
    works(third).await;
    healthy.finish().await;
    let stats = server.registry_stats().await;
    assert_eq!(stats.admitted_total, 3, "the refused attempt took no slot");
}

// ---------------------------------------------------------------------------------------------
// 8-11: per-session limits.
// ---------------------------------------------------------------------------------------------

/// Rule 8. `session.max_control_messages_per_s=5`: 5 pings in a burst all get pongs; 50 at
/// once get at most the burst answered, then `rate_limited` (fatal) and close 1008. A
/// concurrent session streaming speech is unaffected.
#[tokio::test]
async fn control_message_flood_is_closed_1008_rate_limited() {
    let server = TestServer::start(&[("session.max_control_messages_per_s", "5")]);
    let healthy = Healthy::start(server.connect(SPEECH_48K).await, false).await;

    let mut legit = server.connect(S16_16K).await;
    assert_eq!(legit.started["limits"]["max_control_messages_per_s"], 5);
    legit
        .send_batch(
            (0..5)
                .map(|i| Message::Text(ping(json!(i)).to_string().into()))
                .collect(),
        )
        .await;
    let mut pongs = Vec::new();
    while pongs.len() < 5 {
        match legit.recv().await {
            Received::Event(v) if v["type"] == "pong" => pongs.push(v["id"].clone()),
            Received::Event(v) => assert_ne!(v["type"], "error", "{v}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pongs, (0..5).map(|i| json!(i)).collect::<Vec<_>>());

    let mut bad = server.connect(S16_16K).await;
    bad.send_batch(
        (0..50)
            .map(|i| Message::Text(ping(json!(i)).to_string().into()))
            .collect(),
    )
    .await;
    let events = expect_fatal(&mut bad, "rate_limited", 1008).await;
    let answered = of_type(&events, "pong").len();
    assert!((5..50).contains(&answered), "{answered} pongs: {events:?}");

    // The legitimate session is still fine (closed with a close frame, not a control
    // message, so its bucket does not matter).
    legit.send(Message::Close(None)).await;
    let (events, _) = legit.drain().await;
    assert!(of_type(&events, "error").is_empty(), "{events:?}");
    healthy.finish().await;
}

/// Rule 9. `session.max_realtime_factor=2`, `session.realtime_burst_s=2`: 20 s of audio sent
/// as fast as possible is accepted for the burst (at least 2 s) and then closed 1008
/// `rate_limited`; 1.5 s at once then `flush` is a legitimate burst and gets `flushed`. A
/// concurrent session streaming speech at real time is unaffected.
#[tokio::test]
async fn audio_faster_than_the_realtime_factor_is_closed_1008_after_the_burst() {
    let server = TestServer::start(&[
        ("session.max_realtime_factor", "2"),
        ("session.realtime_burst_s", "2"),
    ]);
    let healthy = Healthy::start(server.connect(SPEECH_48K).await, true).await;

    let tone = |secs| audio::s16le(&audio::tone(16_000, 300.0, 0.3, secs), 1);
    let mut legit = server.connect(S16_16K).await;
    let events = legit.stream_and_flush(&tone(1.5), 1600).await;
    assert!(of_type(&events, "error").is_empty(), "{events:?}");
    assert_eq!(events.last().expect("flushed")["audio_ms"], 1500);
    let (_, code) = legit.stop().await;
    assert_eq!(code, Some(1000));

    let mut bad = server.connect(S16_16K).await;
    for chunk in tone(20.0).chunks(3200) {
        if bad
            .try_send(Message::Binary(chunk.to_vec().into()))
            .await
            .is_err()
        {
            break; // closed by the server
        }
    }
    let events = expect_fatal(&mut bad, "rate_limited", 1008).await;
    let accepted_ms = closed_event(&events)["stats"]["chunks_in"]
        .as_u64()
        .expect("chunks_in")
        * 100;
    assert!(
        (2000..20_000).contains(&accepted_ms),
        "accepted {accepted_ms} ms before the limit: {events:?}"
    );
    healthy.finish().await;
}

/// Rule 10. `session.max_json_depth=4`: a control message nested 6 deep gets a non-fatal
/// `json_too_deep` and the session goes on; 4 deep is answered; brackets inside strings
/// (even after escaped quotes) do not count.
#[tokio::test]
async fn json_nested_too_deep_is_a_non_fatal_error() {
    let server = TestServer::start(&[("session.max_json_depth", "4")]);
    let mut c = server.connect(S16_16K).await;
    assert_eq!(c.started["limits"]["max_json_depth"], 4);

    c.send_text(r#"{"type":"ping","id":[[[[[1]]]]]}"#).await;
    c.send_json(ping(json!("after"))).await;
    let events = c.until("pong", &mut Vec::new()).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["code"], "json_too_deep", "{events:?}");
    assert_eq!(events[0]["fatal"], false, "{events:?}");
    assert_eq!(events[1]["id"], "after");

    for (text, id) in [
        (r#"{"type":"ping","id":[[[1]]]}"#, json!([[[1]]])),
        (
            r#"{"type":"ping","id":"[[[[[[[[{{{{"}"#,
            json!("[[[[[[[[{{{{"),
        ),
        (
            r#"{"type":"ping","id":"\"[[[[[[\\\"{{{{{"}"#,
            json!("\"[[[[[[\\\"{{{{{"),
        ),
    ] {
        c.send_text(text).await;
        let events = c.until("pong", &mut Vec::new()).await;
        assert_eq!(events.len(), 1, "{text}: {events:?}");
        assert_eq!(events[0]["id"], id, "{text}");
    }
    let (events, code) = c.stop().await;
    assert_eq!(code, Some(1000), "{events:?}");
}

/// Rule 11. Frame sizes: a binary frame over `session.max_binary_frame_bytes` (and over the
/// codec limit) gets `frame_too_large` and close 1009 while a concurrent session streams
/// speech in frames within the limit. The text-frame side (`text_frame_too_large`, 1009,
/// with a concurrent healthy session) and the exact boundaries are in tests/bad_input.rs
/// (`text_frame_over_limit_is_fatal_1009_and_server_keeps_serving`,
/// `binary_frame_just_over_binary_limit_is_fatal_1009`,
/// `misbehaving_sessions_do_not_affect_a_concurrent_healthy_session`).
#[tokio::test]
async fn oversized_binary_frame_is_closed_1009_others_stream_on() {
    let server = TestServer::start(&[("session.max_binary_frame_bytes", "8192")]);
    let healthy = Healthy::start(server.connect(SPEECH_48K).await, false).await;
    let mut bad = server.connect(S16_16K).await;
    let _ = bad
        .try_send(Message::Binary(vec![0u8; 100_000].into()))
        .await;
    expect_fatal(&mut bad, "frame_too_large", 1009).await;
    healthy.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 12-13: slow clients.
// ---------------------------------------------------------------------------------------------

/// Connects raw TCP, writes `head`, and waits for the server to close: returns what it
/// answered (if anything) and how long it took.
async fn held_open(addr: std::net::SocketAddr, head: &'static str) -> (String, Duration) {
    let began = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let read = tokio::time::timeout(HANG, tcp.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("server kept a connection with {head:?} open"));
    // A reset counts as closed too.
    let _ = read;
    (String::from_utf8_lossy(&raw).into_owned(), began.elapsed())
}

/// Rule 12. `server.request_header_timeout_ms=500`: a connection that sends half a request
/// head, and one that sends nothing, are dropped (after the timeout, well before the 5 s
/// default), never upgraded; a session that completed its upgrade streams on meanwhile.
#[tokio::test]
async fn slowloris_connections_are_dropped_after_the_header_timeout() {
    let server = TestServer::start(&[("server.request_header_timeout_ms", "500")]);
    let healthy = Healthy::start(server.connect(SPEECH_48K).await, false).await;
    let partial = tokio::spawn(held_open(
        server.addr,
        "GET /v1/stream?sample_rate=16000&channels=1&encoding=pcm_s16le HTTP/1.1\r\nHost: x\r\n",
    ));
    let silent = tokio::spawn(held_open(server.addr, ""));
    for (what, task) in [("partial head", partial), ("nothing sent", silent)] {
        let (answer, took) = task.await.expect("task");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{what}: answered {answer:?}"
        );
        assert!(
            took < Duration::from_millis(4500),
            "{what}: dropped after {took:?}"
        );
    }
    healthy.finish().await;
    let stats = server.registry_stats().await;
    assert_eq!(stats.admitted_total, 1, "{stats:?}");
}

/// Rule 13. `session.max_outgoing_bytes=16384`, `session.slow_consumer_timeout_s=1`,
/// `server.tcp_user_timeout_s=2`: for a `return_audio` client with a 4 KiB receive buffer
/// that floods speech and never reads, the server's queue never exceeds twice the bound,
/// and the session ends: by `slow_consumer` (the client, once it reads, finds it and 1008)
/// or, once the kernel's buffers are full and writes stall, by the TCP user timeout. A
/// `return_audio` client that reads while sending 20 s alongside it is not closed, and a
/// concurrent session streaming speech gets its segments.
///
/// Whether the queue goes over the bound first (and returned audio is dropped, counted)
/// depends on timing: the session runs inside its connection's response stream, so once the
/// socket stops taking data the session stops too, queue and all (docs/security.md). Both
/// are printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_closed_slow_consumer_readers_are_not() {
    let server = TestServer::start(&[
        ("session.max_outgoing_bytes", "16384"),
        ("session.slow_consumer_timeout_s", "1"),
        ("session.heartbeat_interval_s", "1"),
        ("session.heartbeat_timeout_s", "120"),
        ("server.tcp_user_timeout_s", "2"),
        // Resume off: the slow consumer's session ends rather than detaching
        // (tests/resume.rs covers the detach and resume).
        ("session.resume_window_s", "0"),
    ]);
    let healthy = Healthy::start(server.connect(SPEECH_48K).await, false).await;
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let speech16 = audio::resample(&speech, rate, 16_000);
    let looped = |secs: usize| -> Vec<u8> {
        let n = 16_000 * secs;
        audio::s16le(
            &speech16.iter().copied().cycle().take(n).collect::<Vec<_>>(),
            1,
        )
    };
    let query = "sample_rate=16000&channels=1&encoding=pcm_s16le&return_audio=true";

    // The client that never reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(server.addr).await.expect("connect");
    let request = server.url(query).into_client_request().expect("request");
    let (mut ws, _) = tokio::time::timeout(
        HANG,
        tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("upgrade hung")
    .expect("upgrade");
    let started: Value = match ws.next().await {
        Some(Ok(Message::Text(t))) => serde_json::from_str(&t).expect("JSON"),
        other => panic!("expected session.started: {other:?}"),
    };
    let id = uuid::Uuid::parse_str(started["session_id"].as_str().expect("id")).expect("uuid");
    let (mut sink, mut stream) = ws.split();
    // Until the server closes it: the kernel's socket buffers (megabytes, autotuned) absorb
    // the first few seconds of returned audio before the server's own queue fills.
    let pcm = looped(10);
    let flood = tokio::spawn(async move {
        for chunk in pcm.chunks(3200).cycle() {
            if sink
                .send(Message::Binary(chunk.to_vec().into()))
                .await
                .is_err()
            {
                break;
            }
        }
    });

    // A reading return_audio client alongside it.
    let legit = {
        let url = server.url(query);
        let pcm = looped(20);
        tokio::spawn(async move {
            let c = Client::connect(&url).await.expect("legit admitted");
            let (mut tx, mut rx) = c.split();
            let reader = tokio::spawn(async move {
                let (mut events, mut audio) = (Vec::new(), 0usize);
                loop {
                    match rx.recv().await {
                        Received::Event(v) => events.push(v),
                        Received::Audio(b) => audio += b.len(),
                        Received::Closed(c) => return (events, audio, c.map(|c| c.0)),
                    }
                }
            });
            for chunk in pcm.chunks(3200) {
                tx.send_audio(chunk.to_vec()).await;
            }
            tx.send_json(json!({"type": "flush"})).await;
            tx.send_json(json!({"type": "stop"})).await;
            reader.await.expect("reader")
        })
    };

    // The registry's view of its queue until the session ends.
    let deadline = Instant::now() + HANG;
    let (mut peak, mut dropped) = (0usize, 0u64);
    loop {
        let snapshot = tokio::time::timeout(
            HANG,
            server.registry.send(GetSession {
                id,
                show_peer: false,
            }),
        )
        .await
        .expect("registry hung")
        .expect("registry");
        let Some(s) = snapshot else { break };
        if std::env::var("DBG").is_ok() {
            eprintln!(
                "{:?} out={} dropped={} in={} chunks_in={} bytes_out={} idle={}",
                deadline.saturating_duration_since(Instant::now()),
                s.outgoing_bytes,
                s.outgoing_dropped,
                s.bytes_in,
                s.chunks_in,
                s.bytes_out,
                s.idle_ms
            );
        }
        peak = peak.max(s.outgoing_bytes);
        dropped = dropped.max(s.outgoing_dropped);
        assert!(
            Instant::now() < deadline,
            "the non-reading session was never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // It ends either by `slow_consumer` (its queue stayed over the bound while the session
    // could still run) or, once the kernel's buffers are full too and writes stall, by
    // TCP_USER_TIMEOUT (`connection_lost`). Either way the server stopped holding data for it.
    server
        .wait_for_stats("the slow consumer's end", |s| {
            s.closed_by_reason.get("error").copied().unwrap_or(0)
                + s.closed_by_reason
                    .get("connection_lost")
                    .copied()
                    .unwrap_or(0)
                >= 1
        })
        .await;
    println!(
        "non-reading client: queue peak {peak} B (bound 16384), returned audio dropped {dropped}"
    );
    assert!(
        peak <= 2 * 16_384 + 64 * 1024,
        "the queue never held more than twice the bound plus a frame: {peak}"
    );
    flood.abort();

    // Now read what reached the client: the error and close, unless it was reset.
    let mut errors = Vec::new();
    let mut close = None;
    loop {
        match tokio::time::timeout(HANG, stream.next())
            .await
            .expect("read hung")
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if v["type"] == "error" {
                    assert_no_leak("error event", &t);
                    errors.push(v);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                close = frame.map(|f| u16::from(f.code));
                break;
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break,
        }
    }
    if let Some(last) = errors.last() {
        assert_eq!(last["code"], "slow_consumer", "{errors:?}");
        assert_eq!(last["fatal"], true, "{errors:?}");
    }
    if close.is_some() {
        assert_eq!(close, Some(1008));
        assert!(!errors.is_empty(), "the close follows the error event");
    }

    let (events, audio, code) = tokio::time::timeout(HANG, legit)
        .await
        .expect("legit client hung")
        .expect("legit client");
    assert!(
        of_type(&events, "error").is_empty(),
        "{:?}",
        of_type(&events, "error")
    );
    assert_eq!(of_type(&events, "flushed")[0]["audio_ms"], 20_000);
    assert_eq!(closed_event(&events)["reason"], "client_stop");
    assert_eq!(code, Some(1000));
    assert!(audio > 0, "returned audio arrived");
    healthy.finish().await;
    let stats = server.registry_stats().await;
    assert_eq!(
        stats.closed_by_reason.get("client_stop"),
        Some(&2),
        "{stats:?}"
    );
}
