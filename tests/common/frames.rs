//! Raw WebSocket frames, for what client libraries will not send: fragments cut anywhere,
//! reserved bits, unmasked frames, unknown opcodes, broken UTF-8. A frame is built by hand
//! (RFC 6455 section 5.2); the upgrade is a hand-made request on a plain `TcpStream`, and
//! server frames are read back from the same stream.
#![allow(dead_code)]

use super::HANG;
use serde_json::Value;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opcodes (RFC 6455 section 5.2).
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xa;

/// One client frame: masked, FIN set and no RSV bits unless changed.
#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    /// RSV1-3, RSV1 highest (0..=7).
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Self {
        Frame {
            fin: true,
            rsv: 0,
            opcode,
            masked: true,
            payload: payload.into(),
        }
    }

    /// The same frame without FIN (a fragment that is not the last).
    pub fn more(mut self) -> Self {
        self.fin = false;
        self
    }

    pub fn rsv(mut self, rsv: u8) -> Self {
        self.rsv = rsv;
        self
    }

    pub fn unmasked(mut self) -> Self {
        self.masked = false;
        self
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![(u8::from(self.fin) << 7) | (self.rsv << 4) | self.opcode];
        let mask_bit = if self.masked { 0x80 } else { 0 };
        let len = self.payload.len();
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= 0xffff {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if self.masked {
            let key = [0x5a, 0x17, 0xc3, 0x8e];
            out.extend_from_slice(&key);
            out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(&self.payload);
        }
        out
    }
}

/// `message` cut into `parts` fragments of `opcode` (the cuts are wherever the division
/// falls, not on sample or character boundaries).
pub fn fragments(opcode: u8, message: &[u8], parts: usize) -> Vec<Frame> {
    let size = message.len().div_ceil(parts);
    let pieces: Vec<&[u8]> = message.chunks(size).collect();
    let n = pieces.len();
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let op = if i == 0 { opcode } else { CONTINUATION };
            let frame = Frame::new(op, p);
            if i + 1 < n {
                frame.more()
            } else {
                frame
            }
        })
        .collect()
}

/// What the server sent, as a raw client sees it (server pings are skipped).
#[derive(Debug, Clone)]
pub enum Raw {
    Event(Value),
    Binary(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame and its code (`None` for an empty close payload).
    Close(Option<u16>),
    /// The server ended TCP without a close frame.
    Eof,
}

/// A WebSocket client speaking raw frames.
pub struct RawClient {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// The `session.started` event.
    pub started: Value,
}

impl RawClient {
    /// Upgrades `ws://{addr}/v1/stream?{query}` by hand and reads `session.started`.
    pub async fn connect(addr: SocketAddr, query: &str) -> RawClient {
        let mut tcp = tokio::time::timeout(HANG, TcpStream::connect(addr))
            .await
            .expect("connect hung")
            .expect("connect");
        let request = format!(
            "GET /v1/stream?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes())
            .await
            .expect("write upgrade");
        let mut client = RawClient {
            tcp,
            buf: Vec::new(),
            started: Value::Null,
        };
        let head_end = loop {
            if let Some(at) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(client.fill().await, "server closed during the upgrade");
        };
        let head = String::from_utf8_lossy(&client.buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        client.buf.drain(..head_end);
        match client.recv().await {
            Raw::Event(v) if v["type"] == "session.started" => client.started = v,
            other => panic!("expected session.started, got {other:?}"),
        }
        client
    }

    /// Writes `frames` back to back in one write.
    pub async fn send(&mut self, frames: &[Frame]) {
        let wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        self.send_bytes(&wire).await;
    }

    /// Writes raw bytes (part of a frame, say).
    pub async fn send_bytes(&mut self, wire: &[u8]) {
        tokio::time::timeout(HANG, self.tcp.write_all(wire))
            .await
            .expect("send hung")
            .expect("send");
    }

    /// Reads more bytes; `false` at EOF (or a reset, which ends the stream just the same).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(HANG, self.tcp.read(&mut chunk))
            .await
            .expect("receive hung")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next server frame (server frames are unmasked and, from voxrt, never fragmented).
    pub async fn recv(&mut self) -> Raw {
        loop {
            if let Some((opcode, payload)) = self.take_frame() {
                match opcode {
                    TEXT => {
                        let text = String::from_utf8(payload).expect("server text is UTF-8");
                        return Raw::Event(serde_json::from_str(&text).expect("server sends JSON"));
                    }
                    BINARY => return Raw::Binary(payload),
                    PONG => return Raw::Pong(payload),
                    CLOSE => {
                        let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                        return Raw::Close(code);
                    }
                    PING => continue,
                    other => panic!("server sent opcode {other}"),
                }
            }
            if !self.fill().await {
                return Raw::Eof;
            }
        }
    }

    /// Reads events until `kind` (inclusive), answering nothing; panics on a close first.
    pub async fn until(&mut self, kind: &str) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            match self.recv().await {
                Raw::Event(v) => {
                    let done = v["type"] == kind;
                    events.push(v);
                    if done {
                        return events;
                    }
                }
                Raw::Binary(_) | Raw::Pong(_) => {}
                other => panic!("{other:?} before {kind}; got {events:?}"),
            }
        }
    }

    /// Reads to the close frame (or EOF): the events and the close code.
    pub async fn drain(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut events = Vec::new();
        loop {
            match self.recv().await {
                Raw::Event(v) => events.push(v),
                Raw::Binary(_) | Raw::Pong(_) => {}
                Raw::Close(code) => return (events, code),
                Raw::Eof => return (events, None),
            }
        }
    }

    /// A whole frame from the buffer, if one is there.
    fn take_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
        let (len, at) = match b[1] & 0x7f {
            126 => (
                u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        if b.len() < at + len {
            return None;
        }
        assert!(b[0] & 0x80 != 0, "voxrt does not fragment what it sends");
        let opcode = b[0] & 0x0f;
        let payload = b[at..at + len].to_vec();
        self.buf.drain(..at + len);
        Some((opcode, payload))
    }
}
