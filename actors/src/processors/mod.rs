//! Processors: what runs on pipeline audio (16 kHz mono `f32`).
//!
//! A [`Processor`] is plain synchronous code; a `ProcessorStage` (in `pipeline`) actor gives
//! it a bounded mailbox and delivers its events to the session. Built-ins are `level` and
//! `vad`; users register their own in a [`ProcessorCatalog`] under a name and list that name
//! in `pipeline.processors`.
//!
//! Where a processor runs is its [`Placement`]: light ones (microseconds per block, like the
//! built-ins) share one stage per session and run in turn on each block, so a chunk costs one
//! mailbox hop however many of them there are; a heavy one gets a stage of its own, so its
//! queue and backpressure are its own.
//!
//! ```
//! use voxrt_actors::processors::{Processor, ProcessorCatalog, ProcessorContext};
//! use voxrt_actors::{AudioBlock, ServerEvent};
//!
//! /// Counts clipped samples and reports them at flush.
//! struct ClipCounter { clipped: u64 }
//!
//! impl Processor for ClipCounter {
//!     fn process(&mut self, block: &AudioBlock, _events: &mut Vec<ServerEvent>) {
//!         self.clipped += block.samples.iter().filter(|s| s.abs() >= 0.999).count() as u64;
//!     }
//!     fn flush(&mut self, end_sample: u64, events: &mut Vec<ServerEvent>) {
//!         events.push(ServerEvent::Custom(serde_json::json!({
//!             "type": "clipping", "t_ms": end_sample / 16, "samples": self.clipped,
//!         })));
//!     }
//! }
//!
//! let mut catalog = ProcessorCatalog::with_builtins();
//! catalog.register("clipping", |_ctx: &ProcessorContext| Box::new(ClipCounter { clipped: 0 }));
//! assert!(catalog.contains("clipping"));
//! ```

mod level;
pub mod stt;
mod vad;

pub use level::LevelProcessor;
pub use stt::SttProcessor;
pub use vad::VadProcessor;

use crate::audio::AudioBlock;
use crate::audio::InputFormat;
use crate::error::SessionError;
use crate::protocol::ServerEvent;
use crate::settings::{LevelSettings, VadSettings};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use uuid::Uuid;

/// Code that runs on a session's pipeline audio.
///
/// Contract: `process` is called with consecutive blocks (each at most 100 ms, 16 kHz mono,
/// samples in -1.0..=1.0 for in-range input) in order; `block.start` is the pipeline sample
/// index of the block's first sample, so `start / 16` is its time in ms on the input audio
/// timeline. `flush` is called when the client flushes or the session ends, after the last
/// block before it; close anything open (a speech segment, a partial interval) there.
/// Both run on the session's actor thread: they must not block. Push events in order.
pub trait Processor: Send + 'static {
    /// Handles one block of audio.
    fn process(&mut self, block: &AudioBlock, events: &mut Vec<ServerEvent>);
    /// Everything up to `end_sample` has been delivered; emit what is still open.
    fn flush(&mut self, end_sample: u64, events: &mut Vec<ServerEvent>);
    /// Called right after `flush`: resolves once everything this processor still owes for
    /// the flushed audio (work on threads of its own, reported through
    /// [`ProcessorContext::late`]) has been sent. The stage answers the flush only then, so
    /// that output precedes `flushed` and `session.closed`. The future bounds its own wait.
    /// `None` (the default): nothing is owed.
    fn settled(&mut self) -> Option<Settled> {
        None
    }
}

/// What [`Processor::settled`] returns: a bounded wait for a processor's late output.
pub type Settled = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Output a processor produces after `process` or `flush` returned, on a thread of its own.
#[derive(Debug)]
pub enum LateOutput {
    /// Events for the client, in order (sequenced and kept for resume like the others).
    Events(Vec<ServerEvent>),
    /// A non-fatal problem the client is told of as an `error` event; the session goes on.
    Problem(SessionError),
}

/// Where a processor sends [`LateOutput`]: its session, behind the events the pipeline
/// already queued. Cheap to clone, callable from any thread, never blocks: the volume is
/// the processor's to bound (`stt` bounds it by its queue of segments).
#[derive(Clone)]
pub struct LateSink(Arc<dyn Fn(LateOutput) + Send + Sync>);

impl LateSink {
    /// A sink that hands each output to `send`.
    pub fn new(send: impl Fn(LateOutput) + Send + Sync + 'static) -> Self {
        Self(Arc::new(send))
    }

    /// A sink that discards everything (processors built outside a session: benches, tests).
    pub fn discard() -> Self {
        Self::new(|_| {})
    }

    /// Sends `output` to the session.
    pub fn send(&self, output: LateOutput) {
        (self.0)(output)
    }
}

impl std::fmt::Debug for LateSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LateSink")
    }
}

/// What a processor factory knows about the session it builds for.
#[derive(Debug, Clone)]
pub struct ProcessorContext {
    /// The session's id.
    pub session_id: Uuid,
    /// What the client sends (before resampling).
    pub input: InputFormat,
    /// VAD tunables after the client's overrides.
    pub vad: VadSettings,
    /// Level settings.
    pub level: LevelSettings,
    /// Where output produced later, off the stage's thread, goes.
    pub late: LateSink,
}

