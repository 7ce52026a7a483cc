//! WebSocket as RFC 6455 says, with raw frames as any client library may send them:
//! fragmented messages are reassembled (bounded by the frame limits), control frames between
//! fragments are answered, and protocol errors close with the RFC's code (1002, 1007, 1009)
//! after `session.closed`, while a neighbour session streams on unaffected.

mod common;
use common::frames::{fragments, Frame, Raw, RawClient, BINARY, CONTINUATION, PING, TEXT};
use common::*;
use serde_json::{json, Value};

const SPEECH_48K: &str = "sample_rate=48000&channels=1&encoding=pcm_s16le";

/// 1 s of the speech recording (0.4 s to 1.4 s: the end of "front", a pause, "center"),
/// 48 kHz mono s16le: 96000 bytes.
fn one_second_of_speech() -> Vec<u8> {
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    assert_eq!(rate, 48_000);
    audio::s16le(&speech[19_200..67_200], 1)
}

/// `{"type":"flush"}` as one text frame.
fn flush_frame() -> Frame {
    Frame::new(TEXT, json!({"type": "flush"}).to_string())
}

/// What the audio produced: `vad` and `level` events, each in arrival order (the two
/// processors' events may interleave either way, so they are compared per type).
fn audio_events(events: &[Value]) -> [Vec<Value>; 2] {
    let of = |kind: &str| of_type(events, kind).into_iter().cloned().collect();
    [of("vad"), of("level")]
}

/// The speech sent as one binary frame, then as a message in 4 fragments cut mid-sample
/// (`FirstBinary`, two `Continue`, `Last`): no error, the same `flushed.audio_ms`, the same VAD
/// and level events, and one chunk on the timeline either way.
#[tokio::test]
async fn binary_message_in_4_fragments_is_one_chunk_like_the_whole_frame() {
    let server = TestServer::start(&[]);
    let pcm = one_second_of_speech();

    let mut whole = server.connect(SPEECH_48K).await;
    let whole_events = whole.stream_and_flush(&pcm, pcm.len()).await;
    let (rest, code) = whole.stop().await;
    assert_eq!(code, Some(1000));
    assert_eq!(closed_event(&rest)["stats"]["chunks_in"], 1);

    let mut raw = RawClient::connect(server.addr, SPEECH_48K).await;
    let cuts = [0, 24_001, 48_003, 72_005, pcm.len()];
    let mut frames: Vec<Frame> = cuts
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let op = if i == 0 { BINARY } else { CONTINUATION };
            let f = Frame::new(op, &pcm[w[0]..w[1]]);
            if w[1] < pcm.len() {
                f.more()
            } else {
                f
            }
        })
        .collect();
    frames.push(flush_frame());
    raw.send(&frames).await;
    let events = raw.until("flushed").await;
    assert!(of_type(&events, "error").is_empty(), "{events:?}");

    let flushed = |evs: &[Value]| of_type(evs, "flushed")[0]["audio_ms"].clone();
    assert_eq!(flushed(&events), flushed(&whole_events));
    assert_eq!(flushed(&events), 1000);
    assert!(
        !segments(&whole_events).is_empty(),
        "the clip has speech: {whole_events:?}"
    );
    assert_eq!(audio_events(&events), audio_events(&whole_events));

    raw.send(&[Frame::new(TEXT, json!({"type": "stop"}).to_string())])
        .await;
    let (rest, code) = raw.drain().await;
    assert_eq!(code, Some(1000), "{rest:?}");
    let closed = closed_event(&rest);
    assert_eq!(closed["stats"]["chunks_in"], 1, "one chunk: {closed}");
    assert_eq!(closed["stats"]["audio_ms"], 1000, "{closed}");
}

/// `{"type":"ping","id":"frag"}` in 2 text fragments (cut inside the id) gets its pong.
#[tokio::test]
async fn text_ping_in_2_fragments_gets_its_pong() {
    let server = TestServer::start(&[]);
    let mut raw = RawClient::connect(server.addr, SPEECH_48K).await;
    let ping = ping(json!("frag")).to_string();
    raw.send(&fragments(TEXT, ping.as_bytes(), 2)).await;
    let events = raw.until("pong").await;
    assert_eq!(events.len(), 1, "no error first: {events:?}");
    assert_eq!(events[0]["id"], "frag");
}

