//! The browser page at `/` for real: Debian's `chromium`, headless, with a fake microphone
//! that plays recorded speech, opens the page served by the real `voxrt` binary, and is
//! driven through the DevTools protocol (a WebSocket, tokio-tungstenite) the way a user
//! would: type the access token, press Start, watch the page, press Stop. Everything the
//! test checks on the page it reads from the DOM; what the server saw it reads from
//! `/v1/stats`, `/metrics` and the server's log.
//!
//! The page is served over https, as browsers require for the microphone anywhere but on
//! localhost: the server has a certificate made at test time, and Chromium trusts exactly
//! that certificate's key (`--ignore-certificate-errors-spki-list`), nothing else.
//!
//! Without chromium these tests fail (they do not skip): `scripts/test` installs it.
//!
//! Nothing waits on a fixed sleep: each step polls the page or the server until the state
//! that proves the previous step happened (the sleeps only space the polls), with
//! generous timeouts that only catch hangs.

mod common;
use common::http::Reply;
use common::process::ServerProcess;
use common::proxy::CutProxy;
use common::tls::TestCert;
use common::{audio, temp_dir, HANG};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest a step in the browser may take: the machine may be busy with other builds, and
/// Chromium is heavy. Only a hang takes this long.
const BROWSER_HANG: Duration = Duration::from_secs(120);
/// How often the page is polled.
const POLL: Duration = Duration::from_millis(100);
/// The page's chunk length (app.js `CHUNK_MS`).
const CHUNK_MS: u64 = 20;
/// The API key the page is given.
const API_KEY: &str = "browser-test-key-0123456789abcdef";

// ---------------------------------------------------------------------------------------------
// Files and processes
// ---------------------------------------------------------------------------------------------

/// Debian's chromium launcher, or a failure that says how to get it.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium is not installed: the browser tests run Debian's `chromium` package \
                 headless. scripts/test installs it (or: sudo apt-get install -y \
                 --no-install-recommends chromium)"
            )
        })
}

