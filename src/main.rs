//! The `voxrt` binary: parse arguments, load settings, set up logging, serve.

use clap::Parser;
use std::process::ExitCode;
use voxrt::actors::processors::ProcessorCatalog;
use voxrt::ConfigSource;

/// voxrt: WebSocket voice processing server (resampling, VAD, levels).
///
/// Configuration: embedded defaults, then VOXRT_PROFILE (development|production|test),
/// then the file in VOXRT_CONFIG, then VOXRT_<SECTION>__<KEY> variables. SIGHUP reloads it.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Print the effective settings (after every layer) as JSON and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the SHA-256 of an admin token for admin.token_sha256. Reads the token from
    /// standard input (so it stays out of shell history and process lists).
    HashToken,
}

fn hash_token() -> ExitCode {
    let mut token = String::new();
    if std::io::stdin().read_line(&mut token).is_err() || token.trim().is_empty() {
        eprintln!("voxrt hash-token: give the token on standard input, e.g. `voxrt hash-token < token.txt`");
        return ExitCode::from(2);
    }
    println!("{}", voxrt::admin::hash_token(token.trim()));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::HashToken) = args.command {
        return hash_token();
    }
    let catalog = ProcessorCatalog::with_builtins();
    let source = ConfigSource::from_process();
    let settings = match source.load().and_then(|s| s.validate(&catalog).map(|()| s)) {
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
        match voxrt::start(source, catalog).await {
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
