//! The `voxrt` binary: parse arguments, load settings, set up logging, serve.

use clap::Parser;
use std::process::ExitCode;
use voxrt::actors::processors::ProcessorCatalog;
use voxrt::ConfigSource;

/// voxrt: WebSocket voice processing server (resampling, VAD, levels).
///
/// Configuration: embedded defaults, then VOXRT_PROFILE (bench|development|production|test),
/// then the file in VOXRT_CONFIG, then VOXRT_<SECTION>__<KEY> variables (other VOXRT_* names,
/// such as the clients' VOXRT_TOKEN, are ignored with a warning). SIGHUP reloads it.
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
    /// Check that the server configured by the same settings answers GET /health: exit 0
    /// if it does, 1 (with a one-line reason) if not. For container HEALTHCHECKs. With
    /// server.tls it speaks https to the local listener without verifying the certificate
    /// (which names the public host, not the loopback address; /health carries no secret).
    Healthcheck,
}

fn healthcheck(source: &ConfigSource) -> ExitCode {
    let settings = match source.load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("voxrt healthcheck: invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = voxrt::server::health_url(&settings);
    // The check asks this machine's own listener for a public, unauthenticated page:
    // encryption without verification is enough, and a certificate for the public name
    // would never verify against 127.0.0.1 anyway.
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .disable_verification(true)
        .build();
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(3)))
        .http_status_as_error(false)
        .tls_config(tls)
        .build()
        .new_agent();
    match agent.get(&url).call() {
        Ok(r) if r.status() == 200 => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("voxrt healthcheck: {url} answered {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("voxrt healthcheck: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hash_token() -> ExitCode {
    let mut token = String::new();
    if std::io::stdin().read_line(&mut token).is_err() || token.trim().is_empty() {
        eprintln!("voxrt hash-token: give the token on standard input, e.g. `voxrt hash-token < token.txt`");
        return ExitCode::from(2);
    }
    println!("{}", voxrt::auth::hash_token(token.trim()));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args = Args::parse();
    let source = ConfigSource::from_process();
    match args.command {
        Some(Command::HashToken) => return hash_token(),
        Some(Command::Healthcheck) => return healthcheck(&source),
        None => {}
    }
    let catalog = ProcessorCatalog::with_builtins();
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
    // Kept to the end: dropping it writes the log files' queued lines.
    let _log_files = match voxrt::logging::init(&settings.log) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("voxrt: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    for name in source.ignored_variables() {
        tracing::warn!(
            variable = name,
            "{name} is not a setting and is ignored (settings are VOXRT_<SECTION>__<KEY>, \
             VOXRT_PROFILE and VOXRT_CONFIG)"
        );
    }
    // Panics caught by supervisors (a processor's, say) still reach the log as one line in
    // the configured format, rather than as raw text on stderr.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("?"), "panic: {info}");
    }));
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
