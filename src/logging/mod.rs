//! Logging setup: tracing, human-readable or JSON, with a filter a config reload can change.
//!
//! Every line goes to stderr. With `log.file` it also goes to a rotated file, and with
//! `log.error_file` error lines also go to an errors-only file (`files`). Files are written
//! on their own thread through a bounded queue: when the disk is slower than the log, lines
//! are dropped and counted ([`dropped_lines`]), and the server never waits for the disk.

mod files;

use crate::settings::{LogFormat, LogSettings, SettingsError};
use std::sync::OnceLock;
use tracing::Subscriber;
use tracing_appender::non_blocking::ErrorCounter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// The installed filter, if this process installed one.
static FILTER: OnceLock<FilterHandle> = OnceLock::new();

/// Counters of lines the file writers dropped, if this process installed any.
static DROPPED: OnceLock<Vec<ErrorCounter>> = OnceLock::new();

/// Keeps the log files' writer threads alive; dropping it writes what is queued (waiting
/// up to a second) and closes the files. Keep it until the process exits.
#[derive(Default)]
pub struct LogGuard {
    files: Vec<files::LogFile>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // Queued lines first (each file's writer thread), then the files.
        for file in self.files.drain(..) {
            file.close();
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` wins over `log.level` (and then reloads leave
/// the filter alone). Calling it twice is harmless: the first subscriber stays (tests rely
/// on that). Fails, naming the key and the path, if a log file cannot be opened.
pub fn init(settings: &LogSettings) -> Result<LogGuard, SettingsError> {
    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&settings.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let mut guard = LogGuard::default();
    let mut outputs = vec![output(settings.format, std::io::stderr, false)];
    if !settings.file.is_empty() {
        let file = files::LogFile::open("log.file", &settings.file, settings)?;
        outputs.push(output(settings.format, file.writer(), true));
        guard.files.push(file);
    }
    if !settings.error_file.is_empty() {
        let file = files::LogFile::open("log.error_file", &settings.error_file, settings)?;
        outputs.push(
            output(settings.format, file.writer(), true)
                .with_filter(LevelFilter::ERROR)
                .boxed(),
        );
        guard.files.push(file);
    }
    let counters = guard.files.iter().map(files::LogFile::dropped).collect();
    if tracing_subscriber::registry()
        .with(filter)
        .with(outputs)
        .try_init()
        .is_ok()
    {
        let _ = DROPPED.set(counters);
        if !pinned {
            let _ = FILTER.set(handle);
        }
    }
    Ok(guard)
}

/// One output in the configured format; files get no terminal colours.
fn output<S, W>(format: LogFormat, writer: W, file: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match (format, file) {
        (LogFormat::Text, false) => layer.boxed(),
        (LogFormat::Text, true) => layer.with_ansi(false).boxed(),
        (LogFormat::Json, _) => layer.json().flatten_event(true).boxed(),
    }
}

/// Lines the file writers dropped since startup because their queue (`log.queue_lines`) was
/// full; 0 without log files.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |c| c.iter().map(|c| c.dropped_lines() as u64).sum())
}

/// Applies a new `log.level` (validated beforehand); a no-op when `RUST_LOG` pinned it.
pub fn set_level(level: &str) {
    if let (Some(handle), Ok(filter)) = (FILTER.get(), EnvFilter::try_new(level)) {
        let _ = handle.reload(filter);
    }
}
