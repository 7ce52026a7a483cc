//! What all sessions of one step record: latency histograms (microseconds) and counters.
//!
//! One mutex for the whole step: sessions take it for a ping reply, a VAD event, an error
//! event or their end, a few times per second each, so it is never contended enough to
//! matter. Ping and event latencies count only when they arrive inside the measured window
//! (after the warm-up, before the stop); connect times and counters cover the whole step.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `stop` sent, `session.closed` with reason `client_stop` received.
    Completed,
    /// Refused before the upgrade: HTTP status, the error code of the body (or `-`) and
    /// the `Retry-After` header, seconds, when there was one.
    Refused {
        status: u16,
        code: String,
        retry_after_s: Option<u64>,
    },
    /// No TCP connection, no WebSocket, or no `session.started` in time.
    ConnectError(String),
    /// The server ended the session, or the connection broke, before the client stopped it.
    UnexpectedClose(String),
    /// The server sent an error event with `fatal: true` (its code).
    FatalError(String),
    /// `stop` sent but no `session.closed` before the deadline.
    NoSessionClosed,
    /// The connection was lost (or cut by `--drop-every`) and the session could not be
    /// resumed.
    ResumeFailed(String),
    /// The step ended before this session's turn to connect.
    NotStarted,
    /// `--retry`: every attempt was refused (each counted when it happened) until the step
    /// ended. Not a failure: refusing is what an overloaded server should do.
    NotAdmitted,
}

/// Counters of one step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Sessions that got `session.started`.
    pub sessions_started: u64,
    /// Sessions that ended with `session.closed` after `stop`.
    pub sessions_completed: u64,
    /// Sessions that did not complete: refused, connect error, unexpected close, fatal
    /// error, or no `session.closed` after `stop`.
    pub sessions_failed: u64,
    pub failed_refused: u64,
    pub failed_connect_error: u64,
    pub failed_unexpected_close: u64,
    pub failed_fatal_error: u64,
    pub failed_no_session_closed: u64,
    /// Sessions that ended because a resume failed (also counted in `resumes_failed`).
    pub failed_resume: u64,
    /// Sessions never admitted: refused (without `--retry`, once; with it, on every attempt
    /// until the step ended).
    pub sessions_refused: u64,
    /// Sessions that got `session.started` and then did not complete: closed unexpectedly,
    /// a fatal error, no `session.closed` after `stop`, or a failed resume.
    pub failed_after_admission: u64,
    /// Connection attempts refused with an HTTP status (with `--retry`, every attempt).
    pub refused_attempts: u64,
    /// `--retry`: attempts that failed without an HTTP refusal (no TCP connection, no
    /// upgrade or no `session.started` in time) and were tried again.
    pub connect_errors_retried: u64,
    /// Refusals by HTTP status (`"429"`), per attempt.
    pub refusals_by_status: BTreeMap<String, u64>,
    /// Refusals by the error code in the body (`"too_many_sessions"`), per attempt.
    pub refusals_by_code: BTreeMap<String, u64>,
    /// Error events (fatal or not) by code.
    pub error_events_by_code: BTreeMap<String, u64>,
    /// Sessions that streamed at least one whole loop of the recording but never got a
    /// `speech_start`.
    pub missing_speech_sessions: u64,
    /// Sum of `stats.chunks_dropped` over the `session.closed` events received.
    pub chunks_dropped: u64,
    /// Binary frames sent by all sessions.
    pub chunks_sent: u64,
    /// VAD events received in the window whose chunk was no longer (or never) in the send
    /// ring: the server was more than the ring's span behind.
    pub events_unattributed: u64,
    /// Connections cut on purpose (`--drop-every`): abort, no close frame.
    pub cuts: u64,
    /// Sessions resumed after a cut or a loss (`session.resumed` received).
    pub resumes: u64,
    /// Resumes that failed: refused, or not done within the session's resume window.
    pub resumes_failed: u64,
    /// Event seqs that never arrived (after de-duplication, a jump past the last seq + 1).
    pub seq_gaps: u64,
    /// Events received again with a seq already seen (ignored; the server replays only seqs
    /// above the client's `last_seq`, so any is a server defect).
    pub seq_duplicates: u64,
    /// A few distinct failure messages, for the reader of a failed run.
    pub failure_examples: Vec<String>,
}

