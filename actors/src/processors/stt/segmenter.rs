//! Cuts a session's pipeline audio into the segments the VAD found, with a little audio
//! before and after each, and at most `max_segment_s` long. Plain code: no threads, no
//! actors; the `stt` processor feeds it blocks and VAD boundaries in order.
//!
//! Positions are pipeline sample indices (16 kHz). The VAD dates `speech_start` back to
//! where the burst began, up to its `min_speech_ms` (plus a frame) before the block that
//! reports it, and reports `speech_end` once its silence has passed, so the audio just after
//! the end is already here. Between segments the segmenter keeps only the audio a start may
//! be dated back to; within one, the segment so far.

use std::collections::VecDeque;

/// A cut segment: `[start, end)` in pipeline samples, and its audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    /// First sample.
    pub start: u64,
    /// One past the last sample.
    pub end: u64,
    /// The samples.
    pub samples: Vec<f32>,
}

/// The segmenter's tunables, in pipeline samples.
#[derive(Debug, Clone, Copy)]
pub struct Spans {
    /// Kept before `speech_start`.
    pub pre_roll: u64,
    /// Kept after `speech_end`.
    pub post_roll: u64,
    /// Longest segment.
    pub max_segment: u64,
    /// How far back a `speech_start` may be dated, before the block reporting it.
    pub start_lookback: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct Segmenter {
    spans: Spans,
    audio: VecDeque<f32>,
    /// Pipeline index of `audio[0]`.
    audio_start: u64,
    /// Where the open segment starts, if one is open.
    open: Option<u64>,
}

impl Segmenter {
    /// An empty segmenter.
    pub fn new(spans: Spans) -> Self {
        Self {
            spans,
            audio: VecDeque::new(),
            audio_start: 0,
            open: None,
        }
    }

    fn audio_end(&self) -> u64 {
        self.audio_start + self.audio.len() as u64
    }

    /// Appends a block starting at pipeline sample `start`; returns a piece of the open
    /// segment if it reached `max_segment`. A gap (audio the processor never saw, after a
    /// restart) restarts the buffer at `start`.
    pub fn push(&mut self, start: u64, samples: &[f32], cuts: &mut Vec<Cut>) {
        if start != self.audio_end() {
            self.audio.clear();
            self.audio_start = start;
            self.open = self.open.map(|s| s.max(start));
        }
        self.audio.extend(samples);
        while let Some(open) = self.open {
            if self.audio_end() - open < self.spans.max_segment {
                break;
            }
            let end = open + self.spans.max_segment;
            cuts.push(self.take(open, end));
            self.open = Some(end);
        }
        self.trim();
    }

    /// The VAD reported a segment starting at `t` (pipeline samples). A segment still open
    /// (no end seen) is cut where the new one's audio begins.
    pub fn start(&mut self, t: u64, cuts: &mut Vec<Cut>) {
        let from = t
            .saturating_sub(self.spans.pre_roll)
            .clamp(self.audio_start, self.audio_end());
        if let Some(open) = self.open.take() {
            if from > open {
                cuts.push(self.take(open, from));
            }
        }
        self.open = Some(from);
    }

    /// The VAD reported the open segment ended at `t`: cut it, with `post_roll` after `t`
    /// as far as the audio goes. Without an open segment (the start was before a restart),
    /// nothing is cut.
    pub fn end(&mut self, t: u64, cuts: &mut Vec<Cut>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let end = t
            .saturating_add(self.spans.post_roll)
            .clamp(open, self.audio_end());
        if end > open {
            cuts.push(self.take(open, end));
        }
        self.trim();
    }

    /// Flush: cut whatever is open (the VAD closes its segment at flush; this covers a
    /// VAD that did not).
    pub fn finish(&mut self, cuts: &mut Vec<Cut>) {
        if let Some(open) = self.open.take() {
            let end = self.audio_end();
            if end > open {
                cuts.push(self.take(open, end));
            }
        }
        self.trim();
    }

    /// Copies `[start, end)` out (both within the buffer) and lets go of what is before `end`.
    fn take(&mut self, start: u64, end: u64) -> Cut {
        let from = (start - self.audio_start) as usize;
        let to = (end - self.audio_start) as usize;
        let samples = self.audio.range(from..to).copied().collect();
        self.audio.drain(..to);
        self.audio_start = end;
        Cut {
            start,
            end,
            samples,
        }
    }

