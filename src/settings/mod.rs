//! The server's one typed configuration, loaded in layers and validated at startup.
//!
//! Layers, last wins: embedded `config/default.toml` -> embedded profile file
//! (`VOXRT_PROFILE`: bench | development | production | test) -> the file named by `VOXRT_CONFIG`
//! -> `VOXRT_<SECTION>__<KEY>` environment variables (other `VOXRT_*` names are not read).
//! Unknown keys are errors, and
//! [`Settings::validate`] names the bad key, its value and the allowed range.

mod access;
mod validate;

use validate::check;

pub use access::{AuthSettings, JwtSettings, SecuritySettings};

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use thiserror::Error;
use voxrt_actors::audio::MAX_BLOCK_SAMPLES;
use voxrt_actors::pipeline::Pipeline;
use voxrt_actors::processors::{stt, ProcessorCatalog};
use voxrt_actors::settings::{
    LevelSettings, NatsSettings, PipelineSettings, RegistryLimits, SessionLimits, SttSettings,
    SupervisionSettings, VadSettings,
};

const DEFAULT: &str = include_str!("../../config/default.toml");
const PROFILES: [(&str, &str); 4] = [
    ("bench", include_str!("../../config/bench.toml")),
    ("development", include_str!("../../config/development.toml")),
    ("production", include_str!("../../config/production.toml")),
    ("test", include_str!("../../config/test.toml")),
];
/// Environment variables that pick files rather than set keys.
const ENV_SELECTORS: [&str; 2] = ["VOXRT_PROFILE", "VOXRT_CONFIG"];

/// Whether the server reads `name` as a setting: `VOXRT_<SECTION>__<KEY>` (the `__` is the
/// section separator). Other `VOXRT_*` names, such as `VOXRT_TOKEN` that the example clients
/// and the load generator read, are not settings: they are ignored, with a warning at startup
/// ([`ConfigSource::ignored_variables`]), so a client's variable in the same shell cannot stop
/// the server. A `VOXRT_<SECTION>__<KEY>` that names no key is still an error.
fn is_settings_variable(name: &str) -> bool {
    name.strip_prefix("VOXRT_")
        .is_some_and(|rest| rest.contains("__"))
}

/// Everything voxrt can be configured with; `config/default.toml` documents each key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Listening and process lifetime.
    pub server: ServerSettings,
    /// Logging.
    pub log: LogSettings,
    /// Limits across sessions.
    pub registry: RegistryLimits,
    /// Limits per session.
    pub session: SessionLimits,
    /// The audio pipeline.
    pub pipeline: PipelineSettings,
    /// VAD defaults.
    pub vad: VadSettings,
    /// Level meter.
    pub level: LevelSettings,
    /// Admin endpoints.
    pub admin: AdminSettings,
    /// Processor restart limits.
    pub supervision: SupervisionSettings,
    /// Client credentials.
    pub auth: AuthSettings,
    /// Origins and per-address limits.
    pub security: SecuritySettings,
    /// `[stt]`: speech to text, when `pipeline.processors` names `stt`.
    pub stt: SttSettings,
    /// `[nats]`: event log, cluster view and cross-node resume on NATS JetStream.
    pub nats: NatsSettings,
}

/// `[admin]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Hex SHA-256 of the admin bearer token; empty = admin endpoints open.
    pub token_sha256: String,
    /// Refuse to start without a token.
    pub require_token: bool,
    /// Separate listen address for admin endpoints; empty = main listener.
    pub bind: String,
    /// Show client addresses in stats.
    pub show_peer_addresses: bool,
}

/// Where settings come from; kept by the server so a reload re-reads the same layers
/// (in particular the file named by `VOXRT_CONFIG`).
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// Profile; `None` = `VOXRT_PROFILE` from `env`.
    pub profile: Option<String>,
    /// Environment variables considered (`VOXRT_*`).
    pub env: HashMap<String, String>,
    /// Dotted-key overrides applied last.
    pub overrides: Vec<(String, String)>,
}

