//! Reassembly of fragmented WebSocket messages (RFC 6455 section 5.4).
//!
//! A client may send a text or binary message as a first frame without FIN followed by
//! continuation frames, the last with FIN; ping, pong and close frames may come between
//! them. actix's decoder hands each fragment out as a `ws::Message::Continuation`;
//! [`MessageAssembler`] joins them into the message the client meant, so the rest of the
//! server sees a reassembled message exactly as if it had come in one frame (one audio chunk
//! on the timeline, one control message).
//!
//! Bounded: a message is refused as soon as its fragments add up to more than the limit of
//! its kind (`max_binary_frame_bytes`, `max_text_frame_bytes`), before the fragment that
//! crosses it is copied, so the assembler holds at most that limit; the frame being decoded
//! is held by the decoder, not here.

use crate::error::{ProtocolViolation, SessionError};
use actix_http::ws::Item;
use actix_web_actors::ws;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

/// The two kinds of data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Audio.
    Binary,
    /// A control message (JSON).
    Text,
}

/// A whole message, ready to dispatch.
#[derive(Debug, PartialEq, Eq)]
pub enum Complete {
    /// A binary message: one frame, or its fragments joined.
    Binary(Bytes),
    /// A text message, valid UTF-8: one frame (validated by actix) or its fragments joined
    /// (validated here).
    Text(ByteString),
    /// A ping, pong, close or nop, passed through unchanged (also between fragments).
    Control(ws::Message),
}

/// A client's frames do not make a valid message. The session ends; [`close_code`] is the
/// code RFC 6455 gives it.
///
/// [`close_code`]: FragmentError::close_code
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentError {
    /// A new text or binary frame arrived before the fragmented message ended (1002).
    DataFrameInFragmentedMessage,
    /// A continuation frame arrived with no fragmented message started (1002).
    ContinuationWithoutStart,
    /// The fragments add up to more than the limit for `kind` (1009).
    TooLarge {
        /// The message's kind.
        kind: MessageKind,
        /// `max_binary_frame_bytes`.
        max_binary: usize,
        /// `max_text_frame_bytes`.
        max_text: usize,
    },
    /// The reassembled text message is not valid UTF-8 (1007).
    InvalidUtf8,
}

impl FragmentError {
    /// The close code RFC 6455 gives this error: 1002, 1009 or 1007.
    pub fn close_code(self) -> u16 {
        SessionError::from(self)
            .close_code()
            .unwrap_or(crate::error::close_code::PROTOCOL)
    }
}

/// What the client sees: a protocol error (1002, 1007), or the same size error (1009) a
/// single frame of that size gets.
impl From<FragmentError> for SessionError {
    fn from(e: FragmentError) -> Self {
        match e {
            FragmentError::DataFrameInFragmentedMessage => {
                SessionError::Protocol(ProtocolViolation::DataFrameInFragmentedMessage)
            }
            FragmentError::ContinuationWithoutStart => {
                SessionError::Protocol(ProtocolViolation::ContinuationWithoutStart)
            }
            FragmentError::InvalidUtf8 => SessionError::Protocol(ProtocolViolation::InvalidUtf8),
            FragmentError::TooLarge {
                kind: MessageKind::Text,
                max_text,
                ..
            } => SessionError::TextFrameTooLarge { max: max_text },
            FragmentError::TooLarge {
                kind: MessageKind::Binary,
                max_binary,
                max_text,
            } => SessionError::FrameTooLarge {
                max_binary,
                max_text,
            },
        }
    }
}

/// A fragmented message being received.
#[derive(Debug)]
struct Partial {
    kind: MessageKind,
    buf: BytesMut,
}

/// Joins fragments into messages for one connection. Feed it every message from actix's
/// decoder in order with [`MessageAssembler::push`].
#[derive(Debug)]
pub struct MessageAssembler {
    max_binary: usize,
    max_text: usize,
    partial: Option<Partial>,
}

impl MessageAssembler {
    /// An assembler refusing binary messages over `max_binary` bytes and text messages over
    /// `max_text` bytes once they are fragmented (single frames are checked where they are
    /// dispatched, as before).
    pub fn new(max_binary: usize, max_text: usize) -> Self {
        Self {
            max_binary,
            max_text,
            partial: None,
        }
    }

    /// Takes the next message from the decoder. `Ok(Some(_))`: a whole message to dispatch;
    /// `Ok(None)`: a fragment was kept, nothing to dispatch yet; `Err(_)`: the client broke
    /// the protocol or the size limit, and the connection should end (the partial message is
    /// dropped).
    pub fn push(&mut self, msg: ws::Message) -> Result<Option<Complete>, FragmentError> {
        let result = self.take(msg);
        if result.is_err() {
            self.partial = None;
        }
        result
    }

