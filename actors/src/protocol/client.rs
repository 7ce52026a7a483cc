//! What clients send: the stream's query parameters (checked before the upgrade), audio
//! frames and control messages.

use crate::audio::{Encoding, InputFormat};
use crate::error::{AdmissionError, SessionError};
use crate::settings::VadSettings;
use serde_json::Value;
use std::collections::HashMap;

/// Inclusive bounds of `sample_rate`, in Hz.
pub const SAMPLE_RATE_RANGE: (u32, u32) = (8_000, 192_000);
/// Inclusive bounds of `channels`.
pub const CHANNELS_RANGE: (u16, u16) = (1, 8);
/// Inclusive bounds of `vad_silence_ms`.
pub const VAD_SILENCE_MS_RANGE: (u32, u32) = (50, 10_000);
/// Inclusive bounds of `vad_min_speech_ms`.
pub const VAD_MIN_SPEECH_MS_RANGE: (u32, u32) = (0, 10_000);

/// A client's validated `GET /v1/stream` parameters (also kept in the cluster's session
/// record, for a takeover on another node).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StreamParams {
    /// What the client sends.
    pub input: InputFormat,
    /// Send pipeline audio back as binary frames (16 kHz mono pcm_s16le).
    pub return_audio: bool,
    /// VAD tunables after the client's overrides.
    pub vad: VadSettings,
}

fn invalid(param: &'static str, message: String) -> AdmissionError {
    AdmissionError::InvalidParameter { param, message }
}

fn parse_in_range<T>(
    query: &HashMap<String, String>,
    param: &'static str,
    (lo, hi): (T, T),
) -> Result<Option<T>, AdmissionError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(raw) = query.get(param) else {
        return Ok(None);
    };
    match raw.trim().parse::<T>() {
        Ok(v) if v >= lo && v <= hi => Ok(Some(v)),
        _ => Err(invalid(
            param,
            format!(
                "{param} must be a number in {lo}..={hi}; got \"{}\"",
                clip(raw)
            ),
        )),
    }
}

/// At most 32 characters of client text, for error messages.
fn clip(s: &str) -> String {
    s.chars().take(32).collect()
}

/// Query parameters of `GET /v1/stream`. `access_token` is the browser's way to present a
/// credential (it cannot set headers on a WebSocket); the server's auth consumes it.
pub const KNOWN_PARAMS: [&str; 8] = [
    "access_token",
    "sample_rate",
    "channels",
    "encoding",
    "return_audio",
    "vad_threshold",
    "vad_silence_ms",
    "vad_min_speech_ms",
];

/// Query parameters of a resume (`GET /v1/stream?resume=...`): the session's format is
/// fixed, so no format or VAD parameter may come with it.
pub const RESUME_PARAMS: [&str; 4] = ["resume", "resume_token", "last_seq", "access_token"];

/// Validates a resume's query: the session id, its resume token and the last `seq` the
/// client received.
pub fn parse_resume(
    query: &HashMap<String, String>,
) -> Result<(uuid::Uuid, ResumeRequest), AdmissionError> {
    only_params(query, &RESUME_PARAMS, " with resume")?;
    let raw = query.get("resume").map(String::as_str).unwrap_or_default();
    let id = uuid::Uuid::parse_str(raw.trim()).map_err(|_| {
        invalid(
            "resume",
            format!(
                "resume must be a session id (a UUID); got \"{}\"",
                clip(raw)
            ),
        )
    })?;
    let token = match query.get("resume_token") {
        Some(t) if !t.is_empty() && t.len() <= 256 => t.clone(),
        _ => {
            return Err(invalid(
                "resume_token",
                "resume_token is required with resume: the token from session.started".into(),
            ))
        }
    };
    let last_seq = match query.get("last_seq").map(|v| v.trim().parse::<u64>()) {
        Some(Ok(n)) => n,
        Some(Err(_)) | None => {
            return Err(invalid(
                "last_seq",
                "last_seq is required with resume: the seq of the last message received, a non-negative integer".into(),
            ))
        }
    };
    Ok((id, ResumeRequest { token, last_seq }))
}

/// A resume's credentials: the token from `session.started` and the last `seq` the client
/// has.
#[derive(Debug, Clone)]
pub struct ResumeRequest {
    /// The resume token, as the client sent it.
    pub token: String,
    /// The last `seq` the client received.
    pub last_seq: u64,
}

