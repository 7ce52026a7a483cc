//! One rotated log file behind a lossy, bounded, non-blocking queue.
//!
//! flexi_logger's file writer rotates at local midnight or past `log.max_file_bytes`,
//! whichever comes first, and keeps `log.max_files` rotated files. For `log.file =
//! "dir/voxrt.log"` it writes `dir/voxrt_rCURRENT.log` and renames it
//! `dir/voxrt_r<YYYY-MM-DD_HH-MM-SS>.log` on rotation. tracing-appender's non-blocking
//! writer sits in front: one writer thread per file, a queue of `log.queue_lines` lines,
//! and lines that find it full are dropped and counted instead of waited for.

use crate::settings::{LogSettings, SettingsError};
use flexi_logger::writers::{ArcFileLogWriter, FileLogWriter, FileLogWriterHandle};
use flexi_logger::{Age, Cleanup, Criterion, FileSpec, Naming};
use std::io::Write;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

/// An open log file: the queue in front of it and the file writer behind.
pub(super) struct LogFile {
    writer: NonBlocking,
    queue: WorkerGuard,
    file: FileLogWriterHandle,
}

impl LogFile {
    /// Opens (creates, appends to) the file for `path`, the value of `key`; an error names
    /// both.
    pub(super) fn open(
        key: &'static str,
        path: &str,
        settings: &LogSettings,
    ) -> Result<Self, SettingsError> {
        let bad = |why: String| SettingsError::Invalid {
            key,
            value: format!("\"{path}\""),
            allowed: why,
        };
        let spec = FileSpec::try_from(path).map_err(|e| bad(format!("is not a file path: {e}")))?;
        let (mut file, handle) = FileLogWriter::builder(spec)
            .rotate(
                Criterion::AgeOrSize(Age::Day, settings.max_file_bytes),
                Naming::Timestamps,
                Cleanup::KeepLogFiles(settings.max_files),
            )
            .append()
            .try_build_with_handle()
            .map_err(|e| bad(format!("cannot be created: {e}")))?;
        // The file is opened on the first write: open it now, so a path the server may not
        // write stops it at startup rather than losing every line later.
        Write::write(&mut file, b"").map_err(|e| bad(format!("cannot be opened: {e}")))?;
        let (writer, queue) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(settings.queue_lines)
            .thread_name("voxrt-log-file")
            .finish::<ArcFileLogWriter>(file);
        Ok(Self {
            writer,
            queue,
            file: handle,
        })
    }

    /// What tracing writes lines to (cheap to clone).
    pub(super) fn writer(&self) -> NonBlocking {
        self.writer.clone()
    }

    /// The count of lines dropped because the queue was full.
    pub(super) fn dropped(&self) -> ErrorCounter {
        self.writer.error_counter()
    }

    /// Writes what is queued (tracing-appender waits for it at most about a second), then
    /// leaves the file to be closed by the exiting process. flexi_logger writes through
    /// (no buffer to flush), and its shutdown would wait for a writer stuck on a stalled
    /// disk, hanging the exit the queue exists to keep from hanging.
    pub(super) fn close(self) {
        drop(self.queue);
        std::mem::forget(self.file);
    }
}
