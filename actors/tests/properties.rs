//! Randomized input for the three wire entry points: control messages (JSON text frames),
//! the `GET /v1/stream` query string and binary audio frames.
//!
//! Each property can fail: parsers are compared against a small model of the documented
//! contract (docs/protocol.md), not against themselves. That model and the checks live in
//! `support/wire_contract.rs`, which the fuzz targets in `fuzz/` include too, so they
//! assert the same invariants on coverage-guided input.

#[path = "support/wire_contract.rs"]
mod wire_contract;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Map, Value};
use voxrt_actors::audio::{Encoding, InputFormat};
use voxrt_actors::error::{AdmissionError, SessionError};
use voxrt_actors::protocol::{parse_query, ClientMessage, StreamParams};
use voxrt_actors::settings::VadSettings;
use wire_contract::{
    check_admission_error, check_audio, check_control_text, check_message, check_query_text,
    check_session_error, control_model, depth, form_decode, json_sources, CONTROL_CODES,
    KNOWN_PARAMS, MAX_ECHO,
};

fn config() -> ProptestConfig {
    ProptestConfig {
        // PROPTEST_CASES=N for a longer run.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(384),
        // CI runs from a clean tree; no regression files are written into the repository.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A violation of the wire contract, as a proptest failure (shrunk and reported).
fn contract(checked: Result<(), String>) -> Result<(), TestCaseError> {
    checked.map_err(TestCaseError::fail)
}

// ---------------------------------------------------------------------------------------
// Control messages
// ---------------------------------------------------------------------------------------

/// Strings for JSON values and keys: arbitrary Unicode, and runs of brackets, quotes and
/// backslashes (which must not count toward nesting inside a string).
fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\[\\]{}\"\\\\a :,]{0,24}",
        "(ping|flush|stop|type|id)",
        "[a-z]{60,80}",
    ]
}

fn json_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Binary fractions: exact in decimal, so text round trips compare equal.
        (-1_000_000i32..1_000_000).prop_map(|n| Value::from(f64::from(n) / 64.0)),
        json_string().prop_map(Value::String),
    ]
    .boxed()
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(json_string(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object that is often, but not always, a valid control message.
fn control_like() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        3 => "(ping|flush|stop)".prop_map(Value::String),
        1 => "(pong|PING|ping |)".prop_map(Value::String),
        1 => json_value(),
    ];
    (
        prop::collection::btree_map(json_string(), json_value(), 0..4),
        prop::option::weighted(0.8, kind),
        prop::option::of(json_value()),
    )
        .prop_map(|(rest, kind, id)| {
            let mut map: Map<String, Value> = rest.into_iter().collect();
            if let Some(k) = kind {
                map.insert("type".into(), k);
            }
            if let Some(id) = id {
                map.insert("id".into(), id);
            }
            Value::Object(map)
        })
}

