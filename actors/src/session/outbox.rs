//! A session's sequenced messages, kept for replay when a client resumes.
//!
//! Every JSON message a session sends gets the next `seq` (0 is `session.started`). The
//! outbox keeps the most recent ones, up to `session.resume_buffer_bytes`: a client that
//! lost its connection says the last `seq` it has, and gets everything after it again.
//! `session.started` is never kept: it carries the resume token, which the server holds
//! only as a hash.

use crate::protocol::ServerEvent;
use std::collections::VecDeque;
use std::sync::Arc;

/// Sequenced messages, oldest first, bounded in bytes.
#[derive(Debug)]
pub struct Outbox {
    next_seq: u64,
    held: VecDeque<(u64, Arc<str>)>,
    bytes: usize,
    max_bytes: usize,
    /// The highest `seq` no longer held (a resume after it cannot be replayed fully).
    let_go_through: u64,
}

/// Keeping a message would take the outbox over its bound while nobody can read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

impl Outbox {
    /// An empty outbox holding at most `max_bytes` of messages.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            next_seq: 0,
            held: VecDeque::new(),
            bytes: 0,
            max_bytes,
            let_go_through: 0,
        }
    }

    /// Gives `event` the next `seq`; returns its JSON text, `seq` first.
    pub fn sequence(&mut self, event: &ServerEvent) -> (u64, Arc<str>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        (seq, Arc::from(event.to_json_with_seq(seq)))
    }

    /// Keeps a sequenced message for replay. While `attached`, the oldest messages make
    /// room (the connection has taken them); while detached nothing may be let go, so a
    /// message that does not fit is an [`Overflow`].
    pub fn keep(&mut self, seq: u64, text: Arc<str>, attached: bool) -> Result<(), Overflow> {
        let len = text.len();
        if !attached && self.bytes + len > self.max_bytes {
            return Err(Overflow);
        }
        self.held.push_back((seq, text));
        self.bytes += len;
        while self.bytes > self.max_bytes {
            let Some((seq, text)) = self.held.pop_front() else {
                break;
            };
            self.bytes -= text.len();
            self.let_go_through = seq;
        }
        Ok(())
    }

    /// The last `seq` given out.
    pub fn newest(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// The oldest `last_seq` a resume can be replayed after.
    pub fn oldest_resumable(&self) -> u64 {
        self.let_go_through
    }

    /// Whether a client holding everything through `last_seq` can be brought up to date.
    pub fn can_replay_after(&self, last_seq: u64) -> bool {
        (self.oldest_resumable()..=self.newest()).contains(&last_seq)
    }

    /// The messages after `last_seq`, in order.
    pub fn after(&self, last_seq: u64) -> impl Iterator<Item = &Arc<str>> {
        self.held
            .iter()
            .filter(move |(seq, _)| *seq > last_seq)
            .map(|(_, text)| text)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(n: u64) -> ServerEvent {
        ServerEvent::Custom(json!({"type": "test", "n": n}))
    }

    #[test]
    fn seq_comes_first_and_counts_every_message() {
        let mut outbox = Outbox::new(1 << 20);
        let (s0, t0) = outbox.sequence(&event(0));
        let (s1, t1) = outbox.sequence(&event(1));
        assert_eq!((s0, s1), (0, 1));
        assert!(t0.starts_with("{\"seq\":0,"), "{t0}");
        let v: serde_json::Value = serde_json::from_str(&t1).unwrap();
        assert_eq!(v["seq"], 1);
        assert_eq!(v["n"], 1);
    }

    #[test]
    fn attached_outbox_lets_the_oldest_go_and_says_how_far_back_it_can_replay() {
        let mut outbox = Outbox::new(100);
        outbox.sequence(&event(0)); // session.started: not kept
        for n in 1..=10 {
            let (seq, text) = outbox.sequence(&event(n));
            outbox.keep(seq, text, true).unwrap();
        }
        assert!(outbox.bytes() <= 100);
        assert_eq!(outbox.newest(), 10);
        let oldest = outbox.oldest_resumable();
        assert!(oldest > 0 && oldest < 10);
        assert!(!outbox.can_replay_after(oldest - 1));
        assert!(outbox.can_replay_after(oldest));
        assert!(!outbox.can_replay_after(11));
        let replayed: Vec<_> = outbox.after(oldest).collect();
        assert_eq!(replayed.len() as u64, 10 - oldest);
    }

    #[test]
    fn detached_outbox_refuses_what_does_not_fit() {
        let mut outbox = Outbox::new(40);
        let (seq, text) = outbox.sequence(&event(1));
        outbox.keep(seq, text, false).unwrap();
        let (seq, text) = outbox.sequence(&event(2));
        assert_eq!(outbox.keep(seq, text, false), Err(Overflow));
        assert!(outbox.can_replay_after(0));
    }
}
