//! A voxrt server with a processor of your own: the library's `start` with a catalog that
//! holds the built-ins plus `clipping`, which counts clipped samples and reports them when
//! the client flushes or stops.
//!
//! ```text
//! cargo run --example custom_processor &
//! cargo run --example stream_wav -- /usr/share/sounds/alsa/Front_Center.wav --json
//! ```
//!
//! Every session then gets, besides `level` and `vad` events, one
//! `{"type":"clipping","t_ms":...,"samples":...}` at its end. The server is configured as the
//! `voxrt` binary is (embedded defaults, `VOXRT_PROFILE`, `VOXRT_CONFIG`,
//! `VOXRT_<SECTION>__<KEY>`), except that `pipeline.processors` defaults to
//! `level,vad,clipping` here; `VOXRT_PIPELINE__PROCESSORS` still overrides it. Ctrl-C or
//! SIGTERM shuts it down as the binary does.
//!
//! Exit codes: 0 after a clean shutdown, 1 if it cannot listen, 2 for an invalid configuration.

use std::process::ExitCode;
use voxrt::actors::processors::{Processor, ProcessorCatalog, ProcessorContext};
use voxrt::actors::{AudioBlock, ServerEvent};
use voxrt::ConfigSource;

/// Samples at or beyond this magnitude count as clipped (pipeline samples are -1.0..=1.0).
const CLIP_LEVEL: f32 = 0.999;
/// Pipeline samples per millisecond (16 kHz).
const SAMPLES_PER_MS: u64 = 16;

/// Counts clipped samples over a session and reports the count at every flush.
#[derive(Default)]
struct ClipCounter {
    clipped: u64,
}

impl Processor for ClipCounter {
    fn process(&mut self, block: &AudioBlock, _events: &mut Vec<ServerEvent>) {
        self.clipped += block
            .samples
            .iter()
            .filter(|s| s.abs() >= CLIP_LEVEL)
            .count() as u64;
    }

    fn flush(&mut self, end_sample: u64, events: &mut Vec<ServerEvent>) {
        events.push(ServerEvent::Custom(serde_json::json!({
            "type": "clipping",
            "t_ms": end_sample / SAMPLES_PER_MS,
            "samples": self.clipped,
        })));
    }
}

fn main() -> ExitCode {
    let mut catalog = ProcessorCatalog::with_builtins();
    catalog.register("clipping", |_: &ProcessorContext| {
        Box::new(ClipCounter::default())
    });

    let mut source = ConfigSource::from_process();
    source
        .env
        .entry("VOXRT_PIPELINE__PROCESSORS".into())
        .or_insert_with(|| "level,vad,clipping".into());
    let settings = match source.load().and_then(|s| s.validate(&catalog).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("custom_processor: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // Kept to the end: dropping it writes the log files' queued lines.
    let _log_files = match voxrt::logging::init(&settings.log) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("custom_processor: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };

    // `start` binds and spawns the server's actors on the current actix system.
    actix_web::rt::System::new().block_on(async move {
        match voxrt::start(source, catalog).await {
            Ok(server) => {
                server.run_until_signal().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("custom_processor: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
