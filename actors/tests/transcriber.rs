//! The speech-to-text binding (`src/transcription/`) against the real Moonshine tiny-en model:
//! the alsa-utils channel-name recordings come out as their words, silence as nothing, load
//! failures as the right error naming the path, and two transcribers on two threads at once
//! give the same text as one alone.
//!
//! Needs the model in `models/moonshine-tiny-en/` (`scripts/fetch-models`; scripts/test runs
//! it): without it every test here fails, saying so. The library's own VAD is off
//! (`src/transcription/mod.rs`), so every result depends only on the samples: no test depends
//! on the order tests run in or on what another thread transcribes.

#[path = "support/vad_audio.rs"]
#[allow(dead_code)]
mod vad_audio;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use vad_audio::{recording, silence};
use voxrt_actors::transcription::{ModelError, SpeechLibrary, Transcriber, MODEL_FILES};

/// The eight spoken recordings and the words each must come out with (lowercase, without
/// punctuation). The tiny model mishears two words reliably (the same on every run): it
/// transcribes Rear_Left as "Rear, laughed." and Rear_Right as "We're right.", so those
/// assert only the word it gets. The others come out as "Front, center.", "Front left.",
/// "Front right.", "Rear center.", "Side left." and "Side, right.".
const EXPECTED: [(&str, &[&str]); 8] = [
    ("Front_Center", &["front", "center"]),
    ("Front_Left", &["front", "left"]),
    ("Front_Right", &["front", "right"]),
    ("Rear_Center", &["rear", "center"]),
    ("Rear_Left", &["rear"]),
    ("Rear_Right", &["right"]),
    ("Side_Left", &["side", "left"]),
    ("Side_Right", &["side", "right"]),
];

/// `models/moonshine-tiny-en/moonshine_voice` in the workspace, checked to hold the library
/// and the model; panics with what to run when it does not.
fn model_root() -> PathBuf {
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/moonshine-tiny-en/moonshine_voice");
    let present = root.join("libmoonshine.so").is_file()
        && MODEL_FILES
            .iter()
            .all(|f| root.join("assets/tiny-en").join(f).is_file());
    assert!(
        present,
        "the speech model is not in {}: run scripts/fetch-models",
        root.display()
    );
    root
}

fn library() -> Arc<SpeechLibrary> {
    let path = model_root().join("libmoonshine.so");
    SpeechLibrary::open(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn transcriber(library: &Arc<SpeechLibrary>) -> Transcriber {
    let dir = model_root().join("assets/tiny-en");
    library.transcriber(&dir).unwrap_or_else(|e| panic!("{e}"))
}

/// `text`'s words, lowercase, without punctuation ("We're right." -> we, re, right).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Transcribes every recording in `EXPECTED` and returns (name, text), in order.
fn transcribe_all(transcriber: &mut Transcriber) -> Vec<(&'static str, String)> {
    EXPECTED
        .iter()
        .map(|(name, _)| {
            let text = transcriber
                .transcribe(&recording(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (*name, text)
        })
        .collect()
}

/// The recordings whose text lacks an expected word, as "name: text (missing word)".
fn misses(results: &[(&str, String)]) -> Vec<String> {
    results
        .iter()
        .zip(EXPECTED)
        .flat_map(|((name, text), (_, expected))| {
            let got = words(text);
            expected
                .iter()
                .filter(move |w| !got.iter().any(|g| g == *w))
                .map(move |w| format!("{name}: {text:?} (no {w:?})"))
        })
        .collect()
}

/// Each channel-name recording transcribes to text containing its words.
#[test]
fn each_channel_name_recording_transcribes_to_its_words() {
    let library = library();
    assert_eq!(library.version(), SpeechLibrary::SUPPORTED_VERSION);
    let results = transcribe_all(&mut transcriber(&library));
    assert!(misses(&results).is_empty(), "{:#?}", misses(&results));
}

/// Two seconds of digital silence, empty input and input too short to hold a word all
/// transcribe to "".
#[test]
fn silence_and_too_short_input_transcribe_to_nothing() {
    let mut transcriber = transcriber(&library());
    assert_eq!(transcriber.transcribe(&silence(2.0)).unwrap(), "");
    assert_eq!(transcriber.transcribe(&[]).unwrap(), "");
    // 50 ms of speech: below MIN_SAMPLES.
    let speech = recording("Front_Center");
    assert_eq!(transcriber.transcribe(&speech[8000..8800]).unwrap(), "");
    // And the transcriber still works afterwards.
    let text = transcriber.transcribe(&speech).unwrap();
    assert!(words(&text).contains(&"front".to_string()), "{text:?}");
}

/// A missing or unloadable library and a missing model directory or model file each give
/// their own `ModelError`, whose message names the path.
#[test]
fn load_failures_name_the_missing_path() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("transcriber-load-failures");
    std::fs::create_dir_all(&tmp).unwrap();

    let no_library = tmp.join("no-such-libmoonshine.so");
    let err = SpeechLibrary::open(&no_library).unwrap_err();
    assert!(
        matches!(&err, ModelError::LibraryMissing { path } if *path == no_library),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&no_library.display().to_string()),
        "{err}"
    );

    // A file that is not a shared library.
    let not_a_library = model_root().join("assets/tiny-en/tokenizer.bin");
    let err = SpeechLibrary::open(&not_a_library).unwrap_err();
    assert!(
        matches!(&err, ModelError::LibraryUnloadable { path, .. } if *path == not_a_library),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&not_a_library.display().to_string()),
        "{err}"
    );

    let library = library();
    let no_dir = tmp.join("no-such-model");
    let err = library.transcriber(&no_dir).unwrap_err();
    assert!(
        matches!(&err, ModelError::ModelDirMissing { path } if *path == no_dir),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&no_dir.display().to_string()),
        "{err}"
    );

    // A directory with only the tokenizer: the encoder is the first file found missing.
    let partial = tmp.join("partial-model");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("tokenizer.bin"), b"").unwrap();
    let err = library.transcriber(&partial).unwrap_err();
    let encoder = partial.join("encoder_model.ort");
    assert!(
        matches!(&err, ModelError::ModelFileMissing { path, file: "encoder_model.ort" } if *path == encoder),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&encoder.display().to_string()),
        "{err}"
    );
}

/// Two transcribers transcribing on two threads at the same time both get every recording's
/// words, and exactly the text one transcriber gets alone.
#[test]
fn two_transcribers_on_two_threads_at_once_both_get_the_words() {
    let library = library();
    let alone = transcribe_all(&mut transcriber(&library));
    let start = Barrier::new(2);
    let (first, second) = std::thread::scope(|s| {
        let run = || {
            let mut transcriber = transcriber(&library);
            start.wait();
            transcribe_all(&mut transcriber)
        };
        let first = s.spawn(run);
        let second = s.spawn(run);
        (first.join().unwrap(), second.join().unwrap())
    });
    assert!(misses(&first).is_empty(), "{:#?}", misses(&first));
    assert!(misses(&second).is_empty(), "{:#?}", misses(&second));
    assert_eq!(first, alone);
    assert_eq!(second, alone);
}