/// Text that looks like JSON some of the time.
fn control_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..256)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "[\\[\\]{}\":,\\\\ a-z0-9.eE+-]{0,96}",
        control_like().prop_map(|v| v.to_string()),
        // Valid JSON cut short or with a byte changed.
        (
            control_like(),
            any::<prop::sample::Index>(),
            "[\\[\\]{}\",:\\\\x]"
        )
            .prop_map(|(v, at, c)| {
                let mut s = v.to_string();
                let mut i = at.index(s.len() + 1);
                while !s.is_char_boundary(i) {
                    i -= 1;
                }
                if c == "x" {
                    s.truncate(i)
                } else {
                    s.insert_str(i, &c)
                }
                s
            }),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any text: no panic; JSON gives what the model of the contract says, anything else
    /// is refused; errors carry a documented code and a clean, short message.
    #[test]
    fn control_any_text_is_handled(text in control_text(), max_depth in 0usize..12) {
        contract(check_control_text(&text, max_depth))?;
    }

    /// Any JSON value, compact or pretty: the parser agrees with the model of the contract.
    #[test]
    fn control_matches_model(v in prop_oneof![3 => control_like(), 1 => json_value()],
                             max_depth in 0usize..10, pretty in any::<bool>()) {
        let text = if pretty {
            serde_json::to_string_pretty(&v).unwrap()
        } else {
            v.to_string()
        };
        let got = ClientMessage::parse(&text, max_depth);
        prop_assert_eq!(&got, &control_model(&v, max_depth), "text: {}", text);
        if let Err(e) = got {
            let sources = json_sources(&text);
            let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
            contract(check_session_error(&e, &CONTROL_CODES, &sources))?;
        }
    }

    /// `{"type":"ping","id":V}` parses to `Ping { id: V }` exactly when its nesting
    /// (1 + depth of V) is within the limit, and is `json_too_deep` when it is over.
    #[test]
    fn ping_round_trips_up_to_the_depth_limit(id in json_value(), slack in 0usize..3,
                                              under in any::<prop::sample::Index>(),
                                              id_first in any::<bool>(), spaced in any::<bool>()) {
        let id_text = id.to_string();
        let sep = if spaced { " " } else { "" };
        let text = if id_first {
            format!("{{{sep}\"id\"{sep}:{sep}{id_text}{sep},{sep}\"type\":\"ping\"{sep}}}")
        } else {
            format!("{{{sep}\"type\":\"ping\",{sep}\"id\":{sep}{id_text}{sep}}}")
        };
        let nesting = 1 + depth(&id);
        prop_assert_eq!(
            ClientMessage::parse(&text, nesting + slack),
            Ok(ClientMessage::Ping { id: id.clone() })
        );
        let max = under.index(nesting);
        prop_assert_eq!(
            ClientMessage::parse(&text, max),
            Err(SessionError::JsonTooDeep { max })
        );
    }

    /// Brackets, quotes and backslashes inside strings do not count toward nesting.
    #[test]
    fn brackets_in_strings_do_not_nest(id in "[\\[\\]{}\"\\\\]{0,200}") {
        let text = serde_json::json!({"type": "ping", "id": id}).to_string();
        prop_assert_eq!(
            ClientMessage::parse(&text, 1),
            Ok(ClientMessage::Ping { id: Value::String(id) })
        );
    }

    /// Deep nesting is refused before parsing and never overflows the stack, even when the
    /// limit is above serde_json's own recursion limit.
    #[test]
    fn deep_nesting_is_bounded(n in 0usize..4000, max_depth in 0usize..400, obj in any::<bool>()) {
        let (open, close) = if obj { ("{\"a\":", "}") } else { ("[", "]") };
        let text = format!(
            "{{\"type\":\"ping\",\"id\":{}0{}}}",
            open.repeat(n),
            close.repeat(n)
        );
        match ClientMessage::parse(&text, max_depth) {
            Ok(ClientMessage::Ping { id }) => {
                prop_assert!(n < max_depth);
                prop_assert_eq!(depth(&id), n);
            }
            Ok(other) => prop_assert!(false, "parsed as {other:?}"),
            Err(SessionError::JsonTooDeep { max }) => {
                prop_assert_eq!(max, max_depth);
                prop_assert!(n >= max_depth);
            }
            // Within the limit but over serde_json's recursion limit (128).
            Err(e) => {
                prop_assert!(n < max_depth && n >= 127, "{e:?}");
                contract(check_session_error(&e, &CONTROL_CODES, &[]))?;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Query string
// ---------------------------------------------------------------------------------------

/// A valid `GET /v1/stream` query, before encoding.
#[derive(Debug, Clone)]
struct QuerySpec {
    sample_rate: u32,
    channels: u16,
    encoding: Encoding,
    return_audio: Option<(&'static str, bool)>,
    vad_threshold: Option<f32>,
    vad_silence_ms: Option<u32>,
    vad_min_speech_ms: Option<u32>,
    access_token: Option<String>,
}

impl QuerySpec {
    /// (key, value) pairs in KNOWN_PARAMS order, absent ones left out.
    fn pairs(&self) -> Vec<(String, String)> {
        let values = [
            self.access_token.clone(),
            Some(self.sample_rate.to_string()),
            Some(self.channels.to_string()),
            Some(self.encoding.as_str().to_owned()),
            self.return_audio.map(|(s, _)| s.to_owned()),
            self.vad_threshold.map(|t| t.to_string()),
            self.vad_silence_ms.map(|s| s.to_string()),
            self.vad_min_speech_ms.map(|m| m.to_string()),
        ];
        KNOWN_PARAMS
            .iter()
            .zip(values)
            .filter_map(|(k, v)| v.map(|v| ((*k).to_owned(), v)))
            .collect()
    }

    fn expected(&self, defaults: &VadSettings) -> StreamParams {
        StreamParams {
            input: InputFormat {
                sample_rate: self.sample_rate,
                channels: self.channels,
                encoding: self.encoding,
            },
            return_audio: self.return_audio.is_some_and(|(_, b)| b),
            vad: VadSettings {
                threshold: self.vad_threshold.unwrap_or(defaults.threshold),
                silence_ms: self.vad_silence_ms.unwrap_or(defaults.silence_ms),
                min_speech_ms: self.vad_min_speech_ms.unwrap_or(defaults.min_speech_ms),
            },
        }
    }
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::PcmS16le), Just(Encoding::PcmF32le)]
}

fn threshold() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.0f32), Just(1.0f32), 0.0f32..=1.0f32]
}