impl ConfigSource {
    /// The process environment, as the binary uses it.
    pub fn from_process() -> Self {
        Self {
            profile: None,
            env: std::env::vars().collect(),
            overrides: Vec::new(),
        }
    }

    /// Loads the layers now (not validated).
    pub fn load(&self) -> Result<Settings, SettingsError> {
        let overrides: Vec<(&str, &str)> = self
            .overrides
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Settings::load_from(self.profile.as_deref(), &self.env, &overrides)
    }

    /// `VOXRT_*` variables in the environment that the server does not read: neither
    /// `VOXRT_PROFILE`, `VOXRT_CONFIG` nor `VOXRT_<SECTION>__<KEY>`. Sorted names only (the
    /// values may be credentials), for the startup warning.
    pub fn ignored_variables(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .env
            .keys()
            .map(String::as_str)
            .filter(|k| {
                k.starts_with("VOXRT_") && !ENV_SELECTORS.contains(k) && !is_settings_variable(k)
            })
            .collect();
        names.sort_unstable();
        names
    }

    /// The profile in force, for `/v1/stats`.
    pub fn profile_name(&self) -> String {
        self.profile
            .clone()
            .or_else(|| self.env.get("VOXRT_PROFILE").cloned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "default".into())
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Listen address.
    pub host: String,
    /// Listen port; 0 = OS-picked.
    pub port: u16,
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    /// Seconds sessions get to close on shutdown.
    pub shutdown_grace_s: u64,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<TrustedProxy>,
    /// Milliseconds a client has to send its request head; slower connections get 408 and
    /// are closed.
    pub request_header_timeout_ms: u64,
    /// Seconds sent data may stay unacknowledged (or a peer's window closed) before the
    /// kernel drops the connection (TCP_USER_TIMEOUT); 0 leaves the system default.
    pub tcp_user_timeout_s: u64,
    /// Native TLS for the main and admin listeners.
    pub tls: TlsSettings,
}

/// `[server.tls]`: both files set = HTTPS/WSS on every listener; both empty = plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first; re-read on reload.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf; re-read on reload.
    pub key_file: String,
}

impl TlsSettings {
    /// Whether TLS is configured (validation ensures both files or neither).
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }
}

/// A trusted proxy: one address or a CIDR range (`10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustedProxy(pub ipnet::IpNet);

impl TryFrom<String> for TrustedProxy {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let s = s.trim();
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(TrustedProxy)
            .map_err(|_| format!("\"{s}\" is not an IP address or CIDR range (e.g. 10.0.0.0/8)"))
    }
}

impl From<TrustedProxy> for String {
    fn from(p: TrustedProxy) -> String {
        p.0.to_string()
    }
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// tracing filter directive.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
    /// Log file (rotated); "" = stderr only.
    pub file: String,
    /// Errors-only log file (rotated); "" = none.
    pub error_file: String,
    /// A file is rotated once it grows past this many bytes (or at midnight).
    pub max_file_bytes: u64,
    /// Rotated files kept per log file; older ones are deleted.
    pub max_files: usize,
    /// Lines waiting for the file writer; more are dropped and counted.
    pub queue_lines: usize,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// `VOXRT_PROFILE` names no profile.
    #[error("VOXRT_PROFILE=\"{0}\" is not a profile; use bench, development, production or test")]
    UnknownProfile(String),
    /// A file or variable could not be read or does not fit the schema (unknown key, wrong type).
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range.
    #[error("{key} = {value}: {allowed}")]
    Invalid {
        /// Dotted key, as in the TOML files.
        key: &'static str,
        /// The value found.
        value: String,
        /// What is allowed.
        allowed: String,
    },
}

