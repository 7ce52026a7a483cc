//! One simulated client: connect, stream the shared recording at real time, ping, read
//! events, and at the end `stop` and wait for `session.closed`. With `--drop-every` it also
//! cuts its connection now and then (an abort: no close frame) and resumes the session,
//! resending the audio from the server's `input_frames`.
//!
//! A session is one tokio task. Its writer (audio and pings) and its reader (events) are two
//! futures polled by that task, so the reader keeps reading while a send waits for TCP
//! (backpressure) and neither needs a lock but the tiny one on the send ring. Nothing the
//! server sends can make a session panic; whatever happens ends up as an [`Outcome`].
//! The writer is in `write`, the reader in `read`; this file runs a session across its
//! connections (connect, retry, cut, resume) and stops it.

use crate::audio::Recording;
use crate::connect::{connect, cut, socket_handle, Started, Ws};
use crate::latency::{Attribution, SendRing};
use crate::metrics::{Metrics, Outcome};
use crate::resume::{next_cut, reconnect, ResumeOffer};
use crate::retry;
use futures_util::{SinkExt, StreamExt};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

mod read;
mod write;

use read::{read_events, ReadEnd, ReadState};
use write::{write_audio, WriteState};

type WsSink = futures_util::stream::SplitSink<Ws, Message>;
type WsStream = futures_util::stream::SplitStream<Ws>;

/// Longest wait for `session.started` after the upgrade, and for `session.closed` after
/// `stop`.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the close handshake after `session.closed`, and for the reader to say
/// why a send failed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything sessions share, read-only.
pub struct Plan {
    /// The full stream URL (`ws://host:port/v1/stream?sample_rate=...`).
    pub url: String,
    /// The stream URLs without a query that sessions resume through
    /// (`ws://host:port/v1/stream`): the server's, and with `--resume-url` a second node's.
    /// Each resume goes to the next one after the URL the session is on.
    pub resume_paths: Vec<String>,
    /// `Authorization` header value (`Bearer ...`), if a token was given.
    pub auth: Option<HeaderValue>,
    /// The audio, pre-encoded.
    pub recording: Recording,
    /// Input frames per second (for pacing).
    pub rate: u32,
    /// How event `t_ms` maps to chunks.
    pub attribution: Attribution,
    /// Interval between `ping` messages.
    pub ping_every: Duration,
    /// Send instants remembered per session, in chunks.
    pub ring_chunks: usize,
    /// `--drop-every`: the mean interval between cuts of each session's connection; also
    /// turns resuming after a loss on.
    pub drop_every: Option<Duration>,
    /// `--retry`: refused attempts (503, 429) and connect errors are tried again until the
    /// step ends.
    pub retry: bool,
}

