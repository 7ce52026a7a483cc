//! Operators' endpoints: `/health`, `/ready`, `/v1/stats`, `/v1/stats/sessions/{id}`,
//! `/metrics`, `POST /v1/admin/reload`. `docs/operations.md` shows each response.
//!
//! Stats never fan out to sessions: the registry answers from shared atomics, and a page of
//! sessions costs O(offset + limit) whatever the number alive.

use crate::auth::admin::denial;
use crate::{reload, AppState};
use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;
use voxrt_actors::registry::{GetSession, GetStats, LagMonitor, ListSessions};

/// How long an endpoint waits for the registry before answering 503.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Default and largest page of sessions in `/v1/stats`.
const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 1000;

/// `/health` and `/ready`: always open.
pub fn configure_probes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready));
}

/// Admin endpoints (token-protected when `admin.token_sha256` is set).
pub fn configure_admin(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/stats", web::get().to(stats))
        .route("/v1/stats/sessions/{id}", web::get().to(session))
        .route("/metrics", web::get().to(metrics))
        .route("/v1/cluster", web::get().to(crate::cluster::cluster_view))
        .route("/v1/admin/reload", web::post().to(reload_config));
}

fn error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {
        "code": code,
        "message": message,
        "correlation_id": uuid::Uuid::new_v4(),
    }}))
}

fn registry_unavailable() -> HttpResponse {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "registry_unavailable",
        "the session registry did not answer in time",
    )
}

/// Liveness: 200 while the process serves.
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: 503 whenever a new session would be refused now, whoever asked (the
/// registry's one decision, carried by its stats: `shutting_down`, `server_full`,
/// `memory_budget_exceeded`, `overloaded`), or if the registry does not answer.
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let stats = match tokio::time::timeout(REGISTRY_TIMEOUT, state.registry.send(GetStats)).await {
        Ok(Ok(s)) => s,
        _ => {
            return HttpResponse::ServiceUnavailable()
                .json(json!({"status": "not_ready", "reason": "registry_unavailable"}))
        }
    };
    // NATS trouble does not make a node unready (sessions go on without it), but it is
    // shown: `connected` false and `unpublished` growing mean the event log has gaps.
    let (status, mut body) = match stats.refusal {
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "reason": reason}),
        ),
        None => (
            StatusCode::OK,
            json!({
                "status": "ready",
                "sessions": stats.sessions_active + stats.sessions_reserved,
                "max_sessions": stats.max_sessions,
            }),
        ),
    };
    if let (Some(cluster), Some(obj)) = (&state.cluster, body.as_object_mut()) {
        obj.insert("nats".into(), json!(cluster.status()));
    }
    HttpResponse::build(status).json(body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<usize>,
    offset: Option<usize>,
}

/// Everything operators look at, in one JSON document.
async fn stats(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let current = state.current();
    if let Some(denied) = denial(&req, &current.settings.admin.token_sha256) {
        return denied;
    }
    let Ok(page) = web::Query::<PageQuery>::from_query(req.query_string()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "allowed parameters: limit (1..=1000, default 100), offset (0..)",
        );
    };
    let limit = page.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let offset = page.offset.unwrap_or(0);
    let show_peer = current.settings.admin.show_peer_addresses;
    let registry = async {
        let stats = state.registry.send(GetStats).await?;
        let sessions = state
            .registry
            .send(ListSessions {
                offset,
                limit,
                show_peer,
            })
            .await?;
        Ok::<_, actix::MailboxError>((stats, sessions))
    };
    let Ok(Ok((registry, sessions))) = tokio::time::timeout(REGISTRY_TIMEOUT, registry).await
    else {
        return registry_unavailable();
    };
    let s = &current.settings;
    HttpResponse::Ok().json(json!({
        "server": {
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": state.started.elapsed().as_secs(),
            "profile": state.source.profile_name(),
            "workers": state.workers,
            "log_lines_dropped": crate::logging::dropped_lines(),
            "limits": {
                "registry": s.registry,
                "session": s.session,
                "pipeline": s.pipeline,
            },
            "config": {"loaded_at_unix_s": current.loaded_at, "sha256": current.hash},
        },
        "registry": registry,
        "actors": state.metrics.stages(),
        "stt": state.stt.as_ref().map(|pool| pool.snapshot()),
        "nats": state.cluster.as_ref().map(|c| json!({"node": c.node(), "publishing": c.status()})),
        "sessions": sessions,
    }))
}

/// One live session.
async fn session(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let current = state.current();
    if let Some(denied) = denial(&req, &current.settings.admin.token_sha256) {
        return denied;
    }
    let Ok(id) = uuid::Uuid::parse_str(&path) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "the session id must be a UUID",
        );
    };
    let show_peer = current.settings.admin.show_peer_addresses;
    match tokio::time::timeout(
        REGISTRY_TIMEOUT,
        state.registry.send(GetSession { id, show_peer }),
    )
    .await
    {
        Ok(Ok(Some(s))) => HttpResponse::Ok().json(s),
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no live session with this id",
        ),
        _ => registry_unavailable(),
    }
}

/// Prometheus text exposition.
async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(denied) = denial(&req, &state.current().settings.admin.token_sha256) {
        return denied;
    }
    HttpResponse::Ok()
        // prometheus-client writes OpenMetrics 1.0 text (`# EOF`, `# UNIT`), which
        // Prometheus reads as such only when labelled so.
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(with_scrape_time_metrics(state.metrics.encode(), &state.lag))
}

/// The registry's exposition with the figures read at scrape time inserted before its
/// `# EOF`: the process-wide ones (logging is per process, the registry per server) and
/// the workers' event-loop lag and load (read from their slots now, not kept as metrics).
fn with_scrape_time_metrics(mut text: String, lag: &LagMonitor) -> String {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    if let Some(body) = text.strip_suffix("# EOF\n") {
        text.truncate(body.len());
    }
    let mut process = prometheus_client::registry::Registry::with_prefix("voxrt");
    process.register(
        "log_lines_dropped",
        "Log lines not written to log files because their queue (log.queue_lines) was full",
        ConstCounter::new(crate::logging::dropped_lines()),
    );
    process.register_with_unit(
        "event_loop_lag",
        "Most any HTTP worker's event loop woke late over the last second; over registry.max_lag_ms new sessions get 503 overloaded",
        prometheus_client::registry::Unit::Seconds,
        ConstGauge::new(lag.lag().as_secs_f64()),
    );
    process.register_with_unit(
        "worker_load",
        "Most loaded HTTP worker's share of the last second spent running or waiting for a CPU; at registry.max_worker_load_pct new sessions get 503 overloaded",
        prometheus_client::registry::Unit::Other("ratio".to_owned()),
        ConstGauge::new(lag.load_permille() as f64 / 1000.0),
    );
    // Writing to a String cannot fail.
    let _ = encode_registry(&mut text, &process);
    let _ = encode_eof(&mut text);
    text
}

/// Re-reads the configuration; 400 naming the bad key if it is invalid (nothing changes).
async fn reload_config(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(denied) = denial(&req, &state.current().settings.admin.token_sha256) {
        return denied;
    }
    match reload::reload(&state) {
        Ok(hash) => HttpResponse::Ok().json(json!({"status": "reloaded", "sha256": hash})),
        Err(e) => error(StatusCode::BAD_REQUEST, "invalid_config", &e.to_string()),
    }
}