    /// Between segments, keeps only what a start may be dated back to.
    fn trim(&mut self) {
        let keep = match self.open {
            Some(open) => self.audio_end() - open,
            None => self.spans.pre_roll + self.spans.start_lookback,
        };
        let excess = (self.audio.len() as u64).saturating_sub(keep) as usize;
        if excess > 0 {
            self.audio.drain(..excess);
            self.audio_start += excess as u64;
        }
    }

    /// Samples held now (bounded by `pre_roll + max(start_lookback, max_segment)`).
    pub fn held(&self) -> usize {
        self.audio.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans() -> Spans {
        Spans {
            pre_roll: 10,
            post_roll: 5,
            max_segment: 100,
            start_lookback: 20,
        }
    }

    /// Audio whose sample at index i is i (so cuts can be checked by value).
    fn feed(seg: &mut Segmenter, from: u64, to: u64, cuts: &mut Vec<Cut>) {
        let samples: Vec<f32> = (from..to).map(|i| i as f32).collect();
        seg.push(from, &samples, cuts);
    }

    fn values(cut: &Cut) -> (u64, u64, bool) {
        let exact = cut
            .samples
            .iter()
            .enumerate()
            .all(|(i, &v)| v == (cut.start + i as u64) as f32);
        (cut.start, cut.end, exact)
    }

    #[test]
    fn a_segment_gets_pre_and_post_roll() {
        let mut seg = Segmenter::new(spans());
        let mut cuts = Vec::new();
        feed(&mut seg, 0, 50, &mut cuts);
        seg.start(40, &mut cuts); // dated back within the block
        feed(&mut seg, 50, 80, &mut cuts);
        seg.end(70, &mut cuts);
        assert_eq!(
            cuts.iter().map(values).collect::<Vec<_>>(),
            [(30, 75, true)]
        );
        assert!(seg.held() <= 30);
    }

    #[test]
    fn post_roll_stops_at_the_audio_there_is_and_pre_roll_at_the_buffer() {
        let mut seg = Segmenter::new(spans());
        let mut cuts = Vec::new();
        feed(&mut seg, 0, 200, &mut cuts);
        // Only pre_roll + start_lookback (30) samples are kept between segments.
        seg.start(165, &mut cuts);
        seg.end(198, &mut cuts);
        assert_eq!(
            cuts.iter().map(values).collect::<Vec<_>>(),
            [(170, 200, true)]
        );
    }

    #[test]
    fn long_speech_is_cut_into_max_segment_pieces() {
        let mut seg = Segmenter::new(spans());
        let mut cuts = Vec::new();
        feed(&mut seg, 0, 20, &mut cuts);
        seg.start(10, &mut cuts);
        for from in (20..260).step_by(16) {
            feed(&mut seg, from, (from + 16).min(260), &mut cuts);
        }
        seg.end(255, &mut cuts);
        let got: Vec<_> = cuts.iter().map(values).collect();
        assert_eq!(got, [(0, 100, true), (100, 200, true), (200, 260, true)]);
        assert!(seg.held() <= 30);
    }

    #[test]
    fn flush_cuts_what_is_open_and_a_gap_restarts_the_buffer() {
        let mut seg = Segmenter::new(spans());
        let mut cuts = Vec::new();
        feed(&mut seg, 0, 40, &mut cuts);
        seg.start(30, &mut cuts);
        // Samples 40..60 never arrived (a restart); the segment goes on from 60.
        feed(&mut seg, 60, 90, &mut cuts);
        seg.finish(&mut cuts);
        assert_eq!(
            cuts.iter().map(values).collect::<Vec<_>>(),
            [(60, 90, true)]
        );
        // An end without a start cuts nothing.
        seg.end(95, &mut cuts);
        assert_eq!(cuts.len(), 1);
    }

    #[test]
    fn a_new_start_cuts_a_segment_left_open() {
        let mut seg = Segmenter::new(spans());
        let mut cuts = Vec::new();
        feed(&mut seg, 0, 30, &mut cuts);
        seg.start(20, &mut cuts);
        feed(&mut seg, 30, 60, &mut cuts);
        seg.start(55, &mut cuts);
        feed(&mut seg, 60, 70, &mut cuts);
        seg.end(65, &mut cuts);
        let got: Vec<_> = cuts.iter().map(values).collect();
        assert_eq!(got, [(10, 45, true), (45, 70, true)]);
    }
}
