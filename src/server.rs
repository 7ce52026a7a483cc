//! Startup and orderly shutdown.

use crate::settings::{Settings, SettingsError};
use crate::{routes, AppState};
use actix::Addr;
use actix_web::{dev::ServerHandle, web, App, HttpServer};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tracing::{info, warn};
use voxrt_actors::processors::ProcessorCatalog;
use voxrt_actors::registry::{LiveSessions, SessionRegistry, Shutdown};
use voxrt_actors::session::SessionConfig;

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The settings are invalid.
    #[error("invalid configuration: {0}")]
    Settings(#[from] SettingsError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// host:port tried.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A started server. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    /// The address actually bound (the port is the OS's pick when configured as 0).
    pub addr: SocketAddr,
    /// The session registry (stats, and tests that restart it).
    pub registry: Addr<SessionRegistry>,
    handle: ServerHandle,
    grace: Duration,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Validates `settings`, binds, and starts serving on the current actix system.
/// `catalog` holds the processors `pipeline.processors` may name.
pub async fn start(
    settings: Settings,
    catalog: ProcessorCatalog,
) -> Result<RunningServer, StartError> {
    settings.validate(&catalog)?;
    let bind = format!("{}:{}", settings.server.host, settings.server.port);
    let listener = TcpListener::bind(&bind).map_err(|source| StartError::Bind {
        addr: bind.clone(),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: bind.clone(),
        source,
    })?;
    let registry = SessionRegistry::new(settings.registry, settings.session_worst_case_bytes())
        .start_supervised();
    let session_config = Arc::new(SessionConfig {
        limits: settings.session,
        registry: settings.registry,
        pipeline: settings.pipeline.clone(),
        level: settings.level,
    });
    let workers = match settings.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let grace = Duration::from_secs(settings.server.shutdown_grace_s);
    let state = web::Data::new(AppState {
        settings: Arc::new(settings),
        session_config,
        catalog: Arc::new(catalog),
        registry: registry.clone(),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(routes::configure)
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)
    .map_err(|source| StartError::Bind {
        addr: bind.clone(),
        source,
    })?
    .run();
    let handle = server.handle();
    let done = tokio::task::spawn_local(server);
    info!(%addr, workers, "voxrt listening");
    Ok(RunningServer {
        addr,
        registry,
        handle,
        grace,
        done,
    })
}

impl RunningServer {
    /// Shuts down in order: stop admitting, let every session flush and close with
    /// `server_shutdown` (1001), then stop the HTTP server. Sessions still open after
    /// `shutdown_grace_s` are closed anyway and logged by id.
    pub async fn shutdown(self) {
        info!(
            grace_s = self.grace.as_secs(),
            "shutting down: closing sessions"
        );
        let drained = tokio::time::timeout(self.grace, self.registry.send(Shutdown)).await;
        if !matches!(drained, Ok(Ok(()))) {
            let left = self.registry.send(LiveSessions).await.unwrap_or_default();
            warn!(
                count = left.len(),
                sessions = ?left,
                "sessions did not close within shutdown_grace_s; closing them anyway"
            );
        }
        self.handle.stop(true).await;
        let _ = self.done.await;
        info!("stopped");
    }

    /// Runs until SIGINT or SIGTERM, then [`RunningServer::shutdown`].
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        self.shutdown().await;
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            }
        }
        _ => {
            warn!("cannot install signal handlers; waiting for Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
