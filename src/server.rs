//! Startup and orderly shutdown.

use crate::access_log::access_log;
use crate::settings::{ConfigSource, SettingsError};
use crate::tls::CertStore;
use crate::{cors, ops, reload, stream, AppState, Current};
use actix::Addr;
use actix_web::middleware::from_fn;
use actix_web::{dev::ServerHandle, web, App, HttpServer};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::{info, warn};
use voxrt_actors::metrics::Metrics;
use voxrt_actors::processors::{stt, ProcessorCatalog};
use voxrt_actors::registry::{LagMonitor, LiveSessions, SessionRegistry, Shutdown};

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The settings are invalid.
    #[error("invalid configuration: {0}")]
    Settings(#[from] SettingsError),
    /// `stt` is listed and its library or model would not load.
    #[error("{0}")]
    Stt(#[from] stt::SttStartError),
    /// `[nats]` is on and its URL or credentials file cannot be used.
    #[error("{0}")]
    Nats(#[from] voxrt_actors::cluster::ClusterError),
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
    /// The admin listener, when `admin.bind` is set.
    pub admin_addr: Option<SocketAddr>,
    /// The session registry (stats, and tests that restart it).
    pub registry: Addr<SessionRegistry>,
    state: web::Data<AppState>,
    handles: Vec<ServerHandle>,
    grace: Duration,
    /// `nats.handover_on_shutdown` with NATS on.
    hand_over: bool,
    done: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

fn bind(addr: &str) -> Result<TcpListener, StartError> {
    let bind_error = |source| StartError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).map_err(bind_error)?;
    Ok(listener)
}

/// Where `voxrt healthcheck` finds this server's `/health`: the configured port on the
/// loopback address when the server listens on every interface; `https` with
/// `[server.tls]`.
pub fn health_url(settings: &crate::Settings) -> String {
    let scheme = if settings.server.tls.enabled() {
        "https"
    } else {
        "http"
    };
    let port = settings.server.port;
    match settings.server.host.as_str() {
        "0.0.0.0" => format!("{scheme}://127.0.0.1:{port}/health"),
        "::" => format!("{scheme}://[::1]:{port}/health"),
        h if h.contains(':') => format!("{scheme}://[{h}]:{port}/health"),
        h => format!("{scheme}://{h}:{port}/health"),
    }
}

/// Loads and validates settings from `source`, binds, and starts serving on the current
/// actix system. `catalog` holds the processors `pipeline.processors` may name. The source
/// is kept: a reload re-reads it.
pub async fn start(
    source: ConfigSource,
    mut catalog: ProcessorCatalog,
) -> Result<RunningServer, StartError> {
    let settings = source.load()?;
    settings.validate(&catalog)?;
    let metrics = Arc::new(Metrics::new());
    // `stt` loads its model now, once, unless the embedder registered its own.
    let lists_stt = settings.pipeline.processors.iter().any(|p| p == stt::NAME);
    let stt = match lists_stt && !catalog.contains(stt::NAME) {
        true => Some(stt::register(
            &mut catalog,
            &settings.stt,
            metrics.stt.clone(),
        )?),
        false => None,
    };
    let main_bind = format!("{}:{}", settings.server.host, settings.server.port);
    let listener = bind(&main_bind)?;
    let admin_listener = match settings.admin.bind.as_str() {
        "" => None,
        addr => Some(bind(addr)?),
    };
    let local = |l: &TcpListener, name: &str| {
        l.local_addr().map_err(|source| StartError::Bind {
            addr: name.to_owned(),
            source,
        })
    };
    let addr = local(&listener, &main_bind)?;
    let admin_addr = admin_listener
        .as_ref()
        .map(|l| local(l, &settings.admin.bind))
        .transpose()?;
    let tls = CertStore::load(&settings.server.tls)?;
    let tls_config = tls.as_ref().map(CertStore::server_config).transpose()?;
    let reserve = settings.session_worst_case_bytes(&catalog);
    let budget_sessions = settings.registry.budget_sessions(reserve);
    if budget_sessions < settings.registry.max_sessions {
        warn!(
            max_sessions = settings.registry.max_sessions,
            budget_sessions,
            reserve_bytes_per_session = reserve,
            "registry.max_sessions cannot be reached: registry.memory_budget_mb holds fewer \
             sessions' worst case; raise the budget or lower the session limits"
        );
    }
    let workers = match settings.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let lag = LagMonitor::new(workers);
    let registry = SessionRegistry::new(settings.registry, reserve, metrics.clone())
        .with_lag_monitor(lag.clone())
        .start_supervised();
    let grace = Duration::from_secs(settings.server.shutdown_grace_s);
    let cluster = crate::cluster::start(&settings.nats, metrics.nats.clone())?;
    let hand_over = cluster.is_some() && settings.nats.handover_on_shutdown;
    let state = web::Data::new(AppState {
        current: RwLock::new(Arc::new(Current::new(settings)?)),
        source,
        catalog: Arc::new(catalog),
        registry: registry.clone(),
        metrics,
        started: Instant::now(),
        workers,
        tls,
        lag,
        stt,
        cluster,
    });
    let admin_on_main = admin_listener.is_none();
    let main_state = state.clone();
    let header_timeout =
        Duration::from_millis(state.current().settings.server.request_header_timeout_ms);
    let user_timeout = state.current().settings.server.tcp_user_timeout_s;
    let main = HttpServer::new(move || {
        // The factory runs on every worker thread: each gets its lag ticker here, once
        // (sessions run on the worker that accepted them; the admin listener has none).
        main_state.lag.tick_on_this_thread();
        App::new()
            .app_data(main_state.clone())
            .wrap(cors::middleware(main_state.clone()))
            .wrap(from_fn(access_log))
            .configure(stream::configure)
            .configure(ops::configure_probes)
            .configure(crate::web::configure)
            .configure(|cfg| {
                if admin_on_main {
                    ops::configure_admin(cfg);
                }
            })
    })
    .workers(workers)
    .client_request_timeout(header_timeout)
    .tls_handshake_timeout(header_timeout)
    .on_connect(move |conn, ext| {
        let Some(tcp) = accepted_tcp(conn) else {
            return;
        };
        tune_socket(tcp, user_timeout);
        if let Some(handle) = SocketAbortHandle::of(tcp) {
            ext.insert(handle);
        }
    })
    // After the last response (a WebSocket's close frame) the connection is ended within
    // CLOSE_LINGER_MS rather than the default second.
    .client_disconnect_timeout(Duration::from_millis(CLOSE_LINGER_MS))
    .disable_signals()
    .shutdown_timeout(1);
    let main = match &tls_config {
        Some(config) => main.listen_rustls_0_23(listener, config.clone()),
        None => main.listen(listener),
    }
    .map_err(|source| StartError::Bind {
        addr: main_bind.clone(),
        source,
    })?
    .run();
    let mut handles = vec![main.handle()];
    let mut done = vec![tokio::task::spawn_local(main)];
    if let Some(listener) = admin_listener {
        let admin_state = state.clone();
        let admin = HttpServer::new(move || {
            App::new()
                .app_data(admin_state.clone())
                .wrap(cors::middleware(admin_state.clone()))
                .wrap(from_fn(access_log))
                .configure(ops::configure_probes)
                .configure(ops::configure_admin)
        })
        .workers(1)
        .client_request_timeout(header_timeout)
        .tls_handshake_timeout(header_timeout)
        .disable_signals()
        .shutdown_timeout(1);
        let admin = match &tls_config {
            Some(config) => admin.listen_rustls_0_23(listener, config.clone()),
            None => admin.listen(listener),
        }
        .map_err(|source| StartError::Bind {
            addr: "admin.bind".to_owned(),
            source,
        })?
        .run();
        handles.push(admin.handle());
        done.push(tokio::task::spawn_local(admin));
    }
    forget_idle_addresses(state.clone());
    if let Some(cluster) = state.cluster.clone() {
        crate::cluster::serve(state.clone(), cluster, addr);
    }
    let tls = state.tls.is_some();
    info!(%addr, ?admin_addr, workers, tls, "voxrt listening");
    Ok(RunningServer {
        addr,
        admin_addr,
        registry,
        state,
        handles,
        grace,
        hand_over,
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
            hand_over = self.hand_over,
            "shutting down: closing sessions (or handing them over)"
        );
        let shutdown = Shutdown {
            hand_over: self.hand_over,
        };
        let drained = tokio::time::timeout(self.grace, self.registry.send(shutdown)).await;
        if !matches!(drained, Ok(Ok(()))) {
            let left = self.registry.send(LiveSessions).await.unwrap_or_default();
            warn!(
                count = left.len(),
                sessions = ?left,
                "sessions did not close within shutdown_grace_s; closing them anyway"
            );
        }
        if let Some(cluster) = &self.state.cluster {
            // Other nodes' handover requests answered before the process exits (they
            // would wait out their timeout), then out of the cluster view now rather than
            // when the heartbeat expires.
            let answering = Duration::from_millis(cluster.settings().handover_timeout_ms);
            let _ = tokio::time::timeout(answering, cluster.close_handovers()).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), cluster.leave()).await;
        }
        for handle in &self.handles {
            handle.stop(true).await;
        }
        for done in self.done {
            let _ = done.await;
        }
        info!("stopped");
    }

    /// Re-reads the configuration and applies it (what SIGHUP does); returns the new
    /// config hash, or the error naming the bad key (nothing changed then).
    pub fn reload(&self) -> Result<String, SettingsError> {
        reload::reload(&self.state)
    }

    /// Runs until SIGINT or SIGTERM, then [`RunningServer::shutdown`]. SIGHUP reloads the
    /// configuration meanwhile.
    pub async fn run_until_signal(self) {
        wait_for_signal(&self).await;
        self.shutdown().await;
    }
}

