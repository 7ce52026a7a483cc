//! The audio a client has sent (or captured while reconnecting) that the server has not yet
//! confirmed: what a resumed session needs resent from its `input_frames`.

use std::collections::VecDeque;

/// Sent audio, by input sample frame, from the oldest unconfirmed frame to the newest.
///
/// Bounded to `resume.window_s` seconds of input audio (the server's resume window, from
/// `session.started`). That is enough: the server resumes a session only within that window
/// of the loss, so a real-time source never captures more than that while disconnected, and
/// while connected the server confirms (in its events' `t_ms`) audio well within that time of
/// it being sent; audio older than the window is either confirmed or belongs to a session
/// that can no longer be resumed. While connected, a full ring forgets its oldest audio
/// ([`AudioRing::push`]); while reconnecting the caller stops taking audio instead
/// ([`AudioRing::room`]), so nothing a resume needs is lost on the client's side.
pub(super) struct AudioRing {
    bytes: VecDeque<u8>,
    bytes_per_frame: usize,
    capacity_bytes: usize,
    /// Input frame index of the first byte in `bytes`.
    start_frame: u64,
}

impl AudioRing {
    /// A ring of at most `capacity_frames` frames of `bytes_per_frame` bytes each; 0 keeps
    /// nothing (resume off) and only counts frames.
    pub(super) fn new(bytes_per_frame: usize, capacity_frames: u64) -> Self {
        let capacity_bytes =
            usize::try_from(capacity_frames).unwrap_or(usize::MAX / 2) * bytes_per_frame.max(1);
        AudioRing {
            bytes: VecDeque::new(),
            bytes_per_frame: bytes_per_frame.max(1),
            capacity_bytes,
            start_frame: 0,
        }
    }

    /// Frames pushed so far (the input frame index of the next push).
    pub(super) fn end_frame(&self) -> u64 {
        self.start_frame + (self.bytes.len() / self.bytes_per_frame) as u64
    }

    /// Bytes that can still be pushed without forgetting anything.
    pub(super) fn room(&self) -> usize {
        self.capacity_bytes.saturating_sub(self.bytes.len())
    }

    /// Appends `chunk` (whole frames), forgetting the oldest frames beyond the capacity.
    pub(super) fn push(&mut self, chunk: &[u8]) {
        if self.capacity_bytes == 0 {
            self.start_frame += (chunk.len() / self.bytes_per_frame) as u64;
            return;
        }
        self.bytes.extend(chunk);
        let excess = self.bytes.len().saturating_sub(self.capacity_bytes);
        self.forget_bytes(excess.div_ceil(self.bytes_per_frame) * self.bytes_per_frame);
    }

    /// Forgets the frames before `frame`: the server has confirmed it has them.
    pub(super) fn confirm(&mut self, frame: u64) {
        let frames = frame.saturating_sub(self.start_frame);
        let bytes = usize::try_from(frames)
            .unwrap_or(usize::MAX)
            .saturating_mul(self.bytes_per_frame);
        self.forget_bytes(bytes.min(self.bytes.len()));
    }

    fn forget_bytes(&mut self, n: usize) {
        let n = n.min(self.bytes.len());
        self.bytes.drain(..n);
        self.start_frame += (n / self.bytes_per_frame) as u64;
    }

    /// A copy of the audio from input frame `frame` on, for a resumed session to continue
    /// from; `Err` with the oldest frame kept when `frame` is older than that or newer than
    /// what was sent.
    pub(super) fn since_frame(&self, frame: u64) -> Result<Vec<u8>, (u64, u64)> {
        if frame < self.start_frame || frame > self.end_frame() {
            return Err((self.start_frame, self.end_frame()));
        }
        let skip = (frame - self.start_frame) as usize * self.bytes_per_frame;
        Ok(self.bytes.iter().skip(skip).copied().collect())
    }
}