/// Distinct failure messages kept per step.
const MAX_FAILURE_EXAMPLES: usize = 5;

/// Percentiles of one histogram, milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What a step measured.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// TCP connect plus upgrade until `session.started`.
    pub connect: Option<Latency>,
    /// `ping` sent to `pong` received.
    pub ping: Option<Latency>,
    /// Deciding chunk sent to VAD event received (see `latency.rs`).
    pub event: Option<Latency>,
    /// Connection cut to the first replayed event (or to `session.resumed` when nothing was
    /// replayed).
    pub resume: Option<Latency>,
    /// Sessions streaming (admitted, not yet ended) at the start and the end of the
    /// measured window, and their time-weighted mean over it (`None` before the window
    /// closed).
    pub streaming_at_start: u64,
    pub streaming_at_end: u64,
    pub streaming_mean: Option<f64>,
    pub counts: Counts,
}

struct Inner {
    window_start: Option<Instant>,
    window_end: Option<Instant>,
    connect: Histogram<u64>,
    ping: Histogram<u64>,
    event: Histogram<u64>,
    resume: Histogram<u64>,
    counts: Counts,
    streaming: Streaming,
}

/// How many sessions stream at once, integrated over time, so that per-session figures
/// divide by the sessions that were really there during the window.
#[derive(Default)]
struct Streaming {
    /// Sessions streaming now.
    now: u64,
    /// Since when `now` has held.
    since: Option<Instant>,
    /// Session-seconds accumulated up to `since`.
    area: f64,
    /// `(now, area)` when the window opened and closed.
    at_start: Option<(u64, f64)>,
    at_end: Option<(u64, f64)>,
}

impl Streaming {
    /// Session-seconds up to `at`.
    fn area_at(&self, at: Instant) -> f64 {
        let held = self
            .since
            .map_or(0.0, |s| at.saturating_duration_since(s).as_secs_f64());
        self.area + self.now as f64 * held
    }

    fn change(&mut self, at: Instant, up: bool) {
        self.area = self.area_at(at);
        self.since = Some(at);
        self.now = if up {
            self.now + 1
        } else {
            self.now.saturating_sub(1)
        };
    }
}

/// The shared recorder of one step.
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour at 3 significant digits; larger values saturate.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Mutex::new(Inner {
                window_start: None,
                window_end: None,
                connect: histogram(),
                ping: histogram(),
                event: histogram(),
                resume: histogram(),
                counts: Counts::default(),
                streaming: Streaming::default(),
            }),
        }
    }
}

impl Inner {
    fn in_window(&self, at: Instant) -> bool {
        self.window_start.is_some_and(|s| at >= s) && self.window_end.is_none_or(|e| at < e)
    }
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the counters inconsistent enough to
        // matter for a report.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the measured window at `at`.
    pub fn start_window(&self, at: Instant) {
        let mut m = self.lock();
        m.window_start = Some(at);
        m.streaming.at_start = Some((m.streaming.now, m.streaming.area_at(at)));
    }

    /// Closes the measured window at `at`.
    pub fn end_window(&self, at: Instant) {
        let mut m = self.lock();
        m.window_end = Some(at);
        m.streaming.at_end = Some((m.streaming.now, m.streaming.area_at(at)));
    }

    /// A session began to stream (got `session.started`) at `at`.
    pub fn stream_began(&self, at: Instant) {
        self.lock().streaming.change(at, true);
    }

    /// A session that streamed ended (however) at `at`.
    pub fn stream_ended(&self, at: Instant) {
        self.lock().streaming.change(at, false);
    }

    /// `--retry`: an attempt refused with `status` and `code`, to be tried again.
    pub fn refused_attempt(&self, status: u16, code: &str) {
        let mut m = self.lock();
        count_refusal(&mut m.counts, status, code);
    }

    /// `--retry`: an attempt that failed without a refusal, to be tried again.
    pub fn connect_error_retried(&self) {
        self.lock().counts.connect_errors_retried += 1;
    }

