//! Graceful overload through the real server: when its event loops fall behind (a
//! deliberately slow processor that sleeps, on a one-worker server) or its worker is
//! saturated (one that spins), new sessions get 503 `overloaded` with Retry-After and
//! `/ready` says `overloaded`, while the sessions already admitted go on streaming; once
//! the load is gone, admission resumes.
//!
//! Nothing waits on a sleep: the slow processor sleeps (that is the load), the sender is
//! clocked by the events coming back, and every change of state is polled for with a
//! bound that only catches hangs. No assertion is about how long anything took.

mod common;
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use voxrt::actors::processors::{Processor, ProcessorCatalog, ProcessorContext};
use voxrt::actors::{AudioBlock, ServerEvent};

const S16_16K: &str = "sample_rate=16000&channels=1&encoding=pcm_s16le";
/// The bound under test, ms. Far below what the slow processor causes (it holds its worker
/// for a whole mailbox of blocks at a time, hundreds of ms) and far above the jitter of an
/// idle loop, so the test decides on the load rather than on the machine.
const MAX_LAG_MS: u64 = 100;
/// The load bound under test, percent: far below a worker spinning without pause and far
/// above an idle one.
const MAX_LOAD_PCT: u64 = 50;
/// How long the slow processor holds its thread per block while slow: more than the 20 ms
/// of audio in a block, so the worker always has more work than time.
const SLOW_BLOCK: Duration = Duration::from_millis(30);

/// How the slow processor holds its thread.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hold {
    /// Sleeps: the loop is blocked, off the CPU. The lag shows it (`max_lag_ms`).
    Sleeps,
    /// Spins: the worker is saturated. Its load shows it (`max_worker_load_pct`).
    Spins,
}
/// Audio per chunk sent, ms.
const CHUNK_MS: u64 = 20;
/// Audio a slow session's client keeps in flight (sent, not yet reported processed), ms:
/// more than its pipeline's mailboxes hold, so the pipeline never runs dry, and little
/// enough that the backlog drains quickly once the processor is fast again.
const IN_FLIGHT_MS: u64 = 1000;

/// While `slow` is set, holds its thread in every `process`: more work than the worker has
/// time for. Reports every block's end (`{"type":"block","end_ms"}`) so the client can see
/// its session progress.
struct SlowProcessor {
    slow: Arc<AtomicBool>,
    hold: Hold,
}

impl Processor for SlowProcessor {
    fn process(&mut self, block: &AudioBlock, events: &mut Vec<ServerEvent>) {
        if self.slow.load(Ordering::Relaxed) {
            match self.hold {
                Hold::Sleeps => std::thread::sleep(SLOW_BLOCK),
                Hold::Spins => {
                    let began = std::time::Instant::now();
                    while began.elapsed() < SLOW_BLOCK {
                        std::hint::spin_loop();
                    }
                }
            }
        }
        let end_ms = (block.start + block.samples.len() as u64) / 16;
        events.push(ServerEvent::Custom(
            json!({"type": "block", "end_ms": end_ms}),
        ));
    }

    fn flush(&mut self, _end_sample: u64, _events: &mut Vec<ServerEvent>) {}
}

/// A one-worker server whose only processor holds its thread as `hold` says while `slow`
/// is set, with only the bound that sees that kind of load turned on.
fn slow_server(slow: &Arc<AtomicBool>, hold: Hold) -> TestServer {
    let mut catalog = ProcessorCatalog::with_builtins();
    let s = slow.clone();
    catalog.register("slow", move |_: &ProcessorContext| {
        Box::new(SlowProcessor {
            slow: s.clone(),
            hold,
        }) as Box<dyn Processor>
    });
    let (lag, load) = match hold {
        Hold::Sleeps => (MAX_LAG_MS, 0),
        Hold::Spins => (0, MAX_LOAD_PCT),
    };
    TestServer::start_with_env(
        &[("VOXRT_PIPELINE__PROCESSORS", "slow")],
        &[
            ("server.workers", "1"),
            ("registry.max_lag_ms", &lag.to_string()),
            ("registry.max_worker_load_pct", &load.to_string()),
        ],
        catalog,
    )
}

/// `GET http://{addr}{path}` off the async threads (ureq blocks).
async fn get(addr: SocketAddr, path: &str) -> common::http::Reply {
    let url = format!("http://{addr}{path}");
    tokio::task::spawn_blocking(move || common::http::request("GET", &url, None))
        .await
        .expect("HTTP request task")
}