/// Refuses the first (in sorted order) parameter of `query` not in `allowed`, naming it
/// (followed by `context`) and listing what is allowed.
fn only_params(
    query: &HashMap<String, String>,
    allowed: &[&str],
    context: &str,
) -> Result<(), AdmissionError> {
    let mut unknown: Vec<&str> = query
        .keys()
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    unknown.sort_unstable();
    match unknown.first() {
        Some(first) => Err(invalid(
            "query",
            format!(
                "unknown parameter \"{}\"{context}; allowed: {}",
                clip(first),
                allowed.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// Longest query string `parse_query` reads, bytes; longer is refused without parsing.
pub const MAX_QUERY_BYTES: usize = 4096;

/// Splits a raw (URL-encoded) query string into parameters. A parameter given twice is an
/// error rather than "last wins", so a proxy and the server cannot disagree on its value.
pub fn parse_query(raw: &str) -> Result<HashMap<String, String>, AdmissionError> {
    if raw.len() > MAX_QUERY_BYTES {
        return Err(invalid(
            "query",
            format!("the query string is over {MAX_QUERY_BYTES} bytes"),
        ));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
        .map_err(|_| invalid("query", "the query string is not valid URL encoding".into()))?;
    let mut query = HashMap::with_capacity(pairs.len());
    for (key, value) in pairs {
        if query.contains_key(&key) {
            return Err(invalid(
                "query",
                format!("parameter \"{}\" is given more than once", clip(&key)),
            ));
        }
        query.insert(key, value);
    }
    Ok(query)
}

/// Checks a binary frame against the session's declared format and frame limit; returns
/// the number of sample frames it holds. Every rejection is a non-fatal error except
/// [`SessionError::FrameTooLarge`], which closes 1009.
pub fn check_audio_frame(
    input: &InputFormat,
    data: &[u8],
    max_binary: usize,
    max_text: usize,
) -> Result<u64, SessionError> {
    if data.len() > max_binary {
        return Err(SessionError::FrameTooLarge {
            max_binary,
            max_text,
        });
    }
    if data.is_empty() {
        return Err(SessionError::EmptyAudioFrame);
    }
    let frame_bytes = input.frame_bytes();
    if !data.len().is_multiple_of(frame_bytes) {
        return Err(SessionError::PartialSampleFrame {
            len: data.len(),
            frame_bytes,
            channels: input.channels,
            encoding: input.encoding.as_str(),
        });
    }
    Ok((data.len() / frame_bytes) as u64)
}

/// Whether the arrays and objects in `text` nest at most `max` deep.
/// Runs before parsing so a deeply nested frame costs no allocation; brackets inside
/// strings do not count. Malformed JSON is left for the parser to report.
fn nesting_within(text: &str, max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

impl StreamParams {
    /// Validates the query string of `GET /v1/stream`; the error names the first bad
    /// parameter and what is allowed.
    pub fn from_query(
        query: &HashMap<String, String>,
        vad_defaults: &VadSettings,
    ) -> Result<Self, AdmissionError> {
        only_params(query, &KNOWN_PARAMS, "")?;
        let sample_rate =
            parse_in_range(query, "sample_rate", SAMPLE_RATE_RANGE)?.ok_or_else(|| {
                invalid(
                    "sample_rate",
                    "sample_rate is required: 8000..=192000 (Hz)".into(),
                )
            })?;
        let channels = parse_in_range(query, "channels", CHANNELS_RANGE)?
            .ok_or_else(|| invalid("channels", "channels is required: 1..=8".into()))?;
        let encoding = match query.get("encoding") {
            None => {
                return Err(invalid(
                    "encoding",
                    "encoding is required: pcm_s16le or pcm_f32le".into(),
                ))
            }
            Some(e) => Encoding::parse(e).ok_or_else(|| {
                invalid(
                    "encoding",
                    format!(
                        "encoding must be pcm_s16le or pcm_f32le; got \"{}\"",
                        clip(e)
                    ),
                )
            })?,
        };
        let return_audio = match query.get("return_audio").map(String::as_str) {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => {
                return Err(invalid(
                    "return_audio",
                    format!(
                        "return_audio must be true or false; got \"{}\"",
                        clip(other)
                    ),
                ))
            }
        };
        let mut vad = *vad_defaults;
        if let Some(t) = parse_in_range(query, "vad_threshold", (0.0f32, 1.0f32))? {
            vad.threshold = t;
        }
        if let Some(s) = parse_in_range(query, "vad_silence_ms", VAD_SILENCE_MS_RANGE)? {
            vad.silence_ms = s;
        }
        if let Some(m) = parse_in_range(query, "vad_min_speech_ms", VAD_MIN_SPEECH_MS_RANGE)? {
            vad.min_speech_ms = m;
        }
        Ok(StreamParams {
            input: InputFormat {
                sample_rate,
                channels,
                encoding,
            },
            return_audio,
            vad,
        })
    }
}

/// A control message from the client (a text frame).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// Answered with `pong` carrying the same `id`; also counts as activity.
    Ping {
        /// Echoed back untouched (any JSON value; `null` when absent).
        id: Value,
    },
    /// Answered with `flushed` once everything sent before it went through the pipeline.
    Flush,
    /// Flush, then `session.closed` and close 1000.
    Stop,
}

impl ClientMessage {
    /// Parses a text frame whose arrays and objects nest at most `max_depth` deep. Errors
    /// name the problem without echoing the input back.
    pub fn parse(text: &str, max_depth: usize) -> Result<Self, SessionError> {
        if !nesting_within(text, max_depth) {
            return Err(SessionError::JsonTooDeep { max: max_depth });
        }
        let value: Value = serde_json::from_str(text).map_err(|e| SessionError::InvalidJson {
            detail: format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            )
            .to_lowercase(),
        })?;
        let Value::Object(mut map) = value else {
            return Err(SessionError::MissingType);
        };
        let kind = match map.get("type") {
            Some(Value::String(k)) => k.as_str(),
            _ => return Err(SessionError::MissingType),
        };
        match kind {
            "ping" => Ok(ClientMessage::Ping {
                id: map.remove("id").unwrap_or(Value::Null),
            }),
            "flush" => Ok(ClientMessage::Flush),
            "stop" => Ok(ClientMessage::Stop),
            other => Err(SessionError::UnknownMessageType {
                kind: other.chars().take(64).collect(),
            }),
        }
    }
}
