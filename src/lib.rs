//! voxrt server: settings, routes, startup and shutdown around the actors in `voxrt-actors`.
//!
//! # Layout
//! - [`settings`]: the one typed `Settings` struct, layered loading and validation.
//! - [`server`]: binds, starts the registry and HTTP workers, and shuts down in order.
//! - `stream`: `GET /v1/stream` admission and upgrade.
//! - `ops`: `/health`, `/ready`, `/v1/stats*`, `/metrics`, `/v1/admin/reload`.
//! - `client_ip`: the client address behind trusted reverse proxies (X-Forwarded-For).
//! - `address_limits`: per-address rate limits (new sessions, failed credentials).
//! - `cors`: `security.allowed_origins` for WebSocket upgrades and CORS.
//! - `access_log`: one line per request, credentials redacted, the client behind proxies.
//! - [`auth`]: client credentials (API keys, JWTs) and the admin token.
//! - `reload`: applying a re-read configuration to a running server.
//! - `refusal`: HTTP JSON errors before the upgrade.
//! - `web`: the browser page at `/` (microphone demo), compiled into the binary.
//! - [`logging`]: tracing setup with a reloadable filter, log files and their rotation.
//! - `tls`: native TLS (`[server.tls]`), the certificate swapped on reload.
//!
//! Like mini-redis, the binary is thin: tests call the same [`server::start`] on
//! `127.0.0.1:0` and get the bound address back.
#![warn(missing_docs)]

mod access_log;
mod address_limits;
pub mod auth;
mod client_ip;
mod cluster;
mod cors;
pub mod logging;
mod ops;
mod refusal;
mod reload;
pub mod server;
pub mod settings;
mod stream;
mod tls;
mod web;

pub use server::{start, RunningServer, StartError};
pub use settings::{ConfigSource, Settings};
pub use voxrt_actors as actors;

use actix::Addr;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use voxrt_actors::error::AdmissionError;
use voxrt_actors::metrics::Metrics;
use voxrt_actors::processors::ProcessorCatalog;
use voxrt_actors::protocol::StreamParams;
use voxrt_actors::registry::{EndReason, SessionRegistry, Unregister};
use voxrt_actors::session::{Session, SessionRoute, SessionSpec, Takeover};
use voxrt_actors::settings::SessionConfig;

/// The configuration in force: replaced whole by a reload, read by every request.
pub(crate) struct Current {
    settings: Arc<Settings>,
    session_config: Arc<SessionConfig>,
    /// Unix seconds when it was loaded.
    loaded_at: u64,
    /// SHA-256 of its canonical JSON.
    hash: String,
    /// Client credentials under `[auth]`.
    authenticator: auth::Authenticator,
    /// Per-address limiters; a reload starts them afresh.
    address_limits: address_limits::AddressLimits,
}

impl Current {
    /// Fails only if the JWT key file cannot be read or parsed (the error names the key).
    fn new(settings: Settings) -> Result<Self, settings::SettingsError> {
        let authenticator = auth::Authenticator::new(&settings.auth)?;
        let address_limits = address_limits::AddressLimits::new(&settings);
        let session_config = Arc::new(settings.session_config());
        let hash = settings.fingerprint();
        Ok(Self {
            settings: Arc::new(settings),
            session_config,
            loaded_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            hash,
            authenticator,
            address_limits,
        })
    }
}

/// What every request handler shares.
pub(crate) struct AppState {
    current: RwLock<Arc<Current>>,
    source: ConfigSource,
    catalog: Arc<ProcessorCatalog>,
    registry: Addr<SessionRegistry>,
    metrics: Arc<Metrics>,
    started: Instant,
    workers: usize,
    /// The certificate every TLS listener presents; `None` without `[server.tls]`.
    tls: Option<Arc<tls::CertStore>>,
    /// The main listener's workers' event-loop lag (the registry reads it at admission).
    lag: Arc<voxrt_actors::registry::LagMonitor>,
    /// The transcription threads, when `stt` was loaded at startup (`/v1/stats`).
    stt: Option<Arc<voxrt_actors::processors::stt::TranscriptionPool>>,
    /// NATS, when `[nats]` is on.
    cluster: Option<voxrt_actors::cluster::Cluster>,
}

impl AppState {
    /// The configuration in force now.
    fn current(&self) -> Arc<Current> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Starts the actor of session `id`, admitted by the registry (a new session, or one
    /// taken over from another node with `takeover`). A pipeline that cannot be built
    /// gives the admission back and is `internal_error` (logged here).
    fn start_session(
        &self,
        current: &Current,
        id: uuid::Uuid,
        params: StreamParams,
        ttl_s: Option<u64>,
        takeover: Option<Takeover>,
    ) -> Result<SessionRoute, AdmissionError> {
        let started = Session::start(SessionSpec {
            id,
            params,
            config: current.session_config.clone(),
            catalog: self.catalog.clone(),
            metrics: self.metrics.clone(),
            ttl_s,
            register: self.registry.clone().recipient(),
            unregister: self.registry.clone().recipient(),
            cluster: self.cluster.clone(),
            takeover,
        });
        started.map(|(_, route)| route).map_err(|e| {
            tracing::error!(session = %id, error = %e, "pipeline could not start");
            self.registry.do_send(Unregister {
                id,
                reason: EndReason::UpgradeFailed,
            });
            AdmissionError::Internal
        })
    }
}
