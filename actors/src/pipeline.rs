//! Building a session's pipeline: resampler -> processor stages.
//!
//! The pipeline is separate from the connection that feeds it: it talks to the connection
//! only through the `sink` recipient it is built with and the [`Pipeline`] handle, which is
//! what a future session-resume feature needs to re-attach a new connection.

use crate::audio::StreamResampler;
use crate::counters::SessionCounters;
use crate::processor::ProcessorStage;
use crate::processors::{ProcessorCatalog, ProcessorContext};
use crate::protocol::StreamParams;
use crate::resampler::Resampler;
use crate::session::{PipelineOutput, SessionConfig};
use actix::prelude::*;
use std::sync::Arc;
use thiserror::Error;
use uuid::Uuid;

/// Why a pipeline could not be built. Never shown to clients (they get `internal_error`).
#[derive(Debug, Error)]
pub enum PipelineError {
    /// `pipeline.processors` names a processor the catalog does not have.
    #[error("unknown processor \"{0}\"")]
    UnknownProcessor(String),
    /// rubato refused the rate.
    #[error("resampler for {rate} Hz: {source}")]
    Resampler {
        /// Input rate.
        rate: u32,
        /// rubato's error.
        source: rubato::ResamplerConstructionError,
    },
}

/// Handle to a running pipeline; dropping it stops the stages once their queues drain.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The first stage: where audio and flushes go.
    pub resampler: Addr<Resampler>,
}

impl Pipeline {
    /// Starts the stages on the current arbiter.
    pub fn start(
        session_id: Uuid,
        params: &StreamParams,
        config: &SessionConfig,
        catalog: &ProcessorCatalog,
        sink: Recipient<PipelineOutput>,
        counters: Arc<SessionCounters>,
    ) -> Result<Self, PipelineError> {
        let capacity = config.pipeline.mailbox_capacity.get();
        let ctx = ProcessorContext {
            session_id,
            input: params.input,
            vad: params.vad,
            level: config.level,
        };
        let mut stages = Vec::with_capacity(config.pipeline.processors.len());
        for name in &config.pipeline.processors {
            let processor = catalog
                .build(name, &ctx)
                .ok_or_else(|| PipelineError::UnknownProcessor(name.clone()))?;
            stages.push(
                ProcessorStage::new(name.clone(), processor, sink.clone(), capacity)
                    .start_bounded(),
            );
        }
        let rate = params.input.sample_rate;
        let dsp = StreamResampler::new(rate)
            .map_err(|source| PipelineError::Resampler { rate, source })?;
        let resampler = Resampler::new(
            params.input,
            dsp,
            stages,
            sink,
            params.return_audio,
            counters,
            capacity,
        )
        .start_bounded();
        Ok(Pipeline { resampler })
    }
}