    /// A session got `session.started` `elapsed` after it began to connect.
    pub fn connected(&self, elapsed: Duration) {
        let mut m = self.lock();
        m.connect.saturating_record(micros(elapsed));
        m.counts.sessions_started += 1;
    }

    /// A pong for a ping sent `rtt` before `at`.
    pub fn ping(&self, at: Instant, rtt: Duration) {
        let mut m = self.lock();
        if m.in_window(at) {
            m.ping.saturating_record(micros(rtt));
        }
    }

    /// A VAD event received at `at`, `latency` after its deciding chunk was sent (`None`:
    /// that chunk is no longer known).
    pub fn event(&self, at: Instant, latency: Option<Duration>) {
        let mut m = self.lock();
        if m.in_window(at) {
            match latency {
                Some(l) => m.event.saturating_record(micros(l)),
                None => m.counts.events_unattributed += 1,
            }
        }
    }

    /// A connection cut on purpose.
    pub fn cut(&self) {
        self.lock().counts.cuts += 1;
    }

    /// A session resumed, `latency` after its connection was cut or lost (to its first
    /// replayed event, or to `session.resumed` when nothing was replayed). Counted over the
    /// whole step, like connect times.
    pub fn resumed(&self, latency: Duration) {
        let mut m = self.lock();
        m.resume.saturating_record(micros(latency));
        m.counts.resumes += 1;
    }

    /// A resume that failed.
    pub fn resume_failed(&self) {
        self.lock().counts.resumes_failed += 1;
    }

    /// Seqs missing after a resume (`gaps`) and events received again (`duplicates`).
    pub fn seqs(&self, gaps: u64, duplicates: u64) {
        let mut m = self.lock();
        m.counts.seq_gaps += gaps;
        m.counts.seq_duplicates += duplicates;
    }

    /// An `error` event with `code`.
    pub fn error_event(&self, code: &str) {
        *self
            .lock()
            .counts
            .error_events_by_code
            .entry(code.to_owned())
            .or_default() += 1;
    }

    /// A session is over: how it ended, chunks it sent, whether it streamed a whole loop
    /// without any `speech_start`, and `chunks_dropped` from its `session.closed`.
    pub fn finished(
        &self,
        outcome: &Outcome,
        chunks_sent: u64,
        missing_speech: bool,
        dropped: u64,
    ) {
        let mut m = self.lock();
        let c = &mut m.counts;
        c.chunks_sent += chunks_sent;
        c.chunks_dropped += dropped;
        c.missing_speech_sessions += u64::from(missing_speech);
        let message = match outcome {
            Outcome::Completed => {
                c.sessions_completed += 1;
                return;
            }
            Outcome::NotStarted => return,
            Outcome::NotAdmitted => {
                c.sessions_refused += 1;
                return;
            }
            Outcome::Refused { status, code, .. } => {
                c.failed_refused += 1;
                c.sessions_refused += 1;
                count_refusal(c, *status, code);
                format!("refused: HTTP {status} {code}")
            }
            Outcome::ConnectError(e) => {
                c.failed_connect_error += 1;
                format!("connect error: {e}")
            }
            Outcome::UnexpectedClose(e) => {
                c.failed_unexpected_close += 1;
                c.failed_after_admission += 1;
                format!("unexpected close: {e}")
            }
            Outcome::FatalError(code) => {
                c.failed_fatal_error += 1;
                c.failed_after_admission += 1;
                format!("fatal error event: {code}")
            }
            Outcome::NoSessionClosed => {
                c.failed_no_session_closed += 1;
                c.failed_after_admission += 1;
                "no session.closed after stop".to_string()
            }
            Outcome::ResumeFailed(e) => {
                c.failed_resume += 1;
                c.failed_after_admission += 1;
                format!("resume failed: {e}")
            }
        };
        c.sessions_failed += 1;
        if c.failure_examples.len() < MAX_FAILURE_EXAMPLES && !c.failure_examples.contains(&message)
        {
            c.failure_examples.push(message);
        }
    }

