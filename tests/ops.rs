//! Operators' endpoints through the real server and real clients: `/health`, `/ready`,
//! `/v1/stats` and `/v1/stats/sessions/{id}` against exact client-side tallies, `/metrics`
//! through a real Prometheus text-format parser (Debian's python3-prometheus-client), config
//! reload over HTTP and SIGHUP, the admin bearer token, and `admin.bind`.
//!
//! HTTP goes through ureq (blocking) straight from the test thread: every server here runs on
//! threads of its own (in-process) or in its own process, so a blocked test thread blocks
//! nobody but the test. Nothing waits on a sleep: each step waits for the event that proves
//! the previous one happened (a `flushed` or `pong` round trip, a log line, a registry
//! counter), and the few polls are bounded loops on a condition.

mod common;
use common::http::Reply;
use common::process::{voxrt, ServerProcess};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use voxrt::actors::processors::{Processor, ProcessorCatalog, ProcessorContext};
use voxrt::actors::{AudioBlock, ServerEvent};

const S16_16K: &str = "sample_rate=16000&channels=1&encoding=pcm_s16le";
const S16_48K: &str = "sample_rate=48000&channels=1&encoding=pcm_s16le";

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// `method` `http://{addr}{path}` with an optional raw `Authorization` header value.
fn http(method: &str, addr: SocketAddr, path: &str, authorization: Option<&str>) -> Reply {
    common::http::request(method, &format!("http://{addr}{path}"), authorization)
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    http("GET", addr, path, None)
}

fn post(addr: SocketAddr, path: &str) -> Reply {
    http("POST", addr, path, None)
}

/// `GET /v1/stats`, which must answer 200.
fn stats(addr: SocketAddr) -> Value {
    get(addr, "/v1/stats").expect(200)
}

/// The config hash `/v1/stats` reports.
fn config_hash(stats: &Value) -> String {
    let hash = stats["server"]["config"]["sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("server.config.sha256 in {stats}"))
        .to_owned();
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{hash}"
    );
    hash
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------------

/// Parses the exposition with prometheus_client's parser for the format the server declared
/// (argv[1]: `openmetrics` or `text`) and prints every sample as JSON.
const PARSE_METRICS: &str = r#"
import json, sys
if sys.argv[1] == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type, "name": s.name,
                    "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// Samples of one scrape, as the Prometheus parser read them.
struct Scrape {
    content_type: String,
    samples: Vec<Value>,
}

impl Scrape {
    /// The value of the one sample named `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Value> = self
            .samples
            .iter()
            .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "exactly one sample {name}{labels:?}; found {found:?}"
        );
        found[0]["value"].as_f64().expect("numeric value")
    }

    /// The type the parser gave the family of sample `name`.
    fn family_type(&self, name: &str) -> String {
        self.samples
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["type"].as_str())
            .unwrap_or_else(|| panic!("no sample {name}"))
            .to_owned()
    }
}

