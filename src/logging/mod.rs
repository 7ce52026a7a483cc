//! Logging setup: tracing, human-readable or JSON, with a filter a config reload can change.

use crate::settings::{LogFormat, LogSettings};
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// The installed filter, if this process installed one.
static FILTER: OnceLock<FilterHandle> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG` wins over `log.level` (and then reloads leave
/// the filter alone). Calling it twice is harmless: the first subscriber stays (tests rely
/// on that).
pub fn init(settings: &LogSettings) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&settings.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let output = match settings.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .is_ok()
        && !pinned
    {
        let _ = FILTER.set(handle);
    }
}

/// Applies a new `log.level` (validated beforehand); a no-op when `RUST_LOG` pinned it.
pub fn set_level(level: &str) {
    if let (Some(handle), Ok(filter)) = (FILTER.get(), EnvFilter::try_new(level)) {
        let _ = handle.reload(filter);
    }
}