fn vad_settings() -> impl Strategy<Value = VadSettings> {
    (threshold(), 50u32..=10_000, 0u32..=10_000).prop_map(|(threshold, silence_ms, min)| {
        VadSettings {
            threshold,
            silence_ms,
            min_speech_ms: min,
        }
    })
}

fn query_spec() -> impl Strategy<Value = QuerySpec> {
    (
        prop_oneof![Just(8_000u32), Just(192_000u32), 8_000u32..=192_000],
        1u16..=8,
        encoding(),
        prop::option::of(prop::sample::select(vec![
            ("true", true),
            ("1", true),
            ("false", false),
            ("0", false),
        ])),
        prop::option::of(threshold()),
        prop::option::of(prop_oneof![Just(50u32), Just(10_000u32), 50u32..=10_000]),
        prop::option::of(prop_oneof![Just(0u32), Just(10_000u32), 0u32..=10_000]),
        prop::option::of(prop_oneof![
            any::<String>(),
            "[ &=+%#?;/a-zA-Z0-9._~-]{0,64}"
        ]),
    )
        .prop_map(|(sr, ch, enc, ra, t, s, m, tok)| QuerySpec {
            sample_rate: sr,
            channels: ch,
            encoding: enc,
            return_audio: ra,
            vad_threshold: t,
            vad_silence_ms: s,
            vad_min_speech_ms: m,
            access_token: tok,
        })
}

/// How one pair is percent-encoded: minimal with `+` for space, minimal with `%20`, or
/// every byte escaped (upper or lower case hex).
#[derive(Debug, Clone, Copy)]
enum Style {
    Plus,
    Percent20,
    AllUpper,
    AllLower,
}

fn style() -> impl Strategy<Value = Style> {
    prop_oneof![
        Just(Style::Plus),
        Just(Style::Percent20),
        Just(Style::AllUpper),
        Just(Style::AllLower),
    ]
}

