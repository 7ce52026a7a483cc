//! Startup validation: every key's range, and the keys that must agree with each other.
//! Each error names the key, the value found and what is allowed.

use super::{Settings, SettingsError};
use std::fmt::Display;
use voxrt_actors::processors::{stt, ProcessorCatalog};

/// `value` of `key` within `lo..=hi` (`unit` is appended to the allowed range).
pub(super) fn check<T: PartialOrd + Display>(
    key: &'static str,
    value: T,
    lo: T,
    hi: T,
    unit: &str,
) -> Result<(), SettingsError> {
    if value >= lo && value <= hi {
        Ok(())
    } else {
        Err(SettingsError::Invalid {
            key,
            value: value.to_string(),
            allowed: format!("must be in {lo}..={hi}{unit}"),
        })
    }
}

impl Settings {
    /// Checks every value's range; `catalog` holds the processors that may be named.
    pub fn validate(&self, catalog: &ProcessorCatalog) -> Result<(), SettingsError> {
        let s = &self.server;
        check("server.workers", s.workers, 0, 256, "")?;
        check("server.shutdown_grace_s", s.shutdown_grace_s, 1, 3600, " s")?;
        check(
            "server.request_header_timeout_ms",
            s.request_header_timeout_ms,
            100,
            300_000,
            " ms",
        )?;
        check(
            "server.tcp_user_timeout_s",
            s.tcp_user_timeout_s,
            0,
            3600,
            " s",
        )?;
        if s.host.parse::<std::net::IpAddr>().is_err() && s.host != "localhost" {
            return Err(SettingsError::Invalid {
                key: "server.host",
                value: format!("\"{}\"", s.host),
                allowed: "must be an IP address (e.g. 127.0.0.1, 0.0.0.0, ::) or localhost".into(),
            });
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(SettingsError::Invalid {
                key: "log.level",
                value: format!("\"{}\"", self.log.level),
                allowed: format!("must be a level or tracing filter directive ({e})"),
            });
        }
        self.validate_tls()?;
        self.validate_log_files()?;
        let r = &self.registry;
        check("registry.max_sessions", r.max_sessions, 1, 100_000, "")?;
        check(
            "registry.max_sessions_per_ip",
            r.max_sessions_per_ip,
            1,
            r.max_sessions,
            " (registry.max_sessions)",
        )?;
        check(
            "registry.memory_budget_mb",
            r.memory_budget_mb,
            16,
            1 << 20,
            " MiB",
        )?;
        check("registry.session_ttl_s", r.session_ttl_s, 1, 604_800, " s")?;
        check("registry.idle_timeout_s", r.idle_timeout_s, 1, 86_400, " s")?;
        check(
            "registry.sweep_interval_ms",
            r.sweep_interval_ms,
            10,
            60_000,
            " ms",
        )?;
        check(
            "registry.handshake_timeout_s",
            r.handshake_timeout_s,
            1,
            300,
            " s",
        )?;
        // Below 10 ms, ordinary timer and scheduler jitter would refuse sessions on an
        // idle server.
        if r.max_lag_ms != 0 {
            check(
                "registry.max_lag_ms",
                r.max_lag_ms,
                10,
                10_000,
                " ms, or 0 (off)",
            )?;
        }
        if r.max_worker_load_pct != 0 {
            check(
                "registry.max_worker_load_pct",
                r.max_worker_load_pct,
                10,
                100,
                " %, or 0 (off)",
            )?;
        }
        if r.max_new_sessions_per_s != 0 {
            check(
                "registry.max_new_sessions_per_s",
                r.max_new_sessions_per_s,
                1,
                100_000,
                " per second, or 0 (off)",
            )?;
        }
        let l = &self.session;
        check(
            "session.max_binary_frame_bytes",
            l.max_binary_frame_bytes,
            1024,
            16 << 20,
            " bytes",
        )?;
        check(
            "session.max_text_frame_bytes",
            l.max_text_frame_bytes,
            64,
            1 << 20,
            " bytes",
        )?;
        check(
            "session.heartbeat_interval_s",
            l.heartbeat_interval_s,
            1,
            3600,
            " s",
        )?;
        check(
            "session.heartbeat_timeout_s",
            l.heartbeat_timeout_s,
            l.heartbeat_interval_s + 1,
            3600,
            " s (more than session.heartbeat_interval_s)",
        )?;
        check("session.max_json_depth", l.max_json_depth, 1, 64, "")?;
        check(
            "session.max_control_messages_per_s",
            l.max_control_messages_per_s,
            1,
            10_000,
            "",
        )?;
        check(
            "session.max_realtime_factor",
            l.max_realtime_factor,
            1.0,
            1000.0,
            "",
        )?;
        check(
            "session.realtime_burst_s",
            l.realtime_burst_s,
            1,
            86_400,
            " s",
        )?;
        check(
            "session.max_outgoing_bytes",
            l.max_outgoing_bytes,
            16 << 10,
            64 << 20,
            " bytes",
        )?;
        check(
            "session.slow_consumer_timeout_s",
            l.slow_consumer_timeout_s,
            1,
            3600,
            " s",
        )?;
        check("session.resume_window_s", l.resume_window_s, 0, 3600, " s")?;
        check(
            "session.resume_buffer_bytes",
            l.resume_buffer_bytes,
            4 << 10,
            64 << 20,
            " bytes",
        )?;
        let p = &self.pipeline;
        check(
            "pipeline.mailbox_capacity",
            p.mailbox_capacity.get(),
            1,
            4096,
            "",
        )?;
        check(
            "pipeline.max_inflight_bytes",
            p.max_inflight_bytes.get(),
            1024,
            64 << 20,
            " bytes",
        )?;
        // `stt` is known without being in the catalog: the server loads it at startup
        // when it is listed (see `validate_stt`).
        let known = |n: &str| catalog.contains(n) || n == stt::NAME;
        if let Some(unknown) = p.processors.iter().find(|n| !known(n)) {
            return Err(SettingsError::Invalid {
                key: "pipeline.processors",
                value: format!("\"{unknown}\""),
                allowed: format!(
                    "is not a known processor; known: {}",
                    catalog.names().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        self.validate_stt()?;
        self.validate_nats()?;
        let v = &self.vad;
        check("vad.threshold", v.threshold, 0.0, 1.0, "")?;
        let (lo, hi) = voxrt_actors::protocol::VAD_SILENCE_MS_RANGE;
        check("vad.silence_ms", v.silence_ms, lo, hi, " ms")?;
        let (lo, hi) = voxrt_actors::protocol::VAD_MIN_SPEECH_MS_RANGE;
        check("vad.min_speech_ms", v.min_speech_ms, lo, hi, " ms")?;
        if self.level.interval_ms != 0 {
            check(
                "level.interval_ms",
                self.level.interval_ms,
                10,
                60_000,
                " ms (or 0 for off)",
            )?;
        }
        let a = &self.admin;
        let hash = &a.token_sha256;
        if !hash.is_empty() && !super::access::is_sha256_hex(hash) {
            return Err(SettingsError::Invalid {
                key: "admin.token_sha256",
                value: format!("({} characters)", hash.len()),
                allowed: "must be 64 hex digits, the SHA-256 that `voxrt hash-token` prints".into(),
            });
        }
        if a.require_token && hash.is_empty() {
            return Err(SettingsError::Invalid {
                key: "admin.token_sha256",
                value: "\"\"".into(),
                allowed: "must be set because admin.require_token is true (the production \
                          profile): choose a secret token, run `voxrt hash-token`, and set \
                          VOXRT_ADMIN__TOKEN_SHA256 to what it prints"
                    .into(),
            });
        }
        if !a.bind.is_empty() && a.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(SettingsError::Invalid {
                key: "admin.bind",
                value: format!("\"{}\"", a.bind),
                allowed: "must be empty or an address with a port, e.g. 127.0.0.1:9090".into(),
            });
        }
        check(
            "supervision.max_restarts",
            self.supervision.max_restarts,
            0,
            1000,
            "",
        )?;
        check(
            "supervision.period_s",
            self.supervision.period_s,
            1,
            86_400,
            " s",
        )?;
        self.auth.validate()?;
        self.security.validate()
    }

    /// `server.tls`: both files or neither (the files themselves are read at startup).
    /// `[nats]` ranges and names (checked even while `url` is empty, so turning it on
    /// cannot reveal an old mistake).
    fn validate_nats(&self) -> Result<(), SettingsError> {
        let n = &self.nats;
        check("nats.max_age_s", n.max_age_s, 60, 365 * 86_400, " s")?;
        check("nats.max_bytes", n.max_bytes, 1 << 20, i64::MAX, " bytes")?;
        check(
            "nats.heartbeat_interval_s",
            n.heartbeat_interval_s,
            1,
            3600,
            " s",
        )?;
        check(
            "nats.publish_timeout_ms",
            n.publish_timeout_ms,
            100,
            60_000,
            " ms",
        )?;
        check("nats.max_pending", n.max_pending, 1, 10_000_000, "")?;
        check(
            "nats.handover_timeout_ms",
            n.handover_timeout_ms,
            100,
            60_000,
            " ms",
        )?;
        check("nats.takeover_tail_s", n.takeover_tail_s, 1, 3600, " s")?;
        // Tokens of subjects and names of streams and buckets: no dots, wildcards or spaces.
        let name_ok = |v: &str, dots: bool| {
            !v.is_empty()
                && v.chars().all(|c| {
                    c.is_ascii_alphanumeric() || c == '-' || c == '_' || (dots && c == '.')
                })
                && !v.starts_with('.')
                && !v.ends_with('.')
        };
        let names: [(&'static str, &str, bool); 5] = [
            ("nats.subject_prefix", &n.subject_prefix, true),
            ("nats.stream", &n.stream, false),
            ("nats.sessions_bucket", &n.sessions_bucket, false),
            ("nats.nodes_bucket", &n.nodes_bucket, false),
            ("nats.node", &n.node, false),
        ];
        for (key, value, dots) in names {
            if key == "nats.node" && value.is_empty() {
                continue;
            }
            if !name_ok(value, dots) {
                return Err(SettingsError::Invalid {
                    key,
                    value: format!("\"{value}\""),
                    allowed: "must be letters, digits, '-' and '_' (the prefix may also hold \
                              inner dots)"
                        .into(),
                });
            }
        }
        if n.enabled() && self.session.resume_window_s == 0 && n.handover_on_shutdown {
            return Err(SettingsError::Invalid {
                key: "nats.handover_on_shutdown",
                value: "true".into(),
                allowed: "needs session.resume_window_s > 0 (only resumable sessions can be \
                          handed over)"
                    .into(),
            });
        }
        Ok(())
    }

    /// `[stt]` ranges always (a reload may turn `stt` on); its place after `vad` when
    /// listed. Whether the model loads is checked where it is loaded (server start).
    fn validate_stt(&self) -> Result<(), SettingsError> {
        let s = &self.stt;
        check("stt.threads", s.threads, 1, 64, "")?;
        check(
            "stt.max_queued_segments",
            s.max_queued_segments,
            1,
            100_000,
            "",
        )?;
        check("stt.max_segment_s", s.max_segment_s, 1, 60, " s")?;
        check("stt.pre_roll_ms", s.pre_roll_ms, 0, 2_000, " ms")?;
        check("stt.post_roll_ms", s.post_roll_ms, 0, 2_000, " ms")?;
        check(
            "stt.flush_timeout_ms",
            s.flush_timeout_ms,
            100,
            600_000,
            " ms",
        )?;
        let processors = &self.pipeline.processors;
        let position = |name: &str| processors.iter().position(|p| p == name);
        if let Some(at) = position(stt::NAME) {
            if position("vad").is_none_or(|vad| vad > at) {
                return Err(SettingsError::Invalid {
                    key: "pipeline.processors",
                    value: format!("{processors:?}"),
                    allowed: "lists \"stt\" without \"vad\" before it; stt transcribes the \
                              segments vad finds"
                        .to_owned(),
                });
            }
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), SettingsError> {
        let t = &self.server.tls;
        let missing = match (t.cert_file.is_empty(), t.key_file.is_empty()) {
            (true, false) => Some(("server.tls.cert_file", "server.tls.key_file")),
            (false, true) => Some(("server.tls.key_file", "server.tls.cert_file")),
            _ => None,
        };
        match missing {
            Some((key, other)) => Err(SettingsError::Invalid {
                key,
                value: "\"\"".into(),
                allowed: format!("must be set because {other} is (TLS needs both, or neither)"),
            }),
            None => Ok(()),
        }
    }

    /// `log.*` file bounds.
    fn validate_log_files(&self) -> Result<(), SettingsError> {
        let l = &self.log;
        check(
            "log.max_file_bytes",
            l.max_file_bytes,
            4096,
            1 << 40,
            " bytes",
        )?;
        check("log.max_files", l.max_files, 1, 1000, " files")?;
        check("log.queue_lines", l.queue_lines, 64, 10_000_000, " lines")?;
        if !l.file.is_empty() && l.file == l.error_file {
            return Err(SettingsError::Invalid {
                key: "log.error_file",
                value: format!("\"{}\"", l.error_file),
                allowed: "must differ from log.file".into(),
            });
        }
        Ok(())
    }
}
