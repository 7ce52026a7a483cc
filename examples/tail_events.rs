//! Tails voxrt's event log in NATS JetStream: a minimal downstream consumer (docs/cluster.md).
//!
//! With `[nats] url` set, voxrt publishes each session's events (the JSON its client got,
//! `seq` first) on `<prefix>.sessions.<id>.events` and its lifecycle records on
//! `<prefix>.sessions.<id>.lifecycle`. This reads them through an ephemeral ordered consumer
//! and prints one line per message: `<session-id> <events|lifecycle> <json>`.
//!
//! ```text
//! nats-server -js                                       # a local JetStream server
//! VOXRT_NATS__URL=nats://127.0.0.1:4222 cargo run       # voxrt publishing to it
//! cargo run --example tail_events                       # every session, from the start
//! cargo run --example tail_events -- --new --session ID # one session, from now on
//! ```
//!
//! Ctrl-C ends it (exit 0). An unreachable server or a missing stream (voxrt creates it with
//! its first record) is reported on stderr, exit 1. A service that must not miss anything
//! uses a durable consumer with acks instead (docs/cluster.md, "Writing a downstream consumer").

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self, stream::Stream};
use clap::Parser;
use futures_util::StreamExt;
use std::io::Write;
use std::process::ExitCode;

/// Print voxrt's session events and lifecycle records from NATS JetStream.
#[derive(Parser)]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Only this session's messages; default: every session.
    #[arg(long)]
    session: Option<String>,
    /// The JetStream stream (voxrt's `nats.stream`).
    #[arg(long, default_value = "VOXRT_EVENTS")]
    stream: String,
    /// The subject prefix (voxrt's `nats.subject_prefix`).
    #[arg(long, default_value = "voxrt")]
    prefix: String,
    /// Only messages published from now on, not everything the stream still holds.
    #[arg(long)]
    new: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let Err(e) = run(Args::parse()).await else {
        return ExitCode::SUCCESS;
    };
    eprintln!("tail_events: {e}");
    ExitCode::FAILURE
}

async fn run(args: Args) -> Result<(), String> {
    let client = async_nats::connect(args.nats.as_str())
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", args.nats))?;
    let stream = jetstream::new(client)
        .get_stream(&args.stream)
        .await
        .map_err(|e| format!("stream {}: {e} (is voxrt publishing to it?)", args.stream))?;
    let sessions = format!("{}.sessions.", args.prefix);
    let filter = match &args.session {
        Some(id) => format!("{sessions}{id}.>"),
        None => format!("{sessions}>"),
    };
    let policy = match args.new {
        true => DeliverPolicy::New,
        false => DeliverPolicy::All,
    };
    let mut messages = tail(&stream, &filter, policy).await?;
    let mut last = 0; // the stream sequence of the last message printed
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut out = std::io::stdout();
    loop {
        let message = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            next = messages.next() => match next {
                None => return Ok(()),
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    // E.g. a NATS restart lost the consumer: start a new one after `last`.
                    eprintln!("tail_events: {e}; recreating the consumer");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    let from = match last {
                        0 => policy,
                        n => DeliverPolicy::ByStartSequence { start_sequence: n + 1 },
                    };
                    match tail(&stream, &filter, from).await {
                        Ok(again) => messages = again,
                        Err(e) => eprintln!("tail_events: {e}"),
                    }
                    continue;
                }
            },
        };
        last = message.info().map_or(last, |info| info.stream_sequence);
        // `<prefix>.sessions.<id>.<kind>`: the session id, then `events` or `lifecycle`.
        let rest = message.subject.get(sessions.len()..).unwrap_or_default();
        let (id, kind) = rest.rsplit_once('.').unwrap_or((rest, ""));
        let payload = String::from_utf8_lossy(&message.payload);
        // Flushed per line for readers on a pipe; a closed pipe ends the tail.
        let written = writeln!(out, "{id} {kind} {payload}").and_then(|()| out.flush());
        if written.is_err() {
            return Ok(());
        }
    }
}

/// An ordered consumer: ephemeral and unacknowledged (nothing stays on the server); the
/// client recreates it after a gap, so messages arrive once each, in stream order.
async fn tail(stream: &Stream, filter: &str, policy: DeliverPolicy) -> Result<Ordered, String> {
    let config = OrderedConfig {
        filter_subject: filter.to_owned(),
        deliver_policy: policy,
        ..Default::default()
    };
    let consumer = stream
        .create_consumer(config)
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}
