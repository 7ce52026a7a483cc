//! The actor that runs one [`Processor`] for one session.

use crate::counters::StageProbe;
use crate::processors::Processor;
use crate::resampler::AudioBlock;
use crate::session::PipelineOutput;
use actix::prelude::*;
use std::time::Instant;

/// Runs a [`Processor`] behind a bounded mailbox; its events go to the session's sink.
pub struct ProcessorStage {
    name: String,
    processor: Box<dyn Processor>,
    sink: Recipient<PipelineOutput>,
    mailbox_capacity: usize,
    probe: StageProbe,
}

impl ProcessorStage {
    /// A stage named `name` (for logs and errors) delivering events to `sink`.
    pub fn new(
        name: String,
        processor: Box<dyn Processor>,
        sink: Recipient<PipelineOutput>,
        mailbox_capacity: usize,
        probe: StageProbe,
    ) -> Self {
        Self {
            name,
            processor,
            sink,
            mailbox_capacity,
            probe,
        }
    }

    fn deliver(&self, events: Vec<crate::protocol::ServerEvent>, received: Option<Instant>) {
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

    /// Runs the processor on one block and forwards what it emitted.
    fn handle(&mut self, block: AudioBlock, _ctx: &mut Self::Context) {
        let began = Instant::now();
        let mut events = Vec::new();
        self.processor.process(&block, &mut events);
        self.probe.handled(began.elapsed());
        self.deliver(events, block.received);
    }
}

/// Everything up to `end_sample` was delivered: close what is open. Answered once the
/// resulting events are queued to the session, so they precede the `flushed` event.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct FlushStage {
    /// Pipeline sample index where the flushed audio ends.
    pub end_sample: u64,
}

impl Handler<FlushStage> for ProcessorStage {
    type Result = ();

    /// Flushes the processor.
    fn handle(&mut self, msg: FlushStage, _ctx: &mut Self::Context) {
        let began = Instant::now();
        let mut events = Vec::new();
        self.processor.flush(msg.end_sample, &mut events);
        self.probe.handled(began.elapsed());
        self.deliver(events, None);
        tracing::trace!(stage = %self.name, end_sample = msg.end_sample, "flushed");
    }
}