fn encode(s: &str, style: Style) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        let unreserved = b.is_ascii_alphanumeric() || b"-._~".contains(&b);
        match style {
            Style::Plus | Style::Percent20 if unreserved => out.push(b as char),
            Style::Plus if b == b' ' => out.push('+'),
            Style::AllLower => out.push_str(&format!("%{b:02x}")),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn encode_query(pairs: &[(String, String)], styles: &[Style]) -> String {
    pairs
        .iter()
        .zip(styles.iter().cycle())
        .map(|((k, v), s)| format!("{}={}", encode(k, *s), encode(v, *s)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A pair list shuffled into any order, with a style per pair.
fn shuffled_query() -> impl Strategy<Value = (QuerySpec, Vec<(String, String)>, Vec<Style>)> {
    query_spec().prop_flat_map(|spec| {
        let pairs = spec.pairs();
        (
            Just(spec),
            Just(pairs).prop_shuffle(),
            prop::collection::vec(style(), 1..9),
        )
    })
}

/// A value the named parameter must refuse.
fn bad_value(param: &'static str) -> BoxedStrategy<String> {
    let letters = "[a-zA-Z_ !]{0,10}";
    match param {
        "sample_rate" => prop_oneof![
            (0u32..8_000).prop_map(|v| v.to_string()),
            (192_001u64..).prop_map(|v| v.to_string()),
            Just("99999999999999999999999".to_owned()),
            Just("-48000".to_owned()),
            Just("48000.0".to_owned()),
            letters,
        ]
        .boxed(),
        "channels" => prop_oneof![
            Just("0".to_owned()),
            (9u64..).prop_map(|v| v.to_string()),
            Just("-1".to_owned()),
            Just("1.5".to_owned()),
            letters,
        ]
        .boxed(),
        "encoding" => prop_oneof![
            "[a-z0-9_]{0,12}",
            Just("PCM_S16LE".to_owned()),
            Just("pcm_s16le ".to_owned()),
            Just("pcm_f32be".to_owned()),
        ]
        .prop_filter("valid encoding", |e| Encoding::parse(e).is_none())
        .boxed(),
        "return_audio" => prop_oneof![
            "[a-zA-Z0-9]{0,6}",
            Just("TRUE".to_owned()),
            Just("yes".to_owned()),
            Just("2".to_owned()),
        ]
        .prop_filter("valid flag", |v| {
            !["true", "false", "1", "0"].contains(&v.as_str())
        })
        .boxed(),
        "vad_threshold" => prop_oneof![
            (1.0001f32..1e30).prop_map(|v| v.to_string()),
            (-1e30f32..-0.0001).prop_map(|v| v.to_string()),
            Just("NaN".to_owned()),
            Just("inf".to_owned()),
            Just("-inf".to_owned()),
            Just("1.0000001".to_owned()),
            letters.prop_filter("letters", |v| !v.is_empty()),
        ]
        .boxed(),
        "vad_silence_ms" => prop_oneof![
            (0u32..50).prop_map(|v| v.to_string()),
            (10_001u64..).prop_map(|v| v.to_string()),
            letters,
        ]
        .boxed(),
        "vad_min_speech_ms" => prop_oneof![
            (10_001u64..).prop_map(|v| v.to_string()),
            Just("-1".to_owned()),
            letters,
        ]
        .boxed(),
        _ => unreachable!(),
    }
}

fn bad_param() -> impl Strategy<Value = (&'static str, String)> {
    // Every parameter but access_token (which the query parser passes on to auth).
    prop::sample::select(KNOWN_PARAMS[1..].to_vec()).prop_flat_map(|p| (Just(p), bad_value(p)))
}

/// Query-ish text: arbitrary, or known and unknown keys with arbitrary values.
fn query_text() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(KNOWN_PARAMS.to_vec()).prop_map(str::to_owned),
        "[a-z_]{0,12}",
        any::<String>(),
    ];
    let value = prop_oneof!["[0-9.+-]{0,8}", "[a-z0-9_]{0,10}", any::<String>()];
    prop_oneof![
        any::<String>(),
        "[a-z_=&%0-9A-Fa-f+;#?]{0,96}",
        (
            prop::collection::vec((key, value), 0..10),
            prop::collection::vec(style(), 1..4)
        )
            .prop_map(|(pairs, styles)| encode_query(&pairs, &styles)),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any query text: no panic; refusals are `invalid_parameter` with a clean message;
    /// anything accepted is within the documented ranges.
    #[test]
    fn query_any_text_is_handled(raw in query_text(), defaults in vad_settings()) {
        contract(check_query_text(&raw, &defaults))?;
    }

    /// A valid query, keys in any order and any percent-encoding, gives exactly the
    /// declared parameters (the VAD defaults where not overridden).
    #[test]
    fn valid_query_parses((spec, pairs, styles) in shuffled_query(), defaults in vad_settings()) {
        let raw = encode_query(&pairs, &styles);
        let query = parse_query(&raw);
        prop_assert!(query.is_ok(), "{raw}: {query:?}");
        let query = query.unwrap();
        prop_assert_eq!(query.len(), pairs.len());
        for (k, v) in &pairs {
            prop_assert_eq!(query.get(k), Some(v));
        }
        prop_assert_eq!(
            StreamParams::from_query(&query, &defaults),
            Ok(spec.expected(&defaults)),
            "query: {}", raw
        );
    }

    /// One bad or missing parameter in an otherwise valid query is refused with
    /// `invalid_parameter` naming it.
    #[test]
    fn bad_parameter_is_named((spec, pairs, styles) in shuffled_query(),
                              (param, value) in bad_param(),
                              missing in any::<prop::sample::Index>(),
                              drop_required in any::<bool>(),
                              defaults in vad_settings()) {
        let mut pairs = pairs;
        let param = if drop_required {
            let param = ["sample_rate", "channels", "encoding"][missing.index(3)];
            pairs.retain(|(k, _)| k != param);
            param
        } else {
            match pairs.iter_mut().find(|(k, _)| k == param) {
                Some(pair) => pair.1 = value,
                None => pairs.push((param.to_owned(), value)),
            }
            param
        };
        let raw = encode_query(&pairs, &styles);
        let query = parse_query(&raw).expect("distinct keys");
        let got = StreamParams::from_query(&query, &defaults);
        match &got {
            Err(e @ AdmissionError::InvalidParameter { param: named, message }) => {
                prop_assert_eq!(*named, param, "query {}: {}", raw, message);
                prop_assert!(message.contains(param), "{message}");
                let decoded = form_decode(&raw);
                contract(check_admission_error(e, &[raw.as_str(), decoded.as_str()]))?;
            }
            other => prop_assert!(false, "query {raw} of {spec:?}: {other:?}"),
        }
    }

    /// A key given twice is refused, even when the two spellings differ only in
    /// percent-encoding.
    #[test]
    fn duplicate_keys_are_refused((_spec, pairs, styles) in shuffled_query(),
                                  which in any::<prop::sample::Index>(),
                                  at in any::<prop::sample::Index>(),
                                  same_value in any::<bool>(), other_value in "[0-9a-z]{0,6}",
                                  dup_style in style()) {
        let (key, value) = pairs[which.index(pairs.len())].clone();
        let value = if same_value { value } else { other_value };
        let dup = format!("{}={}", encode(&key, dup_style), encode(&value, dup_style));
        let mut parts: Vec<String> = encode_query(&pairs, &styles)
            .split('&')
            .map(str::to_owned)
            .collect();
        parts.insert(at.index(parts.len() + 1), dup);
        let raw = parts.join("&");
        match parse_query(&raw) {
            Err(ref e @ AdmissionError::InvalidParameter { param: "query", ref message }) => {
                prop_assert!(message.contains("more than once"), "{message}");
                let decoded = form_decode(&raw);
                contract(check_admission_error(e, &[raw.as_str(), decoded.as_str()]))?;
            }
            other => prop_assert!(false, "{raw}: {other:?}"),
        }
    }

    /// An unknown key is refused (a typo must not be ignored).
    #[test]
    fn unknown_key_is_refused((_spec, pairs, styles) in shuffled_query(),
                              key in "[a-zA-Z_]{1,80}", defaults in vad_settings()) {
        prop_assume!(!KNOWN_PARAMS.contains(&key.as_str()));
        let mut pairs = pairs;
        pairs.push((key, "1".to_owned()));
        let raw = encode_query(&pairs, &styles);
        let query = parse_query(&raw).expect("distinct keys");
        match StreamParams::from_query(&query, &defaults) {
            Err(e @ AdmissionError::InvalidParameter { param: "query", .. }) => {
                contract(check_admission_error(&e, &[raw.as_str(), &form_decode(&raw)]))?;
            }
            other => prop_assert!(false, "{raw}: {other:?}"),
        }
    }
}

/// Over `MAX_QUERY_BYTES` is refused whatever it holds.
#[test]
fn oversized_query_is_refused() {
    let raw = format!(
        "sample_rate=16000&channels=1&encoding=pcm_s16le&access_token={}",
        "a".repeat(5000)
    );
    match parse_query(&raw) {
        Err(AdmissionError::InvalidParameter { param: "query", .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// A key that spells out the allowed-parameter list: the refusal lists the same text,
/// which is the server's own and not an echo (found by the `stream_query` fuzz target).
#[test]
fn allowed_list_in_the_query_is_not_an_echo() {
    let raw = "]+encoding, return_audio, vad_threshold, vad_silence_ms, vad_min_s&+";
    let defaults = VadSettings {
        threshold: 0.5,
        silence_ms: 500,
        min_speech_ms: 250,
    };
    assert_eq!(check_query_text(raw, &defaults), Ok(()));
}

/// The shared checks are not vacuous: each kind of bad message is caught.
#[test]
fn message_check_catches_violations() {
    let long = "x".repeat(MAX_ECHO + 1);
    assert!(check_message("", &[]).is_err());
    assert!(check_message(&"m".repeat(513), &[]).is_err());
    assert!(check_message("bad value at src/protocol.rs", &[]).is_err());
    assert!(check_message("bad value Some(3)", &["3"]).is_err());
    assert!(check_message(&format!("bad value {long}"), &[&long]).is_err());
    assert!(check_message(&format!("bad value {long}"), &["", &long]).is_err());
    // Client text: leak patterns it holds and quoted runs are allowed.
    assert_eq!(check_message("bad value src/x", &["src/x"]), Ok(()));
    let quoted = format!("bad value \"{}\"", "x".repeat(MAX_ECHO));
    assert_eq!(check_message(&quoted, &[&long]), Ok(()));
    assert!(check_message(&format!("{quoted}x"), &[&long]).is_ok());
    assert!(check_message(&format!("bad {long}\""), &[&long]).is_err());
}

// ---------------------------------------------------------------------------------------
// Audio frames
// ---------------------------------------------------------------------------------------

fn input_format() -> impl Strategy<Value = InputFormat> {
    (8_000u32..=192_000, 1u16..=8, encoding()).prop_map(|(sample_rate, channels, encoding)| {
        InputFormat {
            sample_rate,
            channels,
            encoding,
        }
    })
}

/// Samples that stress decoding: full scale both ways, beyond it, huge, tiny, non-finite.
fn f32_sample() -> impl Strategy<Value = f32> {
    prop_oneof![
        -1.0f32..=1.0,
        prop::sample::select(vec![
            1.0f32,
            -1.0,
            1.0000001,
            -1.0000001,
            2.0,
            3e38,
            -3e38,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-45,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]),
        any::<f32>(),
    ]
}

/// A frame: random bytes, or whole sample frames of stressing values (sometimes with a
/// trailing partial frame).
fn frame_for(format: InputFormat) -> BoxedStrategy<Vec<u8>> {
    let channels = usize::from(format.channels);
    let samples = match format.encoding {
        Encoding::PcmS16le => prop::collection::vec(
            prop_oneof![Just(i16::MIN), Just(i16::MAX), any::<i16>()],
            0..channels * 48,
        )
        .prop_map(|v| v.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>())
        .boxed(),
        Encoding::PcmF32le => prop::collection::vec(f32_sample(), 0..channels * 48)
            .prop_map(|v| v.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>())
            .boxed(),
    };
    prop_oneof![prop::collection::vec(any::<u8>(), 0..600), samples,].boxed()
}

proptest! {
    #![proptest_config(config())]

    /// `check_audio_frame` accepts exactly the non-empty whole-frame buffers within the
    /// limit; `decode_to_mono` then appends one finite sample in [-1, 1] per frame, equal
    /// to the mean of the channels, and leaves what `out` held untouched.
    #[test]
    fn audio_frames((format, data) in input_format().prop_flat_map(|f| (Just(f), frame_for(f))),
                    max_binary in prop_oneof![0usize..700, Just(usize::MAX)],
                    max_text in any::<usize>(),
                    prefix in prop::collection::vec(any::<f32>(), 0..4)) {
        contract(check_audio(&format, &data, max_binary, max_text, &prefix))?;
    }
}
