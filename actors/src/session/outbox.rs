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
///
/// The texts are copied back to back into one ring of bytes, with one length per message:
/// a level event is about 100 bytes, and holding each as its own allocation (plus a queue
/// entry) cost half as much again as the text itself. The ring never grows past
/// `max_bytes`, so a session's replay memory is the configured bound plus 4 bytes per
/// message held.
#[derive(Debug)]
pub struct Outbox {
    next_seq: u64,
    /// The held messages' text, oldest first.
    text: VecDeque<u8>,
    /// Each held message's length in bytes, oldest first; the held `seq`s are contiguous
    /// from `first_seq`.
    lens: VecDeque<u32>,
    first_seq: u64,
    /// The first `seq` kept while detached: from it on nothing may be let go (the client
    /// cannot have it). `None` while attached.
    detached_from: Option<u64>,
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
            text: VecDeque::new(),
            lens: VecDeque::new(),
            first_seq: 1,
            detached_from: None,
            max_bytes,
            let_go_through: 0,
        }
    }

    /// The outbox of a session taken over from another node: the next message carries
    /// `next_seq`, and `recent` (`(seq, text)` in order, from the stream) is held for
    /// replay as far back as it runs without a gap up to `next_seq - 1`. `session.started`
    /// (seq 0) is never held.
    pub fn resuming(max_bytes: usize, next_seq: u64, recent: &[(u64, String)]) -> Self {
        let mut outbox = Self::new(max_bytes);
        outbox.next_seq = next_seq;
        let mut start = recent.len();
        let mut expect = next_seq;
        while start > 0 && expect > 1 && recent[start - 1].0 + 1 == expect {
            start -= 1;
            expect -= 1;
        }
        outbox.let_go_through = expect.saturating_sub(1);
        outbox.first_seq = expect.max(1);
        for (seq, text) in &recent[start..] {
            // Attached: older messages make room; nothing is refused.
            let _ = outbox.keep(*seq, text, true);
        }
        outbox
    }

    /// Gives `event` the next `seq`; returns its JSON text, `seq` first.
    pub fn sequence(&mut self, event: &ServerEvent) -> (u64, Arc<str>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        (seq, Arc::from(event.to_json_with_seq(seq)))
    }

    /// Keeps a copy of a sequenced message for replay. The oldest messages make room, but
    /// never those kept since the session was detached (its client cannot have them): when
    /// those alone do not fit, that is an [`Overflow`] and nothing changes.
    pub fn keep(&mut self, seq: u64, text: &str, attached: bool) -> Result<(), Overflow> {
        debug_assert!(
            self.lens.is_empty() || seq == self.first_seq + self.lens.len() as u64,
            "every sequenced message after session.started is kept, in order"
        );
        let detached_from = match attached {
            true => None,
            false => Some(self.detached_from.unwrap_or(seq)),
        };
        let may_go = detached_from.map_or(self.lens.len(), |from| {
            (from.saturating_sub(self.first_seq) as usize).min(self.lens.len())
        });
        let Some(going) = self.to_let_go(text.len(), may_go) else {
            if !attached {
                return Err(Overflow);
            }
            // Larger than the whole bound: sent, but never held.
            self.detached_from = None;
            self.let_go_front(self.lens.len());
            self.let_go_through = seq;
            return Ok(());
        };
        self.detached_from = detached_from;
        self.let_go_front(going);
        if self.lens.is_empty() {
            self.first_seq = seq;
        }
        // Grown by doubling up to the bound, never past it.
        let needed = self.text.len() + text.len();
        if needed > self.text.capacity() {
            let target = needed.max(self.text.capacity() * 2).min(self.max_bytes);
            self.text.reserve_exact(target - self.text.len());
        }
        self.text.extend(text.as_bytes());
        self.lens.push_back(text.len() as u32);
        Ok(())
    }

    /// How many of the oldest messages (at most `may_go` of them) must go for `len` more
    /// bytes to fit the bound; `None` when even that is not enough.
    fn to_let_go(&self, len: usize, may_go: usize) -> Option<usize> {
        let mut room = self.max_bytes.saturating_sub(self.text.len());
        let mut going = 0;
        while room < len {
            if going == may_go {
                return None;
            }
            room += self.lens[going] as usize;
            going += 1;
        }
        Some(going)
    }

    /// Lets the `n` oldest held messages go.
    fn let_go_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let bytes: usize = self.lens.drain(..n).map(|l| l as usize).sum();
        self.text.drain(..bytes);
        self.first_seq += n as u64;
        self.let_go_through = self.first_seq - 1;
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

    /// The messages after `last_seq`, in order (copied out: replay is rare).
    pub fn after(&self, last_seq: u64) -> Vec<Arc<str>> {
        let skip = (last_seq + 1).saturating_sub(self.first_seq) as usize;
        let mut offset: usize = self.lens.iter().take(skip).map(|&l| l as usize).sum();
        let mut replay = Vec::with_capacity(self.lens.len().saturating_sub(skip));
        for &len in self.lens.iter().skip(skip) {
            let len = len as usize;
            let bytes: Vec<u8> = self.text.range(offset..offset + len).copied().collect();
            // Copied from a `&str` in `keep`, whole messages only: always UTF-8.
            replay.push(Arc::from(String::from_utf8_lossy(&bytes)));
            offset += len;
        }
        replay
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.text.len()
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
    fn a_resuming_outbox_holds_the_gapless_tail_and_continues_the_seq() {
        let recent: Vec<(u64, String)> = [0u64, 1, 2, 4, 5, 6]
            .iter()
            .map(|&s| (s, format!("{{\"seq\":{s}}}")))
            .collect();
        let mut outbox = Outbox::resuming(1 << 20, 7, &recent);
        assert_eq!(outbox.newest(), 6);
        // 3 is missing: a client behind it cannot be brought up to date.
        assert!(!outbox.can_replay_after(2));
        assert!(outbox.can_replay_after(3));
        let replay = outbox.after(3);
        assert_eq!(replay.len(), 3);
        assert_eq!(&*replay[0], "{\"seq\":4}");
        let (seq, _) = outbox.sequence(&event(7));
        assert_eq!(seq, 7);
        // Nothing logged but session.started: the next message is 1, nothing to replay.
        let outbox = Outbox::resuming(1 << 20, 1, &recent[..1]);
        assert!(outbox.can_replay_after(0));
        assert!(outbox.after(0).is_empty());
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
            outbox.keep(seq, &text, true).unwrap();
        }
        assert!(outbox.bytes() <= 100);
        assert_eq!(outbox.newest(), 10);
        let oldest = outbox.oldest_resumable();
        assert!(oldest > 0 && oldest < 10);
        assert!(!outbox.can_replay_after(oldest - 1));
        assert!(outbox.can_replay_after(oldest));
        assert!(!outbox.can_replay_after(11));
        let replayed = outbox.after(oldest);
        assert_eq!(replayed.len() as u64, 10 - oldest);
    }

    #[test]
    fn detached_outbox_lets_go_what_was_sent_before_but_nothing_kept_since() {
        let mut outbox = Outbox::new(100);
        let seq_text = |outbox: &mut Outbox, n| outbox.sequence(&event(n));
        seq_text(&mut outbox, 0);
        for n in 1..=6 {
            let (seq, text) = seq_text(&mut outbox, n);
            outbox.keep(seq, &text, true).unwrap();
        }
        let before = outbox.oldest_resumable();
        // Detached: the events sent before make room for the new ones...
        let (seq, first_detached) = seq_text(&mut outbox, 7);
        outbox.keep(seq, &first_detached, false).unwrap();
        assert!(outbox.oldest_resumable() > before);
        // ...until only events kept while detached are left.
        let mut kept = 1;
        loop {
            let (seq, text) = seq_text(&mut outbox, 7 + kept);
            let held = outbox.bytes();
            if outbox.keep(seq, &text, false).is_err() {
                assert_eq!(outbox.bytes(), held, "a refused keep changes nothing");
                break;
            }
            kept += 1;
        }
        assert!(outbox.can_replay_after(seq - 1));
        assert_eq!(outbox.after(seq - 1)[0], first_detached);
    }

    #[test]
    fn detached_outbox_refuses_what_does_not_fit() {
        let mut outbox = Outbox::new(40);
        let (seq, text) = outbox.sequence(&event(1));
        outbox.keep(seq, &text, false).unwrap();
        let (seq, text) = outbox.sequence(&event(2));
        assert_eq!(outbox.keep(seq, &text, false), Err(Overflow));
        assert!(outbox.can_replay_after(0));
    }

    #[test]
    fn ring_replays_exact_texts_after_wrapping_and_stays_within_its_bound() {
        let mut outbox = Outbox::new(4096);
        outbox.sequence(&event(0));
        let mut sent = Vec::new();
        for n in 1..=2_000 {
            // Lengths vary so the ring wraps at every offset.
            let (seq, text) = outbox.sequence(&ServerEvent::Custom(
                json!({"type": "test", "pad": "x".repeat((n * 7) as usize % 90)}),
            ));
            outbox.keep(seq, &text, true).unwrap();
            sent.push(text);
            assert!(outbox.bytes() <= 4096);
            assert!(outbox.text.capacity() <= 4096, "{}", outbox.text.capacity());
        }
        let oldest = outbox.oldest_resumable();
        let replayed = outbox.after(oldest);
        assert_eq!(replayed[..], sent[oldest as usize..]);
        let last_ten = outbox.after(outbox.newest() - 10);
        assert_eq!(last_ten[..], sent[sent.len() - 10..]);
        assert!(outbox.after(outbox.newest()).is_empty());
    }

    #[test]
    fn a_message_larger_than_the_bound_is_sent_but_not_held() {
        let mut outbox = Outbox::new(64);
        let (seq, text) = outbox.sequence(&event(1));
        outbox.keep(seq, &text, true).unwrap();
        let (seq, text) = outbox.sequence(&ServerEvent::Custom(json!({"pad": "x".repeat(100)})));
        outbox.keep(seq, &text, true).unwrap();
        assert_eq!(outbox.bytes(), 0);
        assert_eq!(outbox.oldest_resumable(), seq);
        assert!(!outbox.can_replay_after(seq - 1));
        let (seq, text) = outbox.sequence(&event(3));
        outbox.keep(seq, &text, true).unwrap();
        assert_eq!(outbox.after(seq - 1), vec![text]);
    }
}
