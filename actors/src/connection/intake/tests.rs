//! Frame pacing, the violations actix does not name, and how its codec errors classify.

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
        let input: Vec<Result<Bytes, std::io::Error>> = wire
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

/// A masked client frame with `b0` (FIN, RSV, opcode) as given.
fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![b0];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Runs `wire` through a paced payload in pieces of `chunk` bytes; returns its report.
fn report_of(wire: &[u8], chunk: usize) -> Option<WireViolation> {
    let input: Vec<Result<Bytes, std::io::Error>> = wire
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let paced = FramePacedPayload::new(stream::iter(input));
    let report = paced.report();
    let passed: Vec<Bytes> = futures_executor_block_on(paced.map(|r| r.unwrap()).collect());
    assert_eq!(
        passed.concat(),
        wire,
        "intake passes every byte on unchanged"
    );
    report.first()
}

#[test]
fn reserved_bits_are_reported_with_their_value() {
    let mut wire = client_frame(0x82, &[1, 2]);
    wire.extend(client_frame(0x80 | 0x20 | 0x2, &[3]));
    wire.extend(client_frame(0x80 | 0x40 | 0x2, &[4]));
    for chunk in [1, 3, wire.len()] {
        assert_eq!(
            report_of(&wire, chunk),
            Some(WireViolation::ReservedBits { rsv: 0b010 }),
            "the first violation wins"
        );
    }
}

#[test]
fn invalid_utf8_in_a_text_frame_is_reported_however_the_bytes_are_cut() {
    let good = "voxrt ☃ día ".repeat(200);
    let mut bad = good.clone().into_bytes();
    bad.insert(1500, 0xff);
    // A character cut off at the end of the frame is invalid too.
    let truncated = &"☃".as_bytes()[..2];
    for chunk in [1, 2, 5, 1000, 4096] {
        let ok = [
            client_frame(0x81, good.as_bytes()),
            client_frame(0x82, &[0xff]),
        ]
        .concat();
        assert_eq!(report_of(&ok, chunk), None, "chunk {chunk}");
        let wire = [client_frame(0x81, b"{}"), client_frame(0x81, &bad)].concat();
        assert_eq!(report_of(&wire, chunk), Some(WireViolation::InvalidUtf8));
        let wire = client_frame(0x81, truncated);
        assert_eq!(report_of(&wire, chunk), Some(WireViolation::InvalidUtf8));
    }
    // Fragments are left to the assembler: a first text fragment without FIN may end
    // inside a character.
    assert_eq!(report_of(&client_frame(0x01, truncated), 3), None);
}

#[test]
fn a_frame_over_the_limit_fails_the_stream_at_its_header_after_the_frames_before_it() {
    let before = client_frame(0x82, &[1; 100]);
    let mut over = client_frame(0x82, &[2; 300]);
    // Only the header has arrived: nothing of the payload is needed to refuse it.
    over.truncate(8);
    let input = vec![Ok(Bytes::from([before.clone(), over].concat()))];
    let paced = FramePacedPayload::new(stream::iter(input)).max_payload(200);
    let report = paced.report();
    let out: Vec<Result<Bytes, std::io::Error>> = futures_executor_block_on(paced.collect());
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].as_ref().expect("the frame before"), &before[..]);
    assert!(out[1].is_err(), "{out:?}");
    assert_eq!(report.first(), Some(WireViolation::TooLarge { len: 300 }));
    let err = ws::ProtocolError::Io(std::io::Error::other("payload error"));
    assert_eq!(classify(&err, &report), DecodeFault::TooLarge);
}

/// Pins actix's behaviour the module docs describe: which error each violation becomes.
#[test]
fn actix_codec_errors_classify_as_the_rfc_violations() {
    use actix_decode::decode_all;
    use actix_http::ws::Codec;
    let cases: Vec<(Vec<u8>, DecodeFault)> = vec![
        (
            {
                let mut f = client_frame(0x82, b"x");
                f[1] &= 0x7f;
                f.truncate(2);
                f.push(b'x');
                f
            },
            DecodeFault::Protocol(ProtocolViolation::UnmaskedFrame),
        ),
        (
            client_frame(0x83, b""),
            DecodeFault::Protocol(ProtocolViolation::UnknownOpcode(3)),
        ),
        (
            client_frame(0x09, b""),
            DecodeFault::Protocol(ProtocolViolation::FragmentedControlFrame),
        ),
        (
            client_frame(0x89, &[0; 126]),
            DecodeFault::Protocol(ProtocolViolation::ControlFrameTooLong(126)),
        ),
        (
            client_frame(0x88, &[3]),
            DecodeFault::Protocol(ProtocolViolation::InvalidClosePayload),
        ),
        (
            client_frame(0x88, &1005u16.to_be_bytes()),
            DecodeFault::Protocol(ProtocolViolation::InvalidClosePayload),
        ),
        (
            client_frame(0x80, b"x"),
            DecodeFault::Protocol(ProtocolViolation::ContinuationWithoutStart),
        ),
        (
            [client_frame(0x02, b"x"), client_frame(0x82, b"y")].concat(),
            DecodeFault::Protocol(ProtocolViolation::DataFrameInFragmentedMessage),
        ),
        (client_frame(0x82, &[0; 300]), DecodeFault::TooLarge),
    ];
    for (wire, want) in cases {
        let err = decode_all(Codec::new().max_size(200), &wire);
        assert_eq!(classify(&err, &WireReport::default()), want, "{err:?}");
    }
    // Reserved bits come out as an I/O error: only the report tells them apart.
    let wire = client_frame(0xc2, b"x");
    let err = decode_all(Codec::new(), &wire);
    assert!(matches!(err, ws::ProtocolError::Io(_)), "{err:?}");
    assert_eq!(
        classify(&err, &WireReport::default()),
        DecodeFault::ConnectionLost
    );
    let report = WireReport::default();
    report.record(WireViolation::ReservedBits { rsv: 0b100 });
    assert_eq!(
        classify(&err, &report),
        DecodeFault::Protocol(ProtocolViolation::ReservedBits { rsv: 0b100 })
    );
}

mod actix_decode {
    use actix_http::ws::{Codec, ProtocolError};
    use bytes::BytesMut;

    /// Decodes `wire` until the codec fails; panics if it never does.
    pub fn decode_all(mut codec: Codec, wire: &[u8]) -> ProtocolError {
        use actix_codec::Decoder;
        let mut buf = BytesMut::from(wire);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => panic!("decoded everything without an error"),
                Err(e) => return e,
            }
        }
    }
}

fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(f)
}
