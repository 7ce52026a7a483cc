//! The documented wire contract (docs/protocol.md) of the three entry points a client
//! reaches: control messages (JSON text frames), the `GET /v1/stream` query string and
//! binary audio frames.
//!
//! Shared, as one file, by the proptest suite (`actors/tests/properties.rs`, through
//! `#[path]`) and the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, through `#[path]`), so
//! the randomized tests and the coverage-guided runs assert the same invariants. It depends
//! only on `std`, `serde_json`, `percent-encoding` and `voxrt_actors`.
//!
//! Every check returns `Err` with a description of the violation: the proptest suite turns
//! it into `TestCaseError::fail`, the fuzz targets panic on it.

// Not every user of this file uses every item.
#![allow(dead_code)]

use percent_encoding::percent_decode_str;
use serde_json::Value;
use voxrt_actors::audio::{decode_to_mono, Encoding, InputFormat};
use voxrt_actors::error::{AdmissionError, SessionError};
use voxrt_actors::protocol::{check_audio_frame, parse_query, ClientMessage, StreamParams};
use voxrt_actors::settings::VadSettings;

/// `Err(format!(...))` out of the enclosing function unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {{
        let holds: bool = $cond;
        if !holds {
            return Err(format!($($fmt)+));
        }
    }};
}

// ---------------------------------------------------------------------------------------
// Error codes and client-facing messages
// ---------------------------------------------------------------------------------------

/// Every `code` a session error from these entry points may carry (docs/protocol.md).
pub const SESSION_CODES: [&str; 7] = [
    "invalid_audio_frame",
    "empty_audio_frame",
    "frame_too_large",
    "json_too_deep",
    "invalid_json",
    "invalid_message",
    "unknown_message_type",
];
/// The subset `ClientMessage::parse` may return.
pub const CONTROL_CODES: [&str; 4] = [
    "json_too_deep",
    "invalid_json",
    "invalid_message",
    "unknown_message_type",
];
/// The subset `check_audio_frame` may return.
pub const AUDIO_CODES: [&str; 3] = [
    "invalid_audio_frame",
    "empty_audio_frame",
    "frame_too_large",
];
/// The only code the query parsers may return.
pub const ADMISSION_CODES: [&str; 1] = ["invalid_parameter"];

/// The parameters of `GET /v1/stream` (docs/protocol.md), in this order: the parser's own
/// list, so the contract and the parser cannot name different parameters.
pub use voxrt_actors::protocol::KNOWN_PARAMS;

/// What an `invalid_parameter` refusal may name: a parameter, or `query` for the query
/// string as a whole (size, encoding, duplicate or unknown keys).
pub fn is_admission_param(name: &str) -> bool {
    name == "query" || KNOWN_PARAMS.contains(&name)
}

/// Text that would mean an internal detail leaked into a client-facing message: Rust paths
/// and type names, `Debug` output, panic text, source file paths.
pub const LEAKS: [&str; 10] = [
    "::",
    ".rs",
    "panicked",
    "Error {",
    "Error(",
    "Some(",
    "None",
    "unwrap",
    "src/",
    "RUST_BACKTRACE",
];

/// Longest run of client text an error message may repeat.
pub const MAX_ECHO: usize = 64;

/// Longest client-facing error message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 512;

/// The server's own text in client-facing messages that is long enough, with what may
/// follow it, to pass for an echo: the list of allowed parameters (`invalid_parameter`
/// for an unknown key) and the prefix of `invalid_json` (followed by serde_json's error
/// kind and position). A client may send the same text; the message then contains it
/// without echoing anything, so the echo check reads each as a delimiter, like a quote.
pub fn server_phrases() -> [String; 2] {
    [
        KNOWN_PARAMS.join(", "),
        "text frame is not valid JSON: ".to_owned(),
    ]
}