/// One client streaming a tone into a slow session until told to stop, clocked by the
/// session's `block` events (at most [`IN_FLIGHT_MS`] ahead of them).
struct SlowStream {
    /// Audio the session reported processed, ms.
    processed: watch::Receiver<u64>,
    stop: Arc<AtomicBool>,
    done: tokio::task::JoinHandle<(Vec<Value>, Option<u16>)>,
}

impl SlowStream {
    async fn start(server: &TestServer) -> Self {
        let client = server.connect(S16_16K).await;
        let (mut sink, mut stream) = client.split();
        let (processed_tx, processed) = watch::channel(0u64);
        let stop = Arc::new(AtomicBool::new(false));
        let receiver = tokio::spawn(async move {
            let mut events = Vec::new();
            loop {
                match stream.recv().await {
                    Received::Event(v) => {
                        if let Some(end) = v["end_ms"].as_u64() {
                            processed_tx.send_replace(end);
                        }
                        if v["type"] != "block" {
                            events.push(v);
                        }
                    }
                    Received::Audio(_) => {}
                    Received::Closed(c) => return (events, c.map(|(code, _)| code)),
                }
            }
        });
        let mut clock = processed.clone();
        let stopping = stop.clone();
        let sender = tokio::spawn(async move {
            let chunk = audio::s16le(
                &audio::tone(16_000, 440.0, 0.3, CHUNK_MS as f64 / 1000.0),
                1,
            );
            let mut sent_ms = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                tokio::time::timeout(HANG, clock.wait_for(|done| sent_ms <= done + IN_FLIGHT_MS))
                    .await
                    .expect("the session stopped processing")
                    .expect("receiver alive");
                sink.send_audio(chunk.clone()).await;
                sent_ms += CHUNK_MS;
            }
            sink.send_json(json!({"type": "stop"})).await;
        });
        let done = tokio::spawn(async move {
            sender.await.expect("sender task");
            receiver.await.expect("receiver task")
        });
        Self {
            processed,
            stop,
            done,
        }
    }

    /// Waits until the session has processed `more_ms` of audio beyond what it had now.
    async fn advances(&mut self, more_ms: u64) {
        let from = *self.processed.borrow();
        tokio::time::timeout(HANG, self.processed.wait_for(|p| *p >= from + more_ms))
            .await
            .expect("an admitted session stopped streaming while the server was overloaded")
            .expect("receiver alive");
    }

    /// Stops streaming, sends `stop` and returns the session's events and close code.
    async fn stop(self) -> (Vec<Value>, Option<u16>) {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(HANG, self.done)
            .await
            .expect("the slow session never closed")
            .expect("stream tasks")
    }
}

/// A connect attempt: `Ok(())` if admitted (the session is stopped at once), or the refusal.
async fn try_connect(server: &TestServer) -> Result<(), Refusal> {
    let client = Client::connect(&server.url(S16_16K)).await?;
    let (_, code) = client.stop().await;
    assert_eq!(code, Some(1000));
    Ok(())
}

/// `name{labels}` of the Prometheus text: the value of the first matching sample line.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// See the module docs. Two sessions stream into a processor that takes longer than real
/// time on the server's only worker: `/ready` turns 503 `overloaded`, a new client gets 503
/// `overloaded` with Retry-After (`/v1/stats` and `/metrics` show the lag and the refusal),
/// and meanwhile both admitted sessions keep getting their events. Once the processor is
/// fast again and the slow sessions have stopped (cleanly, `client_stop`), `/ready` is
/// ready and a client is admitted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_server_refuses_new_sessions_and_keeps_streaming_admitted_ones() {
    refuses_while_loaded_and_recovers(Hold::Sleeps).await;
}

/// The same with a processor that spins: the worker's timers stay punctual (tokio polls
/// them between batches of tasks) but it has no idle time; its load refuses newcomers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_worker_refuses_new_sessions_and_keeps_streaming_admitted_ones() {
    refuses_while_loaded_and_recovers(Hold::Spins).await;
}