    /// The kind of the fragmented message in progress, if any.
    pub fn in_progress(&self) -> Option<MessageKind> {
        self.partial.as_ref().map(|p| p.kind)
    }

    /// Bytes held for the fragmented message in progress (at most its kind's limit).
    pub fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.buf.len())
    }

    fn take(&mut self, msg: ws::Message) -> Result<Option<Complete>, FragmentError> {
        match msg {
            ws::Message::Binary(data) => {
                self.no_partial()?;
                Ok(Some(Complete::Binary(data)))
            }
            ws::Message::Text(text) => {
                self.no_partial()?;
                Ok(Some(Complete::Text(text)))
            }
            ws::Message::Continuation(item) => self.fragment(item),
            control => Ok(Some(Complete::Control(control))),
        }
    }

    fn no_partial(&self) -> Result<(), FragmentError> {
        match self.partial {
            Some(_) => Err(FragmentError::DataFrameInFragmentedMessage),
            None => Ok(()),
        }
    }

    fn fragment(&mut self, item: Item) -> Result<Option<Complete>, FragmentError> {
        match item {
            Item::FirstBinary(data) => self.begin(MessageKind::Binary, data),
            Item::FirstText(data) => self.begin(MessageKind::Text, data),
            Item::Continue(data) => {
                self.append(&data)?;
                Ok(None)
            }
            Item::Last(data) => {
                self.append(&data)?;
                let partial = self
                    .partial
                    .take()
                    .ok_or(FragmentError::ContinuationWithoutStart)?;
                let bytes = partial.buf.freeze();
                match partial.kind {
                    MessageKind::Binary => Ok(Some(Complete::Binary(bytes))),
                    MessageKind::Text => ByteString::try_from(bytes)
                        .map(|text| Some(Complete::Text(text)))
                        .map_err(|_| FragmentError::InvalidUtf8),
                }
            }
        }
    }

    fn begin(
        &mut self,
        kind: MessageKind,
        first: Bytes,
    ) -> Result<Option<Complete>, FragmentError> {
        self.no_partial()?;
        if first.len() > self.limit(kind) {
            return Err(self.too_large(kind));
        }
        self.partial = Some(Partial {
            kind,
            buf: BytesMut::from(&first[..]),
        });
        Ok(None)
    }

    fn limit(&self, kind: MessageKind) -> usize {
        match kind {
            MessageKind::Binary => self.max_binary,
            MessageKind::Text => self.max_text,
        }
    }

    fn too_large(&self, kind: MessageKind) -> FragmentError {
        FragmentError::TooLarge {
            kind,
            max_binary: self.max_binary,
            max_text: self.max_text,
        }
    }

    /// Appends a continuation, refusing it before copying if the message would pass its limit.
    fn append(&mut self, data: &[u8]) -> Result<(), FragmentError> {
        let (kind, held) = match &self.partial {
            Some(p) => (p.kind, p.buf.len()),
            None => return Err(FragmentError::ContinuationWithoutStart),
        };
        if held.saturating_add(data.len()) > self.limit(kind) {
            return Err(self.too_large(kind));
        }
        if let Some(p) = &mut self.partial {
            p.buf.extend_from_slice(data);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::close_code;

    fn first_bin(b: &[u8]) -> ws::Message {
        ws::Message::Continuation(Item::FirstBinary(Bytes::copy_from_slice(b)))
    }
    fn first_text(b: &[u8]) -> ws::Message {
        ws::Message::Continuation(Item::FirstText(Bytes::copy_from_slice(b)))
    }
    fn cont(b: &[u8]) -> ws::Message {
        ws::Message::Continuation(Item::Continue(Bytes::copy_from_slice(b)))
    }
    fn last(b: &[u8]) -> ws::Message {
        ws::Message::Continuation(Item::Last(Bytes::copy_from_slice(b)))
    }

    #[test]
    fn binary_fragments_join_into_one_message() {
        let mut a = MessageAssembler::new(100, 10);
        assert_eq!(a.push(first_bin(b"ab")), Ok(None));
        assert_eq!(a.in_progress(), Some(MessageKind::Binary));
        assert_eq!(a.push(cont(b"cd")), Ok(None));
        assert_eq!(a.push(cont(b"")), Ok(None));
        assert_eq!(
            a.push(last(b"ef")),
            Ok(Some(Complete::Binary(Bytes::from_static(b"abcdef"))))
        );
        assert_eq!(a.in_progress(), None);
        assert_eq!(a.buffered(), 0);
    }

    #[test]
    fn text_split_inside_a_multibyte_character_is_rejoined() {
        let text = "día ☃";
        let bytes = text.as_bytes();
        let mut a = MessageAssembler::new(100, 100);
        assert_eq!(a.push(first_text(&bytes[..2])), Ok(None));
        assert_eq!(a.push(cont(&bytes[2..5])), Ok(None));
        assert_eq!(
            a.push(last(&bytes[5..])),
            Ok(Some(Complete::Text(ByteString::from(text))))
        );
    }

    #[test]
    fn control_frames_between_fragments_pass_through() {
        let mut a = MessageAssembler::new(100, 100);
        assert_eq!(a.push(first_text(b"{\"type\":")), Ok(None));
        let ping = ws::Message::Ping(Bytes::from_static(b"hi"));
        assert_eq!(
            a.push(ping),
            Ok(Some(Complete::Control(ws::Message::Ping(
                Bytes::from_static(b"hi")
            ))))
        );
        assert_eq!(
            a.push(last(b"\"ping\"}")),
            Ok(Some(Complete::Text(ByteString::from(
                "{\"type\":\"ping\"}"
            ))))
        );
    }

    #[test]
    fn unfragmented_messages_pass_through_unchecked() {
        // Single frames keep the checks (and error codes) of the dispatching code.
        let mut a = MessageAssembler::new(1, 1);
        assert_eq!(
            a.push(ws::Message::Binary(Bytes::from_static(b"long"))),
            Ok(Some(Complete::Binary(Bytes::from_static(b"long"))))
        );
        assert_eq!(
            a.push(ws::Message::Text(ByteString::from("long"))),
            Ok(Some(Complete::Text(ByteString::from("long"))))
        );
    }

    #[test]
    fn data_frame_inside_a_fragmented_message_is_1002() {
        let mut a = MessageAssembler::new(100, 100);
        a.push(first_bin(b"ab")).unwrap();
        let e = a.push(ws::Message::Binary(Bytes::from_static(b"x")));
        assert_eq!(e, Err(FragmentError::DataFrameInFragmentedMessage));
        assert_eq!(e.unwrap_err().close_code(), close_code::PROTOCOL);
        // The partial message is gone; a new one may start.
        assert_eq!(a.buffered(), 0);
        a.push(first_text(b"a")).unwrap();
        assert_eq!(
            a.push(first_bin(b"b")),
            Err(FragmentError::DataFrameInFragmentedMessage)
        );
    }

    #[test]
    fn continuation_without_a_start_is_1002() {
        for msg in [cont(b"x"), last(b"x")] {
            let mut a = MessageAssembler::new(100, 100);
            let e = a.push(msg).unwrap_err();
            assert_eq!(e, FragmentError::ContinuationWithoutStart);
            assert_eq!(e.close_code(), close_code::PROTOCOL);
        }
    }

    #[test]
    fn messages_over_their_kinds_limit_are_1009_and_never_buffered_past_it() {
        let mut a = MessageAssembler::new(8, 4);
        a.push(first_bin(b"1234")).unwrap();
        a.push(cont(b"5678")).unwrap();
        assert_eq!(a.buffered(), 8, "exactly the limit is accepted");
        let e = a.push(cont(b"9")).unwrap_err();
        assert_eq!(
            e,
            FragmentError::TooLarge {
                kind: MessageKind::Binary,
                max_binary: 8,
                max_text: 4
            }
        );
        assert_eq!(e.close_code(), close_code::TOO_BIG);
        assert_eq!(a.buffered(), 0);

        // Text has its own (smaller) limit, checked on the first fragment too.
        let e = a.push(first_text(b"12345")).unwrap_err();
        assert_eq!(e, a.too_large(MessageKind::Text));
        a.push(first_text(b"12")).unwrap();
        assert!(a.push(last(b"345")).is_err());
    }

    #[test]
    fn reassembled_invalid_utf8_is_1007() {
        let mut a = MessageAssembler::new(100, 100);
        a.push(first_text(b"ok ")).unwrap();
        let e = a.push(last(&[0xff, 0xfe])).unwrap_err();
        assert_eq!(e, FragmentError::InvalidUtf8);
        assert_eq!(e.close_code(), close_code::INVALID_DATA);
        // A character cut off at the end of the message is invalid too.
        a.push(first_text("☃".as_bytes())).unwrap();
        let e = a.push(last(&"☃".as_bytes()[..2])).unwrap_err();
        assert_eq!(e, FragmentError::InvalidUtf8);
    }

    #[test]
    fn a_message_over_its_limit_gets_the_error_of_a_single_frame_that_size() {
        let a = MessageAssembler::new(8, 4);
        let text = SessionError::from(a.too_large(MessageKind::Text));
        assert_eq!(text, SessionError::TextFrameTooLarge { max: 4 });
        let binary = SessionError::from(a.too_large(MessageKind::Binary));
        assert_eq!(binary.code(), "frame_too_large");
        assert_eq!(binary.close_code(), Some(close_code::TOO_BIG));
    }
}
