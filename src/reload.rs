//! Applying a re-read configuration to a running server (SIGHUP, `POST /v1/admin/reload`).
//!
//! New limits, log level, pipeline and VAD/level defaults, API keys, JWT settings and
//! allowed origins apply to sessions admitted from now on (per-address rate limits start
//! afresh); live sessions keep the configuration they started with. Settings that need a new
//! listener, worker pool or log file (`server.*`, `admin.bind`, `log.format`, `log.file` and
//! the other file keys), `[stt]` (its threads and model load at startup) and `[nats]` (one
//! connection for the process's life) keep their
//! running values and the log says so; `stt` cannot be added to `pipeline.processors` by a
//! reload when it was off at startup. With `[server.tls]`,
//! the certificate and key are read again from the same files and presented to new
//! connections. An invalid configuration (or an unreadable certificate) changes nothing.

use crate::settings::{Settings, SettingsError};

use crate::{logging, AppState, Current};
use std::sync::Arc;
use tracing::{info, warn};
use voxrt_actors::processors::stt;
use voxrt_actors::registry::UpdateLimits;

/// Re-reads the configuration source and applies it; returns the new config hash.
pub(crate) fn reload(state: &AppState) -> Result<String, SettingsError> {
    let loaded = state.source.load().and_then(|s| {
        s.validate(&state.catalog)?;
        let lists_stt = s.pipeline.processors.iter().any(|p| p == stt::NAME);
        if lists_stt && !state.catalog.contains(stt::NAME) {
            return Err(SettingsError::Invalid {
                key: "pipeline.processors",
                value: format!("{:?}", s.pipeline.processors),
                allowed: "lists \"stt\", which was off at startup; its model loads only \
                          then: restart the server to turn it on"
                    .to_owned(),
            });
        }
        Ok(s)
    });
    let mut next = match loaded {
        Ok(s) => s,
        Err(e) => {
            warn!("configuration reload refused, running configuration kept: {e}");
            return Err(e);
        }
    };
    let old = state.current();
    keep_restart_only(&old.settings, &mut next);
    let (limits, reserve_bytes, level) = (
        next.registry,
        next.session_worst_case_bytes(&state.catalog),
        next.log.level.clone(),
    );
    let current = match Current::new(next) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            warn!("configuration reload refused, running configuration kept: {e}");
            return Err(e);
        }
    };
    if let Some(tls) = &state.tls {
        if let Err(e) = tls.reload(&current.settings.server.tls) {
            warn!("configuration reload refused, running configuration kept: {e}");
            return Err(e);
        }
    }
    state.registry.do_send(UpdateLimits {
        limits,
        reserve_bytes,
    });
    logging::set_level(&level);
    let hash = current.hash.clone();
    match state.current.write() {
        Ok(mut c) => *c = current,
        Err(poisoned) => *poisoned.into_inner() = current,
    }
    info!(hash = %hash, "configuration reloaded");
    Ok(hash)
}

/// Whether the log file settings (opened once, at startup) differ.
fn log_files_differ(a: &crate::settings::LogSettings, b: &crate::settings::LogSettings) -> bool {
    (
        &a.file,
        &a.error_file,
        a.max_file_bytes,
        a.max_files,
        a.queue_lines,
    ) != (
        &b.file,
        &b.error_file,
        b.max_file_bytes,
        b.max_files,
        b.queue_lines,
    )
}

/// Copies settings that only a restart can change from `running` into `next`, logging each
/// one that differed.
fn keep_restart_only(running: &Settings, next: &mut Settings) {
    let mut ignored = Vec::new();
    if running.server != next.server {
        ignored.push("server");
        next.server = running.server.clone();
    }
    if running.admin.bind != next.admin.bind {
        ignored.push("admin.bind");
        next.admin.bind = running.admin.bind.clone();
    }
    if running.log.format != next.log.format {
        ignored.push("log.format");
        next.log.format = running.log.format;
    }
    if log_files_differ(&running.log, &next.log) {
        ignored.push("log.file, log.error_file and their bounds");
        next.log = crate::settings::LogSettings {
            level: next.log.level.clone(),
            ..running.log.clone()
        };
    }
    if running.stt != next.stt {
        ignored.push("stt");
        next.stt = running.stt.clone();
    }
    if running.nats != next.nats {
        ignored.push("nats");
        next.nats = running.nats.clone();
    }
    if !ignored.is_empty() {
        warn!(keys = ?ignored, "these settings changed but take effect only after a restart");
    }
}