/// A client-facing message is non-empty, at most `MAX_MESSAGE_CHARS` long, leaks nothing
/// internal and repeats at most `MAX_ECHO` characters of any client-supplied text in
/// `sources` (the raw input and its decoded forms). A leak pattern is allowed only where
/// the client's own text has it; quotes are the message's delimiters and are not counted
/// as echo, nor is the server's own text in `server_phrases`.
pub fn check_message(message: &str, sources: &[&str]) -> Result<(), String> {
    ensure!(!message.is_empty(), "empty message");
    let chars = message.chars().count();
    ensure!(
        chars <= MAX_MESSAGE_CHARS,
        "message of {chars} chars: {message:?}"
    );
    for leak in LEAKS {
        ensure!(
            !message.contains(leak) || sources.iter().any(|s| s.contains(leak)),
            "message {message:?} contains {leak:?}, which the input does not"
        );
    }
    // An echo of more than MAX_ECHO characters is a run of MAX_ECHO + 1 characters, free
    // of delimiters, that is in both the message and a source: look for every such window
    // of the (bounded) message in each source.
    let own = server_phrases()
        .iter()
        .fold(message.to_owned(), |m, phrase| {
            m.replace(phrase.as_str(), "\"")
        });
    let starts: Vec<usize> = own.char_indices().map(|(i, _)| i).collect();
    for n in 0..starts.len().saturating_sub(MAX_ECHO) {
        let end = starts.get(n + MAX_ECHO + 1).copied().unwrap_or(own.len());
        let window = &own[starts[n]..end];
        if window.contains('"') {
            continue;
        }
        ensure!(
            !sources.iter().any(|s| s.contains(window)),
            "message {message:?} echoes more than {MAX_ECHO} characters of the input"
        );
    }
    Ok(())
}

/// A session error carries a documented code, one `allowed` for its entry point, and a
/// clean message.
pub fn check_session_error(
    e: &SessionError,
    allowed: &[&str],
    sources: &[&str],
) -> Result<(), String> {
    let code = e.code();
    ensure!(SESSION_CODES.contains(&code), "undocumented code {code}");
    ensure!(
        allowed.contains(&code),
        "code {code} from the wrong entry point"
    );
    check_message(&e.to_string(), sources)
}

/// A query refusal is `invalid_parameter` (HTTP 400) naming a known parameter or `query`,
/// with a clean message.
pub fn check_admission_error(e: &AdmissionError, sources: &[&str]) -> Result<(), String> {
    ensure!(
        ADMISSION_CODES.contains(&e.code()),
        "code {} from the query parsers: {e:?}",
        e.code()
    );
    ensure!(e.http_status() == 400, "HTTP status {}", e.http_status());
    match e {
        AdmissionError::InvalidParameter { param, .. } => {
            ensure!(is_admission_param(param), "names {param:?}")
        }
        other => return Err(format!("unexpected refusal {other:?}")),
    }
    check_message(&e.to_string(), sources)
}

// ---------------------------------------------------------------------------------------
// Control messages
// ---------------------------------------------------------------------------------------

/// Below this nesting serde_json's own recursion limit (128) cannot be reached, so
/// `ClientMessage::parse` must agree with `control_model` exactly.
pub const MODEL_EXACT_DEPTH: usize = 120;

/// Nesting depth of arrays and objects (a scalar is 0).
pub fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Every string in a JSON value (keys included), for the echo check.
pub fn strings_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings_in(x, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            strings_in(x, out)
        }),
        _ => {}
    }
}

/// The input text and, when it is JSON, every string it decodes to.
pub fn json_sources(text: &str) -> Vec<String> {
    let mut sources = vec![text.to_owned()];
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        strings_in(&v, &mut sources);
    }
    sources
}

