//! The actor that runs a session's [`Processor`]s (one, or the light ones in turn), and
//! supervises each.
//!
//! A processor is user code (speech-to-text, say) and may panic. The stage catches the
//! panic at the call, so it never unwinds through the actor system, and restarts the
//! processor with fresh state from its factory, as an OTP supervisor would with a
//! one-for-one strategy, and tells the session, which sends a non-fatal
//! `processor_restarted` error; the audio keeps flowing. The session holds the intensity
//! limit across all its stages: more than `supervision.max_restarts` restarts within
//! `period_s` and it closes with 1011 `processor_failed`. The other processors of the stage
//! go on with the same block; other sessions' stages are separate actors and never notice.

use super::messages::{FlushStage, PipelineOutput};
use crate::audio::AudioBlock;
use crate::counters::StageProbe;
use crate::processors::{Processor, ProcessorContext, ProcessorFactory};
use crate::protocol::ServerEvent;
use actix::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// How to build a processor again after a panic.
pub struct Restart {
    /// The catalog's factory for this processor.
    pub factory: ProcessorFactory,
    /// What the processor was first built with.
    pub context: ProcessorContext,
}

/// One processor of a stage, under supervision.
pub struct Supervised {
    name: String,
    processor: Box<dyn Processor>,
    restart: Restart,
    /// The processor could not be rebuilt; it is skipped until the session closes.
    failed: bool,
}

impl Supervised {
    /// `processor`, called `name` in logs and errors, rebuilt by `restart` after a panic.
    pub fn new(name: String, processor: Box<dyn Processor>, restart: Restart) -> Self {
        Self {
            name,
            processor,
            restart,
            failed: false,
        }
    }

    /// Runs `call` on the processor, appending what it emits to `events`. On a panic,
    /// restarts it (or gives up), tells `sink`, and drops what the failed call emitted: it
    /// may be partial. Returns whether the processor was restarted.
    fn run(
        &mut self,
        events: &mut Vec<ServerEvent>,
        sink: &Recipient<PipelineOutput>,
        call: impl FnOnce(&mut dyn Processor, &mut Vec<ServerEvent>),
    ) -> bool {
        if self.failed {
            return false;
        }
        let before = events.len();
        let processor = &mut *self.processor;
        match catch_unwind(AssertUnwindSafe(|| call(processor, events))) {
            Ok(()) => false,
            Err(panic) => {
                events.truncate(before);
                self.on_panic(panic.as_ref(), sink)
            }
        }
    }

    /// The processor's [`Processor::settled`], unless it failed. A panic there counts as
    /// nothing owed (logged; the flush must still be answered).
    fn settled(&mut self) -> Option<crate::processors::Settled> {
        if self.failed {
            return None;
        }
        let processor = &mut *self.processor;
        catch_unwind(AssertUnwindSafe(|| processor.settled())).unwrap_or_else(|_| {
            tracing::warn!(processor = %self.name, "processor panicked in settled(); not waiting for it");
            None
        })
    }

    fn on_panic(
        &mut self,
        panic: &(dyn std::any::Any + Send),
        sink: &Recipient<PipelineOutput>,
    ) -> bool {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let session = self.restart.context.session_id;
        let processor = self.name.clone();
        // The panic text goes to the server log only, never to the client.
        tracing::warn!(%session, processor = %self.name, panic = %message, "processor panicked; restarting it with fresh state");
        let restart = &self.restart;
        match catch_unwind(AssertUnwindSafe(|| (restart.factory)(&restart.context))) {
            Ok(fresh) => {
                self.processor = fresh;
                sink.do_send(PipelineOutput::ProcessorRestarted { processor });
                true
            }
            Err(_) => {
                tracing::error!(%session, processor = %self.name, "processor factory panicked on restart; giving up");
                self.failed = true;
                sink.do_send(PipelineOutput::ProcessorFailed { processor });
                false
            }
        }
    }
}

/// Runs one or more [`Processor`]s, in turn on each block, behind one bounded mailbox; their
/// events go to the session's sink, in processor order, in one message per block.
pub struct ProcessorStage {
    name: String,
    processors: Vec<Supervised>,
    sink: Recipient<PipelineOutput>,
    mailbox_capacity: usize,
    probe: StageProbe,
}

impl ProcessorStage {
    /// A stage named `name` (its processors' names joined with `+`; for logs and
    /// `/v1/stats`) delivering events to `sink`.
    pub fn new(
        name: String,
        processors: Vec<Supervised>,
        sink: Recipient<PipelineOutput>,
        mailbox_capacity: usize,
        probe: StageProbe,
    ) -> Self {
        Self {
            name,
            processors,
            sink,
            mailbox_capacity,
            probe,
        }
    }

    /// Runs `call` on every processor in order and forwards what they emitted.
    fn run_all(
        &mut self,
        received: Option<Instant>,
        mut call: impl FnMut(&mut dyn Processor, &mut Vec<ServerEvent>),
    ) {
        let timer = self.probe.start();
        let mut events = Vec::new();
        for p in &mut self.processors {
            if p.run(&mut events, &self.sink, &mut call) {
                self.probe.restarted();
            }
        }
        self.probe.handled(timer);
        if !events.is_empty() {
            // Events, not audio: at most a few per block, and blocks in flight are bounded by
            // the mailboxes upstream, so this queue is bounded by construction.
            self.sink
                .do_send(PipelineOutput::Events { events, received });
        }
    }
}

impl ProcessorStage {
    /// Starts the stage on the current arbiter with its mailbox bounded from the first message.
    pub fn start_bounded(self) -> Addr<Self> {
        Actor::create(|ctx: &mut Context<Self>| {
            ctx.set_mailbox_capacity(self.mailbox_capacity);
            self
        })
    }
}

impl Actor for ProcessorStage {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        self.probe.started();
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.probe.stopped();
    }
}

impl Handler<AudioBlock> for ProcessorStage {
    type Result = ();

    /// Runs the processors on one block and forwards what they emitted.
    fn handle(&mut self, block: AudioBlock, _ctx: &mut Self::Context) {
        let received = block.received;
        self.run_all(received, |p, events| p.process(&block, events));
    }
}

impl Handler<FlushStage> for ProcessorStage {
    type Result = ResponseFuture<()>;

    /// Flushes the processors (a failed one has nothing to flush; the answer still comes),
    /// and answers once those with work on threads of their own have settled it
    /// ([`Processor::settled`], each bounded). The stage goes on handling blocks meanwhile;
    /// the resampler sends none until the flush is answered.
    fn handle(&mut self, msg: FlushStage, _ctx: &mut Self::Context) -> Self::Result {
        self.run_all(None, |p, events| p.flush(msg.end_sample, events));
        tracing::trace!(stage = %self.name, end_sample = msg.end_sample, "flushed");
        let settling: Vec<_> = self
            .processors
            .iter_mut()
            .filter_map(Supervised::settled)
            .collect();
        Box::pin(async move {
            futures_util::future::join_all(settling).await;
        })
    }
}