async fn refuses_while_loaded_and_recovers(hold: Hold) {
    let slow = Arc::new(AtomicBool::new(true));
    let server = slow_server(&slow, hold);
    let addr = server.addr;
    // Idle: ready, and admitting (polled: a busy machine may hold a fresh loop up once).
    poll_until(
        "an idle server to be ready",
        Duration::from_millis(20),
        || get(addr, "/ready"),
        |r| r.status == 200,
    )
    .await;

    let mut streams = vec![
        SlowStream::start(&server).await,
        SlowStream::start(&server).await,
    ];
    // Polled for the reason, not only the status: /ready is also 503 `registry_unavailable`
    // when the loaded worker sees the registry's reply only after its timeout.
    let ready = poll_until(
        "/ready to say overloaded",
        Duration::from_millis(20),
        || get(addr, "/ready"),
        |r| r.status == 503 && r.json()["reason"] == "overloaded",
    )
    .await;
    assert_eq!(
        ready.expect(503),
        json!({"status": "not_ready", "reason": "overloaded"})
    );
    // A new client is refused for it (polled: the load is continuous, but the refusal and
    // the probe are two separate looks at it).
    let refusal = loop {
        match try_connect(&server).await {
            Err(r) => break r,
            Ok(()) => continue,
        }
    };
    assert_eq!(refusal.status, 503, "{refusal:?}");
    let body = refusal.body.as_ref().expect("JSON refusal body");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert_eq!(refusal.retry_after.as_deref(), Some("2"), "{refusal:?}");

    // The admitted sessions keep streaming meanwhile.
    for stream in &mut streams {
        stream.advances(500).await;
    }

    // Operators see the lag (or load) and the refusals.
    let (field, bound, metric, scale) = match hold {
        Hold::Sleeps => (
            "event_loop_lag_ms",
            MAX_LAG_MS,
            "voxrt_event_loop_lag_seconds",
            1000.0,
        ),
        Hold::Spins => (
            "worker_load_pct",
            MAX_LOAD_PCT,
            "voxrt_worker_load_ratio",
            100.0,
        ),
    };
    // A 503 `registry_unavailable` is an answer too: the handler runs on the loaded worker
    // and may see the registry's reply only after its timeout. Ask again.
    let stats = poll_until(
        "/v1/stats to show the lag or load",
        Duration::from_millis(20),
        || async move { get(addr, "/v1/stats").await },
        |r| r.status == 200 && r.json()["registry"][field].as_u64() >= Some(bound),
    )
    .await
    .expect(200);
    assert!(
        stats["registry"]["refused_total"]["overloaded"].as_u64() >= Some(1),
        "{stats}"
    );
    let metrics = poll_until(
        "/metrics to show the lag or load",
        Duration::from_millis(20),
        || async move { get(addr, "/metrics").await.body },
        |m| sample(m, metric).unwrap_or(0.0) >= bound as f64 / scale,
    )
    .await;
    assert!(
        sample(
            &metrics,
            "voxrt_sessions_refused_total{reason=\"overloaded\"}"
        ) >= Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "voxrt_http_refusals_total{status=\"503\"}") >= Some(1.0),
        "{metrics}"
    );

    // The load goes: the processor is fast again and the slow sessions stop, cleanly.
    slow.store(false, Ordering::Relaxed);
    for stream in streams {
        let (events, code) = stream.stop().await;
        assert_eq!(code, Some(1000), "{events:?}");
        let closed = events.last().expect("session.closed");
        assert_eq!(closed["type"], "session.closed", "{events:?}");
        assert_eq!(closed["reason"], "client_stop", "{events:?}");
    }
    // Admission resumes: /ready is ready and a client is admitted (polled together: the
    // lag is judged over the last second, so it clears a moment after the load).
    let server = &server;
    let admitted = poll_until(
        "/ready to be ready and a client admitted",
        Duration::from_millis(50),
        || async move {
            let ready = get(addr, "/ready").await;
            if ready.status != 200 {
                return Err(ready.status);
            }
            try_connect(server).await.map_err(|r| r.status)
        },
        Result::is_ok,
    )
    .await;
    assert_eq!(admitted, Ok(()));
}

/// `max_lag_ms` is validated at startup with a message naming the key.
#[test]
fn max_lag_ms_out_of_range_is_refused_naming_the_key() {
    let source = voxrt::ConfigSource {
        profile: Some("test".into()),
        env: Default::default(),
        overrides: [("registry.max_lag_ms".to_owned(), "5".to_owned())]
            .into_iter()
            .collect(),
    };
    let settings = source.load().expect("loads");
    let error = settings
        .validate(&ProcessorCatalog::with_builtins())
        .expect_err("5 ms is below the range")
        .to_string();
    assert!(error.contains("registry.max_lag_ms"), "{error}");
    assert!(error.contains("10..=10000"), "{error}");
}