impl Plan {
    /// When chunk `k` is due, relative to the first chunk: `k * frames_per_chunk / rate` s,
    /// computed from `k` each time so that the schedule never drifts.
    fn due(&self, k: u64) -> Duration {
        let frames = u128::from(k) * u128::from(self.recording.frames_per_chunk);
        let nanos = frames * 1_000_000_000 / u128::from(self.rate.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// The orchestrator's word to the sessions: `None` while they should stream, then
/// `Some(deadline)`: send `stop` now and be done (`session.closed` received) by `deadline`.
pub type StopSignal = watch::Receiver<Option<Instant>>;

/// Runs one session from its connect turn (`start_at`) to its end and records it in
/// `metrics`. Sends one message on `settled` once it is connected or has failed to. With
/// `--retry`, a session that fails after admission is recorded and replaced by a new one
/// (connecting at once) until the step stops, so that the load offered stays the same.
pub async fn run(
    plan: Arc<Plan>,
    metrics: Arc<Metrics>,
    start_at: Instant,
    stop: StopSignal,
    settled: mpsc::UnboundedSender<()>,
) {
    let mut settled = Some(settled);
    let mut start_at = start_at;
    loop {
        let state = SessionState::new(plan.ring_chunks);
        let outcome = session(
            &plan,
            &metrics,
            &state,
            start_at,
            stop.clone(),
            &mut settled,
        )
        .await;
        let position = state.ring().sent();
        let missing = position >= plan.recording.chunks.len() as u64
            && state.speech_starts.load(Relaxed) == 0
            && matches!(outcome, Outcome::Completed | Outcome::NoSessionClosed);
        metrics.seqs(
            state.seq_gaps.load(Relaxed),
            state.seq_duplicates.load(Relaxed),
        );
        metrics.finished(
            &outcome,
            state.chunks_sent.load(Relaxed),
            missing,
            state.dropped.load(Relaxed),
        );
        let failed_after_admission = matches!(
            outcome,
            Outcome::UnexpectedClose(_) | Outcome::FatalError(_) | Outcome::ResumeFailed(_)
        );
        if !(plan.retry && failed_after_admission) || stop.borrow().is_some() {
            return;
        }
        start_at = Instant::now();
    }
}

/// What the writer and the reader of one session share, and what survives a session cut off
/// at the stop deadline.
struct SessionState {
    /// Send instants by chunk index (the audio position: rewound on a resume).
    ring: Mutex<SendRing>,
    /// Binary frames sent, resends included.
    chunks_sent: AtomicU64,
    /// Set just before `stop` is sent: a `session.closed` after it is the expected end.
    stop_sent: AtomicBool,
    speech_starts: AtomicU64,
    /// `stats.chunks_dropped` of `session.closed`.
    dropped: AtomicU64,
    /// Code of a fatal error event, if one came.
    fatal: Mutex<Option<String>>,
    /// Seqs that never arrived, and seqs received again.
    seq_gaps: AtomicU64,
    seq_duplicates: AtomicU64,
}

impl SessionState {
    fn new(ring_chunks: usize) -> Self {
        SessionState {
            ring: Mutex::new(SendRing::new(ring_chunks)),
            chunks_sent: AtomicU64::new(0),
            stop_sent: AtomicBool::new(false),
            speech_starts: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            fatal: Mutex::new(None),
            seq_gaps: AtomicU64::new(0),
            seq_duplicates: AtomicU64::new(0),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, SendRing> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fatal_code(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }
}

async fn session(
    plan: &Plan,
    metrics: &Metrics,
    state: &SessionState,
    start_at: Instant,
    mut stop: StopSignal,
    settled: &mut Option<mpsc::UnboundedSender<()>>,
) -> Outcome {
    tokio::select! {
        _ = sleep_until(start_at) => {}
        _ = stop_requested(&mut stop) => {
            if let Some(settled) = settled.take() {
                let _ = settled.send(());
            }
            return Outcome::NotStarted;
        }
    }
    // Connect errors in a row, for their backoff; a refusal resets it (the server answered).
    let mut connect_errors: u32 = 0;
    let (ws, started) = loop {
        let begin = Instant::now();
        let connected = connect(&plan.url, plan.auth.as_ref()).await;
        if connected.is_ok() {
            metrics.connected(begin.elapsed());
        }
        // The orchestrator waits for every session's first attempt, not for admission.
        if let Some(settled) = settled.take() {
            let _ = settled.send(());
        }
        let delay = match connected {
            Ok(connected) => break connected,
            Err(Outcome::Refused {
                status,
                code,
                retry_after_s,
            }) if plan.retry && (status == 503 || status == 429) => {
                metrics.refused_attempt(status, &code);
                connect_errors = 0;
                retry::after_refusal(retry_after_s)
            }
            Err(Outcome::ConnectError(_)) if plan.retry => {
                metrics.connect_error_retried();
                connect_errors = connect_errors.saturating_add(1);
                retry::after_connect_error(connect_errors - 1)
            }
            Err(outcome) => return outcome,
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_requested(&mut stop) => return Outcome::NotAdmitted,
        }
    };
    metrics.stream_began(std::time::Instant::now());
    let exchange = exchange(ws, &started, plan, metrics, state, stop.clone());
    let outcome = tokio::select! {
        outcome = exchange => outcome,
        _ = past_deadline(stop) => match state.fatal_code() {
            Some(code) => Outcome::FatalError(code),
            None => Outcome::NoSessionClosed,
        },
    };
    metrics.stream_ended(std::time::Instant::now());
    outcome
}

/// How one connection of a session ended.
enum ConnEnd {
    /// The session is over.
    Done(Outcome),
    /// Cut on purpose (`--drop-every`).
    Cut,
    /// Lost without `session.closed` (resumable).
    Lost(String),
}

/// Streams until told to stop, then sends `stop` and reads up to `session.closed`; with
/// `--drop-every`, cuts and resumes the connection along the way.
async fn exchange(
    ws: Ws,
    started: &Started,
    plan: &Plan,
    metrics: &Metrics,
    state: &SessionState,
    stop: StopSignal,
) -> Outcome {
    let epoch = Instant::now();
    let offer = started
        .resume
        .as_ref()
        .filter(|(_, window_s)| *window_s > 0 && plan.drop_every.is_some())
        .map(|(token, window_s)| ResumeOffer {
            session_id: started.session_id.clone(),
            token: token.clone(),
            window: Duration::from_secs(*window_s),
        });
    let mut reader = ReadState {
        last_seq: started.seq,
        replayed_until: started.seq,
        resume_from: None,
    };
    let mut writer = WriteState {
        first: epoch,
        k: 0,
        skip_frames: 0,
        next_ping: epoch + plan.ping_every,
    };
    let mut ws = ws;
    // Which of `plan.resume_paths` the session is connected through.
    let mut via = 0;
    loop {
        // Cut only when the session can be resumed (the server offers it).
        let cut_after = plan.drop_every.filter(|_| offer.is_some()).map(next_cut);
        let end = connection(
            ws,
            cut_after,
            plan,
            metrics,
            state,
            &mut reader,
            &mut writer,
            epoch,
            stop.clone(),
        )
        .await;
        let lost_at = Instant::now();
        let why = match end {
            ConnEnd::Done(outcome) => return outcome,
            ConnEnd::Cut => {
                metrics.cut();
                "cut".to_string()
            }
            ConnEnd::Lost(why) => why,
        };
        let Some(offer) = &offer else {
            return Outcome::UnexpectedClose(why);
        };
        via = (via + 1) % plan.resume_paths.len().max(1);
        let resumed = reconnect(
            plan.resume_paths.get(via).map_or("", String::as_str),
            plan.auth.as_ref(),
            plan.rate,
            offer,
            reader.last_seq,
            lost_at,
        )
        .await;
        let (new_ws, resumed) = match resumed {
            Ok(r) => r,
            Err(e) => {
                metrics.resume_failed();
                return Outcome::ResumeFailed(format!("after {why}: {e}"));
            }
        };
        if let Some(seq) = resumed.rewound_to {
            // What the client holds after `seq` is produced again from the resent audio.
            reader.last_seq = reader.last_seq.min(seq);
        }
        if resumed.replayed == 0 {
            metrics.resumed(lost_at.elapsed());
        } else {
            reader.resume_from = Some(lost_at);
        }
        reader.replayed_until = reader.last_seq + resumed.replayed;
        // The audio continues from what the server accepted.
        let per_chunk = plan.recording.frames_per_chunk.max(1);
        writer.k = resumed.input_frames / per_chunk;
        writer.skip_frames = resumed.input_frames % per_chunk;
        state.ring().rewind(writer.k);
        ws = new_ws;
    }
}

/// One connection: the writer and the reader until the session ends, the connection is lost,
/// or `cut_after` (from now) passes while streaming. `stop` is sent when the orchestrator
/// says so.
#[allow(clippy::too_many_arguments)]
async fn connection(
    ws: Ws,
    cut_after: Option<Duration>,
    plan: &Plan,
    metrics: &Metrics,
    state: &SessionState,
    reader_state: &mut ReadState,
    writer_state: &mut WriteState,
    epoch: Instant,
    stop: StopSignal,
) -> ConnEnd {
    // A second handle on the socket, to abort it (no close frame) when the cut is due.
    let socket: Option<OwnedFd> = cut_after.and_then(|_| socket_handle(&ws));
    let cut_at = cut_after.map(|d| Instant::now() + d);
    let (sink, stream) = ws.split();
    let reader = read_events(stream, plan, metrics, state, reader_state, epoch);
    let writer = write_audio(sink, plan, state, writer_state, epoch, stop);
    tokio::pin!(reader, writer);
    let ended = tokio::select! {
        ended = &mut reader => ended,
        _ = sleep_until(cut_at.unwrap_or_else(Instant::now)), if socket.is_some() => {
            if let Some(socket) = &socket {
                cut(socket);
            }
            // Returning drops the WebSocket and then `socket`: the last handle closes, RST.
            return ConnEnd::Cut;
        }
        (mut sink, written) = &mut writer => match written {
            Ok(()) => {
                state.stop_sent.store(true, Relaxed);
                if let Err(e) = sink.send(stop_message()).await {
                    // The reader may still know better why (a close frame already read).
                    timeout(DRAIN_TIMEOUT, &mut reader)
                        .await
                        .unwrap_or(ReadEnd::Broken(format!("cannot send stop: {e}"), true))
                } else {
                    let ended = reader.await;
                    let _ = timeout(DRAIN_TIMEOUT, sink.close()).await;
                    ended
                }
            }
            Err(e) => timeout(DRAIN_TIMEOUT, &mut reader)
                .await
                .unwrap_or(ReadEnd::Broken(e, true)),
        },
    };
    if let Some(code) = state.fatal_code() {
        return ConnEnd::Done(Outcome::FatalError(code));
    }
    match ended {
        ReadEnd::Closed(reason) if reason == "client_stop" && state.stop_sent.load(Relaxed) => {
            ConnEnd::Done(Outcome::Completed)
        }
        ReadEnd::Closed(reason) => ConnEnd::Done(Outcome::UnexpectedClose(format!(
            "session.closed with reason {reason}"
        ))),
        ReadEnd::Broken(e, true) => ConnEnd::Lost(e),
        ReadEnd::Broken(e, false) => ConnEnd::Done(Outcome::UnexpectedClose(e)),
    }
}

/// Resolves once the orchestrator has asked to stop.
async fn stop_requested(stop: &mut StopSignal) {
    loop {
        if stop.borrow_and_update().is_some() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Resolves at the stop deadline (never, if the orchestrator went away without one).
async fn past_deadline(mut stop: StopSignal) {
    loop {
        let deadline = *stop.borrow_and_update();
        if let Some(deadline) = deadline {
            sleep_until(deadline).await;
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The control message that ends a session.
pub(crate) fn stop_message() -> Message {
    Message::text(r#"{"type":"stop"}"#)
}

/// ` (close code N: reason)`, or nothing without a close frame.
pub(crate) fn close_detail(frame: Option<&tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) if f.reason.is_empty() => format!(" (close code {})", u16::from(f.code)),
        Some(f) => format!(" (close code {}: {})", u16::from(f.code), f.reason),
        None => String::new(),
    }
}
