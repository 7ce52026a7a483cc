//! The actor that runs one [`Processor`] for one session, and supervises it.
//!
//! A processor is user code (speech-to-text, say) and may panic. The stage catches the
//! panic at the call, so it never unwinds through the actor system, and restarts the
//! processor with fresh state from its factory, as an OTP supervisor would with a
//! one-for-one strategy, and tells the session, which sends a non-fatal
//! `processor_restarted` error; the audio keeps flowing. The session holds the intensity
//! limit across all its stages: more than `supervision.max_restarts` restarts within
//! `period_s` and it closes with 1011 `processor_failed`. Other sessions' stages are
//! separate actors and never notice.

use super::messages::{FlushStage, PipelineOutput};
use crate::audio::AudioBlock;
use crate::counters::StageProbe;
use crate::processors::{Processor, ProcessorContext, ProcessorFactory};
use crate::protocol::ServerEvent;
use actix::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// How to build the stage's processor again after a panic.
pub struct Restart {
    /// The catalog's factory for this processor.
    pub factory: ProcessorFactory,
    /// What the processor was first built with.
    pub context: ProcessorContext,
}

/// Runs a [`Processor`] behind a bounded mailbox; its events go to the session's sink.
pub struct ProcessorStage {
    name: String,
    processor: Box<dyn Processor>,
    sink: Recipient<PipelineOutput>,
    mailbox_capacity: usize,
    probe: StageProbe,
    restart: Restart,
    /// The processor could not be rebuilt; blocks are dropped until the session closes.
    failed: bool,
}

impl ProcessorStage {
    /// A stage named `name` (for logs and errors) delivering events to `sink`.
    pub fn new(
        name: String,
        processor: Box<dyn Processor>,
        sink: Recipient<PipelineOutput>,
        mailbox_capacity: usize,
        probe: StageProbe,
        restart: Restart,
    ) -> Self {
        Self {
            name,
            processor,
            sink,
            mailbox_capacity,
            probe,
            restart,
            failed: false,
        }
    }

    fn deliver(&self, events: Vec<ServerEvent>, received: Option<Instant>) {
        if !events.is_empty() {
            // Events, not audio: at most a few per block, and blocks in flight are bounded by
            // the mailboxes upstream, so this queue is bounded by construction.
            self.sink
                .do_send(PipelineOutput::Events { events, received });
        }
    }

    /// Runs `call` on the processor; on a panic, restarts it (or gives up) and returns no
    /// events: what the failed call emitted may be partial.
    fn supervised(
        &mut self,
        call: impl FnOnce(&mut dyn Processor, &mut Vec<ServerEvent>),
    ) -> Vec<ServerEvent> {
        let mut events = Vec::new();
        if self.failed {
            return events;
        }
        let processor = &mut *self.processor;
        match catch_unwind(AssertUnwindSafe(|| call(processor, &mut events))) {
            Ok(()) => events,
            Err(panic) => {
                self.on_panic(panic.as_ref());
                Vec::new()
            }
        }
    }

    fn on_panic(&mut self, panic: &(dyn std::any::Any + Send)) {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let session = self.restart.context.session_id;
        let processor = self.name.clone();
        // The panic text goes to the server log only, never to the client.
        tracing::warn!(%session, stage = %self.name, panic = %message, "processor panicked; restarting it with fresh state");
        let restart = &self.restart;
        match catch_unwind(AssertUnwindSafe(|| (restart.factory)(&restart.context))) {
            Ok(fresh) => {
                self.processor = fresh;
                self.probe.restarted();
                self.sink
                    .do_send(PipelineOutput::ProcessorRestarted { processor });
            }
            Err(_) => {
                tracing::error!(%session, stage = %self.name, "processor factory panicked on restart; giving up");
                self.failed = true;
                self.sink
                    .do_send(PipelineOutput::ProcessorFailed { processor });
            }
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

    /// Runs the processor on one block and forwards what it emitted.
    fn handle(&mut self, block: AudioBlock, _ctx: &mut Self::Context) {
        let began = Instant::now();
        let events = self.supervised(|p, events| p.process(&block, events));
        self.probe.handled(began.elapsed());
        self.deliver(events, block.received);
    }
}

impl Handler<FlushStage> for ProcessorStage {
    type Result = ();

    /// Flushes the processor (a failed one has nothing to flush; the answer still comes).
    fn handle(&mut self, msg: FlushStage, _ctx: &mut Self::Context) {
        let began = Instant::now();
        let events = self.supervised(|p, events| p.flush(msg.end_sample, events));
        self.probe.handled(began.elapsed());
        self.deliver(events, None);
        tracing::trace!(stage = %self.name, end_sample = msg.end_sample, "flushed");
    }
}
