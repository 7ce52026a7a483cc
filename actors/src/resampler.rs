//! The Resampler actor: first pipeline stage of a session. Decodes client PCM, downmixes,
//! resamples to 16 kHz and fans blocks out to the processor stages.

use crate::audio::{decode_to_mono, InputFormat, StreamResampler};
use crate::counters::{SessionCounters, StageProbe};
use crate::metrics::Metrics;
use crate::processor::{FlushStage, ProcessorStage};
use crate::session::PipelineOutput;
use actix::prelude::*;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// Blocks still to be delivered to full processor mailboxes.
type Backlog = Pin<Box<dyn Future<Output = Result<(), MailboxError>>>>;

/// Largest block sent to processors, in 16 kHz samples (100 ms). Bounding the block bounds
/// what each processor mailbox can hold: `(mailbox_capacity + 1) * 6400` bytes.
pub const MAX_BLOCK_SAMPLES: usize = 1_600;
/// Client frames decoded per step, so decode buffers stay small whatever the chunk size.
const DECODE_STEP_FRAMES: usize = 4_096;

/// Pipeline audio: 16 kHz mono, shared by every processor stage.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct AudioBlock {
    /// Samples, nominally in -1.0..=1.0.
    pub samples: Arc<[f32]>,
    /// Pipeline sample index of `samples[0]` (divide by 16 for ms).
    pub start: u64,
    /// When the client chunk this block came from was received (event latency); `None` for
    /// the filter tail emitted at flush.
    pub received: Option<Instant>,
}

/// One binary frame of client audio, already checked to hold whole sample frames.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AudioChunk {
    /// Interleaved PCM in the session's input format.
    pub data: Bytes,
    /// When the session received it.
    pub received: Instant,
}

/// Pump the filter tail, flush every processor, then tell the session `Flushed`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Flush;

/// First stage of a session's pipeline. Owns the stream's decode and resampling state.
pub struct Resampler {
    format: InputFormat,
    dsp: StreamResampler,
    mono: Vec<f32>,
    out: Vec<f32>,
    processors: Vec<Addr<ProcessorStage>>,
    sink: Recipient<PipelineOutput>,
    return_audio: bool,
    counters: Arc<SessionCounters>,
    mailbox_capacity: usize,
    probe: StageProbe,
    /// One per entry of `processors`.
    processor_probes: Vec<StageProbe>,
    metrics: Arc<Metrics>,
}

/// Where a resampler's output goes.
#[derive(Debug)]
pub struct Downstream {
    /// Processor stages, in order; each gets every block.
    pub processors: Vec<Addr<ProcessorStage>>,
    /// The session: events, `Flushed`, and pipeline audio when `return_audio` is set.
    pub sink: Recipient<PipelineOutput>,
    /// Send pipeline audio back to the client.
    pub return_audio: bool,
}

/// How a resampler reports on itself and its downstream stages.
#[derive(Debug, Clone)]
pub struct ResamplerProbes {
    /// This stage.
    pub own: StageProbe,
    /// Each processor stage, in order.
    pub processors: Vec<StageProbe>,
    /// Server-wide metrics.
    pub metrics: Arc<Metrics>,
}

impl Resampler {
    /// A resampler for `format` feeding `downstream`.
    pub fn new(
        format: InputFormat,
        dsp: StreamResampler,
        downstream: Downstream,
        counters: Arc<SessionCounters>,
        mailbox_capacity: usize,
        probes: ResamplerProbes,
    ) -> Self {
        let Downstream {
            processors,
            sink,
            return_audio,
        } = downstream;
        Self {
            probe: probes.own,
            processor_probes: probes.processors,
            metrics: probes.metrics,
            format,
            dsp,
            mono: Vec::with_capacity(DECODE_STEP_FRAMES),
            out: Vec::with_capacity(MAX_BLOCK_SAMPLES + DECODE_STEP_FRAMES * 2),
            processors,
            sink,
            return_audio,
            counters,
            mailbox_capacity,
        }
    }

    /// Starts the stage on the current arbiter with its mailbox bounded from the first message.
    pub fn start_bounded(self) -> Addr<Self> {
        Actor::create(|ctx: &mut Context<Self>| {
            ctx.set_mailbox_capacity(self.mailbox_capacity);
            self
        })
    }

    /// Cuts `self.out` into blocks (all of it when `all`, else only whole blocks).
    fn take_blocks(&mut self, all: bool, received: Option<Instant>, blocks: &mut Vec<AudioBlock>) {
        let mut from = 0;
        while self.out.len() - from >= MAX_BLOCK_SAMPLES || (all && from < self.out.len()) {
            let to = (from + MAX_BLOCK_SAMPLES).min(self.out.len());
            let start = self.counters.pipeline_samples.load(Relaxed);
            let samples: Arc<[f32]> = Arc::from(&self.out[from..to]);
            self.counters
                .pipeline_samples
                .store(start + samples.len() as u64, Relaxed);
            self.metrics
                .audio_seconds
                .inc_by(samples.len() as f64 / f64::from(crate::audio::PIPELINE_RATE));
            blocks.push(AudioBlock {
                samples,
                start,
                received,
            });
            from = to;
        }
        self.out.drain(..from);
    }

