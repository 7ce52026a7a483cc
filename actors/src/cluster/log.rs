//! A session's log read back from the stream: what a node taking the session over needs
//! (where the timeline stands, the next `seq`, the events a client may not have, and whether
//! a speech segment is open). A pure fold over the stream's messages, so it is tested
//! without NATS.

use super::records::Lifecycle;
use serde_json::Value;
use std::collections::VecDeque;

/// The timeline point and state a takeover starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeoverPoint {
    /// The holding node handed the session over: events are complete through
    /// `input_frames`, and the next message carries `next_seq`.
    HandedOver {
        /// The node that let it go.
        node: String,
        /// Input sample frames read and processed.
        input_frames: u64,
        /// The next message's `seq`.
        next_seq: u64,
    },
    /// The node was lost: the log is complete through `covered_ms` of audio (the end of the
    /// last logged event's audio) and its last message is `last_seq`.
    NodeLost {
        /// The end of the audio the logged events cover, ms on the input timeline.
        covered_ms: u64,
        /// The last logged `seq`; `None` if not even `session.started` is logged.
        last_seq: Option<u64>,
    },
}

/// What a session's messages in the stream say, folded in stream order.
#[derive(Debug, Clone)]
pub struct SessionLog {
    /// The most recent events, `(seq, text)` in `seq` order, at most `max_bytes` of text.
    pub recent: VecDeque<(u64, String)>,
    recent_bytes: usize,
    max_bytes: usize,
    /// The highest `seq` logged.
    pub last_seq: Option<u64>,
    /// The first `seq` read (0 when the whole log was).
    pub first_seq: Option<u64>,
    /// Whether a VAD event was read (else `open_segment_ms` says nothing of its own).
    pub vad_seen: bool,
    /// Whether an event placing the timeline (level, VAD, flushed, transcript) was read
    /// (else `covered_ms` says nothing of its own).
    pub positioned: bool,
    /// The end of the audio the logged events cover, ms on the input timeline.
    pub covered_ms: u64,
    /// `t_ms` of a `speech_start` with no `speech_end` after it.
    pub open_segment_ms: Option<u64>,
    /// The last handover, unless a takeover followed it.
    pub handed_over: Option<(String, u64, u64)>,
    /// A `closed` record: the session ended for good.
    pub closed: bool,
    /// Stream time of the newest message, Unix ms (0 if none).
    pub newest_ms: u64,
}

