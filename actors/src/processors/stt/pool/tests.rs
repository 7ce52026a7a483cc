//! The pool against the real model: a library error, overflow, pending counts.

use super::*;
use std::sync::mpsc;

fn model_paths() -> (std::path::PathBuf, std::path::PathBuf) {
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/moonshine-tiny-en/moonshine_voice");
    assert!(
        root.join("libmoonshine.so").exists(),
        "no speech model at {}: run scripts/fetch-models",
        root.display()
    );
    (root.join("libmoonshine.so"), root.join("assets/tiny-en"))
}

fn owner() -> (Owner, mpsc::Receiver<LateOutput>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let late = LateSink::new(move |out| {
        let _ = tx.lock().map(|t| t.send(out));
    });
    let owner = Owner {
        session: Uuid::new_v4(),
        late,
        pending: Arc::new(Pending::default()),
    };
    (owner, rx)
}

fn metrics() -> SttMetrics {
    SttMetrics::registered(&mut prometheus_client::registry::Registry::default())
}

/// A real library error on one segment (the library refuses the rate it is given) is
/// counted and reported to that session as `transcription_failed`, and the same
/// transcriber goes on to transcribe the next segment.
#[test]
fn a_library_error_is_reported_and_the_next_segment_transcribed() {
    let (library, model) = model_paths();
    let library = SpeechLibrary::open(&library).expect("library");
    let pool = TranscriptionPool::start(&library, &model, 1, 4, metrics()).expect("pool");
    let mut transcriber = library.transcriber(&model).expect("model");
    let (owner, rx) = owner();
    let tone = |t_ms| Segment {
        t_ms,
        end_ms: t_ms + 1000,
        samples: (0..16_000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect(),
        ended_at: Instant::now(),
    };
    transcribe(&pool.shared, &owner, &tone(0), |s| {
        transcriber.transcribe_at_rate(s, -1)
    });
    match rx.try_recv() {
        Ok(LateOutput::Problem(SessionError::TranscriptionFailed {
            t_ms: 0,
            end_ms: 1000,
        })) => {}
        other => panic!("expected transcription_failed, got {other:?}"),
    }
    assert_eq!(pool.snapshot().segments_failed, 1);
    transcribe(&pool.shared, &owner, &tone(2000), |s| {
        transcriber.transcribe(s)
    });
    assert!(!matches!(rx.try_recv(), Ok(LateOutput::Problem(_))));
    let s = pool.snapshot();
    assert_eq!(s.segments_failed, 1);
    assert_eq!(s.segments_transcribed + s.segments_empty, 1);
}

/// More segments than the queue holds, with no thread taking them: the oldest waiting
/// ones are dropped and reported to their session (`transcript_dropped` with their
/// times), the newest wait; a pool going away lets the waiting ones go, and the
/// session's pending count settles to zero.
#[test]
fn overflow_drops_the_oldest_and_pending_settles() {
    let pool = TranscriptionPool::unstarted(2);
    let (owner, rx) = owner();
    for i in 0..20 {
        let segment = Segment {
            t_ms: i * 1000,
            end_ms: i * 1000 + 500,
            samples: vec![0.0; 8000],
            ended_at: Instant::now(),
        };
        pool.submit(&owner, segment);
    }
    let dropped: Vec<_> = rx
        .try_iter()
        .map(|o| match o {
            LateOutput::Problem(SessionError::TranscriptDropped { t_ms, end_ms }) => (t_ms, end_ms),
            other => panic!("expected transcript_dropped, got {other:?}"),
        })
        .collect();
    let expected: Vec<_> = (0..18).map(|i| (i * 1000, i * 1000 + 500)).collect();
    assert_eq!(dropped, expected, "the oldest, in order");
    let s = pool.snapshot();
    assert_eq!((s.segments_dropped, s.queue_depth), (18, 2));
    assert_eq!(owner.pending.count(), 2);
    drop(pool);
    assert_eq!(owner.pending.count(), 0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(owner.pending.wait(Duration::from_secs(60)))
        .expect("settled");
}