/// WebSocket pings between the fragments of a binary message and of a text message are
/// answered in place with their payloads, and both messages still arrive whole.
#[tokio::test]
async fn fragments_interleaved_with_ping_frames_are_reassembled_and_pings_answered() {
    let server = TestServer::start(&[]);
    let mut raw = RawClient::connect(server.addr, SPEECH_48K).await;
    let pcm = one_second_of_speech();
    let mut audio = fragments(BINARY, &pcm, 3);
    audio.insert(1, Frame::new(PING, "p1"));
    audio.insert(3, Frame::new(PING, "p2"));
    let text = ping(json!(7)).to_string();
    let mut control = fragments(TEXT, text.as_bytes(), 2);
    control.insert(1, Frame::new(PING, "p3"));
    raw.send(&audio).await;
    raw.send(&control).await;
    raw.send(&[flush_frame()]).await;

    let mut pongs = Vec::new();
    let mut events = Vec::new();
    while events.last().is_none_or(|e: &Value| e["type"] != "flushed") {
        match raw.recv().await {
            Raw::Pong(p) => pongs.push(String::from_utf8(p).expect("pong payload")),
            Raw::Event(v) => events.push(v),
            other => panic!("{other:?}; events {events:?}"),
        }
    }
    assert_eq!(pongs, ["p1", "p2", "p3"]);
    assert!(of_type(&events, "error").is_empty(), "{events:?}");
    assert_eq!(of_type(&events, "pong")[0]["id"], 7);
    assert_eq!(of_type(&events, "flushed")[0]["audio_ms"], 1000);
}

// ---------------------------------------------------------------------------------------------
// Protocol errors: each closes its own session with the RFC's code, nothing else.
// ---------------------------------------------------------------------------------------------

/// A session streaming the padded speech clip: the first half before the neighbour misbehaves,
/// the rest after.
struct Neighbour {
    client: Client,
    rest: Vec<u8>,
    half_ms: u64,
    clip_ms: u64,
}

impl Neighbour {
    async fn start(server: &TestServer) -> Neighbour {
        let (speech, _) = audio::read_wav(audio::SPEECH);
        let clip = audio::padded(&speech[..speech.len() / 480 * 480], 48_000, 0.5, 1.0);
        let clip_ms = clip.len() as u64 / 48;
        let pcm = audio::s16le(&clip, 1);
        let half = pcm.len() / 2 / 1920 * 1920;
        let mut client = server.connect(SPEECH_48K).await;
        for chunk in pcm[..half].chunks(1920) {
            client.send_audio(chunk.to_vec()).await;
        }
        Neighbour {
            client,
            rest: pcm[half..].to_vec(),
            half_ms: half as u64 / 96,
            clip_ms,
        }
    }

    /// Sends the rest; asserts every ms went through, speech was found ending in the second
    /// half, no error, and a normal close.
    async fn finish(mut self) {
        for chunk in self.rest.chunks(1920) {
            self.client.send_audio(chunk.to_vec()).await;
        }
        self.client.send_json(json!({"type": "flush"})).await;
        let events = self.client.until("flushed", &mut Vec::new()).await;
        assert!(of_type(&events, "error").is_empty(), "{events:?}");
        assert_eq!(
            of_type(&events, "flushed")[0]["audio_ms"],
            self.clip_ms,
            "{events:?}"
        );
        let last_end = segments(&events).last().expect("speech found").1;
        assert!(
            last_end > self.half_ms,
            "speech_end at {last_end} ms comes from audio sent after the error"
        );
        let (_, code) = self.client.stop().await;
        assert_eq!(code, Some(1000));
    }
}

/// Sends `frames` on a fresh raw session beside a streaming neighbour; asserts one fatal
/// error `code` whose message contains `says`, then `session.closed` with `reason` last,
/// then close `close`; then that the neighbour streamed on.
async fn closes_with(
    overrides: &[(&str, &str)],
    frames: &[Frame],
    (code, says): (&str, &str),
    reason: &str,
    close: u16,
) {
    let server = TestServer::start(overrides);
    let neighbour = Neighbour::start(&server).await;
    let mut raw = RawClient::connect(server.addr, SPEECH_48K).await;
    raw.send(frames).await;
    let (events, got) = raw.drain().await;
    let errors = of_type(&events, "error");
    assert_eq!(errors.len(), 1, "one error: {events:?}");
    assert_eq!(errors[0]["code"], code, "{events:?}");
    assert_eq!(errors[0]["fatal"], true, "{events:?}");
    let message = errors[0]["message"].as_str().expect("message");
    assert!(message.contains(says), "the message names it: {message}");
    assert_no_leak("error event", &errors[0].to_string());
    let last = events.last().expect("events");
    assert_eq!(last["type"], "session.closed", "{events:?}");
    assert_eq!(last["reason"], reason, "{events:?}");
    assert_eq!(got, Some(close), "close code; events {events:?}");
    neighbour.finish().await;
}