impl SessionLog {
    /// An empty log keeping at most `max_bytes` of recent event text.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            recent: VecDeque::new(),
            recent_bytes: 0,
            max_bytes,
            last_seq: None,
            first_seq: None,
            vad_seen: false,
            positioned: false,
            covered_ms: 0,
            open_segment_ms: None,
            handed_over: None,
            closed: false,
            newest_ms: 0,
        }
    }

    /// Takes one event message (the JSON the client got). Messages that do not parse or
    /// carry no `seq` are skipped; a `seq` already seen (a retried publish) is ignored.
    pub fn event(&mut self, text: &str) {
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let Some(seq) = value.get("seq").and_then(Value::as_u64) else {
            return;
        };
        if self.last_seq.is_some_and(|last| seq <= last) {
            return;
        }
        self.last_seq = Some(seq);
        self.first_seq.get_or_insert(seq);
        let field = |k: &str| value.get(k).and_then(Value::as_u64);
        let covered = match value.get("type").and_then(Value::as_str) {
            Some("level") => field("t_ms"),
            Some("vad") => {
                self.vad_seen = true;
                match value.get("event").and_then(Value::as_str) {
                    Some("speech_start") => self.open_segment_ms = field("t_ms"),
                    Some("speech_end") => self.open_segment_ms = None,
                    _ => {}
                }
                field("t_ms")
            }
            Some("flushed") => field("audio_ms"),
            Some("transcript") => field("end_ms"),
            _ => None,
        };
        if let Some(ms) = covered {
            self.positioned = true;
            self.covered_ms = self.covered_ms.max(ms);
        }
        self.recent_bytes += text.len();
        self.recent.push_back((seq, text.to_owned()));
        while self.recent_bytes > self.max_bytes {
            let Some((_, old)) = self.recent.pop_front() else {
                break;
            };
            self.recent_bytes -= old.len();
        }
    }

    /// Takes one lifecycle record.
    pub fn lifecycle(&mut self, record: &Lifecycle) {
        match record {
            Lifecycle::HandedOver {
                node,
                input_frames,
                next_seq,
                ..
            } => self.handed_over = Some((node.clone(), *input_frames, *next_seq)),
            Lifecycle::TakenOver { .. } => self.handed_over = None,
            Lifecycle::Closed { .. } => self.closed = true,
            Lifecycle::Started { .. } => {}
        }
    }

    /// Whether the events read start at `session.started`.
    pub fn whole(&self) -> bool {
        self.first_seq == Some(0)
    }

    /// Whether every event after `seq` (what a client that has `seq` lacks) was read.
    pub fn reaches_back_to(&self, seq: u64) -> bool {
        self.first_seq
            .is_some_and(|first| first <= seq.saturating_add(1))
    }

    /// Where a takeover starts from.
    pub fn point(&self) -> TakeoverPoint {
        match &self.handed_over {
            Some((node, input_frames, next_seq)) => TakeoverPoint::HandedOver {
                node: node.clone(),
                input_frames: *input_frames,
                next_seq: *next_seq,
            },
            None => TakeoverPoint::NodeLost {
                covered_ms: self.covered_ms,
                last_seq: self.last_seq,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fold_tracks_position_seq_and_the_open_segment() {
        let mut log = SessionLog::new(1 << 20);
        log.event(r#"{"seq":0,"type":"session.started"}"#);
        log.event(r#"{"seq":1,"type":"level","t_ms":100,"rms_dbfs":-30,"peak_dbfs":-20}"#);
        log.event(r#"{"seq":2,"type":"vad","event":"speech_start","t_ms":60}"#);
        log.event(r#"{"seq":3,"type":"level","t_ms":200,"rms_dbfs":-30,"peak_dbfs":-20}"#);
        // A retried publish of seq 3 adds nothing.
        log.event(r#"{"seq":3,"type":"level","t_ms":200,"rms_dbfs":-30,"peak_dbfs":-20}"#);
        assert_eq!(log.last_seq, Some(3));
        assert_eq!(log.covered_ms, 200);
        assert_eq!(log.open_segment_ms, Some(60));
        assert_eq!(log.recent.len(), 4);
        log.event(r#"{"seq":4,"type":"vad","event":"speech_end","t_ms":900,"duration_ms":840}"#);
        assert_eq!(log.open_segment_ms, None);
        assert_eq!(log.covered_ms, 900);
        assert_eq!(
            log.point(),
            TakeoverPoint::NodeLost {
                covered_ms: 900,
                last_seq: Some(4)
            }
        );
    }

    #[test]
    fn a_tail_says_what_it_reaches_and_whether_it_saw_the_vad() {
        let mut log = SessionLog::new(1 << 20);
        log.event(r#"{"seq":7,"type":"level","t_ms":700,"rms_dbfs":-30,"peak_dbfs":-20}"#);
        log.event(r#"{"seq":8,"type":"level","t_ms":800,"rms_dbfs":-30,"peak_dbfs":-20}"#);
        assert!(!log.whole());
        assert!(!log.vad_seen);
        assert!(
            log.reaches_back_to(6),
            "a client with 6 lacks 7 and 8: both read"
        );
        assert!(log.reaches_back_to(9), "a client ahead of the log");
        assert!(!log.reaches_back_to(5), "7 is the first read: 6 is not");
        log.event(r#"{"seq":9,"type":"vad","event":"speech_end","t_ms":850,"duration_ms":300}"#);
        assert!(log.vad_seen);
        let mut pongs = SessionLog::new(1 << 20);
        pongs.event(r#"{"seq":10,"type":"pong","id":1}"#);
        assert!(
            !pongs.positioned,
            "a pong does not say where the timeline is"
        );
        assert!(log.positioned);
        let mut whole = SessionLog::new(1 << 20);
        whole.event(r#"{"seq":0,"type":"session.started"}"#);
        assert!(whole.whole() && whole.reaches_back_to(0));
        assert!(
            !SessionLog::new(1).reaches_back_to(0),
            "nothing read reaches nothing"
        );
    }

    #[test]
    fn a_handover_record_fixes_the_point_until_a_takeover_follows() {
        let mut log = SessionLog::new(1 << 20);
        let handed = Lifecycle::HandedOver {
            session_id: uuid::Uuid::nil(),
            node: "a".into(),
            input_frames: 48_000,
            next_seq: 12,
            at_ms: 0,
        };
        log.lifecycle(&handed);
        assert_eq!(
            log.point(),
            TakeoverPoint::HandedOver {
                node: "a".into(),
                input_frames: 48_000,
                next_seq: 12
            }
        );
        log.lifecycle(&Lifecycle::TakenOver {
            session_id: uuid::Uuid::nil(),
            node: "b".into(),
            from_node: "a".into(),
            input_frames: 48_000,
            next_seq: 12,
            node_lost: false,
            at_ms: 0,
        });
        assert!(matches!(log.point(), TakeoverPoint::NodeLost { .. }));
    }

    #[test]
    fn recent_events_stay_within_their_bound() {
        let mut log = SessionLog::new(200);
        for seq in 0..100 {
            log.event(&format!(r#"{{"seq":{seq},"type":"pong","id":1}}"#));
        }
        let bytes: usize = log.recent.iter().map(|(_, t)| t.len()).sum();
        assert!(bytes <= 200, "{bytes}");
        assert_eq!(log.recent.back().map(|(s, _)| *s), Some(99));
        assert_eq!(log.last_seq, Some(99));
    }
}
