//! Messages into and out of a session's pipeline. A leaf: the stages that handle them, the
//! connection that feeds audio in and the session that takes output import this file and
//! nothing of each other.

use crate::audio::AudioBlock;
use crate::error::SessionError;
use crate::protocol::ServerEvent;
use actix::prelude::*;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

impl Message for AudioBlock {
    type Result = ();
}

/// One binary frame of client audio, already checked to hold whole sample frames.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AudioChunk {
    /// Interleaved PCM in the session's input format.
    pub data: Bytes,
    /// When the connection received it.
    pub received: Instant,
}

/// Pump the filter tail, flush every processor, then tell the session `Flushed`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Flush;

/// Everything up to `end_sample` was delivered: close what is open. Answered once the
/// resulting events are queued to the session, so they precede the `flushed` event.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct FlushStage {
    /// Pipeline sample index where the flushed audio ends.
    pub end_sample: u64,
}

/// What the pipeline sends back to its session. Delivered with `do_send`: the volume is
/// bounded by the session's own audio in flight (the mailboxes upstream), not by this queue.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum PipelineOutput {
    /// Events from processors, in order.
    Events {
        /// The events.
        events: Vec<ServerEvent>,
        /// When the chunk that caused them was received (`None` for flush-time events).
        received: Option<Instant>,
    },
    /// Pipeline audio for `return_audio` (16 kHz mono).
    Audio(Arc<[f32]>),
    /// Everything before the last `Flush` went through; every event of it precedes this.
    Flushed {
        /// Audio through the pipeline so far, ms.
        audio_ms: u64,
    },
    /// A stage failed; the session cannot go on.
    Failed,
    /// A processor's non-fatal problem (a transcript dropped or failed): the client gets an
    /// `error` event and the session goes on.
    Problem(SessionError),
    /// A processor panicked and its supervisor restarted it with fresh state.
    ProcessorRestarted {
        /// The processor's name.
        processor: String,
    },
    /// A processor exceeded `supervision.max_restarts`; its stage has stopped.
    ProcessorFailed {
        /// The processor's name.
        processor: String,
    },
}