/// Builds a fresh processor for one session.
pub type ProcessorFactory = Arc<dyn Fn(&ProcessorContext) -> Box<dyn Processor> + Send + Sync>;

/// Where a session's processor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// In the session's shared stage, after the light processors listed before it: one
    /// mailbox hop per block for all of them. For processors that take microseconds per
    /// 100 ms block and never block.
    #[default]
    Shared,
    /// In a stage (actor and bounded mailbox) of its own, so it can fall behind without
    /// holding up the shared stage.
    OwnStage,
}

/// A registered processor: how to build it and where it runs.
#[derive(Clone)]
struct Entry {
    factory: ProcessorFactory,
    placement: Placement,
}

/// The processors a server can run, by name. Cheap to clone (factories are shared).
#[derive(Clone)]
pub struct ProcessorCatalog {
    factories: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for ProcessorCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}

impl ProcessorCatalog {
    /// A catalog holding `level` and `vad`.
    pub fn with_builtins() -> Self {
        let mut catalog = Self {
            factories: BTreeMap::new(),
        };
        catalog.register("level", |ctx: &ProcessorContext| {
            Box::new(LevelProcessor::new(ctx.level))
        });
        catalog.register("vad", |ctx: &ProcessorContext| {
            Box::new(VadProcessor::new(ctx.vad))
        });
        catalog
    }

    /// Adds (or replaces) the processor called `name`, run in the session's shared stage
    /// ([`Placement::Shared`]).
    pub fn register<F>(&mut self, name: impl Into<String>, factory: F)
    where
        F: Fn(&ProcessorContext) -> Box<dyn Processor> + Send + Sync + 'static,
    {
        self.register_placed(name, Placement::Shared, factory);
    }

    /// Adds (or replaces) the processor called `name`, run where `placement` says.
    pub fn register_placed<F>(&mut self, name: impl Into<String>, placement: Placement, factory: F)
    where
        F: Fn(&ProcessorContext) -> Box<dyn Processor> + Send + Sync + 'static,
    {
        let entry = Entry {
            factory: Arc::new(factory),
            placement,
        };
        self.factories.insert(name.into(), entry);
    }

    /// Where `name` runs, if registered.
    pub fn placement(&self, name: &str) -> Option<Placement> {
        self.factories.get(name).map(|e| e.placement)
    }

    /// The stages a session running `processors` (in order) has after its resampler: the
    /// shared stage (where the first shared processor is listed) holding every shared
    /// processor in order, and one stage per [`Placement::OwnStage`] processor. Unknown
    /// names count as shared. Each inner list is non-empty.
    pub fn stages<'a>(&self, processors: &'a [String]) -> Vec<Vec<&'a str>> {
        let mut stages: Vec<Vec<&str>> = Vec::new();
        let mut shared: Option<usize> = None;
        for name in processors {
            match (self.placement(name).unwrap_or_default(), shared) {
                (Placement::Shared, Some(i)) => stages[i].push(name),
                (Placement::Shared, None) => {
                    shared = Some(stages.len());
                    stages.push(vec![name]);
                }
                (Placement::OwnStage, _) => stages.push(vec![name]),
            }
        }
        stages
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds the processor called `name`, if registered.
    pub fn build(&self, name: &str, ctx: &ProcessorContext) -> Option<Box<dyn Processor>> {
        self.factories.get(name).map(|e| (e.factory)(ctx))
    }

    /// The factory of `name` (a stage keeps it to rebuild its processor after a panic).
    pub fn factory(&self, name: &str) -> Option<ProcessorFactory> {
        self.factories.get(name).map(|e| e.factory.clone())
    }
}

/// Pipeline samples per millisecond.
pub(crate) const SAMPLES_PER_MS: u64 = 16;

/// Converts a linear amplitude to dBFS, floored at -120.
pub(crate) fn to_dbfs(amplitude: f64) -> f32 {
    if amplitude <= 1e-6 {
        -120.0
    } else {
        (20.0 * amplitude.log10()).max(-120.0) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Processor for Nothing {
        fn process(&mut self, _: &AudioBlock, _: &mut Vec<ServerEvent>) {}
        fn flush(&mut self, _: u64, _: &mut Vec<ServerEvent>) {}
    }

    /// Light processors share one stage, where the first of them is listed and in list
    /// order; each heavy one has its own.
    #[test]
    fn shared_processors_form_one_stage_heavy_ones_their_own() {
        let mut catalog = ProcessorCatalog::with_builtins();
        catalog.register_placed("stt", Placement::OwnStage, |_: &ProcessorContext| {
            Box::new(Nothing)
        });
        catalog.register("clip", |_: &ProcessorContext| Box::new(Nothing));
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let processors = names(&["stt", "level", "clip", "vad"]);
        assert_eq!(
            catalog.stages(&processors),
            vec![vec!["stt"], vec!["level", "clip", "vad"]]
        );
        let processors = names(&["level", "vad"]);
        assert_eq!(catalog.stages(&processors), vec![vec!["level", "vad"]]);
        assert!(catalog.stages(&[]).is_empty());
    }
}
