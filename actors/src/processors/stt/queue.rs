//! The speech-to-text queue: segments waiting for a transcription thread, bounded, in the
//! order they were cut, with the drop policy in one place.
//!
//! Policy: when the queue is full, the **oldest waiting** segment is dropped to make room
//! (its session is told, `transcript_dropped`): under overload the freshest speech is the
//! one a conversation still needs. A session's segments are handed out one at a time, in
//! order, so its transcripts arrive in the order it spoke, whichever thread runs them.

use std::collections::{HashSet, VecDeque};
use uuid::Uuid;

/// What the queue needs of a waiting item.
pub trait Queued {
    /// The session it belongs to (at most one item per session is out at a time).
    fn session(&self) -> Uuid;
}

/// Waiting segments and the sessions whose segment a thread is transcribing now.
#[derive(Debug)]
pub struct SegmentQueue<J> {
    waiting: VecDeque<J>,
    capacity: usize,
    running: HashSet<Uuid>,
}

impl<J: Queued> SegmentQueue<J> {
    /// An empty queue holding at most `capacity` (at least 1) waiting items.
    pub fn new(capacity: usize) -> Self {
        Self {
            waiting: VecDeque::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
            running: HashSet::new(),
        }
    }

    /// Queues `job`; returns the item dropped to make room, if the queue was full.
    pub fn push(&mut self, job: J) -> Option<J> {
        let dropped = if self.waiting.len() >= self.capacity {
            self.waiting.pop_front()
        } else {
            None
        };
        self.waiting.push_back(job);
        dropped
    }

    /// Takes the oldest waiting item whose session has none running, and marks its session
    /// running until [`SegmentQueue::done`].
    pub fn take(&mut self) -> Option<J> {
        let index = self
            .waiting
            .iter()
            .position(|j| !self.running.contains(&j.session()))?;
        let job = self.waiting.remove(index)?;
        self.running.insert(job.session());
        Some(job)
    }

    /// `session`'s running item finished: its next one may be taken.
    pub fn done(&mut self, session: Uuid) {
        self.running.remove(&session);
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Takes every waiting item (shutdown).
    pub fn drain(&mut self) -> Vec<J> {
        self.waiting.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Job(Uuid, u32);
    impl Queued for Job {
        fn session(&self) -> Uuid {
            self.0
        }
    }

    #[test]
    fn full_queue_drops_the_oldest_waiting() {
        let s = Uuid::new_v4();
        let mut q = SegmentQueue::new(2);
        assert_eq!(q.push(Job(s, 1)), None);
        assert_eq!(q.push(Job(s, 2)), None);
        assert_eq!(q.push(Job(s, 3)), Some(Job(s, 1)));
        assert_eq!(q.len(), 2);
        assert_eq!(q.take(), Some(Job(s, 2)));
    }

    /// One segment per session at a time, in order; other sessions go past a busy one.
    #[test]
    fn a_session_runs_one_segment_at_a_time_in_order() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut q = SegmentQueue::new(8);
        q.push(Job(a, 1));
        q.push(Job(a, 2));
        q.push(Job(b, 1));
        assert_eq!(q.take(), Some(Job(a, 1)));
        assert_eq!(q.take(), Some(Job(b, 1)), "a is running: b goes first");
        assert_eq!(q.take(), None, "a's next waits for its first");
        q.done(a);
        assert_eq!(q.take(), Some(Job(a, 2)));
        assert_eq!(q.len(), 0);
    }
}