    /// The step's figures so far.
    pub fn snapshot(&self) -> Snapshot {
        let m = self.lock();
        let st = &m.streaming;
        let streaming_mean = match (m.window_start, m.window_end, st.at_start, st.at_end) {
            (Some(s), Some(e), Some((_, a0)), Some((_, a1))) => {
                let len = e.saturating_duration_since(s).as_secs_f64();
                (len > 0.0).then(|| (a1 - a0) / len)
            }
            _ => None,
        };
        Snapshot {
            connect: latency(&m.connect),
            ping: latency(&m.ping),
            event: latency(&m.event),
            resume: latency(&m.resume),
            streaming_at_start: st.at_start.map_or(0, |(n, _)| n),
            streaming_at_end: st.at_end.map_or(0, |(n, _)| n),
            streaming_mean,
            counts: m.counts.clone(),
        }
    }
}

fn count_refusal(c: &mut Counts, status: u16, code: &str) {
    c.refused_attempts += 1;
    *c.refusals_by_status.entry(status.to_string()).or_default() += 1;
    *c.refusals_by_code.entry(code.to_owned()).or_default() += 1;
}

fn latency(h: &Histogram<u64>) -> Option<Latency> {
    let ms = |us: u64| us as f64 / 1000.0;
    (!h.is_empty()).then(|| Latency {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_count_only_inside_the_window() {
        let m = Metrics::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        m.ping(t0, ms(1)); // before the window
        m.start_window(t0 + ms(10));
        m.ping(t0 + ms(10), ms(2));
        m.event(t0 + ms(20), Some(ms(30)));
        m.event(t0 + ms(20), None);
        m.end_window(t0 + ms(100));
        m.ping(t0 + ms(100), ms(500)); // after it
        let s = m.snapshot();
        let ping = s.ping.expect("one ping");
        assert_eq!(ping.count, 1);
        assert!((ping.max_ms - 2.0).abs() < 0.01);
        assert_eq!(s.event.map(|e| e.count), Some(1));
        assert_eq!(s.counts.events_unattributed, 1);
    }

    #[test]
    fn outcomes_are_counted() {
        let m = Metrics::default();
        m.finished(&Outcome::Completed, 10, false, 0);
        let refused = Outcome::Refused {
            status: 429,
            code: "too_many_sessions".into(),
            retry_after_s: None,
        };
        m.finished(&refused, 0, false, 0);
        m.finished(&refused, 0, false, 0);
        m.finished(&Outcome::FatalError("rate_limited".into()), 5, true, 2);
        let c = m.snapshot().counts;
        assert_eq!(c.sessions_completed, 1);
        assert_eq!(c.sessions_failed, 3);
        assert_eq!(c.refusals_by_status.get("429"), Some(&2));
        assert_eq!(c.failed_fatal_error, 1);
        assert_eq!(c.missing_speech_sessions, 1);
        assert_eq!(c.chunks_dropped, 2);
        assert_eq!(c.chunks_sent, 15);
        assert_eq!(c.failure_examples.len(), 2);
        assert_eq!(c.sessions_refused, 2);
        assert_eq!(c.failed_after_admission, 1);
    }

    #[test]
    fn retried_refusals_are_not_failures() {
        let m = Metrics::default();
        m.refused_attempt(503, "server_full");
        m.refused_attempt(503, "server_full");
        m.refused_attempt(503, "overloaded");
        m.finished(&Outcome::NotAdmitted, 0, false, 0);
        let c = m.snapshot().counts;
        assert_eq!(c.sessions_failed, 0);
        assert_eq!(c.sessions_refused, 1);
        assert_eq!(c.refused_attempts, 3);
        assert_eq!(c.refusals_by_code.get("server_full"), Some(&2));
        assert_eq!(c.refusals_by_status.get("503"), Some(&3));
    }

    #[test]
    fn streaming_sessions_are_averaged_over_the_window() {
        let m = Metrics::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        m.stream_began(t0);
        m.stream_began(t0);
        m.start_window(t0 + s(10));
        // Two for 5 s, three for 5 s: 25 session-seconds over 10 s.
        m.stream_began(t0 + s(15));
        m.end_window(t0 + s(20));
        m.stream_ended(t0 + s(21));
        let snap = m.snapshot();
        assert_eq!(snap.streaming_at_start, 2);
        assert_eq!(snap.streaming_at_end, 3);
        let mean = snap.streaming_mean.expect("a closed window");
        assert!((mean - 2.5).abs() < 1e-9, "{mean}");
    }
}