/// What `ClientMessage::parse` must return for the serialization of `v` (docs/protocol.md,
/// "Client -> server"), for `v` nested less than `MODEL_EXACT_DEPTH` deep.
pub fn control_model(v: &Value, max_depth: usize) -> Result<ClientMessage, SessionError> {
    if depth(v) > max_depth {
        return Err(SessionError::JsonTooDeep { max: max_depth });
    }
    let Value::Object(map) = v else {
        return Err(SessionError::MissingType);
    };
    match map.get("type") {
        Some(Value::String(k)) => match k.as_str() {
            "ping" => Ok(ClientMessage::Ping {
                id: map.get("id").cloned().unwrap_or(Value::Null),
            }),
            "flush" => Ok(ClientMessage::Flush),
            "stop" => Ok(ClientMessage::Stop),
            other => Err(SessionError::UnknownMessageType {
                kind: other.chars().take(MAX_ECHO).collect(),
            }),
        },
        _ => Err(SessionError::MissingType),
    }
}

/// `ClientMessage::parse` on any text: it agrees with `control_model` wherever the text is
/// JSON within `MODEL_EXACT_DEPTH`, accepts nothing serde_json refuses, and every error has
/// a control-message code and a clean message.
pub fn check_control_text(text: &str, max_depth: usize) -> Result<(), String> {
    let got = ClientMessage::parse(text, max_depth);
    let json = serde_json::from_str::<Value>(text).ok();
    match (&json, &got) {
        (Some(v), _) if depth(v) < MODEL_EXACT_DEPTH => {
            let want = control_model(v, max_depth);
            ensure!(
                got == want,
                "text {text:?} (max_depth {max_depth}): parsed {got:?}, the contract says {want:?}"
            );
        }
        (None, Ok(m)) => {
            return Err(format!(
                "parsed {m:?} from text serde_json refuses: {text:?}"
            ))
        }
        _ => {}
    }
    if let Err(e) = &got {
        let mut sources = vec![text.to_owned()];
        if let Some(v) = &json {
            strings_in(v, &mut sources);
        }
        let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
        check_session_error(e, &CONTROL_CODES, &sources)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Query string
// ---------------------------------------------------------------------------------------

/// Lossy `application/x-www-form-urlencoded` decoding of a whole query, for the echo check
/// only (a message must not echo the client's text in its decoded form either).
pub fn form_decode(raw: &str) -> String {
    percent_decode_str(&raw.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Accepted parameters are within the documented ranges.
pub fn check_stream_params(p: &StreamParams) -> Result<(), String> {
    ensure!(
        (8_000..=192_000).contains(&p.input.sample_rate),
        "sample_rate out of range: {p:?}"
    );
    ensure!(
        (1..=8).contains(&p.input.channels),
        "channels out of range: {p:?}"
    );
    ensure!(
        (0.0..=1.0).contains(&p.vad.threshold),
        "vad_threshold out of range: {p:?}"
    );
    ensure!(
        (50..=10_000).contains(&p.vad.silence_ms),
        "vad_silence_ms out of range: {p:?}"
    );
    ensure!(
        p.vad.min_speech_ms <= 10_000,
        "vad_min_speech_ms out of range: {p:?}"
    );
    Ok(())
}

/// `parse_query` then `StreamParams::from_query` on any query text, with VAD defaults
/// that are themselves in range: parameters within the documented ranges, or an
/// `invalid_parameter` refusal with a clean message.
pub fn check_query_text(raw: &str, defaults: &VadSettings) -> Result<(), String> {
    match parse_query(raw).and_then(|q| StreamParams::from_query(&q, defaults)) {
        Ok(p) => check_stream_params(&p).map_err(|e| format!("query {raw:?}: {e}")),
        Err(e) => {
            let decoded = form_decode(raw);
            check_admission_error(&e, &[raw, &decoded]).map_err(|e| format!("query {raw:?}: {e}"))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Audio frames
// ---------------------------------------------------------------------------------------

/// Largest difference allowed between a decoded sample and `reference_mono`.
pub const MONO_TOLERANCE: f64 = 1e-5;

/// What `check_audio_frame` must return (docs/protocol.md, binary frames): the number of
/// sample frames for a non-empty whole-frame buffer within `max_binary`.
pub fn audio_frame_model(
    format: &InputFormat,
    data: &[u8],
    max_binary: usize,
    max_text: usize,
) -> Result<u64, SessionError> {
    let fb = format.frame_bytes();
    if data.len() > max_binary {
        Err(SessionError::FrameTooLarge {
            max_binary,
            max_text,
        })
    } else if data.is_empty() {
        Err(SessionError::EmptyAudioFrame)
    } else if !data.len().is_multiple_of(fb) {
        Err(SessionError::PartialSampleFrame {
            len: data.len(),
            frame_bytes: fb,
            channels: format.channels,
            encoding: format.encoding.as_str(),
        })
    } else {
        Ok((data.len() / fb) as u64)
    }
}

/// Reference downmix: the mean of the channels, each read at full scale 1.0, f32 clamped
/// to [-1, 1] and non-finite read as 0 (docs/protocol.md, `encoding`). A trailing partial
/// frame is ignored.
pub fn reference_mono(format: &InputFormat, data: &[u8]) -> Vec<f64> {
    let width = format.encoding.bytes_per_sample();
    data.chunks_exact(format.frame_bytes())
        .map(|frame| {
            let sum: f64 = frame
                .chunks_exact(width)
                .map(|b| match format.encoding {
                    Encoding::PcmS16le => f64::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0,
                    Encoding::PcmF32le => {
                        let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        if v.is_finite() {
                            f64::from(v.clamp(-1.0, 1.0))
                        } else {
                            0.0
                        }
                    }
                })
                .sum();
            sum / f64::from(format.channels)
        })
        .collect()
}

/// `check_audio_frame` agrees with `audio_frame_model` (errors with an audio code and a
/// clean message); `decode_to_mono` into a buffer holding `prefix` appends one finite
/// sample in [-1, 1] per whole frame, within `MONO_TOLERANCE` of `reference_mono`, and
/// leaves `prefix` untouched bit for bit. Decoding runs on every buffer, valid or not.
pub fn check_audio(
    format: &InputFormat,
    data: &[u8],
    max_binary: usize,
    max_text: usize,
    prefix: &[f32],
) -> Result<(), String> {
    let expected = audio_frame_model(format, data, max_binary, max_text);
    let got = check_audio_frame(format, data, max_binary, max_text);
    ensure!(
        got == expected,
        "{format:?}, {} bytes, max_binary {max_binary}: got {got:?}, the contract says {expected:?}",
        data.len()
    );
    if let Err(e) = &got {
        check_session_error(e, &AUDIO_CODES, &[])?;
    }

    let mut out = prefix.to_vec();
    decode_to_mono(format, data, &mut out);
    let frames = data.len() / format.frame_bytes();
    if let Ok(n) = got {
        ensure!(
            n as usize == frames,
            "{n} frames counted, {frames} in the buffer"
        );
    }
    ensure!(
        out.len() == prefix.len() + frames,
        "{format:?}: {} samples appended to {} for {frames} frames",
        out.len().wrapping_sub(prefix.len()),
        prefix.len()
    );
    ensure!(
        out[..prefix.len()]
            .iter()
            .zip(prefix)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{format:?}: the buffer's previous contents changed: {prefix:?} -> {:?}",
        &out[..prefix.len()]
    );
    let reference = reference_mono(format, data);
    for (i, (&got, &want)) in out[prefix.len()..].iter().zip(&reference).enumerate() {
        ensure!(
            got.is_finite() && (-1.0..=1.0).contains(&got),
            "frame {i} of {format:?} decoded to {got}"
        );
        ensure!(
            (f64::from(got) - want).abs() <= MONO_TOLERANCE,
            "frame {i} of {format:?}: {got}, expected {want}"
        );
    }
    Ok(())
}
