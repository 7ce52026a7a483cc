//! The pipeline's actors in process, without sockets: `SESSIONS` sessions' pipelines
//! (resampler, level and VAD stages with the default bounded mailboxes) on one arbiter
//! thread, each fed `CHUNKS` 20 ms chunks of 48 kHz `pcm_s16le` speech, then flushed. The
//! time per chunk, next to `hot_path`'s `ours/fft_48k` (the same DSP without actors), is
//! what the actors, mailboxes and messages cost.
//!
//!   cargo bench --bench pipeline

use actix::prelude::*;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use uuid::Uuid;
use voxrt::actors::audio::{Encoding, InputFormat};
use voxrt::actors::counters::SessionCounters;
use voxrt::actors::metrics::Metrics;
use voxrt::actors::pipeline::Pipeline;
use voxrt::actors::pipeline::{AudioChunk, Flush, PipelineOutput};
use voxrt::actors::processors::ProcessorCatalog;
use voxrt::actors::protocol::StreamParams;

const SPEECH: &str = "/usr/share/sounds/alsa/Front_Center.wav";
const SESSIONS: usize = 50;
const CHUNKS: usize = 250;

/// Stands in for the session: counts events, answers the flush.
struct Sink {
    flushed: Option<oneshot::Sender<()>>,
}

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<PipelineOutput> for Sink {
    type Result = ();
    fn handle(&mut self, msg: PipelineOutput, _ctx: &mut Self::Context) {
        if let PipelineOutput::Flushed { .. } = msg {
            if let Some(tx) = self.flushed.take() {
                let _ = tx.send(());
            }
        }
    }
}

/// `CHUNKS` 20 ms chunks of the recording (48 kHz s16le mono), looped.
fn chunks() -> Vec<Bytes> {
    let bytes = std::fs::read(SPEECH).expect("alsa-utils speech recording");
    let data = bytes
        .windows(4)
        .position(|w| w == b"data")
        .expect("WAV data chunk")
        + 8;
    let pcm = &bytes[data..];
    pcm.chunks_exact(1920)
        .cycle()
        .take(CHUNKS)
        .map(Bytes::copy_from_slice)
        .collect()
}

/// Runs `SESSIONS` pipelines to the end of their audio once; returns the elapsed time.
async fn run(chunks: &[Bytes]) -> Duration {
    let settings = voxrt::Settings::load(None, &[]).expect("default settings");
    let config = settings.session_config();
    let catalog = ProcessorCatalog::with_builtins();
    let metrics = Arc::new(Metrics::new());
    let params = StreamParams {
        input: InputFormat {
            sample_rate: 48_000,
            channels: 1,
            encoding: Encoding::PcmS16le,
        },
        return_audio: false,
        vad: settings.vad,
    };
    let began = Instant::now();
    let mut done = Vec::with_capacity(SESSIONS);
    let mut feeders = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        let (tx, rx) = oneshot::channel();
        let sink = Sink { flushed: Some(tx) }.start();
        let counters = Arc::new(SessionCounters::new(
            settings.pipeline.processors.iter().cloned(),
        ));
        let pipeline = Pipeline::start(
            Uuid::new_v4(),
            &params,
            &config,
            &catalog,
            sink.recipient(),
            counters,
            &metrics,
        )
        .expect("pipeline");
        let chunks = chunks.to_vec();
        // `send` waits while the resampler's bounded mailbox is full: backpressure, as the
        // session applies it in `block` mode.
        feeders.push(actix::spawn(async move {
            for data in chunks {
                let _ = pipeline
                    .resampler
                    .addr()
                    .send(AudioChunk {
                        data,
                        received: Instant::now(),
                    })
                    .await;
            }
            let _ = pipeline.resampler.addr().send(Flush).await;
        }));
        done.push(rx);
    }
    for f in feeders {
        let _ = f.await;
    }
    for rx in done {
        let _ = rx.await;
    }
    began.elapsed()
}

fn bench(c: &mut Criterion) {
    let chunks = chunks();
    let system = System::new();
    let mut group = c.benchmark_group("pipeline_actors");
    group.sample_size(10);
    group.throughput(Throughput::Elements((SESSIONS * CHUNKS) as u64));
    group.bench_function("per_20ms_chunk/fft_48k_level_vad", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += run(&chunks).await;
                }
                total
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