    /// Hands blocks to every processor in order. Blocks that do not fit a full mailbox are
    /// returned as a future sending the rest; the caller makes the actor wait on it, so
    /// nothing else is handled until they are in: that is how backpressure reaches the
    /// session. `Err` means a processor stage is gone.
    fn forward(&mut self, blocks: Vec<AudioBlock>) -> Result<Option<Backlog>, MailboxError> {
        if self.return_audio {
            for b in &blocks {
                // Bounded by construction: the session's own chunks in flight (see
                // `PipelineOutput::Audio`).
                self.sink.do_send(PipelineOutput::Audio(b.samples.clone()));
            }
        }
        let mut backlog: Vec<(Addr<ProcessorStage>, Vec<AudioBlock>)> = Vec::new();
        for (stage, probe) in self.processors.iter().zip(&self.processor_probes) {
            let mut rest = Vec::new();
            for block in &blocks {
                if !rest.is_empty() {
                    probe.queued();
                    rest.push(block.clone());
                    continue;
                }
                match stage.try_send(block.clone()) {
                    Ok(()) => probe.queued(),
                    Err(SendError::Full(b)) => {
                        probe.queued();
                        rest.push(b);
                    }
                    Err(SendError::Closed(_)) => return Err(MailboxError::Closed),
                }
            }
            if !rest.is_empty() {
                backlog.push((stage.clone(), rest));
            }
        }
        if backlog.is_empty() {
            return Ok(None);
        }
        let sends = backlog.into_iter().map(|(stage, rest)| async move {
            for block in rest {
                stage.send(block).await?;
            }
            Ok::<(), MailboxError>(())
        });
        Ok(Some(Box::pin(async move {
            futures_util::future::join_all(sends)
                .await
                .into_iter()
                .collect::<Result<(), MailboxError>>()
        })))
    }

    fn fail(&mut self, ctx: &mut Context<Self>) {
        tracing::error!("a processor stage stopped unexpectedly");
        self.sink.do_send(PipelineOutput::Failed);
        ctx.stop();
    }
}

impl Actor for Resampler {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        self.probe.started();
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.probe.stopped();
    }
}

impl Handler<AudioChunk> for Resampler {
    type Result = ();

    /// Decodes, resamples and forwards one chunk.
    fn handle(&mut self, chunk: AudioChunk, ctx: &mut Self::Context) {
        let began = Instant::now();
        let received = Some(chunk.received);
        let step = DECODE_STEP_FRAMES * self.format.frame_bytes();
        let mut blocks = Vec::new();
        for piece in chunk.data.chunks(step) {
            self.mono.clear();
            decode_to_mono(&self.format, piece, &mut self.mono);
            if self.dsp.process(&self.mono, &mut self.out).is_err() {
                self.fail(ctx);
                return;
            }
            self.take_blocks(false, received, &mut blocks);
        }
        // Emit the remainder too: holding it back would only add latency.
        self.take_blocks(true, received, &mut blocks);
        self.counters
            .inflight_bytes
            .fetch_sub(chunk.data.len(), Relaxed);
        self.counters.chunks_processed.fetch_add(1, Relaxed);
        let forwarded = self.forward(blocks);
        self.probe.handled(began.elapsed());
        match forwarded {
            Ok(None) => {}
            Ok(Some(backlog)) => ctx.wait(backlog.into_actor(self).map(|res, act, ctx| {
                if res.is_err() {
                    act.fail(ctx);
                }
            })),
            Err(_) => self.fail(ctx),
        }
    }
}

impl Handler<Flush> for Resampler {
    type Result = ();

    /// Drains the filter, flushes the processors (after the last blocks are in), then
    /// reports `Flushed` through the sink so it follows every event of the flushed audio.
    fn handle(&mut self, _msg: Flush, ctx: &mut Self::Context) {
        let began = Instant::now();
        if self.dsp.flush(&mut self.out).is_err() {
            self.fail(ctx);
            return;
        }
        let mut blocks = Vec::new();
        self.take_blocks(true, None, &mut blocks);
        let forwarded = self.forward(blocks);
        self.probe.handled(began.elapsed());
        let backlog = match forwarded {
            Ok(backlog) => backlog,
            Err(_) => return self.fail(ctx),
        };
        let end_sample = self.counters.pipeline_samples.load(Relaxed);
        let stages = self.processors.clone();
        self.processor_probes.iter().for_each(StageProbe::queued);
        // One future, so the flush cannot overtake blocks still waiting for mailbox room.
        let flush_all = async move {
            if let Some(backlog) = backlog {
                backlog.await?;
            }
            let flushes = stages.iter().map(|s| s.send(FlushStage { end_sample }));
            futures_util::future::join_all(flushes)
                .await
                .into_iter()
                .collect::<Result<(), MailboxError>>()
        };
        ctx.wait(flush_all.into_actor(self).map(move |result, act, ctx| {
            if result.is_err() {
                act.fail(ctx);
                return;
            }
            act.sink.do_send(PipelineOutput::Flushed {
                audio_ms: end_sample / 16,
            });
        }));
    }
}
