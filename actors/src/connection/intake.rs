//! Bounded intake of WebSocket bytes.
//!
//! actix-web-actors' frame decoder drains *everything* the HTTP payload has buffered into its
//! own unbounded buffer on every poll, but yields one frame per poll. While a session keeps up,
//! a client sending faster than frames are handed out therefore grows that buffer without
//! limit (measured: server memory grew by the whole volume a flooding client sent).
//! [`FramePacedPayload`] sits between the payload and that decoder and hands it at most one
//! WebSocket frame's bytes per poll, so the decoder holds at most about one frame, and bytes
//! stay in the HTTP payload, whose 32 KiB bound makes actix stop reading the socket: TCP
//! backpressure reaches the client. It only reads frame lengths (RFC 6455 section 5.2);
//! decoding and validation stay with actix.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Wraps an HTTP payload stream; yields it back in pieces that never cross a frame end,
/// pausing after each completed frame until the decoder polls again.
pub struct FramePacedPayload<S, E> {
    inner: S,
    pending: BytesMut,
    /// Bytes of the current frame not yet handed on; 0 = at a frame boundary.
    frame_left: usize,
    /// A frame was completed by the last piece and more bytes are waiting: pause once.
    pause: bool,
    /// An error read from `inner` while looking ahead, returned on the next poll.
    stashed_error: Option<E>,
    done: bool,
}

impl<S, E> FramePacedPayload<S, E> {
    /// Paces `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: BytesMut::new(),
            frame_left: 0,
            pause: false,
            stashed_error: None,
            done: false,
        }
    }
}

/// Total length of the frame starting at `buf` (header, mask and payload), or `None` if the
/// header is not complete yet. Saturates for absurd lengths (the decoder rejects those).
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let b1 = *buf.get(1)?;
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let (ext, len) = match b1 & 0x7f {
        126 => {
            let b = buf.get(2..4)?;
            (2, u64::from(u16::from_be_bytes([b[0], b[1]])))
        }
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (8, u64::from_be_bytes(b))
        }
        n => (0, u64::from(n)),
    };
    let header: usize = 2 + ext + mask;
    Some(header.saturating_add(usize::try_from(len).unwrap_or(usize::MAX)))
}

impl<S, E> Stream for FramePacedPayload<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(e) = this.stashed_error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if this.pause {
            // The decoder has a whole frame; let it hand that out before taking more.
            this.pause = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        loop {
            if this.frame_left == 0 {
                if let Some(len) = frame_len(&this.pending) {
                    this.frame_left = len;
                }
            }
            let ready = if this.frame_left == 0 {
                // Header incomplete: hand over nothing yet.
                0
            } else {
                this.frame_left.min(this.pending.len())
            };
            if ready > 0 {
                this.frame_left -= ready;
                let piece = this.pending.split_to(ready).freeze();
                if this.frame_left == 0 {
                    this.look_ahead(cx);
                    this.pause = !this.pending.is_empty() || this.stashed_error.is_some();
                }
                return Poll::Ready(Some(Ok(piece)));
            }
            if this.done {
                if this.pending.has_remaining() {
                    // A truncated header at EOF: pass it on for the decoder to judge.
                    let rest = this.pending.split().freeze();
                    return Poll::Ready(Some(Ok(rest)));
                }
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.pending.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S, E> FramePacedPayload<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    /// After a frame end with nothing pending, checks whether more bytes are already there.
    /// If not, `inner` has registered our waker and no pause (and no extra poll) is needed:
    /// a client sending at real time costs nothing extra.
    fn look_ahead(&mut self, cx: &mut Context<'_>) {
        if !self.pending.is_empty() || self.done {
            return;
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => self.pending.extend_from_slice(&chunk),
            Poll::Ready(Some(Err(e))) => self.stashed_error = Some(e),
            Poll::Ready(None) => self.done = true,
            Poll::Pending => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{stream, StreamExt};

    fn frame(payload_len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82u8];
        let mask_bit = if masked { 0x80 } else { 0 };
        if payload_len < 126 {
            f.push(mask_bit | payload_len as u8);
        } else if payload_len < 65_536 {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(payload_len as u16).to_be_bytes());
        } else {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(payload_len as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, payload_len));
        f
    }

    #[test]
    fn frame_len_covers_every_length_encoding() {
        for (len, masked) in [
            (0, true),
            (125, false),
            (126, true),
            (65_535, true),
            (70_000, true),
        ] {
            let f = frame(len, masked);
            assert_eq!(frame_len(&f), Some(f.len()));
            assert_eq!(frame_len(&f[..1]), None);
        }
    }

    #[test]
    fn pieces_never_cross_a_frame_end_however_input_is_chunked() {
        let sizes = [3usize, 200, 0, 70_000, 1920, 125, 126];
        let frames: Vec<Vec<u8>> = sizes.iter().map(|&n| frame(n, true)).collect();
        let wire: Vec<u8> = frames.concat();
        for chunk in [1usize, 7, 1000, 65_536, wire.len()] {
            let input: Vec<Result<Bytes, ()>> = wire
                .chunks(chunk)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let paced = FramePacedPayload::new(stream::iter(input));
            let pieces: Vec<Bytes> = futures_executor_block_on(paced.map(|r| r.unwrap()).collect());
            // Re-group pieces into frames: every frame end must be a piece end.
            let mut ends = std::collections::BTreeSet::new();
            let mut at = 0;
            for p in &pieces {
                at += p.len();
                ends.insert(at);
            }
            let mut boundary = 0;
            for f in &frames {
                boundary += f.len();
                assert!(
                    ends.contains(&boundary),
                    "chunk {chunk}: frame end {boundary} inside a piece"
                );
            }
            assert_eq!(pieces.concat(), wire);
        }
    }

    fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(f)
    }
}
