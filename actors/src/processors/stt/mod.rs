//! `stt`: speech to text. Each VAD segment is cut from the session's audio (with
//! `stt.pre_roll_ms` before and `stt.post_roll_ms` after, at most `stt.max_segment_s` long)
//! and queued to the server's [`TranscriptionPool`]; its transcript comes back as a
//! `transcript` event through the session's late sink.
//!
//! - `segmenter`: where segments begin and end, from the VAD's events.
//! - `queue`: the bounded queue and its drop policy.
//! - `pool`: the transcription threads.
//!
//! The processor itself is light: it copies blocks into its buffer and, at a segment's end,
//! pushes the segment to the queue. So it runs in the session's shared stage, **after
//! `vad`** (it reads the VAD's events for the same block there; the server refuses a
//! configuration that lists it before `vad`), and nothing on the light path (levels, VAD)
//! ever waits for a transcription. `flush` and `stop` wait for the session's pending
//! transcripts, at most `stt.flush_timeout_ms` ([`Processor::settled`]).

mod pool;
mod queue;
mod segmenter;

pub use pool::{LatencySnapshot, Owner, Pending, Segment, SttSnapshot, TranscriptionPool};
pub use segmenter::{Cut, Segmenter, Spans};

use super::{LateOutput, Processor, ProcessorCatalog, ProcessorContext, Settled, SAMPLES_PER_MS};
use crate::audio::AudioBlock;
use crate::error::SessionError;
use crate::metrics::SttMetrics;
use crate::protocol::{ServerEvent, VadEventKind};
use crate::settings::SttSettings;
use crate::transcription::{ModelError, SpeechLibrary};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The name `pipeline.processors` lists it under.
pub const NAME: &str = "stt";

/// Why `stt` could not start; each names the setting to look at. A startup error.
#[derive(Debug, Error)]
pub enum SttStartError {
    /// The library would not load.
    #[error("stt.library: {0}; run scripts/fetch-models, or point stt.library at libmoonshine.so")]
    Library(ModelError),
    /// The model would not load.
    #[error("stt.model_dir: {0}; run scripts/fetch-models, or point stt.model_dir at the model")]
    Model(ModelError),
    /// A transcription thread could not be started.
    #[error("stt.threads: cannot start a transcription thread: {0}")]
    Thread(std::io::Error),
}

/// Loads the library and `settings.threads` model instances, starts the transcription
/// threads, and registers `stt` in `catalog` (run in the shared stage: see the module
/// docs). The pool lives as long as the catalog's factory and the sessions using it.
pub fn register(
    catalog: &mut ProcessorCatalog,
    settings: &SttSettings,
    metrics: SttMetrics,
) -> Result<Arc<TranscriptionPool>, SttStartError> {
    let library =
        SpeechLibrary::open(Path::new(&settings.library)).map_err(SttStartError::Library)?;
    let pool = Arc::new(TranscriptionPool::start(
        &library,
        Path::new(&settings.model_dir),
        settings.threads,
        settings.max_queued_segments,
        metrics,
    )?);
    tracing::info!(
        library = %settings.library,
        version = library.version(),
        model_dir = %settings.model_dir,
        threads = settings.threads,
        "speech to text ready"
    );
    let (for_factory, settings) = (pool.clone(), settings.clone());
    catalog.register(NAME, move |ctx: &ProcessorContext| {
        Box::new(SttProcessor::new(for_factory.clone(), &settings, ctx))
    });
    Ok(pool)
}

/// See the module docs.
pub struct SttProcessor {
    pool: Arc<TranscriptionPool>,
    owner: Owner,
    segmenter: Segmenter,
    flush_timeout: Duration,
    cuts: Vec<Cut>,
}

impl SttProcessor {
    /// A processor for the session in `ctx`, queuing to `pool`.
    pub fn new(
        pool: Arc<TranscriptionPool>,
        settings: &SttSettings,
        ctx: &ProcessorContext,
    ) -> Self {
        let ms = |ms: u32| u64::from(ms) * SAMPLES_PER_MS;
        let max_segment = ms(settings.max_segment_s.saturating_mul(1000)).max(1);
        let spans = Spans {
            pre_roll: ms(settings.pre_roll_ms),
            post_roll: ms(settings.post_roll_ms),
            max_segment,
            // The VAD dates a start back to where its burst began: up to `min_speech_ms`
            // of speech plus `silence_ms` of pauses inside the burst, a 16 ms frame, from
            // a block of at most 100 ms. Never more than a segment: the memory bound.
            start_lookback: (ms(ctx.vad.min_speech_ms) + ms(ctx.vad.silence_ms) + ms(116))
                .min(max_segment),
        };
        Self {
            pool,
            owner: Owner {
                session: ctx.session_id,
                late: ctx.late.clone(),
                pending: Arc::new(Pending::default()),
            },
            segmenter: Segmenter::new(spans),
            flush_timeout: Duration::from_millis(settings.flush_timeout_ms),
            cuts: Vec::new(),
        }
    }

