//! A session's pipeline: resampler -> processor stages, each an actor with a bounded
//! mailbox.
//!
//! # Layout
//! - [`messages`]: what goes in (audio chunks, flushes) and what comes out (events).
//! - [`sender`]: the bounded send under the backpressure policy, used at every hop.
//! - [`resampler`]: the first stage: decode, downmix, resample to 16 kHz, fan out.
//! - [`stage`]: the stage that runs processors (the light ones in turn, or one heavy one)
//!   and restarts one after a panic.
//!
//! The pipeline knows nothing of connections or sessions: it takes audio from whoever holds
//! the [`Pipeline`] handle and sends its output to the `sink` recipient it is built with.
//! That is what lets a session outlive its connection and a new one feed the same pipeline.

pub mod messages;
pub mod resampler;
pub mod sender;
pub mod stage;

pub use messages::{AudioChunk, Flush, FlushStage, PipelineOutput};
pub use resampler::Resampler;
pub use sender::{Offer, StageSender, Waiting};
pub use stage::ProcessorStage;

use self::resampler::{Downstream, ResamplerProbes};
use self::stage::{Restart, Supervised};
use crate::audio::StreamResampler;
use crate::counters::{SessionCounters, StageProbe};
use crate::metrics::Metrics;
use crate::processors::{LateOutput, LateSink, ProcessorCatalog, ProcessorContext};
use crate::protocol::StreamParams;
use crate::settings::SessionConfig;
use actix::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use thiserror::Error;
use uuid::Uuid;

/// Why a pipeline could not be built. Never shown to clients (they get `internal_error`).
#[derive(Debug, Error)]
pub enum PipelineError {
    /// `pipeline.processors` names a processor the catalog does not have.
    #[error("unknown processor \"{0}\"")]
    UnknownProcessor(String),
    /// A processor's factory panicked while building it.
    #[error("processor \"{0}\" panicked while being built")]
    ProcessorPanicked(String),
    /// rubato refused the rate.
    #[error("resampler for {rate} Hz: {source}")]
    Resampler {
        /// Input rate.
        rate: u32,
        /// rubato's error.
        source: rubato::ResamplerConstructionError,
    },
}

/// Handle to a running pipeline; dropping every clone stops the stages once their queues
/// drain.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The first stage: where audio and flushes go.
    pub resampler: StageSender<Resampler>,
    /// The resampler's filter delay, ms (announced in `session.started`).
    pub resampler_delay_ms: f64,
}

impl Pipeline {
    /// The pipeline stages a session running `processors` has, by name, resampler first:
    /// the names `/v1/stats` reports and `SessionCounters` tracks depths under.
    pub fn stage_names(catalog: &ProcessorCatalog, processors: &[String]) -> Vec<String> {
        std::iter::once("resampler".to_owned())
            .chain(catalog.stages(processors).iter().map(|s| s.join("+")))
            .collect()
    }

    /// Starts the stages on the current arbiter.
    pub fn start(
        session_id: Uuid,
        params: &StreamParams,
        config: &SessionConfig,
        catalog: &ProcessorCatalog,
        sink: Recipient<PipelineOutput>,
        counters: Arc<SessionCounters>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, PipelineError> {
        let capacity = config.pipeline.mailbox_capacity.get();
        let late = {
            let sink = sink.clone();
            LateSink::new(move |output| {
                sink.do_send(match output {
                    LateOutput::Events(events) => PipelineOutput::Events {
                        events,
                        received: None,
                    },
                    LateOutput::Problem(error) => PipelineOutput::Problem(error),
                })
            })
        };
        let ctx = ProcessorContext {
            session_id,
            input: params.input,
            vad: params.vad,
            level: config.level,
            late,
        };
        let layout = catalog.stages(&config.pipeline.processors);
        let mut stages = Vec::with_capacity(layout.len());
        for (i, names) in layout.iter().enumerate() {
            let mut processors = Vec::with_capacity(names.len());
            for &name in names {
                let factory = catalog
                    .factory(name)
                    .ok_or_else(|| PipelineError::UnknownProcessor(name.to_owned()))?;
                let processor = catch_unwind(AssertUnwindSafe(|| factory(&ctx)))
                    .map_err(|_| PipelineError::ProcessorPanicked(name.to_owned()))?;
                let restart = Restart {
                    factory,
                    context: ctx.clone(),
                };
                processors.push(Supervised::new(name.to_owned(), processor, restart));
            }
            let name = names.join("+");
            let probe = StageProbe::new(metrics.stage(&name, capacity), counters.clone(), i + 1);
            let stage =
                ProcessorStage::new(name, processors, sink.clone(), capacity, probe.clone())
                    .start_bounded();
            stages.push(StageSender::new(stage, probe));
        }
        let resampler_probe =
            StageProbe::new(metrics.stage("resampler", capacity), counters.clone(), 0);
        let rate = params.input.sample_rate;
        let dsp = StreamResampler::new(rate)
            .map_err(|source| PipelineError::Resampler { rate, source })?;
        let resampler_delay_ms = dsp.delay_ms();
        let resampler = Resampler::new(
            params.input,
            dsp,
            Downstream {
                processors: stages,
                sink,
                return_audio: params.return_audio,
            },
            counters,
            capacity,
            ResamplerProbes {
                own: resampler_probe.clone(),
                metrics: metrics.clone(),
            },
        )
        .start_bounded();
        Ok(Pipeline {
            resampler: StageSender::new(resampler, resampler_probe),
            resampler_delay_ms,
        })
    }
}
