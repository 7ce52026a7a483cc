//! Bounded intake of WebSocket bytes, and the violations actix's decoder does not name.
//!
//! actix-web-actors' frame decoder drains *everything* the HTTP payload has buffered into its
//! own unbounded buffer on every poll, but yields one frame per poll. While a session keeps up,
//! a client sending faster than frames are handed out therefore grows that buffer without
//! limit (measured: server memory grew by the whole volume a flooding client sent).
//! [`FramePacedPayload`] sits between the payload and that decoder and hands it at most one
//! WebSocket frame's bytes per poll, so the decoder holds at most about one frame, and bytes
//! stay in the HTTP payload, whose 32 KiB bound makes actix stop reading the socket: TCP
//! backpressure reaches the client. It reads frame headers (RFC 6455 section 5.2); decoding
//! and validation stay with actix.
//!
//! # What actix reports, and how
//! actix-http 3.20's `ws::Codec` and actix-web-actors 4.3's `WsStream` validate every rule of
//! RFC 6455 section 5 a server must check, and report each as a [`ws::ProtocolError`]:
//! unmasked client frame (`UnmaskedFrame`), unknown opcode (`InvalidOpcode`), fragmented
//! control frame (`ContinuationFragment`), control frame over 125 bytes (`InvalidLength(n)`,
//! n > 125), a 1-byte close payload (`InvalidLength(1)`), a reserved or undefined close code
//! or a close reason that is not UTF-8 (`BadOpCode`), a data frame inside a fragmented message
//! (`ContinuationStarted`), a continuation with none started (`ContinuationNotStarted`), a
//! frame over the size limit or with an invalid 64-bit length (`Overflow`). Two violations
//! come out as `ProtocolError::Io`, exactly like a broken connection: **reserved bits set**
//! and **invalid UTF-8 in an unfragmented text frame** (fragments are not validated by actix;
//! [`super::fragments`] does that). [`FramePacedPayload`] therefore checks those two in the
//! bytes as they pass and records the first one in a [`WireReport`]; [`classify`] turns any
//! decoder error, with that report, into one unambiguous [`DecodeFault`].

use crate::error::ProtocolViolation;
use actix_web_actors::ws;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

/// A violation actix's decoder reports only as an I/O error, found by [`FramePacedPayload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireViolation {
    /// A frame with RSV1-3 set (the three bits, RSV1 highest).
    ReservedBits {
        /// The RSV bits.
        rsv: u8,
    },
    /// An unfragmented, masked text frame whose payload is not UTF-8.
    InvalidUtf8,
    /// A frame header declaring more payload than [`FramePacedPayload::max_payload`] allows.
    TooLarge {
        /// The declared payload length, bytes.
        len: u64,
    },
}

/// The first [`WireViolation`] on one connection, shared between the [`FramePacedPayload`]
/// that records it and the connection's owner, which reads it (through [`classify`]) when the
/// decoder reports an error. Frames are checked in the order the decoder decodes them and the
/// decoder stops at its first error, so the first violation recorded is the one that error is
/// about. Cloning shares the cell; recording is first-wins and lock-free.
#[derive(Debug, Clone, Default)]
pub struct WireReport(Arc<OnceLock<WireViolation>>);

impl WireReport {
    /// The first violation recorded, if any.
    pub fn first(&self) -> Option<WireViolation> {
        self.0.get().copied()
    }

    fn record(&self, violation: WireViolation) {
        let _ = self.0.set(violation);
    }
}

/// Why the decoder's stream failed, told apart with the [`WireReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeFault {
    /// The client broke RFC 6455: close with the violation's code.
    Protocol(ProtocolViolation),
    /// A frame over the decoder's size limit (or with an impossible length): close 1009.
    TooLarge,
    /// The connection itself failed: nobody is left to tell.
    ConnectionLost,
}

/// Names what a decoder error means (see the module docs for actix's mapping).
pub fn classify(error: &ws::ProtocolError, report: &WireReport) -> DecodeFault {
    use ws::ProtocolError as E;
    use ProtocolViolation as V;
    let violation = match error {
        E::UnmaskedFrame => V::UnmaskedFrame,
        E::InvalidOpcode(op) => V::UnknownOpcode(*op),
        E::InvalidLength(n) if *n > 125 => V::ControlFrameTooLong(*n),
        E::InvalidLength(_) | E::BadOpCode => V::InvalidClosePayload,
        E::ContinuationFragment(_) => V::FragmentedControlFrame,
        E::ContinuationStarted => V::DataFrameInFragmentedMessage,
        E::ContinuationNotStarted => V::ContinuationWithoutStart,
        // Only a client-side decoder sees masked frames.
        E::MaskedFrame => V::Malformed,
        E::Overflow => return DecodeFault::TooLarge,
        E::Io(_) => match report.first() {
            Some(WireViolation::ReservedBits { rsv }) => V::ReservedBits { rsv },
            Some(WireViolation::InvalidUtf8) => V::InvalidUtf8,
            Some(WireViolation::TooLarge { .. }) => return DecodeFault::TooLarge,
            None => return DecodeFault::ConnectionLost,
        },
    };
    DecodeFault::Protocol(violation)
}

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
    /// UTF-8 check of the current frame, when it is an unfragmented masked text frame.
    text: Option<Utf8Check>,
    report: WireReport,
    /// Largest payload a frame may declare; `usize::MAX` = no limit.
    max_payload: usize,
    /// A frame over `max_payload` was found: fail the stream once the decoder has had the
    /// frames before it.
    refuse: bool,
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
            text: None,
            report: WireReport::default(),
            max_payload: usize::MAX,
            refuse: false,
        }
    }

    /// Refuses frames that declare more than `max` payload bytes (the decoder's own limit) at
    /// their header: the stream fails (recording [`WireViolation::TooLarge`]) instead of
    /// passing the frame on, because actix's decoder buffers a whole frame before it checks
    /// its size, so a client could otherwise make it hold any amount.
    pub fn max_payload(mut self, max: usize) -> Self {
        self.max_payload = max;
        self
    }

    /// Where this payload records violations; hand it to whoever handles the decoder's errors.
    pub fn report(&self) -> WireReport {
        self.report.clone()
    }

    /// A frame starts: checks what the decoder would report only as an I/O error.
    fn begin_frame(&mut self, head: &FrameHead) {
        let rsv = (head.b0 >> 4) & 0b111;
        if rsv != 0 {
            self.report.record(WireViolation::ReservedBits { rsv });
        }
        let fin_text = head.b0 & 0x8f == 0x81;
        self.text = match head.mask {
            Some(mask) if fin_text => Some(Utf8Check::new(mask, head.header_len)),
            _ => None,
        };
    }

    /// A piece of the current frame goes to the decoder.
    fn pass(&mut self, piece: &[u8]) {
        if let Some(check) = &mut self.text {
            check.feed(piece);
            if self.frame_left == 0 {
                if !check.valid() {
                    self.report.record(WireViolation::InvalidUtf8);
                }
                self.text = None;
            }
        }
    }
}