const PROTOCOL_ERROR: &str = "protocol_error";

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_is_closed_1007() {
    let frames = [Frame::new(
        TEXT,
        b"{\"type\":\"ping\",\"id\":\"\xff\"}".to_vec(),
    )];
    let error = (PROTOCOL_ERROR, "not valid UTF-8");
    closes_with(&[], &frames, error, PROTOCOL_ERROR, 1007).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_fragmented_text_message_is_closed_1007() {
    // Each fragment ends inside the snowman; the last one leaves it incomplete.
    let snowman = "☃".as_bytes();
    let frames = [
        Frame::new(TEXT, &snowman[..1]).more(),
        Frame::new(CONTINUATION, &snowman[1..2]),
    ];
    let error = (PROTOCOL_ERROR, "not valid UTF-8");
    closes_with(&[], &frames, error, PROTOCOL_ERROR, 1007).await;
}

#[tokio::test]
async fn frame_with_a_reserved_bit_is_closed_1002() {
    let frames = [Frame::new(BINARY, vec![0u8; 1920]).rsv(0b100)];
    let error = (PROTOCOL_ERROR, "reserved bits");
    closes_with(&[], &frames, error, PROTOCOL_ERROR, 1002).await;
}

#[tokio::test]
async fn unmasked_client_frame_is_closed_1002() {
    let frames = [Frame::new(BINARY, vec![0u8; 1920]).unmasked()];
    let error = (PROTOCOL_ERROR, "not masked");
    closes_with(&[], &frames, error, PROTOCOL_ERROR, 1002).await;
}

#[tokio::test]
async fn unknown_opcode_is_closed_1002() {
    let frames = [Frame::new(0x3, "?")];
    let error = (PROTOCOL_ERROR, "unknown opcode 3");
    closes_with(&[], &frames, error, PROTOCOL_ERROR, 1002).await;
}

#[tokio::test]
async fn data_frame_in_the_middle_of_a_fragmented_message_is_closed_1002() {
    let frames = [
        Frame::new(BINARY, vec![0u8; 1920]).more(),
        Frame::new(BINARY, vec![0u8; 1920]),
    ];
    let error = (PROTOCOL_ERROR, "before the fragmented message ended");
    closes_with(&[], &frames, error, PROTOCOL_ERROR, 1002).await;
}

#[tokio::test]
async fn continuation_with_no_message_started_is_closed_1002() {
    let frames = [Frame::new(CONTINUATION, vec![0u8; 1920])];
    let error = (PROTOCOL_ERROR, "no fragmented message started");
    closes_with(&[], &frames, error, PROTOCOL_ERROR, 1002).await;
}

/// With `max_binary_frame_bytes` 8192, fragments of 4000 bytes each are accepted until the
/// third would take the message past it: `frame_too_large` as for one frame that size, 1009.
#[tokio::test]
async fn fragmented_message_over_the_size_limit_is_closed_1009() {
    let limit = [("session.max_binary_frame_bytes", "8192")];
    let frames = [
        Frame::new(BINARY, vec![0u8; 4000]).more(),
        Frame::new(CONTINUATION, vec![0u8; 4000]).more(),
        Frame::new(CONTINUATION, vec![0u8; 4000]),
    ];
    let error = ("frame_too_large", "8192");
    closes_with(&limit, &frames, error, "error", 1009).await;
}

/// A frame whose header declares 100 MB is refused at the header, before its payload is
/// sent (the server never buffers it): `frame_too_large`, 1009; the neighbour streams on.
#[tokio::test]
async fn frame_declaring_more_than_the_limit_is_closed_1009_at_its_header() {
    let server = TestServer::start(&[]);
    let neighbour = Neighbour::start(&server).await;
    let mut raw = RawClient::connect(server.addr, SPEECH_48K).await;
    // FIN + binary, masked, 64-bit length 100_000_000, masking key; no payload follows.
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&100_000_000u64.to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    raw.send_bytes(&header).await;
    let (events, code) = raw.drain().await;
    let errors = of_type(&events, "error");
    assert_eq!(errors.len(), 1, "{events:?}");
    assert_eq!(errors[0]["code"], "frame_too_large", "{events:?}");
    assert_eq!(closed_event(&events)["reason"], "error", "{events:?}");
    assert_eq!(code, Some(1009), "{events:?}");
    neighbour.finish().await;
}
