//! Log files, as operators run them: the real `voxrt` binary with `log.file` (and
//! `log.error_file`), its stderr captured whole (every byte, not only JSON lines). Rotation
//! by size with a small limit and a bounded number of kept files; the errors-only file; a
//! stalled disk costs log lines (counted), never the server; credentials never reach any
//! log output; the access log names the client behind a trusted proxy.
//!
//! Rotation by day is configuration only (`Criterion::AgeOrSize(Age::Day, ..)` in
//! src/logging/files.rs): the file writer reads the system clock and offers no clock to
//! substitute, so no test here waits for midnight.

mod common;
use common::process::voxrt;
use common::{temp_dir, HANG};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A `voxrt` process whose stderr goes to `stderr.log` in a directory of the test's.
struct Server {
    child: Child,
    port: u16,
    stderr: PathBuf,
}

impl Server {
    /// Starts `voxrt` (test profile, JSON logs at info unless `envs` says otherwise) and
    /// waits for "voxrt listening" in its stderr.
    fn start(dir: &Path, envs: &[(&str, &str)]) -> Server {
        let stderr = dir.join("stderr.log");
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let child = voxrt()
            .env("VOXRT_LOG__FORMAT", "json")
            .env("VOXRT_LOG__LEVEL", "info")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("voxrt starts");
        let mut server = Server {
            child,
            port: 0,
            stderr,
        };
        let listening = wait_until("voxrt listening", || {
            json_lines(&read(&server.stderr))
                .into_iter()
                .find(|l| l["message"] == "voxrt listening")
        });
        let addr: std::net::SocketAddr = listening["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("addr");
        server.port = addr.port();
        server
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGTERM, then waits for the exit (the log files' queues are written on the way out).
    fn stop(mut self) -> String {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let code = wait_until("voxrt to exit", || self.child.try_wait().expect("wait"));
        assert_eq!(code.code(), Some(0), "{}", read(&self.stderr));
        read(&self.stderr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `probe` every 20 ms until it gives `Some`; panics after [`HANG`] naming `what`.
fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A file's text ("" if it does not exist yet).
fn read(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The files of log `stem` in `dir`: `(current, rotated)`, rotated sorted by name (oldest
/// first).
fn log_files(dir: &Path, stem: &str) -> (PathBuf, Vec<PathBuf>) {
    let current = dir.join(format!("{stem}_rCURRENT.log"));
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("log dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(&format!("{stem}_r")) && p != &current
        })
        .collect();
    rotated.sort();
    (current, rotated)
}

fn get(url: &str) -> common::http::Reply {
    common::http::request("GET", url, None)
}

/// With a 4 KiB limit and two kept files, a few hundred access lines rotate the file many
/// times: two rotated files remain (the oldest deleted), each just past the limit, every
/// line in them whole JSON, and the newest line is in the current file.
#[test]
fn log_file_rotates_by_size_and_keeps_a_bounded_number_of_files() {
    let work = temp_dir("logs");
    let logs = work.path().join("logs");
    let file = logs.join("voxrt.log");
    let server = Server::start(
        work.path(),
        &[
            ("VOXRT_LOG__FILE", file.to_str().expect("UTF-8")),
            ("VOXRT_LOG__MAX_FILE_BYTES", "4096"),
            ("VOXRT_LOG__MAX_FILES", "2"),
        ],
    );
    for i in 0..300 {
        get(&format!("{}/v1/stats?limit={}", server.base(), i % 50 + 1));
    }
    get(&format!("{}/last-request-of-the-test", server.base()));
    let (current, _) = log_files(&logs, "voxrt");
    wait_until("the last access line in the current file", || {
        read(&current)
            .contains("/last-request-of-the-test")
            .then_some(())
    });
    let (_, rotated) = wait_until("old files deleted down to log.max_files", || {
        let files = log_files(&logs, "voxrt");
        (files.1.len() == 2).then_some(files)
    });
    for path in &rotated {
        let text = read(path);
        assert!(
            (4096..4096 + 2048).contains(&text.len()),
            "{} holds {} bytes: rotated just past log.max_file_bytes",
            path.display(),
            text.len()
        );
        assert!(text.ends_with('\n'), "{}", path.display());
        for line in text.lines() {
            let line: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a whole JSON line in {}: {e}", path.display()));
            assert!(line["level"].is_string(), "{line}");
        }
    }
    // stderr got every line too.
    let stderr = server.stop();
    assert!(stderr.contains("/last-request-of-the-test"));
    assert_eq!(
        json_lines(&stderr)
            .iter()
            .filter(|l| l["target"] == "voxrt::access")
            .count(),
        301
    );
}

/// `log.error_file` gets error lines only. A server that ran (info and warning lines: a
/// refused reload) leaves it empty while `log.file` holds those lines; a second start on
/// the same files that cannot bind its port logs the error to both, and it is the only
/// line of the errors-only file.
#[test]
fn error_file_holds_error_lines_only() {
    let work = temp_dir("logs");
    let logs = work.path().join("logs");
    let config = work.path().join("voxrt.toml");
    std::fs::write(&config, "").expect("config");
    let file = logs.join("voxrt.log");
    let errors = logs.join("errors.log");
    let envs = [
        ("VOXRT_CONFIG", config.to_str().expect("UTF-8")),
        ("VOXRT_LOG__FILE", file.to_str().expect("UTF-8")),
        ("VOXRT_LOG__ERROR_FILE", errors.to_str().expect("UTF-8")),
    ];
    let server = Server::start(work.path(), &envs);
    std::fs::write(&config, "[registry]\nmax_sessions = 0\n").expect("bad config");
    let reply = common::http::request("POST", &format!("{}/v1/admin/reload", server.base()), None);
    assert_eq!(reply.status, 400, "{reply:?}");
    server.stop();
    let all = |stem: &str| -> Vec<Value> {
        let (current, rotated) = log_files(&logs, stem);
        rotated
            .iter()
            .chain([&current])
            .flat_map(|p| json_lines(&read(p)))
            .collect()
    };
    let lines = all("voxrt");
    assert!(lines.iter().any(|l| l["level"] == "WARN"), "{lines:#?}");
    assert!(lines.iter().any(|l| l["level"] == "INFO"), "{lines:#?}");
    assert_eq!(all("errors"), Vec::<Value>::new());

    // Again, on a port a listener of the test's holds.
    std::fs::write(&config, "").expect("config");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("port").port().to_string();
    let out = voxrt()
        .envs(envs)
        .env("VOXRT_SERVER__PORT", &port)
        .env("VOXRT_LOG__FORMAT", "json")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let errors_logged = all("errors");
    assert_eq!(errors_logged.len(), 1, "{errors_logged:#?}");
    assert_eq!(errors_logged[0]["level"], "ERROR");
    let message = errors_logged[0]["message"].as_str().unwrap_or("");
    assert!(message.contains("cannot listen"), "{message}");
    assert!(all("voxrt").iter().any(|l| l["message"] == message));
}

/// A log file that stops taking data (a pipe nobody reads: the disk of a stalled NFS mount,
/// say) costs log lines, not service: with a 64-line queue the server goes on answering
/// every request, the lines it could not write are counted in `/v1/stats` and
/// `/metrics`, and SIGTERM still ends the process with exit code 0.
#[test]
fn a_stalled_log_file_drops_and_counts_lines_and_the_server_keeps_serving() {
    let work = temp_dir("logs");
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let fifo = logs.join("voxrt_rCURRENT.log");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    // A reader that opens the pipe and never reads: the server's writes fill the pipe's
    // buffer (64 KiB on Linux), then block.
    let reader_path = fifo.clone();
    let (opened_tx, opened) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let pipe = std::fs::File::open(reader_path).expect("open pipe");
        let _ = opened_tx.send(());
        std::thread::park();
        drop(pipe);
    });
    let server = Server::start(
        work.path(),
        &[
            (
                "VOXRT_LOG__FILE",
                logs.join("voxrt.log").to_str().expect("UTF-8"),
            ),
            ("VOXRT_LOG__QUEUE_LINES", "64"),
        ],
    );
    opened
        .recv_timeout(HANG)
        .expect("the server opened the pipe");
    let stats_url = format!("{}/v1/stats", server.base());
    let stats = wait_until("dropped log lines", || {
        let stats = get(&stats_url).expect(200);
        (stats["server"]["log_lines_dropped"].as_u64().unwrap_or(0) > 0).then_some(stats)
    });
    assert!(stats["server"]["log_lines_dropped"].as_u64() > Some(0));
    let metrics = get(&format!("{}/metrics", server.base()));
    let dropped: u64 = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("voxrt_log_lines_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("voxrt_log_lines_dropped_total in {}", metrics.body));
    assert!(dropped > 0, "{dropped}");
    assert!(metrics.body.ends_with("# EOF\n"), "{}", metrics.body);
    assert_eq!(get(&format!("{}/health", server.base())).status, 200);
    // Every request was logged on stderr all the same.
    let accessed = json_lines(&read(&server.stderr))
        .iter()
        .filter(|l| l["target"] == "voxrt::access" && l["path"] == "/v1/stats")
        .count();
    assert!(accessed >= 1);
    // And it still exits cleanly on SIGTERM: the stuck writer does not hold the exit.
    server.stop();
}

/// Writes `head` (a request head without the final blank line) to the server and returns
/// the status of the answer; then drops the connection (an admitted session ends with it).
fn raw_status(port: u16, head: &str) -> u16 {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(HANG)).expect("timeout");
    tcp.write_all(format!("{head}\r\n\r\n").as_bytes())
        .expect("write");
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n") {
        let n = tcp.read(&mut byte).expect("read");
        assert_eq!(n, 1, "closed before a status line: {answer:?}");
        answer.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&answer).into_owned();
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {line:?}"))
}

/// A WebSocket upgrade request head for `target` with extra header lines.
fn upgrade(target: &str, headers: &[String]) -> String {
    let mut head = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13"
    );
    for h in headers {
        head.push_str("\r\n");
        head.push_str(h);
    }
    head
}

fn hs256(secret: &str, claims: &Value) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()).expect("HS256 key"),
    )
    .expect("encode")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Credentials in every place a client can put them — `Authorization` (right, wrong,
/// lower-case scheme, no scheme, Basic, given twice), `access_token` (valid, wrong,
/// repeated, percent-encoded name or value, malformed encoding, name in other case, as a
/// bare parameter), both header and query at once, JWTs (valid, expired, forged signature)
/// in header and query, `resume_token` (plain, repeated, percent-encoded), the admin token,
/// and credentials on a plain GET of the stream route and on `/v1/stats` — never appear in
/// any log output: not on stderr, not in `log.file`, not in `log.error_file`, with every
/// log line enabled (trace). The access log shows the credential parameters as
/// `[redacted]`.
#[test]
fn credentials_never_reach_stderr_or_log_files() {
    const HS_SECRET: &str = "hsSECRETnever-logged-0123456789abcdef!";
    const ADMIN_TOKEN: &str = "admADMINTOKENsecret77";
    let keys = [
        "kHEADERvalid01",
        "kQUERYvalid02",
        "kBOTHheader03",
        "kPLAINget04",
        "kSTATSquery05",
    ];
    let sess = "sample_rate=16000&channels=1&encoding=pcm_s16le";
    let claims = |exp: u64| serde_json::json!({"sub": "u", "aud": "voxrt", "exp": exp});
    let jwt_header = hs256(HS_SECRET, &claims(unix_now() + 3600));
    let jwt_query = hs256(HS_SECRET, &claims(unix_now() + 3601));
    let jwt_expired = hs256(HS_SECRET, &claims(unix_now() - 3600));
    let jwt_forged = hs256(
        "another-secret-that-is-also-32-bytes!!",
        &claims(unix_now() + 3600),
    );
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "user:kBASICpassword06",
    );
    let resume_id = uuid::Uuid::new_v4();

    let work = temp_dir("logs");
    let logs = work.path().join("logs");
    let api_keys: Vec<String> = keys.iter().map(|k| voxrt::auth::hash_token(k)).collect();
    let api_keys = api_keys.join(",");
    let admin_hash = voxrt::auth::hash_token(ADMIN_TOKEN);
    let file = logs.join("voxrt.log");
    let errors = logs.join("errors.log");
    let server = Server::start(
        work.path(),
        &[
            ("VOXRT_LOG__LEVEL", "trace"),
            ("VOXRT_LOG__FILE", file.to_str().expect("UTF-8")),
            ("VOXRT_LOG__ERROR_FILE", errors.to_str().expect("UTF-8")),
            ("VOXRT_AUTH__API_KEYS_SHA256", &api_keys),
            ("VOXRT_AUTH__FAILURES_PER_MINUTE_PER_IP", "100000"),
            ("VOXRT_AUTH__JWT__ALGORITHM", "HS256"),
            ("VOXRT_AUTH__JWT__HS256_SECRET", HS_SECRET),
            ("VOXRT_AUTH__JWT__AUDIENCE", "voxrt"),
            ("VOXRT_ADMIN__TOKEN_SHA256", &admin_hash),
        ],
    );
    let port = server.port;
    let stream = |query: &str| format!("/v1/stream?{sess}&{query}");
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let cases: Vec<(String, Vec<String>, u16)> = vec![
        (format!("/v1/stream?{sess}"), vec![bearer(keys[0])], 101),
        (stream(&format!("access_token={}", keys[1])), vec![], 101),
        (
            stream("access_token=kBOTHquery07"),
            vec![bearer(keys[2])],
            101,
        ),
        (stream("access_token=kWRONGquery08"), vec![], 401),
        (
            format!("/v1/stream?{sess}"),
            vec![bearer("kWRONGheader09")],
            401,
        ),
        (
            format!("/v1/stream?{sess}"),
            vec!["Authorization: bearer  kLOWERscheme10".into()],
            0,
        ),
        (
            format!("/v1/stream?{sess}"),
            vec!["Authorization: kNOscheme11".into()],
            0,
        ),
        (
            format!("/v1/stream?{sess}"),
            vec![format!("Authorization: Basic {basic}")],
            0,
        ),
        (
            format!("/v1/stream?{sess}"),
            vec![bearer("kDUPfirst12"), bearer("kDUPsecond13")],
            0,
        ),
        (
            stream("access_token=kREPEATa14&access_token=kREPEATb15"),
            vec![],
            400,
        ),
        (stream("access%5Ftoken=kPCTname16"), vec![], 401),
        (stream("access_token=kPCT%5Fvalue%5F17"), vec![], 401),
        (stream("access_token=kMALFORMED18%ZZ%"), vec![], 0),
        (stream("Access_Token=kCASE19"), vec![], 400),
        (stream("kBAREparam20"), vec![], 400),
        (stream("access_token==kDOUBLEeq21"), vec![], 0),
        (format!("/v1/stream?{sess}"), vec![bearer(&jwt_header)], 101),
        (stream(&format!("access_token={jwt_query}")), vec![], 101),
        (
            format!("/v1/stream?{sess}"),
            vec![bearer(&jwt_expired)],
            401,
        ),
        (stream(&format!("access_token={jwt_forged}")), vec![], 401),
        (
            stream(&format!(
                "resume={resume_id}&resume_token=rRESUMEplain22&last_seq=3"
            )),
            vec![],
            0,
        ),
        (
            stream(&format!(
                "resume={resume_id}&resume_token=rRESUMEa23&resume_token=rRESUMEb24"
            )),
            vec![],
            400,
        ),
        (
            stream(&format!(
                "resume={resume_id}&resume%5Ftoken=rRESUME%5Fpct25&last_seq=0"
            )),
            vec![],
            0,
        ),
    ];
    for (target, headers, status) in &cases {
        let got = raw_status(port, &upgrade(target, headers));
        if *status != 0 {
            assert_eq!(got, *status, "{target} {headers:?}");
        }
    }
    // Not upgrades: the stream route without a WebSocket handshake, and the admin endpoints.
    let plain = format!(
        "GET /v1/stream?{sess}&access_token={} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close",
        keys[3]
    );
    assert_eq!(raw_status(port, &plain), 400);
    let stats = |query: &str, token: &str| {
        format!(
            "GET /v1/stats?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Authorization: Bearer {token}"
        )
    };
    assert_eq!(raw_status(port, &stats("limit=1", ADMIN_TOKEN)), 200);
    let with_key = format!("limit=1&access_token={}", keys[4]);
    assert_eq!(raw_status(port, &stats(&with_key, ADMIN_TOKEN)), 400);
    assert_eq!(raw_status(port, &stats("limit=1", "admWRONGtoken26")), 401);
    get(&format!("{}/last-request-of-the-test", server.base()));
    let stderr = server.stop();

    let mut secrets: Vec<String> = vec![HS_SECRET.into(), ADMIN_TOKEN.into(), basic.clone()];
    secrets.extend(keys.iter().map(|k| k.to_string()));
    secrets.extend(
        [
            "kBASICpassword06",
            "kBOTHquery07",
            "kWRONGquery08",
            "kWRONGheader09",
            "kLOWERscheme10",
            "kNOscheme11",
            "kDUPfirst12",
            "kDUPsecond13",
            "kREPEATa14",
            "kREPEATb15",
            "kPCTname16",
            "kPCT%5Fvalue%5F17",
            "kPCT_value_17",
            "kMALFORMED18",
            "kCASE19",
            "kBAREparam20",
            "kDOUBLEeq21",
            "rRESUMEplain22",
            "rRESUMEa23",
            "rRESUMEb24",
            "rRESUME%5Fpct25",
            "rRESUME_pct25",
            "admWRONGtoken26",
        ]
        .map(String::from),
    );
    for jwt in [&jwt_header, &jwt_query, &jwt_expired, &jwt_forged] {
        secrets.push(jwt.to_string());
        secrets.push(jwt.rsplit('.').next().expect("signature").to_owned());
    }

    let mut outputs = vec![("stderr".to_owned(), stderr)];
    for stem in ["voxrt", "errors"] {
        let (current, rotated) = log_files(&logs, stem);
        for path in rotated.iter().chain([&current]) {
            outputs.push((path.display().to_string(), read(path)));
        }
    }
    for (name, text) in &outputs {
        for secret in &secrets {
            if let Some(at) = text.find(secret.as_str()) {
                let line = text[..at].rsplit('\n').next().unwrap_or("").to_owned()
                    + text[at..].split('\n').next().unwrap_or("");
                panic!("{name} holds the credential {secret:?}: {line}");
            }
        }
    }
    // The requests were logged, credentials redacted: the test looked where they would be.
    let (current, _) = log_files(&logs, "voxrt");
    let access: Vec<Value> = json_lines(&read(&current))
        .into_iter()
        .filter(|l| l["target"] == "voxrt::access")
        .collect();
    assert!(access.len() > cases.len(), "{access:#?}");
    for param in ["access_token", "resume_token"] {
        let shown = format!("{param}=%5Bredacted%5D");
        assert!(
            access
                .iter()
                .any(|l| l["query"].as_str().is_some_and(|q| q.contains(&shown))),
            "{shown} in {access:#?}"
        );
    }
}

/// The access log names the client: behind a trusted proxy, the address the proxy
/// forwarded for (the right-most untrusted `X-Forwarded-For` entry); without one, or from a
/// peer that is not a trusted proxy, the TCP peer whatever the header says.
#[test]
fn access_log_names_the_client_behind_a_trusted_proxy() {
    let request = |port: u16, path: &str, forwarded: Option<&str>| {
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close");
        if let Some(f) = forwarded {
            head.push_str(&format!("\r\nX-Forwarded-For: {f}"));
        }
        assert_eq!(raw_status(port, &head), 404);
    };
    let client_of = |stderr: &str, path: &str| -> String {
        json_lines(stderr)
            .into_iter()
            .find(|l| l["target"] == "voxrt::access" && l["path"] == path)
            .unwrap_or_else(|| panic!("an access line for {path}: {stderr}"))["client"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };

    let work = temp_dir("logs");
    let proxied = Server::start(
        work.path(),
        &[("VOXRT_SERVER__TRUSTED_PROXIES", "127.0.0.1")],
    );
    request(proxied.port, "/via-proxy", Some("6.6.6.6, 198.51.100.7"));
    request(proxied.port, "/direct", None);
    let stderr = proxied.stop();
    assert_eq!(client_of(&stderr, "/via-proxy"), "198.51.100.7");
    assert_eq!(client_of(&stderr, "/direct"), "127.0.0.1");

    let work = temp_dir("logs");
    let untrusting = Server::start(work.path(), &[]);
    request(untrusting.port, "/forged", Some("198.51.100.7"));
    let stderr = untrusting.stop();
    assert_eq!(client_of(&stderr, "/forged"), "127.0.0.1");
}