/// The parts of a frame header (RFC 6455 section 5.2) intake needs.
struct FrameHead {
    /// FIN, RSV1-3 and the opcode.
    b0: u8,
    /// The masking key, for masked frames.
    mask: Option<[u8; 4]>,
    /// Header bytes, masking key included.
    header_len: usize,
    /// The payload length the header declares.
    payload_len: u64,
    /// The whole frame: header and payload (saturating for absurd lengths).
    total: usize,
}

impl FrameHead {
    /// The header at the start of `buf`, or `None` if it is not complete yet.
    fn parse(buf: &[u8]) -> Option<FrameHead> {
        let b0 = *buf.first()?;
        let b1 = *buf.get(1)?;
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
        let mask_at = 2 + ext;
        let (mask, header_len) = if b1 & 0x80 != 0 {
            let key: [u8; 4] = buf.get(mask_at..mask_at + 4)?.try_into().ok()?;
            (Some(key), mask_at + 4)
        } else {
            (None, mask_at)
        };
        let total = header_len.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        Some(FrameHead {
            b0,
            mask,
            header_len,
            payload_len: len,
            total,
        })
    }
}

/// Total length of the frame starting at `buf` (header, mask and payload), or `None` if the
/// header is not complete yet. Saturates for absurd lengths (the decoder rejects those).
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    FrameHead::parse(buf).map(|h| h.total)
}

/// Incremental UTF-8 validation of a masked frame's payload as its pieces pass, with no
/// allocation: unmasks into a stack buffer and carries an incomplete character (at most 3
/// bytes) from one piece to the next.
struct Utf8Check {
    mask: [u8; 4],
    /// Header bytes still to skip.
    skip: usize,
    /// Payload bytes seen (the position in the masking key).
    offset: usize,
    carry: [u8; 3],
    carry_len: usize,
    bad: bool,
}

impl Utf8Check {
    const CHUNK: usize = 1024;

    fn new(mask: [u8; 4], header_len: usize) -> Self {
        Self {
            mask,
            skip: header_len,
            offset: 0,
            carry: [0; 3],
            carry_len: 0,
            bad: false,
        }
    }

    fn feed(&mut self, piece: &[u8]) {
        let skip = self.skip.min(piece.len());
        self.skip -= skip;
        let mut payload = &piece[skip..];
        let mut buf = [0u8; Self::CHUNK + 3];
        while !payload.is_empty() && !self.bad {
            let n = payload.len().min(Self::CHUNK);
            let c = self.carry_len;
            buf[..c].copy_from_slice(&self.carry[..c]);
            for (i, b) in payload[..n].iter().enumerate() {
                buf[c + i] = b ^ self.mask[(self.offset + i) % 4];
            }
            self.offset += n;
            payload = &payload[n..];
            let chunk = &buf[..c + n];
            match std::str::from_utf8(chunk) {
                Ok(_) => self.carry_len = 0,
                // An incomplete character at the end: keep it for the next piece.
                Err(e) if e.error_len().is_none() => {
                    let tail = &chunk[e.valid_up_to()..];
                    self.carry[..tail.len()].copy_from_slice(tail);
                    self.carry_len = tail.len();
                }
                Err(_) => self.bad = true,
            }
        }
    }

    /// Whether everything fed so far is whole, valid UTF-8.
    fn valid(&self) -> bool {
        !self.bad && self.carry_len == 0
    }
}

impl<S, E> Stream for FramePacedPayload<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: From<std::io::Error> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(e) = this.stashed_error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if this.refuse {
            this.refuse = false;
            this.done = true;
            this.pending.clear();
            let over = std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a frame is over the size limit",
            );
            return Poll::Ready(Some(Err(E::from(over))));
        }
        if this.pause {
            // The decoder has a whole frame; let it hand that out before taking more.
            this.pause = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        loop {
            if this.frame_left == 0 {
                if let Some(head) = FrameHead::parse(&this.pending) {
                    if head.payload_len > this.max_payload as u64 {
                        this.report.record(WireViolation::TooLarge {
                            len: head.payload_len,
                        });
                        // Let the decoder hand out what it already has first.
                        this.refuse = true;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    this.frame_left = head.total;
                    this.begin_frame(&head);
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
                this.pass(&piece);
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
mod tests;