/// Socket options of an accepted connection:
/// - TCP_NODELAY: events are small frames written when they happen; with Nagle's algorithm
///   a `pong` or `speech_start` waited for the client's next ACK (up to a chunk interval,
///   about 20 ms, measured with the load generator) before leaving.
/// - TCP_USER_TIMEOUT (`secs`, 0 = system default): a client that stops acknowledging
///   (vanished, or keeps its window closed by not reading) is dropped by the kernel after
///   `secs`, so it cannot pin a connection and its buffers after its session has ended.
///
/// On a TLS listener the connection is the TLS stream; the options go on the TCP socket
/// under it.
fn tune_socket(tcp: &actix_web::rt::net::TcpStream, secs: u64) {
    if let Err(e) = tcp.set_nodelay(true) {
        warn!(error = %e, "cannot set TCP_NODELAY");
    }
    if secs == 0 {
        return;
    }
    let timeout = Some(Duration::from_secs(secs));
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_user_timeout(timeout) {
        warn!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
}

/// The TCP stream of an accepted connection, plain or under TLS.
fn accepted_tcp(conn: &dyn std::any::Any) -> Option<&actix_web::rt::net::TcpStream> {
    type Tcp = actix_web::rt::net::TcpStream;
    conn.downcast_ref::<Tcp>().or_else(|| {
        conn.downcast_ref::<actix_tls::accept::rustls_0_23::TlsStream<Tcp>>()
            .map(|tls| tls.get_ref().0)
    })
}

/// How long, ms, the server waits after a connection's last response (a WebSocket close
/// frame) for the client to hang up before ending TCP itself. Reading meanwhile lets the
/// client's own close frame arrive without a reset that could destroy ours unread; a client
/// that answers the close (browsers, Python's `websockets`) sees TCP end at once.
///
/// Not less than 600: actix computes the deadline from a clock it refreshes every 500 ms,
/// and a deadline already past when set is never woken (the connection then lingers until
/// the client hangs up). 600 ms gives a wait of 0.1 to 0.6 s.
const CLOSE_LINGER_MS: u64 = 600;

/// A duplicate of an accepted socket, kept in the connection's data so a session can cut a
/// connection whose actor cannot run (its client stopped reading, so the HTTP writer no
/// longer polls it). Holding a duplicate (not the raw number) means the descriptor cannot
/// be reused for another connection while anyone can still cut it.
#[derive(Clone)]
pub(crate) struct SocketAbortHandle(Arc<std::os::fd::OwnedFd>);

impl SocketAbortHandle {
    fn of(tcp: &actix_web::rt::net::TcpStream) -> Option<Self> {
        use std::os::fd::AsFd;
        tcp.as_fd()
            .try_clone_to_owned()
            .ok()
            .map(|fd| Self(Arc::new(fd)))
    }

    /// Resets the connection: linger 0 and a shutdown both ways, so the HTTP dispatcher
    /// wakes to an error and drops the connection, and the peer gets a reset.
    pub(crate) fn abort(&self) -> voxrt_actors::session::SocketAbort {
        let fd = self.0.clone();
        Arc::new(move || {
            let socket = socket2::SockRef::from(&*fd);
            let _ = socket.set_linger(Some(Duration::ZERO));
            let _ = socket.shutdown(std::net::Shutdown::Both);
        })
    }
}

/// Every minute, drops per-address limiter entries whose buckets have refilled, so the
/// limiters hold only addresses seen recently.
fn forget_idle_addresses(state: web::Data<AppState>) {
    actix_web::rt::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            let current = state.current();
            current.address_limits.forget_idle();
            tracing::debug!(
                tracked = current.address_limits.tracked(),
                "per-address limiters pruned"
            );
        }
    });
}

#[cfg(unix)]
async fn wait_for_signal(server: &RunningServer) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        warn!("cannot install signal handlers; waiting for Ctrl-C");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return info!("SIGTERM received"),
            _ = int.recv() => return info!("SIGINT received"),
            _ = hup.recv() => {
                info!("SIGHUP received: reloading configuration");
                // Errors are logged by reload itself; the running configuration stays.
                let _ = server.reload();
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal(_server: &RunningServer) {
    let _ = tokio::signal::ctrl_c().await;
}
