//! The `voxrt` binary: parse arguments, load settings, set up logging, serve.

use clap::Parser;
use std::process::ExitCode;
use voxrt::actors::processors::ProcessorCatalog;
use voxrt::Settings;

/// voxrt: WebSocket voice processing server (resampling, VAD, levels).
///
/// Configuration: embedded defaults, then VOXRT_PROFILE (development|production|test),
/// then the file in VOXRT_CONFIG, then VOXRT_<SECTION>__<KEY> variables.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Print the effective settings (after every layer) as JSON and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let catalog = ProcessorCatalog::with_builtins();
    let settings = match Settings::load(None, &[]).and_then(|s| s.validate(&catalog).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("voxrt: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        match serde_json::to_string_pretty(&settings) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("voxrt: cannot print settings: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    voxrt::logging::init(&settings.log);
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        match voxrt::start(settings, catalog).await {
            Ok(server) => {
                server.run_until_signal().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("voxrt: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