    /// Follows the VAD's boundaries among `events` (this block's, from the processors
    /// listed before this one).
    fn follow_vad(&mut self, events: &[ServerEvent]) {
        for event in events {
            if let ServerEvent::Vad { event, t_ms, .. } = event {
                let t = t_ms * SAMPLES_PER_MS;
                match event {
                    VadEventKind::SpeechStart => self.segmenter.start(t, &mut self.cuts),
                    VadEventKind::SpeechEnd => self.segmenter.end(t, &mut self.cuts),
                }
            }
        }
    }

    /// Queues what was cut.
    fn submit(&mut self) {
        let ended_at = Instant::now();
        for cut in self.cuts.drain(..) {
            let segment = Segment {
                t_ms: cut.start / SAMPLES_PER_MS,
                end_ms: cut.end / SAMPLES_PER_MS,
                samples: cut.samples,
                ended_at,
            };
            self.pool.submit(&self.owner, segment);
        }
    }
}

impl Processor for SttProcessor {
    fn process(&mut self, block: &AudioBlock, events: &mut Vec<ServerEvent>) {
        self.segmenter
            .push(block.start, &block.samples, &mut self.cuts);
        self.follow_vad(events);
        self.submit();
    }

    fn flush(&mut self, _end_sample: u64, events: &mut Vec<ServerEvent>) {
        self.follow_vad(events);
        self.segmenter.finish(&mut self.cuts);
        self.submit();
    }

    fn settled(&mut self) -> Option<Settled> {
        if self.owner.pending.count() == 0 {
            return None;
        }
        let pending = self.owner.pending.clone();
        let late = self.owner.late.clone();
        let timeout = self.flush_timeout;
        Some(Box::pin(async move {
            if let Err(left) = pending.wait(timeout).await {
                late.send(LateOutput::Problem(SessionError::TranscriptTimeout {
                    pending: left,
                    waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                }));
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{Encoding, InputFormat};
    use crate::processors::LateSink;
    use crate::settings::{LevelSettings, VadSettings};
    use std::sync::mpsc;
    use std::sync::Mutex;

    /// `flush` with a segment no thread will transcribe: the flush waits
    /// `stt.flush_timeout_ms`, then answers, and the client is told how many transcripts
    /// were still pending (`transcript_timeout`).
    #[test]
    fn a_flush_waits_for_pending_transcripts_at_most_the_timeout() {
        let pool = Arc::new(TranscriptionPool::unstarted(4));
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let ctx = ProcessorContext {
            session_id: uuid::Uuid::new_v4(),
            input: InputFormat {
                sample_rate: 16_000,
                channels: 1,
                encoding: Encoding::PcmS16le,
            },
            vad: VadSettings {
                threshold: 0.5,
                silence_ms: 500,
                min_speech_ms: 100,
            },
            level: LevelSettings { interval_ms: 100 },
            late: LateSink::new(move |out| {
                let _ = tx.lock().map(|t| t.send(out));
            }),
        };
        let settings = SttSettings {
            library: String::new(),
            model_dir: String::new(),
            threads: 1,
            max_queued_segments: 4,
            max_segment_s: 10,
            pre_roll_ms: 200,
            post_roll_ms: 200,
            flush_timeout_ms: 150,
        };
        let mut stt = SttProcessor::new(pool, &settings, &ctx);
        assert!(
            stt.settled().is_none(),
            "nothing pending: nothing to wait for"
        );
        let block = AudioBlock {
            samples: vec![0.1; 1600].into(),
            start: 0,
            received: None,
        };
        let mut events = vec![ServerEvent::Vad {
            event: VadEventKind::SpeechStart,
            t_ms: 20,
            duration_ms: None,
        }];
        stt.process(&block, &mut events);
        let mut events = vec![ServerEvent::Vad {
            event: VadEventKind::SpeechEnd,
            t_ms: 90,
            duration_ms: Some(70),
        }];
        stt.flush(1600, &mut events);
        let settled = stt.settled().expect("a segment is pending");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(settled);
        match rx.try_recv() {
            Ok(LateOutput::Problem(SessionError::TranscriptTimeout {
                pending: 1,
                waited_ms: 150,
            })) => {}
            other => panic!("expected transcript_timeout, got {other:?}"),
        }
    }
}
