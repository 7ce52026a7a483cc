//! A session's reader: server events, counted and timed.

use super::{close_detail, Plan, SessionState, WsStream, DRAIN_TIMEOUT};
use crate::latency::VadEvent;
use crate::metrics::Metrics;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Prefix of the frequent `level` events of servers before `seq`, skipped without parsing.
const LEVEL_PREFIX: &str = r#"{"type":"level""#;
/// Close code of a connection whose session another connection took over: not resumed.
const CLOSE_TAKEN_OVER: u16 = 4002;

/// The fields of server events that the load generator looks at; everything else is
/// ignored.
#[derive(Deserialize)]
struct ServerEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(default)]
    t_ms: Option<u64>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default)]
    fatal: Option<bool>,
    #[serde(default, borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(default)]
    stats: Option<Value>,
}

/// The reader's state across the connections of one session.
pub(super) struct ReadState {
    /// The highest seq received (`session.started` is 0).
    pub(super) last_seq: u64,
    /// Seqs up to this one are replayed after a resume: their latency (events, pongs)
    /// includes the outage and is not measured.
    pub(super) replayed_until: u64,
    /// When the connection was lost, until the first replayed event after the resume.
    pub(super) resume_from: Option<Instant>,
}

/// How the reader stopped.
pub(super) enum ReadEnd {
    /// `session.closed` with this reason.
    Closed(String),
    /// The connection ended without `session.closed`; whether the session may be resumed
    /// (not when another connection took it over).
    Broken(String, bool),
}

/// The `seq` of a frequent `level` event, read without parsing the rest (the server writes
/// `seq` first, then `type`); `None` for any other message.
fn level_seq(text: &str) -> Option<u64> {
    let rest = text.strip_prefix(r#"{"seq":"#)?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    let (digits, after) = rest.split_at(end);
    if after.starts_with(r#","type":"level""#) {
        digits.parse().ok()
    } else {
        None
    }
}

/// Reads server events until `session.closed` or the end of the connection, counting each
/// seq once (and gaps and duplicates), recording ping round trips, VAD event latencies,
/// resume latency, error events and the session's final counters.
pub(super) async fn read_events(
    mut stream: WsStream,
    plan: &Plan,
    metrics: &Metrics,
    state: &SessionState,
    rs: &mut ReadState,
    epoch: Instant,
) -> ReadEnd {
    loop {
        let text = match stream.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let resumable = frame
                    .as_ref()
                    .is_none_or(|f| u16::from(f.code) != CLOSE_TAKEN_OVER);
                return ReadEnd::Broken(
                    format!(
                        "the server closed the connection without session.closed{}",
                        close_detail(frame.as_ref())
                    ),
                    resumable,
                );
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return ReadEnd::Broken(format!("connection lost: {e}"), true),
            None => {
                return ReadEnd::Broken("connection closed without session.closed".into(), true)
            }
        };
        let now = Instant::now();
        let level = level_seq(text.as_str());
        let parsed = if level.is_some() || text.as_str().starts_with(LEVEL_PREFIX) {
            None
        } else {
            serde_json::from_str::<ServerEvent>(text.as_str()).ok()
        };
        let seq = level.or_else(|| parsed.as_ref().and_then(|ev| ev.seq));
        let mut replayed = false;
        if let Some(seq) = seq {
            if seq <= rs.last_seq {
                state.seq_duplicates.fetch_add(1, Relaxed);
                continue;
            }
            state.seq_gaps.fetch_add(seq - rs.last_seq - 1, Relaxed);
            rs.last_seq = seq;
            replayed = seq <= rs.replayed_until;
            if let Some(lost_at) = rs.resume_from.take() {
                metrics.resumed(now - lost_at);
            }
        }
        let Some(ev) = parsed else { continue };
        match ev.kind.as_ref() {
            "vad" => {
                let kind = match ev.event.as_deref() {
                    Some("speech_start") => VadEvent::SpeechStart,
                    Some("speech_end") => VadEvent::SpeechEnd,
                    _ => continue,
                };
                if kind == VadEvent::SpeechStart {
                    state.speech_starts.fetch_add(1, Relaxed);
                }
                let Some(t_ms) = ev.t_ms else { continue };
                if replayed {
                    continue; // its latency includes the outage
                }
                let index = plan.attribution.chunk_index(kind, t_ms);
                let sent = state.ring().get(index);
                let latency = sent.map(|s| now.into_std().saturating_duration_since(s));
                metrics.event(now.into_std(), latency);
            }
            "pong" if !replayed => {
                if let Some(us) = ev.id.as_ref().and_then(Value::as_u64) {
                    let sent = epoch + Duration::from_micros(us);
                    if sent <= now {
                        metrics.ping(now.into_std(), now - sent);
                    }
                }
            }
            "error" => {
                let code = ev.code.as_deref().unwrap_or("?");
                metrics.error_event(code);
                if ev.fatal == Some(true) {
                    if let Ok(mut fatal) = state.fatal.lock() {
                        fatal.get_or_insert_with(|| code.to_owned());
                    }
                }
            }
            "session.closed" => {
                let dropped = ev
                    .stats
                    .as_ref()
                    .and_then(|s| s.get("chunks_dropped"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                state.dropped.store(dropped, Relaxed);
                let reason = ev.reason.as_deref().unwrap_or("?").to_owned();
                // Let the close handshake finish (tungstenite answers the close frame).
                let drain = async {
                    while let Some(Ok(m)) = stream.next().await {
                        if m.is_close() {
                            break;
                        }
                    }
                };
                let _ = timeout(DRAIN_TIMEOUT, drain).await;
                return ReadEnd::Closed(reason);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_seq_is_read_without_parsing() {
        assert_eq!(
            level_seq(r#"{"seq":42,"type":"level","t_ms":100,"rms_dbfs":-20.5}"#),
            Some(42)
        );
        assert_eq!(level_seq(r#"{"seq":7,"type":"vad","t_ms":100}"#), None);
        assert_eq!(level_seq(r#"{"type":"level","t_ms":100}"#), None);
    }
}
