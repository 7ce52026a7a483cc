//! The Resampler actor: first pipeline stage of a session. Decodes client PCM, downmixes,
//! resamples to 16 kHz and fans blocks out to the processor stages.

use super::messages::{AudioChunk, Flush, FlushStage, PipelineOutput};
use super::sender::{Offer, StageSender, Waiting};
use super::stage::ProcessorStage;
use crate::audio::{
    decode_to_mono, AudioBlock, InputFormat, StreamResampler, MAX_BLOCK_SAMPLES, PIPELINE_RATE,
};
use crate::counters::{SessionCounters, StageProbe};
use crate::metrics::Metrics;
use crate::settings::BackpressurePolicy;
use actix::prelude::*;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// Client frames decoded per step, so decode buffers stay small whatever the chunk size.
const DECODE_STEP_FRAMES: usize = 4_096;

/// First stage of a session's pipeline. Owns the stream's decode and resampling state.
pub struct Resampler {
    format: InputFormat,
    dsp: StreamResampler,
    mono: Vec<f32>,
    out: Vec<f32>,
    processors: Vec<StageSender<ProcessorStage>>,
    sink: Recipient<PipelineOutput>,
    return_audio: bool,
    counters: Arc<SessionCounters>,
    mailbox_capacity: usize,
    probe: StageProbe,
    metrics: Arc<Metrics>,
}

/// Where a resampler's output goes.
#[derive(Debug)]
pub struct Downstream {
    /// Processor stages, in order; each gets every block.
    pub processors: Vec<StageSender<ProcessorStage>>,
    /// The session: events, `Flushed`, and pipeline audio when `return_audio` is set.
    pub sink: Recipient<PipelineOutput>,
    /// Send pipeline audio back to the client.
    pub return_audio: bool,
}

/// How a resampler reports on itself.
#[derive(Debug, Clone)]
pub struct ResamplerProbes {
    /// This stage.
    pub own: StageProbe,
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
            metrics: probes.metrics,
            format,
            dsp,
            // Grown by the first chunks to what this client's chunk size needs, then reused:
            // sizing them for the largest step (4,096 frames at 8 kHz) would hold 55 KiB per
            // session that 20 ms chunks never use.
            mono: Vec::new(),
            out: Vec::new(),
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
                .inc_by(samples.len() as f64 / f64::from(PIPELINE_RATE));
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
    /// connection. `Err` means a processor stage is gone.
    fn forward(&mut self, blocks: Vec<AudioBlock>) -> Result<Option<Waiting>, MailboxError> {
        if self.return_audio {
            for b in &blocks {
                // Bounded by construction: the session's own chunks in flight (see
                // `PipelineOutput::Audio`).
                self.sink.do_send(PipelineOutput::Audio(b.samples.clone()));
            }
        }
        let mut backlog: Vec<Waiting> = Vec::new();
        for stage in &self.processors {
            let mut blocks = blocks.iter();
            let waiting = loop {
                let Some(block) = blocks.next() else {
                    break None;
                };
                match stage.offer(block.clone(), BackpressurePolicy::Block) {
                    Offer::Queued => {}
                    Offer::Wait(first) => break Some(first),
                    Offer::Dropped(_) | Offer::Closed => return Err(MailboxError::Closed),
                }
            };
            if let Some(first) = waiting {
                // The rest follow the first in order, each once there is room.
                let rest: Vec<AudioBlock> = blocks.cloned().collect();
                let stage = stage.clone();
                backlog.push(Box::pin(async move {
                    first.await?;
                    for block in rest {
                        stage.wait_for_room(block).await?;
                    }
                    Ok(())
                }));
            }
        }
        if backlog.is_empty() {
            return Ok(None);
        }
        Ok(Some(Box::pin(async move {
            futures_util::future::join_all(backlog)
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
        let timer = self.probe.start();
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
        self.probe.handled(timer);
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
        let timer = self.probe.start();
        if self.dsp.flush(&mut self.out).is_err() {
            self.fail(ctx);
            return;
        }
        let mut blocks = Vec::new();
        self.take_blocks(true, None, &mut blocks);
        let forwarded = self.forward(blocks);
        self.probe.handled(timer);
        let backlog = match forwarded {
            Ok(backlog) => backlog,
            Err(_) => return self.fail(ctx),
        };
        let end_sample = self.counters.pipeline_samples.load(Relaxed);
        let stages = self.processors.clone();
        // One future, so the flush cannot overtake blocks still waiting for mailbox room.
        let flush_all = async move {
            if let Some(backlog) = backlog {
                backlog.await?;
            }
            let flushes = stages
                .iter()
                .map(|s| s.wait_for_room(FlushStage { end_sample }));
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
