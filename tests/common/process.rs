//! The real `voxrt` binary as operators run it: a child process on an OS-picked port whose
//! JSON log lines are read on a thread.

use super::HANG;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// A `voxrt` process on an OS-picked port, with JSON logs read on a thread.
pub struct ServerProcess {
    pub child: Child,
    pub port: u16,
    pub logs: mpsc::Receiver<Value>,
    /// The log lines before "voxrt listening" (startup warnings).
    pub startup_logs: Vec<Value>,
}

/// The `voxrt` binary with a clean environment (only `PATH`) and the test profile.
pub fn voxrt() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxrt"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("VOXRT_PROFILE", "test");
    cmd
}

impl ServerProcess {
    /// Starts `voxrt` with JSON logs at info plus `envs`, and waits for "voxrt listening".
    pub fn start(envs: &[(&str, &str)]) -> Self {
        let mut cmd = voxrt();
        cmd.envs(envs.iter().copied());
        Self::spawn(cmd)
    }

    /// Starts `cmd` (the `voxrt` binary, or a test binary running a server of its own
    /// with the library) with JSON logs at info, and waits for "voxrt listening".
    /// `VOXRT_LOG__LEVEL` already set on `cmd` is kept.
    pub fn spawn(mut cmd: Command) -> Self {
        let level_set = cmd.get_envs().any(|(k, _)| k == "VOXRT_LOG__LEVEL");
        if !level_set {
            cmd.env("VOXRT_LOG__LEVEL", "info");
        }
        let mut child = cmd
            .env("VOXRT_LOG__FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("server process starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let mut port = None;
        let mut startup_logs = Vec::new();
        while port.is_none() {
            let line = logs.recv_timeout(HANG).expect("voxrt logs its address");
            if line["message"] == "voxrt listening" {
                let addr: std::net::SocketAddr =
                    line["addr"].as_str().expect("addr").parse().expect("addr");
                port = Some(addr.port());
            } else {
                startup_logs.push(line);
            }
        }
        ServerProcess {
            child,
            port: port.expect("port"),
            logs,
            startup_logs,
        }
    }

    /// `ws://127.0.0.1:{port}/v1/stream?{query}`.
    pub fn url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/v1/stream?{}", self.port, query)
    }

    /// `http://127.0.0.1:{port}`.
    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sends signal `name` (e.g. "TERM", "HUP") to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Reads log lines until one satisfies `pred` and returns it; panics after [`HANG`]
    /// with `what`. Lines read before it are consumed.
    pub fn wait_for_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + HANG;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line {what}: {e}"),
            }
        }
    }

    /// Waits for exit (bounded by the hang timeout) and returns the exit code.
    pub fn wait(mut self) -> (Option<i32>, Vec<Value>) {
        let deadline = std::time::Instant::now() + HANG;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let logs = self.logs.try_iter().collect();
                return (status.code(), logs);
            }
            assert!(std::time::Instant::now() < deadline, "voxrt did not exit");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl ServerProcess {
    /// Polls [`ServerProcess::stats`] every 20 ms until `cond` holds; returns those stats.
    pub async fn wait_for_stats(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        super::poll_until(
            what,
            std::time::Duration::from_millis(20),
            || self.stats(),
            cond,
        )
        .await
    }

    /// `GET /v1/stats` as JSON (the test profile sets no admin token); usable from async
    /// tests (the blocking request runs on tokio's blocking pool).
    pub async fn stats(&self) -> Value {
        let url = format!("{}/v1/stats", self.http());
        tokio::task::spawn_blocking(move || super::http::request("GET", &url, None).expect(200))
            .await
            .expect("stats request")
    }
}

/// Resident memory of a process, in bytes (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
