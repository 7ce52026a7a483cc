//! What resume tests share: the speech they stream, the client's view of a session by
//! `seq`, the VAD boundaries compared against a loss-free run, and the resume query.

use super::{audio, Client};
use serde_json::Value;
use std::collections::BTreeMap;

const ALSA: &str = "/usr/share/sounds/alsa";
/// The rate resume tests stream at, Hz.
pub const RATE: u32 = 48_000;
/// Their format: `RATE` mono s16.
pub const QUERY: &str = "sample_rate=48000&channels=1&encoding=pcm_s16le";
/// 20 ms of 48 kHz mono s16.
pub const CHUNK: usize = 1920;

/// Two recorded phrases with pauses, as `QUERY`'s bytes: several speech segments.
pub fn speech() -> Vec<u8> {
    let mut mono = Vec::new();
    for name in ["Front_Center", "Front_Left"] {
        let (samples, rate) = audio::read_wav(&format!("{ALSA}/{name}.wav"));
        let at_48k = audio::resample(&samples, rate, RATE);
        mono.extend(audio::padded(&at_48k, RATE, 0.5, 0.8));
    }
    audio::s16le(&mono, 1)
}

/// Events by seq; panics on a seq seen twice with different content.
#[derive(Default, Clone)]
pub struct Seen {
    by_seq: BTreeMap<u64, Value>,
}

impl Seen {
    pub fn add(&mut self, event: Value) {
        let seq = event["seq"].as_u64().expect("every message carries seq");
        if let Some(before) = self.by_seq.insert(seq, event.clone()) {
            assert_eq!(before, event, "seq {seq} came twice with different content");
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.by_seq.keys().next_back().copied().unwrap_or(0)
    }

    /// Every seq from 0 to the last, exactly once.
    pub fn assert_contiguous(&self) {
        let seqs: Vec<u64> = self.by_seq.keys().copied().collect();
        let want: Vec<u64> = (0..=self.last_seq()).collect();
        assert_eq!(seqs, want, "seq gap");
    }

    pub fn events(&self) -> Vec<Value> {
        self.by_seq.values().cloned().collect()
    }

    /// Drops what came after `seq` (a resume's `rewound_to`: never logged, produced again).
    pub fn rewind(&mut self, seq: u64) {
        self.by_seq.retain(|&s, _| s <= seq);
    }

    /// Stops `client`, keeps its last events, checks the close and that no seq is missing;
    /// returns every event in seq order.
    pub async fn stop_and_check(&mut self, client: Client) -> Vec<Value> {
        let (events, code) = client.stop().await;
        assert_eq!(code, Some(1000));
        for e in events {
            self.add(e);
        }
        self.assert_contiguous();
        self.events()
    }
}

/// `(event, t_ms)` of every VAD event, in order.
pub fn segments(events: &[Value]) -> Vec<(String, u64)> {
    events
        .iter()
        .filter(|e| e["type"] == "vad")
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default().to_owned(),
                e["t_ms"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// The resume query for a session whose `started` event and last seq are given.
pub fn resume_query(started: &Value, last_seq: u64) -> String {
    format!(
        "resume={}&resume_token={}&last_seq={last_seq}",
        started["session_id"].as_str().expect("session_id"),
        started["resume"]["token"].as_str().expect("resume token"),
    )
}