impl Settings {
    /// Loads the layers for `profile` (`None`: `VOXRT_PROFILE`, else none) with the process
    /// environment, then `overrides` (dotted key, value) on top. Not yet validated.
    pub fn load(profile: Option<&str>, overrides: &[(&str, &str)]) -> Result<Self, SettingsError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_from(profile, &env, overrides)
    }

    /// [`Settings::load`] with an explicit environment (tests).
    pub fn load_from(
        profile: Option<&str>,
        env: &HashMap<String, String>,
        overrides: &[(&str, &str)],
    ) -> Result<Self, SettingsError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULT, FileFormat::Toml));
        let profile = profile
            .map(str::to_owned)
            .or_else(|| env.get("VOXRT_PROFILE").cloned())
            .filter(|p| !p.is_empty());
        if let Some(name) = profile {
            let text = PROFILES
                .iter()
                .find(|(p, _)| *p == name)
                .map(|(_, text)| *text)
                .ok_or(SettingsError::UnknownProfile(name))?;
            builder = builder.add_source(File::from_str(text, FileFormat::Toml));
        }
        if let Some(path) = env.get("VOXRT_CONFIG").filter(|p| !p.is_empty()) {
            builder = builder.add_source(File::new(path, FileFormat::Toml));
        }
        let vars: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| is_settings_variable(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            Environment::with_prefix("VOXRT")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("pipeline.processors")
                .with_list_parse_key("server.trusted_proxies")
                .with_list_parse_key("auth.api_keys_sha256")
                .with_list_parse_key("security.allowed_origins")
                .source(Some(vars)),
        );
        for (key, value) in overrides {
            builder = builder.set_override(*key, *value)?;
        }
        Ok(builder.build()?.try_deserialize()?)
    }

    /// SHA-256 (hex) of the settings' canonical JSON, shown in `/v1/stats`.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(json))
    }

    /// What every session's actors are built with, from these settings.
    pub fn session_config(&self) -> voxrt_actors::settings::SessionConfig {
        voxrt_actors::settings::SessionConfig {
            limits: self.session,
            registry: self.registry,
            pipeline: self.pipeline.clone(),
            level: self.level,
            supervision: self.supervision,
        }
    }

    /// The most memory one session can make the server hold, in bytes: audio in flight
    /// before the resampler (at most `max_inflight_bytes`, or one frame when that is
    /// larger: a frame is let in whenever nothing is in flight), one message being read or
    /// reassembled (at most `max_binary_frame_bytes`), full processor stage mailboxes (and
    /// the returned-audio queue) of at most 100 ms blocks, the outgoing queue, the events
    /// kept for resume (none with resume off), plus fixed per-session state. `catalog` says how many stages
    /// `pipeline.processors` makes.
    pub fn session_worst_case_bytes(&self, catalog: &ProcessorCatalog) -> usize {
        // Measured (heap profile, 200 sessions): about 85 KiB of state a session holds
        // whatever it does: rubato's FFT buffers and plans (33 KiB), actix's HTTP and
        // WebSocket buffers (25 KiB), the VAD (14 KiB), actors and their channels.
        const FIXED: usize = 96 << 10;
        // The resampler's entry stands for the returned-audio queue: its own mailbox holds
        // client bytes, counted in flight.
        let stages = Pipeline::stage_names(catalog, &self.pipeline.processors).len();
        let per_block = MAX_BLOCK_SAMPLES * std::mem::size_of::<f32>();
        let frame = self.session.max_binary_frame_bytes;
        self.pipeline.max_inflight_bytes.get().max(frame)
            + frame
            + stages * (self.pipeline.mailbox_capacity.get() + 1) * per_block
            // The outgoing queue closes the session at twice its bound.
            + 2 * self.session.max_outgoing_bytes
            + self.session.replay_buffer_bytes()
            + self.stt_buffer_bytes()
            + FIXED
    }

    /// What one session's `stt` processor may hold (none without `stt`): its segment
    /// buffer. Segments waiting in the server-wide queue are bounded by
    /// `stt.max_queued_segments` on top.
    pub fn stt_buffer_bytes(&self) -> usize {
        if !self.pipeline.processors.iter().any(|p| p == stt::NAME) {
            return 0;
        }
        self.stt.max_buffered_samples() * std::mem::size_of::<f32>()
    }
}

#[cfg(test)]
mod tests;