/// The fake microphone: the alsa speech recording with 1 s of silence before and after,
/// mono 16-bit at 48 kHz (Chromium loops it).
fn speech_wav(dir: &Path) -> PathBuf {
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let speech = match rate {
        44_100 | 48_000 => speech,
        other => audio::resample(&speech, other, 48_000),
    };
    let rate = if matches!(rate, 44_100 | 48_000) {
        rate
    } else {
        48_000
    };
    let mut samples = audio::silence(rate, 1.0);
    samples.extend_from_slice(&speech);
    samples.extend(audio::silence(rate, 1.0));
    let path = dir.join("speech.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&path, spec).expect("create speech.wav");
    for s in samples {
        let v = (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
        writer.write_sample(v).expect("write speech.wav");
    }
    writer.finalize().expect("finish speech.wav");
    path
}

/// The server's certificate in these tests (made once per test process).
fn cert() -> &'static TestCert {
    static CERT: std::sync::OnceLock<TestCert> = std::sync::OnceLock::new();
    CERT.get_or_init(|| TestCert::new("voxrt browser test"))
}

/// A headless Chromium with a fake microphone playing `wav`, trusting [`cert`]'s key, in
/// its own process group so that every process it starts is ended with it.
struct Browser {
    child: Child,
    /// Profile, DevToolsActivePort and the browser's log.
    dir: tempfile::TempDir,
    /// `ws://127.0.0.1:{port}/devtools/browser/{id}`.
    devtools_url: String,
}

impl Browser {
    fn launch(wav: &Path) -> Browser {
        let binary = chromium();
        let dir = temp_dir("chromium");
        let profile = dir.path().join("profile");
        std::fs::create_dir_all(&profile).expect("profile dir");
        let log = std::fs::File::create(dir.path().join("chromium.log")).expect("log file");
        let child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--autoplay-policy=no-user-gesture-required",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!(
                "--ignore-certificate-errors-spki-list={}",
                cert().spki_sha256
            ))
            .arg(format!(
                "--use-file-for-fake-audio-capture={}",
                wav.display()
            ))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("chromium starts");
        let mut browser = Browser {
            child,
            dir,
            devtools_url: String::new(),
        };
        // Chromium writes the port it picked and the browser target's path once it listens.
        let active = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + BROWSER_HANG;
        loop {
            let text = std::fs::read_to_string(&active).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            if let [port, path, ..] = lines[..] {
                browser.devtools_url = format!("ws://127.0.0.1:{port}{path}");
                return browser;
            }
            if let Ok(Some(status)) = browser.child.try_wait() {
                panic!(
                    "chromium exited ({status}) before opening DevTools:\n{}",
                    browser.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not write {} within {BROWSER_HANG:?}:\n{}",
                active.display(),
                browser.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of Chromium's own log, for failure messages.
    fn log_tail(&self) -> String {
        log_tail(&self.dir.path().join("chromium.log"))
    }
}

/// The last lines of a log file.
fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole process group (browser, zygote, renderers, audio service). The leader is
        // not reaped yet, so its id still names this group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// DevTools protocol
// ---------------------------------------------------------------------------------------------

/// A DevTools connection to the browser with one page attached (flat session).
struct Page {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    session: String,
    /// Exceptions, console errors and browser log errors (CSP violations among them).
    problems: Vec<String>,
    /// Chromium's log, quoted when the page does not get where it should.
    browser_log: PathBuf,
}

impl Page {
    /// Connects to `browser`, opens a tab and attaches to it with Runtime, Log and Page on.
    async fn open(browser: &Browser) -> Page {
        let (ws, _) = tokio::time::timeout(
            HANG,
            tokio_tungstenite::connect_async(browser.devtools_url.as_str()),
        )
        .await
        .expect("DevTools connect hung")
        .expect("DevTools connects");
        let mut page = Page {
            ws,
            next_id: 0,
            session: String::new(),
            problems: Vec::new(),
            browser_log: browser.dir.path().join("chromium.log"),
        };
        let target = page
            .command(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = page
            .command(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        page.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            page.call(domain, json!({})).await;
        }
        page
    }

    /// A command to the attached page.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.command(Some(&session), method, params).await
    }

    /// Sends one command and reads until its answer, noting problems from events meanwhile.
    async fn command(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        tokio::time::timeout(HANG, self.ws.send(Message::Text(msg.to_string().into())))
            .await
            .expect("DevTools send hung")
            .expect("DevTools send");
        loop {
            let next = tokio::time::timeout(BROWSER_HANG, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no DevTools answer to {method}"));
            let text = match next {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                other => panic!("DevTools connection ended during {method}: {other:?}"),
            };
            let v: Value = serde_json::from_str(&text).expect("DevTools sends JSON");
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("DevTools {method} failed: {e}");
                }
                return v["result"].clone();
            }
            self.note(&v);
        }
    }

    /// Keeps what should never happen on the page: exceptions, console errors, CSP
    /// violations and other errors the browser logs, and crashes.
    fn note(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => self
                .problems
                .push(format!("exception: {}", params["exceptionDetails"])),
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => self
                .problems
                .push(format!("console.error: {}", params["args"])),
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                let entry = &params["entry"];
                self.problems.push(format!(
                    "browser log ({}): {} {}",
                    entry["source"],
                    entry["text"],
                    entry["url"].as_str().unwrap_or("")
                ))
            }
            Some("Inspector.targetCrashed") | Some("Target.targetCrashed") => {
                panic!("the page crashed: {event}")
            }
            _ => {}
        }
    }

    /// Evaluates `expression` in the page as if from a user gesture; returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": expression,
                    "returnByValue": true,
                    "awaitPromise": true,
                    "userGesture": true,
                }),
            )
            .await;
        if let Some(e) = result.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        result["result"]["value"].clone()
    }

    /// What the page shows: the data- attributes of `#app`, the status line, the level text,
    /// the segment list and the summary.
    async fn state(&mut self) -> Value {
        self.eval(
            r##"(() => {
                const app = document.getElementById("app");
                // Still parsing (a reload): part of the page may not exist yet.
                if (!app || document.readyState === "loading") return null;
                const text = (id) => document.getElementById(id).textContent;
                return {
                    ...app.dataset,
                    status: text("status"),
                    level: text("level-text"),
                    button: text("start"),
                    segmentList: [...document.querySelectorAll("#segments li")]
                        .map((li) => ({...li.dataset})),
                    transcriptList: [...document.querySelectorAll("#transcripts li")]
                        .map((li) => ({...li.dataset, text: li.textContent})),
                    summaryShown: !document.getElementById("summary").hidden,
                    summary: {
                        reason: text("closed-reason"),
                        audio: text("closed-audio"),
                        chunksIn: text("closed-chunks-in"),
                        chunksProcessed: text("closed-chunks-processed"),
                        chunksDropped: text("closed-chunks-dropped"),
                    },
                };
            })()"##,
        )
        .await
    }

    /// Polls the page until `cond` holds on its state; returns that state. Panics after
    /// [`BROWSER_HANG`] with the last state, the page's problems and Chromium's log.
    async fn wait_for(&mut self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + BROWSER_HANG;
        loop {
            let state = self.state().await;
            if !state.is_null() && cond(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the page to show {what}; it shows {state:#}\n\
                 problems: {:#?}\nchromium log:\n{}",
                self.problems,
                log_tail(&self.browser_log)
            );
            // Events that arrive between polls are read with the next answer.
            tokio::time::sleep(POLL).await;
        }
    }

    /// Navigates and waits until the page's script has run.
    async fn goto(&mut self, url: &str) {
        let nav = self.call("Page.navigate", json!({"url": url})).await;
        assert!(nav.get("errorText").is_none(), "navigating to {url}: {nav}");
        self.wait_for("its script loaded", |s| {
            s["ready"] == "true" && s["state"] == "idle"
        })
        .await;
    }

    async fn click_start_stop(&mut self) {
        self.eval(r#"document.getElementById("start").click()"#)
            .await;
    }

    async fn set_token(&mut self, token: &str) {
        self.eval(&format!(
            "document.getElementById('token').value = {}",
            json!(token)
        ))
        .await;
    }

    /// Closes the browser through DevTools and waits for the connection to end.
    async fn close_browser(mut self) {
        let id = self.next_id + 1;
        let msg = json!({"id": id, "method": "Browser.close", "params": {}});
        let _ = self.ws.send(Message::Text(msg.to_string().into())).await;
        let _ = tokio::time::timeout(HANG, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// `method` `url`, over https trusting [`cert`] when the URL says so.
fn http(method: &str, url: &str) -> Reply {
    if url.starts_with("https://") {
        common::tls::https(method, url, &[cert()], None)
    } else {
        common::http::request(method, url, None)
    }
}

fn get_json(url: &str) -> Value {
    let reply = http("GET", url);
    assert_eq!(reply.status, 200, "GET {url}: {}", reply.body);
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("GET {url}: {e}: {}", reply.body))
}

/// `voxrt_audio_seconds_total` from `/metrics`.
fn audio_seconds_total(base: &str) -> f64 {
    let reply = http("GET", &format!("{base}/metrics"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply
        .body
        .lines()
        .find_map(|l| l.strip_prefix("voxrt_audio_seconds_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no voxrt_audio_seconds_total in /metrics:\n{}", reply.body))
}

/// The server's configuration file: auth required with [`API_KEY`], and `origins` allowed.
fn config(origins: &[&str]) -> String {
    format!(
        "[auth]\nrequired = true\napi_keys_sha256 = [\"{}\"]\n\n[security]\nallowed_origins = {}\n",
        voxrt::auth::hash_token(API_KEY),
        json!(origins)
    )
}

fn number(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap_or_else(|| panic!("{v} is not a count")),
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("{s:?} is not a count")),
        _ => panic!("{v} is not a count"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The real binary serving https with auth required and a page origin that is not this
/// one; Chromium with the speech recording as its microphone.
///
/// 1. With the right token but its origin not in `security.allowed_origins`, the page
///    reports the refused connection (and the server logged `origin_not_allowed`).
/// 2. After the operator adds the page's origin (config file + `POST /v1/admin/reload`),
///    Start streams: the page shows the session id, levels, at least one completed
///    speech segment of plausible length and its transcript (the server runs `stt`); meanwhile `/v1/stats` shows the live session with
///    the page's AudioContext rate, mono `pcm_f32le`, and audio arriving.
/// 3. Stop: the page shows the `session.closed` summary (`client_stop`); the server received
///    exactly the chunks the page sent (20 ms each), processed them all and dropped none;
///    `/metrics` counted the audio; the registry closed one session as `client_stop`.
///
/// No exception, console error or CSP violation on the page except the browser's own report
/// of the refused WebSocket in step 1.
#[tokio::test]
async fn page_streams_the_microphone_and_shows_speech_segments() {
    let began = Instant::now();
    let _chromium = chromium();
    let work = temp_dir("test");
    let wav = speech_wav(work.path());
    let config_file = work.path().join("voxrt.toml");
    std::fs::write(&config_file, config(&["https://voxrt.example"])).expect("config");
    let config_path = config_file.to_str().expect("utf-8 path");
    let (cert_file, key_file) = cert().write(work.path());
    let server = ServerProcess::start(&[
        ("VOXRT_CONFIG", config_path),
        ("VOXRT_PIPELINE__PROCESSORS", "level,vad,stt"),
        (
            "VOXRT_SERVER__TLS__CERT_FILE",
            cert_file.to_str().expect("utf-8"),
        ),
        (
            "VOXRT_SERVER__TLS__KEY_FILE",
            key_file.to_str().expect("utf-8"),
        ),
    ]);
    let base = format!("https://127.0.0.1:{}", server.port);
    let browser = Browser::launch(&wav);
    let mut page = Page::open(&browser).await;
    page.goto(&format!("{base}/")).await;
    let launched = began.elapsed();

    // 1. Refused: this page's origin is not allowed yet.
    page.set_token(API_KEY).await;
    page.click_start_stop().await;
    let refused = page
        .wait_for("the refused connection", |s| s["state"] == "error")
        .await;
    assert_eq!(refused["lastError"], "connection_refused", "{refused:#}");
    let status = refused["status"].as_str().unwrap_or("");
    assert!(
        status.contains("security.allowed_origins") && status.contains(&base),
        "the status names the setting and this origin: {status}"
    );
    server.wait_for_log("origin_not_allowed refusal", |l| {
        l["code"] == "origin_not_allowed"
    });
    let refused_problems = std::mem::take(&mut page.problems);
    assert!(
        refused_problems
            .iter()
            .all(|p| p.contains("WebSocket") && p.contains("/v1/stream")),
        "only the refused WebSocket is reported: {refused_problems:#?}"
    );

    // 2. The operator allows the page's origin; Start streams.
    std::fs::write(&config_file, config(&["https://voxrt.example", &base])).expect("config");
    let reloaded = http("POST", &format!("{base}/v1/admin/reload"));
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    let streaming_since = Instant::now();
    page.click_start_stop().await;
    let streaming = page
        .wait_for("a started session", |s| s["state"] == "streaming")
        .await;
    let session_id = streaming["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_owned();
    uuid::Uuid::parse_str(&session_id).expect("the page shows the session id");
    let rate: u32 = streaming["sampleRate"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("the page shows its sample rate: {streaming:#}"));
    assert!((8_000..=192_000).contains(&rate), "{rate}");
    let speech = page
        .wait_for("a completed speech segment", |s| {
            s["segments"].as_str().is_some_and(|n| n != "0")
        })
        .await;
    let first_segment = streaming_since.elapsed();
    let segment = &speech["segmentList"][0];
    let duration = number(&segment["durationMs"]);
    assert!(
        (200..=3_000).contains(&duration),
        "one utterance of about a second: {segment}"
    );
    assert!(
        number(&segment["startMs"]) + duration == number(&segment["endMs"]),
        "{segment}"
    );
    assert!(
        speech["level"]
            .as_str()
            .is_some_and(|l| l.contains("dBFS (peak")),
        "the level meter shows level events: {}",
        speech["level"]
    );
    assert_eq!(speech["lastError"], "", "{speech:#}");
    // Speech to text: the segment's transcript is listed under the segments, with the
    // recording's words ("Front, center,"), starting at or before the segment.
    let heard = page
        .wait_for("a transcript", |s| {
            s["transcripts"].as_str().is_some_and(|n| n != "0")
        })
        .await;
    let transcript = &heard["transcriptList"][0];
    let text = transcript["text"].as_str().unwrap_or("").to_lowercase();
    assert!(
        text.contains("center"),
        "the recording's words: {transcript}"
    );
    assert!(
        number(&transcript["startMs"]) <= number(&segment["startMs"])
            && number(&transcript["endMs"]) >= number(&segment["endMs"]),
        "the transcript covers the segment: {transcript} {segment}"
    );

    // The server's view of the live session.
    let stats = get_json(&format!("{base}/v1/stats"));
    let live = stats["sessions"]["sessions"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == session_id.as_str()))
        .unwrap_or_else(|| panic!("session {session_id} in /v1/stats: {stats:#}"));
    assert_eq!(
        live["input"],
        json!({"sample_rate": rate, "channels": 1, "encoding": "pcm_f32le"}),
        "{live:#}"
    );
    assert!(number(&live["chunks_in"]) > 0, "{live:#}");
    assert!(
        number(&live["audio_ms"]) >= number(&segment["endMs"]),
        "the audio that made the segment arrived: {live:#}"
    );

    // 3. Stop.
    page.click_start_stop().await;
    let closed = page
        .wait_for("the session summary", |s| s["state"] == "closed")
        .await;
    assert_eq!(closed["closedReason"], "client_stop", "{closed:#}");
    assert_eq!(closed["summaryShown"], true, "{closed:#}");
    let summary = &closed["summary"];
    assert_eq!(summary["reason"], "client_stop", "{closed:#}");
    let sent = number(&closed["chunksSent"]);
    assert_eq!(
        number(&summary["chunksIn"]),
        sent,
        "the server got every chunk the page sent: {closed:#}"
    );
    assert_eq!(number(&summary["chunksProcessed"]), sent, "{closed:#}");
    assert_eq!(number(&summary["chunksDropped"]), 0, "{closed:#}");
    let audio_s: f64 = summary["audio"]
        .as_str()
        .and_then(|a| a.strip_suffix(" s"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("summary audio: {closed:#}"));
    let expected_s = (sent * CHUNK_MS) as f64 / 1000.0;
    assert!(
        (audio_s - expected_s).abs() <= 0.011,
        "{sent} chunks of {CHUNK_MS} ms: {audio_s} s"
    );
    assert!(
        audio_seconds_total(&base) >= expected_s - 0.01,
        "/metrics counted the audio"
    );
    let registry = &get_json(&format!("{base}/v1/stats"))["registry"];
    assert_eq!(
        registry["closed_by_reason"]["client_stop"], 1,
        "{registry:#}"
    );
    assert_eq!(registry["sessions_active"], 0, "{registry:#}");

    let problems = std::mem::take(&mut page.problems);
    assert!(problems.is_empty(), "the page reported {problems:#?}");
    page.close_browser().await;
    drop(browser);
    eprintln!(
        "chromium up and page loaded in {:.1?}; first speech segment {:.1?} after Start \
         ({rate} Hz AudioContext); {sent} chunks ({expected_s:.2} s) streamed; whole test {:.1?}",
        launched,
        first_segment,
        began.elapsed()
    );
}

/// The page loaded through a proxy that aborts connections (RST both ways, no close frame):
/// after a cut while it streams, the page shows that it is reconnecting, resumes the same
/// session (its status says "resumed", `data-resumes` is 1), keeps finding speech in the
/// microphone's audio, and Stop still ends the session with its summary (`client_stop`,
/// nothing dropped). The server saw one session, resumed once.
#[tokio::test]
async fn page_resumes_its_session_after_a_connection_cut() {
    let _chromium = chromium();
    let work = temp_dir("resume");
    let wav = speech_wav(work.path());
    let server = ServerProcess::start(&[]);
    let proxy = CutProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], server.port))).await;
    let browser = Browser::launch(&wav);
    let mut page = Page::open(&browser).await;
    page.goto(&format!("http://{}/", proxy.addr)).await;

    page.click_start_stop().await;
    let before = page
        .wait_for("a completed speech segment", |s| {
            s["state"] == "streaming" && s["segments"].as_str().is_some_and(|n| n != "0")
        })
        .await;
    let segments_before = number(&before["segments"]);
    let connections = proxy.accepted();
    proxy.cut_all();
    let after = page
        .wait_for("the resumed session", |s| {
            s["resumes"] == "1" && s["state"] == "streaming"
        })
        .await;
    assert_eq!(after["sessionId"], before["sessionId"], "{after:#}");
    let status = after["status"].as_str().unwrap_or("");
    assert!(
        status.contains("resumed after") && status.contains("replayed"),
        "the status line says it resumed: {status}"
    );
    assert_eq!(
        proxy.accepted(),
        connections + 1,
        "one new connection for the resume"
    );
    page.wait_for("a speech segment after the resume", |s| {
        s["segments"]
            .as_str()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > segments_before)
    })
    .await;

    page.click_start_stop().await;
    let closed = page
        .wait_for("the session summary", |s| s["state"] == "closed")
        .await;
    assert_eq!(closed["closedReason"], "client_stop", "{closed:#}");
    assert_eq!(number(&closed["summary"]["chunksDropped"]), 0, "{closed:#}");
    assert_eq!(closed["lastError"], "", "{closed:#}");
    let problems: Vec<String> = std::mem::take(&mut page.problems)
        .into_iter()
        .filter(|p| !p.contains("WebSocket"))
        .collect();
    assert!(problems.is_empty(), "the page reported {problems:#?}");
    page.close_browser().await;
}

/// The page and its files: 200 with the right Content-Type, the Content-Security-Policy
/// (own scripts, styles and worklet only; connections to its own origin) and `nosniff`; the
/// page refers only to files that are served and holds no inline script or style the policy
/// would block; other paths are 404.
#[test]
fn page_and_assets_are_served_with_content_types_and_csp() {
    let server = ServerProcess::start(&[]);
    let base = server.http();
    let assets = [
        ("/", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/capture-worklet.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
    ];
    let mut bodies = std::collections::HashMap::new();
    for (path, content_type) in assets {
        let reply = http("GET", &format!("{base}{path}"));
        assert_eq!(reply.status, 200, "GET {path}");
        assert_eq!(reply.header("content-type"), Some(content_type), "{path}");
        let csp = reply
            .header("content-security-policy")
            .unwrap_or_else(|| panic!("{path} has a Content-Security-Policy"));
        let directives: std::collections::HashMap<&str, &str> = csp
            .split(';')
            .filter_map(|d| d.trim().split_once(' '))
            .collect();
        for (directive, value) in [
            ("default-src", "'none'"),
            ("script-src", "'self'"),
            ("style-src", "'self'"),
            ("connect-src", "'self'"),
            ("base-uri", "'none'"),
            ("frame-ancestors", "'none'"),
        ] {
            assert_eq!(directives.get(directive), Some(&value), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert!(
            reply
                .header("permissions-policy")
                .is_some_and(|p| p.contains("microphone=(self)")),
            "{path}"
        );
        assert!(!reply.body.is_empty(), "{path}");
        bodies.insert(path, reply.body);
    }

    let html = &bodies["/"];
    for reference in [r#"src="/app.js""#, r#"href="/style.css""#] {
        assert!(html.contains(reference), "index.html refers to {reference}");
    }
    assert!(
        html.contains(r#"<script type="module" src="/app.js">"#),
        "app.js is a module"
    );
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script type=\"module\" src=").count(),
        "no inline scripts"
    );
    for inline in ["style=", "<style", " onclick=", " onload=", "javascript:"] {
        assert!(!html.contains(inline), "index.html holds {inline:?}");
    }
    assert!(bodies["/app.js"].contains(r#"addModule("/capture-worklet.js")"#));
    assert!(bodies["/app.js"].contains(r#""voxrt-capture""#));
    assert!(bodies["/capture-worklet.js"].contains(r#"registerProcessor("voxrt-capture""#));

    for missing in ["/index.js", "/app.js/x", "/web/app.js"] {
        assert_eq!(
            http("GET", &format!("{base}{missing}")).status,
            404,
            "{missing}"
        );
    }
}