/// `GET /metrics` through the Prometheus parser for the format its Content-Type declares:
/// `application/openmetrics-text` (OpenMetrics 1.0) or `text/plain; version=0.0.4` (the
/// Prometheus text format). Panics if the parser rejects the body.
fn scrape(addr: SocketAddr) -> Scrape {
    let reply = get(addr, "/metrics");
    assert_eq!(reply.status, 200, "{reply:?}");
    let format = if reply
        .content_type()
        .starts_with("application/openmetrics-text")
    {
        "openmetrics"
    } else if reply.content_type().starts_with("text/plain") {
        "text"
    } else {
        panic!("not a Prometheus exposition: {reply:?}")
    };
    let mut python = Command::new("/usr/bin/python3")
        .args(["-c", PARSE_METRICS, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 runs (scripts/test installs python3-prometheus-client)");
    python
        .stdin
        .take()
        .expect("stdin")
        .write_all(reply.body.as_bytes())
        .expect("write exposition");
    let out = python.wait_with_output().expect("parser finishes");
    assert!(
        out.status.success(),
        "the Prometheus {format} parser rejected /metrics ({}): {}\n{}",
        reply.content_type(),
        String::from_utf8_lossy(&out.stderr),
        reply.body
    );
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).expect("parser prints JSON");
    assert!(!samples.is_empty(), "{}", reply.body);
    Scrape {
        content_type: reply.content_type().to_owned(),
        samples,
    }
}

// ---------------------------------------------------------------------------------------------
// A client that tallies every byte and event exactly.
// ---------------------------------------------------------------------------------------------

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A protocol v1 client that counts what it sends and receives, to the byte.
struct Tally {
    ws: Ws,
    /// `session.started`.
    started: Value,
    /// Binary frames sent.
    chunks_sent: u64,
    /// Payload bytes of every binary and text frame sent.
    bytes_sent: u64,
    /// Text events received (`session.started` included), in order.
    events: Vec<Value>,
    /// Payload bytes of those events.
    event_bytes: u64,
}

impl Tally {
    async fn connect(url: &str) -> Tally {
        let (ws, _) = tokio::time::timeout(HANG, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect hung")
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let mut t = Tally {
            ws,
            started: Value::Null,
            chunks_sent: 0,
            bytes_sent: 0,
            events: Vec::new(),
            event_bytes: 0,
        };
        t.started = t.until("session.started").await;
        assert_eq!(t.events.len(), 1, "session.started comes first");
        t
    }

    fn id(&self) -> String {
        self.started["session_id"]
            .as_str()
            .expect("session_id")
            .to_owned()
    }

    async fn send(&mut self, msg: Message) {
        tokio::time::timeout(HANG, self.ws.send(msg))
            .await
            .expect("send hung")
            .expect("send failed");
    }

    async fn send_audio(&mut self, pcm: Vec<u8>) {
        self.chunks_sent += 1;
        self.bytes_sent += pcm.len() as u64;
        self.send(Message::Binary(pcm.into())).await;
    }

    async fn send_json(&mut self, v: Value) {
        let text = v.to_string();
        self.bytes_sent += text.len() as u64;
        self.send(Message::Text(text.into())).await;
    }

    /// Reads text events until one of `kind` (returned); every one is tallied.
    async fn until(&mut self, kind: &str) -> Value {
        loop {
            let next = tokio::time::timeout(HANG, self.ws.next())
                .await
                .expect("receive hung");
            match next {
                Some(Ok(Message::Text(t))) => {
                    self.event_bytes += t.len() as u64;
                    let v: Value = serde_json::from_str(t.as_str()).expect("server sends JSON");
                    self.events.push(v.clone());
                    if v["type"] == kind {
                        return v;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("waiting for {kind}: {other:?}; events {:?}", self.events),
            }
        }
    }

    /// Sends `stop` and reads to the close, tallying the events; returns the close code,
    /// every event the session sent and the payload bytes sent in all.
    async fn stop(mut self) -> (Option<u16>, Vec<Value>, u64) {
        self.send_json(json!({"type": "stop"})).await;
        loop {
            let next = tokio::time::timeout(HANG, self.ws.next())
                .await
                .expect("receive hung");
            match next {
                Some(Ok(Message::Text(t))) => {
                    self.events
                        .push(serde_json::from_str(t.as_str()).expect("JSON"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return (
                        frame.map(|f| u16::from(f.code)),
                        self.events,
                        self.bytes_sent,
                    )
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return (None, self.events, self.bytes_sent),
            }
        }
    }
}

/// `secs` of a 440 Hz tone at 16 kHz as s16le.
fn tone_16k(secs: f64) -> Vec<u8> {
    audio::s16le(&audio::tone(16_000, 440.0, 0.3, secs), 1)
}

/// Waits (polling the registry actor) until no session is live or half-admitted.
async fn wait_idle(server: &TestServer) {
    server
        .wait_for_stats("no sessions", |s| {
            s.sessions_active == 0 && s.sessions_reserved == 0
        })
        .await;
}

/// Connects expecting an HTTP refusal.
async fn refused(url: &str) -> Refusal {
    match Client::connect(url).await {
        Err(r) => r,
        Ok(c) => panic!("admitted: {}", c.started),
    }
}

fn assert_server_full(r: &Refusal) {
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.body.as_ref().map(|b| b["error"]["code"].clone()),
        Some(json!("server_full")),
        "{r:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. /v1/stats
// ---------------------------------------------------------------------------------------------

/// A live session's entry in `/v1/stats` and `/v1/stats/sessions/{id}` equals the client's
/// own tally exactly: chunks in/processed, payload bytes in (binary + text), events and
/// their bytes out (session.started, levels, error, pong and flushed included), audio_ms,
/// input format, last error, and per-stage mailbox depths (resampler, level+vad; all 0
/// after `flushed`); no `peer` by default.
#[tokio::test]
async fn stats_match_what_the_client_sent_and_received_exactly() {
    let server = TestServer::start(&[]);
    let mut c = Tally::connect(&server.url(S16_16K)).await;
    // 1.5 s of audio in frames of three different sizes (20, 40 and 100 ms).
    let pcm = tone_16k(1.5);
    let sizes = [640usize, 1280, 3200];
    let mut at = 0;
    let mut i = 0;
    while at < pcm.len() {
        let n = sizes[i % sizes.len()].min(pcm.len() - at);
        c.send_audio(pcm[at..at + n].to_vec()).await;
        at += n;
        i += 1;
    }
    // A non-fatal error (counted as last_error), a ping and a flush: text frames in, and
    // `flushed` proves every event of the audio before it was sent.
    c.send_json(json!({"type": "no_such_message"})).await;
    c.send_json(json!({"type": "ping", "id": "stats"})).await;
    c.send_json(json!({"type": "flush"})).await;
    let flushed = c.until("flushed").await;
    assert_eq!(flushed["audio_ms"], 1500);
    assert_eq!(
        c.events
            .iter()
            .filter(|e| e["type"] == "error" && e["code"] == "unknown_message_type")
            .count(),
        1,
        "{:?}",
        c.events
    );
    assert_eq!(of_type(&c.events, "pong").len(), 1);
    assert!(of_type(&c.events, "level").len() >= 10, "{:?}", c.events);

    let expected_input = json!({"sample_rate": 16000, "channels": 1, "encoding": "pcm_s16le"});
    let check = |s: &Value, label: &str| {
        assert_eq!(s["id"], c.id(), "{label}: {s}");
        assert_eq!(s["chunks_in"], c.chunks_sent, "{label}: {s}");
        assert_eq!(s["chunks_processed"], c.chunks_sent, "{label}: {s}");
        assert_eq!(s["chunks_dropped"], 0, "{label}: {s}");
        assert_eq!(s["bytes_in"], c.bytes_sent, "{label}: {s}");
        assert_eq!(s["events_sent"], c.events.len() as u64, "{label}: {s}");
        assert_eq!(s["bytes_out"], c.event_bytes, "{label}: {s}");
        assert_eq!(s["audio_ms"], 1500, "{label}: {s}");
        assert_eq!(s["input"], expected_input, "{label}: {s}");
        assert_eq!(s["last_error"], "unknown_message_type", "{label}: {s}");
        assert_eq!(
            s["mailbox_depth"],
            json!([
                {"stage": "resampler", "depth": 0},
                {"stage": "level+vad", "depth": 0},
            ]),
            "{label}: {s}"
        );
        assert!(
            s.get("peer").is_none(),
            "{label}: peer shown by default: {s}"
        );
        let (age, idle) = (s["age_ms"].as_u64(), s["idle_ms"].as_u64());
        assert!(
            matches!((age, idle), (Some(a), Some(i)) if i <= a),
            "{label}: {s}"
        );
    };

    let all = stats(server.addr);
    assert_eq!(all["sessions"]["total"], 1, "{all}");
    assert_eq!(all["sessions"]["offset"], 0, "{all}");
    assert_eq!(all["sessions"]["limit"], 100, "{all}");
    check(&all["sessions"]["sessions"][0], "/v1/stats");
    let one = get(server.addr, &format!("/v1/stats/sessions/{}", c.id())).expect(200);
    check(&one, "/v1/stats/sessions/{id}");

    // The rest of the document: server, registry and per-stage actors.
    assert_eq!(all["server"]["profile"], "test", "{all}");
    assert_eq!(all["server"]["version"], env!("CARGO_PKG_VERSION"), "{all}");
    assert_eq!(all["server"]["workers"], 2, "{all}");
    assert_eq!(
        all["server"]["limits"]["registry"]["max_sessions"], 2000,
        "{all}"
    );
    config_hash(&all);
    assert_eq!(all["registry"]["sessions_active"], 1, "{all}");
    assert_eq!(all["registry"]["admitted_total"], 1, "{all}");
    assert_eq!(all["registry"]["draining"], false, "{all}");
    let stage = |name: &str| {
        all["actors"]
            .as_array()
            .expect("actors")
            .iter()
            .find(|a| a["stage"] == name)
            .unwrap_or_else(|| panic!("stage {name} in {all}"))
            .clone()
    };
    // level and vad are light: they share one stage, one mailbox hop per block.
    for name in ["connection", "session", "resampler", "level+vad"] {
        assert_eq!(stage(name)["alive"], 1, "{name}: {all}");
        assert_eq!(stage(name)["mailbox_depth"], 0, "{name}: {all}");
    }
    // Every frame the client sent was one message to its connection actor.
    assert!(
        stage("connection")["messages_handled"].as_u64() >= Some(c.chunks_sent + 3),
        "{all}"
    );
    assert_eq!(
        stage("resampler")["messages_handled"],
        c.chunks_sent + 1,
        "one per chunk plus the flush: {all}"
    );

    assert_eq!(c.stop().await.0, Some(1000));
}

/// Pages of `/v1/stats` sessions: with 3 live sessions, `limit`/`offset` pages are disjoint,
/// together list each session once, oldest first (connection order, up to sessions that
/// started in the same millisecond), agree with the full list, report total 3, and repeat
/// identically. Bad paging queries are 400 `invalid_parameter` JSON; an unknown session id
/// is 404 `not_found`, a non-UUID 400.
#[tokio::test]
async fn session_pages_are_oldest_first_and_bad_queries_are_400() {
    let server = TestServer::start(&[]);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.connect(S16_16K).await);
    }
    let ids: Vec<Value> = clients
        .iter()
        .map(|c| c.started["session_id"].clone())
        .collect();
    let page = |query: &str| {
        let body = get(server.addr, &format!("/v1/stats{query}")).expect(200);
        assert_eq!(body["sessions"]["total"], 3, "{query}: {body}");
        body["sessions"].clone()
    };
    let full = page("");
    let list: Vec<Value> = full["sessions"].as_array().expect("sessions").clone();
    let listed: Vec<Value> = list.iter().map(|s| s["id"].clone()).collect();
    let mut sorted_listed = listed.clone();
    sorted_listed.sort_by_key(|v| v.to_string());
    let mut sorted_ids = ids.clone();
    sorted_ids.sort_by_key(|v| v.to_string());
    assert_eq!(sorted_listed, sorted_ids, "each live session once: {full}");
    // Oldest first: age never increases down the list, and two sessions are out of
    // connection order only if they started in the same millisecond (equal ages, same call).
    let pos = |id: &Value| ids.iter().position(|i| i == id).expect("known id");
    for w in list.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        assert!(a["age_ms"].as_u64() >= b["age_ms"].as_u64(), "{full}");
        assert!(
            pos(&a["id"]) < pos(&b["id"]) || a["age_ms"] == b["age_ms"],
            "{full}"
        );
    }

    let first = page("?limit=2");
    assert_eq!((&first["offset"], &first["limit"]), (&json!(0), &json!(2)));
    let second = page("?limit=2&offset=2");
    assert_eq!(
        (&second["offset"], &second["limit"]),
        (&json!(2), &json!(2))
    );
    let paged: Vec<Value> = first["sessions"]
        .as_array()
        .into_iter()
        .chain(second["sessions"].as_array())
        .flatten()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(paged, listed, "pages {first} {second} vs {full}");
    let beyond = page("?offset=3");
    assert_eq!(beyond["sessions"], json!([]), "{beyond}");
    let middle = page("?offset=1&limit=1");
    assert_eq!(middle["sessions"][0]["id"], listed[1], "{middle}");
    // Stable: asking again gives the same order.
    let again: Vec<Value> = page("")["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(again, listed);

    for bad in [
        "?limit=abc",
        "?offset=-1",
        "?limit=1.5",
        "?page=2",
        "?limit=99999999999999999999999",
    ] {
        get(server.addr, &format!("/v1/stats{bad}")).expect_error(400, "invalid_parameter");
    }
    let unknown = uuid::Uuid::new_v4();
    get(server.addr, &format!("/v1/stats/sessions/{unknown}")).expect_error(404, "not_found");
    get(server.addr, "/v1/stats/sessions/not-a-uuid").expect_error(400, "invalid_parameter");

    for c in clients {
        let (_, code) = c.stop().await;
        assert_eq!(code, Some(1000));
    }
    // A closed session is gone from the listing and from its own endpoint.
    wait_idle(&server).await;
    assert_eq!(stats(server.addr)["sessions"]["total"], 0);
    let gone = ids[0].as_str().expect("id");
    get(server.addr, &format!("/v1/stats/sessions/{gone}")).expect_error(404, "not_found");
}

/// With `admin.show_peer_addresses = true` session entries carry the client address
/// (127.0.0.1) in the listing and in the single-session view.
#[tokio::test]
async fn peer_address_is_shown_only_when_configured() {
    let server = TestServer::start(&[("admin.show_peer_addresses", "true")]);
    let c = server.connect(S16_16K).await;
    let id = c.started["session_id"].as_str().expect("id").to_owned();
    let all = stats(server.addr);
    assert_eq!(all["sessions"]["sessions"][0]["peer"], "127.0.0.1", "{all}");
    let one = get(server.addr, &format!("/v1/stats/sessions/{id}")).expect(200);
    assert_eq!(one["peer"], "127.0.0.1", "{one}");
    c.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. /metrics
// ---------------------------------------------------------------------------------------------

/// The `/metrics` body, read by prometheus_client's parser for the format its Content-Type
/// declares, types every family: each name starts with `voxrt_`, every counter's samples end
/// in `_total`, and the families have their documented types (counters, gauges, histograms).
#[test]
fn metrics_exposition_is_typed_by_the_parser_for_its_declared_format() {
    let server = TestServer::start(&[]);
    let m = scrape(server.addr);
    for s in &m.samples {
        let name = s["name"].as_str().expect("name");
        assert!(name.starts_with("voxrt_"), "{s}");
        if s["type"] == "counter" {
            assert!(name.ends_with("_total"), "counter sample {s}");
        }
    }
    for (name, kind) in [
        ("voxrt_sessions_active", "gauge"),
        ("voxrt_sessions_admitted_total", "counter"),
        ("voxrt_audio_seconds_total", "counter"),
        ("voxrt_chunks_dropped_total", "counter"),
        ("voxrt_event_latency_seconds_count", "histogram"),
        ("voxrt_websocket_frames_total", "counter"),
        ("voxrt_websocket_payload_bytes_total", "counter"),
        ("voxrt_stage_actors", "gauge"),
        ("voxrt_stage_messages_total", "counter"),
        ("voxrt_mailbox_depth", "gauge"),
        ("voxrt_actor_restarts_total", "counter"),
        ("voxrt_stage_processing_seconds_count", "histogram"),
        ("voxrt_event_loop_lag_seconds", "gauge"),
    ] {
        assert_eq!(
            m.family_type(name),
            kind,
            "{name} as parsed for Content-Type {}",
            m.content_type
        );
    }
}

/// `/metrics` parses with prometheus_client's parser (for its declared format), and the
/// values move with real sessions: admitted, active, audio seconds (= audio sent), WebSocket
/// frames and payload bytes in (= what the client sent) and text frames out (= events it
/// received), refusals by reason and HTTP status after a 503, closes by reason, stage
/// messages and actors, mailbox depth back to 0, and the event latency histogram.
#[tokio::test]
async fn metrics_parse_with_a_prometheus_parser_and_move_with_sessions() {
    let server = TestServer::start(&[
        ("registry.max_sessions", "1"),
        ("registry.max_sessions_per_ip", "1"),
    ]);
    let m = scrape(server.addr);
    assert_eq!(m.value("voxrt_sessions_admitted_total", &[]), 0.0);
    assert_eq!(m.value("voxrt_sessions_active", &[]), 0.0);
    assert_eq!(m.value("voxrt_audio_seconds_total", &[]), 0.0);
    let binary_in = [("direction", "in"), ("kind", "binary")];
    assert_eq!(m.value("voxrt_websocket_frames_total", &binary_in), 0.0);

    // First half: 0.5 s in 25 chunks of 20 ms, then flush.
    let mut c = Tally::connect(&server.url(S16_16K)).await;
    let pcm = tone_16k(1.0);
    let (first, second) = pcm.split_at(pcm.len() / 2);
    for chunk in first.chunks(640) {
        c.send_audio(chunk.to_vec()).await;
    }
    c.send_json(json!({"type": "flush"})).await;
    c.until("flushed").await;
    let m = scrape(server.addr);
    assert_eq!(m.value("voxrt_sessions_admitted_total", &[]), 1.0);
    assert_eq!(m.value("voxrt_sessions_active", &[]), 1.0);
    let audio = m.value("voxrt_audio_seconds_total", &[]);
    assert!((audio - 0.5).abs() < 1e-9, "audio seconds {audio}");
    assert_eq!(m.value("voxrt_websocket_frames_total", &binary_in), 25.0);
    for stage in ["session", "resampler", "level+vad"] {
        assert_eq!(
            m.value("voxrt_stage_actors", &[("stage", stage)]),
            1.0,
            "{stage}"
        );
        assert_eq!(
            m.value("voxrt_mailbox_depth", &[("stage", stage)]),
            0.0,
            "{stage}"
        );
    }
    let vad_messages = m.value("voxrt_stage_messages_total", &[("stage", "level+vad")]);
    assert!(vad_messages > 0.0);

    // A second client is refused: full.
    assert_server_full(&refused(&server.url(S16_16K)).await);
    let m = scrape(server.addr);
    assert_eq!(
        m.value("voxrt_sessions_refused_total", &[("reason", "server_full")]),
        1.0
    );
    assert_eq!(
        m.value("voxrt_http_refusals_total", &[("status", "503")]),
        1.0
    );

    // Second half, then stop.
    for chunk in second.chunks(640) {
        c.send_audio(chunk.to_vec()).await;
    }
    c.send_json(json!({"type": "flush"})).await;
    c.until("flushed").await;
    let chunks = c.chunks_sent;
    let (code, events, bytes_in) = c.stop().await;
    assert_eq!(code, Some(1000));
    assert_eq!(closed_event(&events)["reason"], "client_stop");
    server
        .wait_for_stats("the session to unregister", |s| s.closed_total == 1)
        .await;

    let m = scrape(server.addr);
    assert_eq!(m.value("voxrt_sessions_active", &[]), 0.0);
    assert_eq!(m.value("voxrt_sessions_admitted_total", &[]), 1.0);
    let audio = m.value("voxrt_audio_seconds_total", &[]);
    assert!((audio - 1.0).abs() < 1e-9, "audio seconds {audio}");
    assert_eq!(
        m.value("voxrt_websocket_frames_total", &binary_in),
        chunks as f64
    );
    assert_eq!(chunks, 50);
    assert_eq!(
        m.value(
            "voxrt_websocket_frames_total",
            &[("direction", "in"), ("kind", "text")]
        ),
        3.0,
        "flush, flush, stop"
    );
    assert_eq!(
        m.value(
            "voxrt_websocket_payload_bytes_total",
            &[("direction", "in")]
        ),
        bytes_in as f64
    );
    assert_eq!(
        m.value(
            "voxrt_websocket_frames_total",
            &[("direction", "out"), ("kind", "text")]
        ),
        events.len() as f64,
        "one text frame per event the client received"
    );
    assert_eq!(
        m.value("voxrt_sessions_closed_total", &[("reason", "client_stop")]),
        1.0
    );
    assert_eq!(m.value("voxrt_chunks_dropped_total", &[]), 0.0);
    assert!(m.value("voxrt_stage_messages_total", &[("stage", "level+vad")]) > vad_messages);
    let latency_count = m.value("voxrt_event_latency_seconds_count", &[]);
    assert!(latency_count > 0.0, "event latency observed");
    assert_eq!(
        m.value("voxrt_event_latency_seconds_bucket", &[("le", "+Inf")]),
        latency_count
    );
    assert!(m.value("voxrt_event_latency_seconds_sum", &[]) > 0.0);
    // Handling times are sampled: the first message, then one in TIMING_SAMPLE_EVERY.
    let every = voxrt::actors::metrics::TIMING_SAMPLE_EVERY;
    assert!(
        m.value(
            "voxrt_stage_processing_seconds_count",
            &[("stage", "resampler")]
        ) >= (chunks / u64::from(every)).max(1) as f64
    );
    assert_eq!(
        m.value("voxrt_actor_restarts_total", &[("stage", "registry")]),
        0.0
    );
}

// ---------------------------------------------------------------------------------------------
// 3. /health and /ready
// ---------------------------------------------------------------------------------------------

/// `/health` is 200 `{"status":"ok"}`; `/ready` is 200 until `max_sessions` (1) sessions
/// are admitted, then 503 `server_full` (the code a client would be refused with), and 200
/// again once the session has closed.
#[tokio::test]
async fn ready_is_503_server_full_until_the_session_closes() {
    let server = TestServer::start(&[
        ("registry.max_sessions", "1"),
        ("registry.max_sessions_per_ip", "1"),
    ]);
    assert_eq!(
        get(server.addr, "/health").expect(200),
        json!({"status": "ok"})
    );
    assert_eq!(
        get(server.addr, "/ready").expect(200),
        json!({"status": "ready", "sessions": 0, "max_sessions": 1})
    );
    // Admission reserved the slot before the upgrade answered.
    let c = server.connect(S16_16K).await;
    assert_eq!(
        get(server.addr, "/ready").expect(503),
        json!({"status": "not_ready", "reason": "server_full"})
    );
    assert_eq!(
        get(server.addr, "/health").expect(200),
        json!({"status": "ok"})
    );
    let (_, code) = c.stop().await;
    assert_eq!(code, Some(1000));
    wait_idle(&server).await;
    assert_eq!(
        get(server.addr, "/ready").expect(200),
        json!({"status": "ready", "sessions": 0, "max_sessions": 1})
    );
}

/// `/ready` and admission agree on the memory budget: with a budget that holds a few
/// sessions' reservations (and `max_sessions` far away), `/ready` is 200 before each of
/// them is admitted, and 503 `memory_budget_exceeded` exactly when the next client is
/// refused with that code; once one session has closed both admit again.
#[tokio::test]
async fn ready_is_503_memory_budget_exceeded_exactly_when_a_connect_is() {
    let server = TestServer::start(&[("registry.memory_budget_mb", "16")]);
    let reserve = server.registry_stats().await.reserve_bytes_per_session;
    let fits = (16usize << 20) / reserve;
    assert!(
        (2..10).contains(&fits),
        "precondition: 16 MiB holds a few reservations of {reserve} bytes, not {fits}"
    );
    let mut clients = Vec::new();
    for n in 0..fits {
        assert_eq!(
            get(server.addr, "/ready").expect(200),
            json!({"status": "ready", "sessions": n, "max_sessions": 2000})
        );
        clients.push(server.connect(S16_16K).await);
    }
    assert_eq!(
        get(server.addr, "/ready").expect(503),
        json!({"status": "not_ready", "reason": "memory_budget_exceeded"})
    );
    let r = refused(&server.url(S16_16K)).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.body.as_ref().map(|b| &b["error"]["code"]),
        Some(&json!("memory_budget_exceeded")),
        "{r:?}"
    );
    let stats = stats(server.addr);
    assert_eq!(
        stats["registry"]["refusal"], "memory_budget_exceeded",
        "{stats}"
    );

    let (_, code) = clients.pop().expect("a client").stop().await;
    assert_eq!(code, Some(1000));
    server
        .wait_for_stats("one session fewer", |s| {
            s.sessions_active == fits - 1 && s.sessions_reserved == 0
        })
        .await;
    assert_eq!(get(server.addr, "/ready").expect(200)["status"], "ready");
    clients.push(server.connect(S16_16K).await);
    for c in clients {
        let (_, code) = c.stop().await;
        assert_eq!(code, Some(1000));
    }
}

/// Holds every `process` call until opened; tells the test when a block has arrived.
#[derive(Default)]
struct Gate {
    /// (a block arrived, open)
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Gate {
    fn open(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1 = true;
        self.changed.notify_all();
    }

    /// Blocks until a block has reached the processor (bounded by [`HANG`]).
    fn wait_entered(&self) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (s, timeout) = self
            .changed
            .wait_timeout_while(s, HANG, |s| !s.0)
            .unwrap_or_else(|e| e.into_inner());
        assert!(s.0 && !timeout.timed_out(), "no audio reached the gate");
    }
}

/// Opens the gate when dropped, so a failing test never leaves a server thread blocked.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A processor that blocks its thread in `process` until the test opens the gate: a stand-in
/// for a pipeline stage still busy with a session's last audio when shutdown begins.
struct GateProcessor(Arc<Gate>);

impl Processor for GateProcessor {
    fn process(&mut self, _block: &AudioBlock, _events: &mut Vec<ServerEvent>) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = true;
        self.0.changed.notify_all();
        // Bounded so a test that never opens it cannot wedge the suite.
        let _ = self
            .0
            .changed
            .wait_timeout_while(s, HANG, |s| !s.1)
            .unwrap_or_else(|e| e.into_inner());
    }

    fn flush(&mut self, _end_sample: u64, _events: &mut Vec<ServerEvent>) {}
}

/// During shutdown, while a session is still draining, `/ready` is 503 `shutting_down` (and
/// `/health` 200, `/v1/stats` says draining); once the session's pipeline finishes, it
/// closes with `server_shutdown` (1001) and the server stops.
///
/// Deterministic: the session's only processor blocks its worker thread until the test
/// opens the gate, so the session cannot finish draining before the test has seen
/// `shutting_down`. The probes go to the admin listener (`admin.bind`), whose own worker
/// thread the blocked session cannot hold up; the registry answering them runs on the
/// server's main thread. `shutdown_grace_s` is long so the grace period never ends the drain
/// on a slow machine.
#[tokio::test]
async fn ready_is_503_shutting_down_while_sessions_drain() {
    let gate = Arc::new(Gate::default());
    let mut catalog = ProcessorCatalog::with_builtins();
    let g = gate.clone();
    catalog.register("gate", move |_: &ProcessorContext| {
        Box::new(GateProcessor(g.clone())) as Box<dyn Processor>
    });
    let server = TestServer::start_with_env(
        &[("VOXRT_PIPELINE__PROCESSORS", "gate")],
        &[
            ("admin.bind", "127.0.0.1:0"),
            ("server.shutdown_grace_s", "60"),
        ],
        catalog,
    );
    let _opened_on_exit = OpenOnDrop(gate.clone());
    let admin = server.admin_addr.expect("admin listener");
    let mut c = server.connect(S16_16K).await;
    c.send_audio(tone_16k(0.1)).await;
    gate.wait_entered();
    assert_eq!(get(admin, "/ready").expect(200)["status"], "ready");

    let stopper = std::thread::spawn(move || server.shutdown());
    // Bounded poll: the server thread begins draining a moment after the stop request.
    let deadline = Instant::now() + HANG;
    let draining = loop {
        let reply = get(admin, "/ready");
        if reply.status == 503 {
            break reply.json();
        }
        assert_eq!(reply.expect(200)["status"], "ready");
        assert!(Instant::now() < deadline, "/ready never became 503");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        draining,
        json!({"status": "not_ready", "reason": "shutting_down"})
    );
    assert_eq!(get(admin, "/health").expect(200), json!({"status": "ok"}));
    let s = stats(admin);
    assert_eq!(s["registry"]["draining"], true, "{s}");
    assert_eq!(s["registry"]["sessions_active"], 1, "{s}");
    // Still draining on a second look: nothing can finish while the gate is shut.
    assert_eq!(get(admin, "/ready").expect(503)["reason"], "shutting_down");

    gate.open();
    let (events, code) = c.drain().await;
    assert_eq!(code, Some(1001), "{events:?}");
    assert_eq!(closed_event(&events)["reason"], "server_shutdown");
    assert_eq!(closed_event(&events)["stats"]["chunks_processed"], 1);
    stopper.join().expect("server thread");
}

// ---------------------------------------------------------------------------------------------
// 4. Reload over HTTP
// ---------------------------------------------------------------------------------------------

/// A config file under the temp dir, removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(label: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "voxrt-ops-{label}-{}-{}.toml",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let file = TempConfig(path);
        file.write(text);
        file
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).expect("write config file");
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Lower limits and a longer VAD silence default (the per-IP limit must not exceed
/// `max_sessions`, so it is lowered too).
const ONE_SESSION_SLOW_VAD: &str = "\
[registry]
max_sessions = 1
max_sessions_per_ip = 1

[vad]
silence_ms = 1500
";

/// The same plus an out-of-range VAD threshold.
const BAD_THRESHOLD: &str = "\
[registry]
max_sessions = 1
max_sessions_per_ip = 1

[vad]
silence_ms = 1500
threshold = 5
";

/// Two recorded utterances 0.7 s apart, 48 kHz mono s16le: one VAD segment each with
/// `silence_ms` 500 (the default), one segment over both with 1500 (as in tests/speech.rs).
fn two_utterances() -> Vec<u8> {
    let (first, rate) = audio::read_wav(audio::SPEECH);
    let (second, rate_2) = audio::read_wav(audio::SPEECH_2);
    assert_eq!((rate, rate_2), (48_000, 48_000));
    let mut clip = audio::padded(&first, rate, 1.0, 0.7);
    clip.extend(audio::padded(&second, rate, 0.0, 1.0));
    audio::s16le(&clip, 1)
}

/// Streams `pcm` (20 ms chunks) and flushes; returns the speech segments and audio_ms.
async fn segments_of(c: &mut Client, pcm: &[u8]) -> (Vec<(u64, u64)>, u64) {
    let events = c.stream_and_flush(pcm, 1920).await;
    let audio_ms = events.last().expect("flushed")["audio_ms"]
        .as_u64()
        .expect("audio_ms");
    let vad: Vec<Value> = of_type(&events, "vad").into_iter().cloned().collect();
    (segments(&vad), audio_ms)
}

/// `POST /v1/admin/reload` after the config file changed: 200 with the new hash (also shown
/// by `/v1/stats`, different from before) and the lower `max_sessions` refuses the next
/// client with 503 `server_full` while the live session keeps streaming, keeping its own VAD
/// settings (500 ms silence: two segments). A file with `vad.threshold = 5` is refused with
/// 400 naming `vad.threshold`, and nothing changes: same hash, same limits, and the next
/// session starts with the last good defaults (silence_ms 1500: one segment).
#[tokio::test]
async fn reload_applies_new_limits_to_new_sessions_and_refuses_a_bad_config() {
    let file = TempConfig::new("reload", "# starts as the test profile\n");
    let server = TestServer::start_with_env(
        &[("VOXRT_CONFIG", file.path())],
        &[],
        ProcessorCatalog::with_builtins(),
    );
    let clip = two_utterances();
    let before = stats(server.addr);
    let hash_before = config_hash(&before);
    assert_eq!(
        before["server"]["limits"]["registry"]["max_sessions"], 2000,
        "{before}"
    );
    let mut live = server.connect(S16_48K).await;
    assert_eq!(live.started["vad"]["silence_ms"], 500);
    // 96 ms: whole 16 ms VAD frames, so the clip below meets the VAD as in a fresh session.
    let chunk = audio::s16le(&audio::silence(48_000, 0.096), 1);
    let events = live.stream_and_flush(&chunk, 1920).await;
    assert_eq!(events.last().expect("flushed")["audio_ms"], 96);

    file.write(ONE_SESSION_SLOW_VAD);
    let reloaded = post(server.addr, "/v1/admin/reload").expect(200);
    assert_eq!(reloaded["status"], "reloaded", "{reloaded}");
    let hash = reloaded["sha256"].as_str().expect("sha256").to_owned();
    assert_ne!(hash, hash_before);
    let after = stats(server.addr);
    assert_eq!(config_hash(&after), hash);
    assert_eq!(
        after["server"]["limits"]["registry"]["max_sessions"], 1,
        "{after}"
    );
    assert_eq!(after["registry"]["max_sessions"], 1, "{after}");

    // The next client is over the new limit; the live session streams on, with the VAD
    // settings it started with.
    assert_server_full(&refused(&server.url(S16_48K)).await);
    let (segs, audio_ms) = segments_of(&mut live, &clip).await;
    let expected_ms = 96 + (clip.len() / 96) as i64;
    assert!(
        (audio_ms as i64 - expected_ms).abs() <= 1,
        "audio_ms {audio_ms} vs {expected_ms} sent"
    );
    assert_eq!(segs.len(), 2, "live session keeps silence_ms 500: {segs:?}");

    // An invalid file: refused, naming the key; nothing changes.
    file.write(BAD_THRESHOLD);
    let message = post(server.addr, "/v1/admin/reload").expect_error(400, "invalid_config");
    assert!(message.contains("vad.threshold"), "{message}");
    let unchanged = stats(server.addr);
    assert_eq!(config_hash(&unchanged), hash);
    assert_eq!(
        unchanged["server"]["limits"], after["server"]["limits"],
        "{unchanged}"
    );
    assert_server_full(&refused(&server.url(S16_48K)).await);
    let events = live.stream_and_flush(&chunk, 1920).await;
    let now_ms = events.last().expect("flushed")["audio_ms"].as_u64();
    assert!(
        now_ms.is_some_and(|ms| ms.abs_diff(audio_ms + 96) <= 1),
        "live session streams on after the refused reload: {now_ms:?} vs {audio_ms} + 96"
    );

    // Once the slot frees, a new session gets the reloaded defaults (not the refused file's).
    let (_, code) = live.stop().await;
    assert_eq!(code, Some(1000));
    wait_idle(&server).await;
    let mut next = server.connect(S16_48K).await;
    assert_eq!(next.started["vad"]["silence_ms"], 1500, "{}", next.started);
    assert_eq!(next.started["vad"]["threshold"], 0.5, "{}", next.started);
    let (segs, _) = segments_of(&mut next, &clip).await;
    assert_eq!(segs.len(), 1, "new session bridges the pause: {segs:?}");
    let (_, code) = next.stop().await;
    assert_eq!(code, Some(1000));
}

/// A reload rotates client credentials and allowed origins: the old API key and origin are
/// refused (401, 403) and the new ones admitted, while a session opened with the old key
/// streams on (credentials gate the upgrade, not a running session).
#[tokio::test]
async fn reload_rotates_api_keys_and_allowed_origins() {
    let access = |key: &str, origin: &str| {
        format!(
            "[auth]\nrequired = true\napi_keys_sha256 = [\"{}\"]\n\
             [security]\nallowed_origins = [\"{origin}\"]\n",
            voxrt::auth::hash_token(key)
        )
    };
    let file = TempConfig::new("keys", &access("key-a", "https://a.example"));
    let server = TestServer::start_with_env(
        &[("VOXRT_CONFIG", file.path())],
        &[],
        ProcessorCatalog::with_builtins(),
    );
    let url = |key: &str| server.url(&format!("{S16_48K}&access_token={key}"));
    let mut live = connect_from(&url("key-a"), "https://a.example")
        .await
        .expect("old key and origin admitted");

    file.write(&access("key-b", "https://b.example"));
    post(server.addr, "/v1/admin/reload").expect(200);
    assert_eq!(
        connect_from(&url("key-a"), "https://b.example").await.err(),
        Some(401)
    );
    assert_eq!(
        connect_from(&url("key-b"), "https://a.example").await.err(),
        Some(403)
    );
    let fresh = connect_from(&url("key-b"), "https://b.example")
        .await
        .expect("new key and origin admitted");

    let chunk = audio::s16le(&audio::silence(48_000, 0.096), 1);
    let events = live.stream_and_flush(&chunk, 1920).await;
    assert_eq!(events.last().expect("flushed")["audio_ms"], 96);
    for client in [live, fresh] {
        assert_eq!(client.stop().await.1, Some(1000));
    }
}

/// Connects as a browser page at `origin` would; `Err` is the refusal's HTTP status.
async fn connect_from(url: &str, origin: &str) -> Result<Client, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().expect("request");
    request
        .headers_mut()
        .insert("origin", origin.parse().expect("origin header"));
    match tokio::time::timeout(HANG, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect hung")
    {
        Ok((ws, _)) => Ok(Client::from_stream(ws).await),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("connect failed: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 5. SIGHUP
// ---------------------------------------------------------------------------------------------

/// SIGHUP on the real binary re-reads the file in `VOXRT_CONFIG`: the log says
/// "configuration reloaded" with the new hash, `/v1/stats` shows it and the lower
/// `max_sessions` refuses the next client while the live one keeps working. A file with a
/// bad value + SIGHUP logs a warning naming `vad.threshold`, keeps the running config (same
/// hash, still refusing) and the process keeps serving; SIGTERM then exits 0.
///
/// The first SIGHUP goes out only after `/v1/stats` answered, which needs the registry on
/// the server's main thread: it runs only after that thread has installed its signal
/// handlers, so the signal cannot hit the default (terminating) disposition.
#[tokio::test]
async fn sighup_reloads_the_config_file_and_a_bad_file_changes_nothing() {
    let file = TempConfig::new("sighup", "# starts as the test profile\n");
    let server = ServerProcess::start(&[("VOXRT_CONFIG", file.path())]);
    let addr = local(server.port);
    let before = stats(addr);
    let hash_before = config_hash(&before);
    assert_eq!(before["server"]["limits"]["registry"]["max_sessions"], 2000);
    let mut live = Client::admitted(&server.url(S16_16K)).await;

    file.write(ONE_SESSION_SLOW_VAD);
    server.signal("HUP");
    let line = server.wait_for_log("configuration reloaded", |l| {
        l["message"] == "configuration reloaded"
    });
    let after = stats(addr);
    let hash = config_hash(&after);
    assert_ne!(hash, hash_before);
    assert_eq!(line["hash"], hash, "{line}");
    assert_eq!(after["server"]["limits"]["registry"]["max_sessions"], 1);
    assert_server_full(&refused(&server.url(S16_16K)).await);
    let events = live.stream_and_flush(&tone_16k(0.2), 640).await;
    assert_eq!(events.last().expect("flushed")["audio_ms"], 200);

    file.write(BAD_THRESHOLD);
    server.signal("HUP");
    let warning = server.wait_for_log("reload refused", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("reload refused"))
    });
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert!(
        warning["message"]
            .as_str()
            .is_some_and(|m| m.contains("vad.threshold")),
        "{warning}"
    );
    assert_eq!(get(addr, "/health").expect(200), json!({"status": "ok"}));
    let unchanged = stats(addr);
    assert_eq!(config_hash(&unchanged), hash);
    assert_eq!(unchanged["server"]["limits"]["registry"]["max_sessions"], 1);
    assert_server_full(&refused(&server.url(S16_16K)).await);
    live.send_json(ping(json!(7))).await;
    live.until("pong", &mut Vec::new()).await;

    server.signal("TERM");
    let (events, code) = live.drain().await;
    assert_eq!(code, Some(1001), "{events:?}");
    let (exit, _) = server.wait();
    assert_eq!(exit, Some(0));
}

// ---------------------------------------------------------------------------------------------
// 6. Admin token
// ---------------------------------------------------------------------------------------------

const TOKEN: &str = "voxrt-ops-test-token";
/// `printf %s voxrt-ops-test-token | sha256sum`.
const TOKEN_SHA256: &str = "86b074e3b319cd2c636a4e642696226d73813f430465840ca3e6a9c2de63ca42";

/// Runs `voxrt hash-token` with `stdin`; returns (exit code, stdout, stderr).
fn hash_token(stdin: &str) -> (Option<i32>, String, String) {
    let mut child = voxrt()
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("voxrt hash-token runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write token");
    let out = child.wait_with_output().expect("hash-token exits");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `voxrt hash-token` prints the SHA-256 hex of the token read on stdin (trailing newline
/// ignored) and exits 2 on empty input.
#[test]
fn hash_token_prints_the_sha256_of_the_token_on_stdin() {
    let (code, out, err) = hash_token(&format!("{TOKEN}\n"));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim_end(), TOKEN_SHA256);
    let (code, _, err) = hash_token("");
    assert_eq!(code, Some(2));
    assert!(err.contains("standard input"), "{err}");
}

/// Asserts a 401 `unauthorized` JSON answer with a Bearer challenge.
fn assert_unauthorized(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {reply:?}");
    let body = reply.json();
    assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    assert!(
        reply
            .header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer")),
        "{what}: WWW-Authenticate {reply:?}"
    );
}

/// With `admin.token_sha256` set to what `voxrt hash-token` printed, `/v1/stats`,
/// `/v1/stats/sessions/{id}`, `/metrics` and `POST /v1/admin/reload` are 401 `unauthorized`
/// (JSON, `WWW-Authenticate: Bearer`) without a token, with a wrong one or another scheme,
/// and 200 with the right one; `/health` and `/ready` stay open.
#[tokio::test]
async fn admin_endpoints_need_the_bearer_token_when_configured() {
    let (code, printed, err) = hash_token(&format!("{TOKEN}\n"));
    assert_eq!(code, Some(0), "{err}");
    let hash = printed.trim_end().to_owned();
    assert_eq!(hash, TOKEN_SHA256);
    let server = TestServer::start(&[("admin.token_sha256", &hash)]);
    let c = server.connect(S16_16K).await;
    let id = c.started["session_id"].as_str().expect("id").to_owned();
    let session_path = format!("/v1/stats/sessions/{id}");
    let endpoints = [
        ("GET", "/v1/stats"),
        ("GET", session_path.as_str()),
        ("GET", "/metrics"),
        ("POST", "/v1/admin/reload"),
    ];
    let right = format!("Bearer {TOKEN}");
    let wrong_auth = [
        None,
        Some("Bearer wrong-token".to_owned()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {hash}")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
    ];
    for (method, path) in endpoints {
        for auth in &wrong_auth {
            let reply = http(method, server.addr, path, auth.as_deref());
            assert_unauthorized(&reply, &format!("{method} {path} with {auth:?}"));
        }
        let reply = http(method, server.addr, path, Some(&right));
        assert_eq!(reply.status, 200, "{method} {path}: {reply:?}");
    }
    assert_eq!(
        get(server.addr, "/v1/stats").json()["error"]["code"],
        "unauthorized"
    );
    let with_token = http("GET", server.addr, &session_path, Some(&right)).json();
    assert_eq!(with_token["id"], id.as_str());
    assert_eq!(
        get(server.addr, "/health").expect(200),
        json!({"status": "ok"})
    );
    assert_eq!(get(server.addr, "/ready").expect(200)["status"], "ready");
    c.stop().await;
}

/// The production profile without `admin.token_sha256`, then without client credentials
/// (`auth.required`), refuses to start: exit 2 and a message naming the key. With both it
/// starts, and its admin endpoints want the token.
#[tokio::test]
async fn production_profile_needs_an_admin_token_and_client_credentials_to_start() {
    let out = voxrt()
        .env("VOXRT_PROFILE", "production")
        .output()
        .expect("voxrt runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin.token_sha256"), "{stderr}");
    let out = voxrt()
        .env("VOXRT_PROFILE", "production")
        .env("VOXRT_ADMIN__TOKEN_SHA256", TOKEN_SHA256)
        .output()
        .expect("voxrt runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auth.required"),
        "clients need credentials too: {stderr}"
    );

    let server = ServerProcess::start(&[
        ("VOXRT_PROFILE", "production"),
        ("VOXRT_SERVER__HOST", "127.0.0.1"),
        ("VOXRT_SERVER__PORT", "0"),
        ("VOXRT_SERVER__WORKERS", "1"),
        ("VOXRT_ADMIN__TOKEN_SHA256", TOKEN_SHA256),
        ("VOXRT_AUTH__API_KEYS_SHA256", TOKEN_SHA256),
    ]);
    let addr = local(server.port);
    assert_unauthorized(&get(addr, "/v1/stats"), "production /v1/stats");
    let reply = http("GET", addr, "/v1/stats", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(reply.expect(200)["server"]["profile"], "production");
    assert_eq!(get(addr, "/health").expect(200), json!({"status": "ok"}));
}

// ---------------------------------------------------------------------------------------------
// 7. admin.bind
// ---------------------------------------------------------------------------------------------

/// With `admin.bind`, `/metrics`, `/v1/stats*` and the reload leave the main listener (404)
/// and answer on the admin listener; `/health` and `/ready` answer on both; `/v1/stream`
/// works on the main listener only.
#[tokio::test]
async fn admin_bind_serves_admin_endpoints_on_their_own_listener() {
    let server = TestServer::start(&[("admin.bind", "127.0.0.1:0")]);
    let admin = server.admin_addr.expect("admin listener bound");
    assert_ne!(admin.port(), 0);
    assert_ne!(admin, server.addr);
    let c = server.connect(S16_16K).await;
    let id = c.started["session_id"].as_str().expect("id").to_owned();
    let session_path = format!("/v1/stats/sessions/{id}");
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/v1/stats"),
        ("GET", session_path.as_str()),
        ("POST", "/v1/admin/reload"),
    ] {
        let on_main = http(method, server.addr, path, None);
        assert_eq!(on_main.status, 404, "{method} {path} on main: {on_main:?}");
        let on_admin = http(method, admin, path, None);
        assert_eq!(
            on_admin.status, 200,
            "{method} {path} on admin: {on_admin:?}"
        );
    }
    assert_eq!(stats(admin)["sessions"]["total"], 1);
    scrape(admin);
    for addr in [server.addr, admin] {
        assert_eq!(get(addr, "/health").expect(200), json!({"status": "ok"}));
        assert_eq!(get(addr, "/ready").expect(200)["status"], "ready");
    }
    let on_admin = refused(&format!("ws://{admin}/v1/stream?{S16_16K}")).await;
    assert_eq!(on_admin.status, 404, "{on_admin:?}");
    let (_, code) = c.stop().await;
    assert_eq!(code, Some(1000));
}
