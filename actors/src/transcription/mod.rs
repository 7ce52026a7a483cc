//! Offline speech-to-text: Moonshine's C library, loaded at run time, behind a safe API.
//!
//! [`SpeechLibrary::open`] loads `libmoonshine.so` once per process;
//! [`SpeechLibrary::transcriber`] loads a model into a [`Transcriber`], which turns 16 kHz mono
//! samples into text. `scripts/fetch-models` puts both in `models/moonshine-tiny-en/`:
//!
//! ```text
//! models/moonshine-tiny-en/moonshine_voice/libmoonshine.so        the library
//! models/moonshine-tiny-en/moonshine_voice.libs/                  its ONNX Runtime
//! models/moonshine-tiny-en/moonshine_voice/assets/tiny-en/        the model directory
//! ```
//!
//! Threads: every call into the library is thread-safe, but the library serializes the calls
//! on one transcriber, so a pool of threads needs one [`Transcriber`] per thread. A
//! `Transcriber` is `Send` (it moves to its thread) and not `Sync`; [`SpeechLibrary`] is
//! shared through an `Arc` and every transcriber keeps it loaded.
//!
//! No actors here: this is plain blocking code, like [`crate::audio`]. A transcription takes
//! tens to hundreds of milliseconds, so it never runs on an actor's event loop.
//!
//! # Costs (tiny-en, release build, 2-core x86-64)
//! - A 1.3-1.5 s utterance takes about 40-55 ms, and twice that in CPU time: ONNX Runtime
//!   runs each call on every core. So transcribers beyond the core count add no throughput
//!   (two threads with a transcriber each took as long as one thread doing both in turn).
//! - Time grows faster than the audio: 10 s take about 0.25 s, 30 s about 1.2 s. Text stays
//!   right up to about 40 s; 70 s comes out as one phrase repeated. Keep segments short.
//! - Memory (RSS): the library about 13 MB, the first transcriber about 130 MB more, each
//!   further one about 100 MB, of which about 60 MB private (the rest is the model's files,
//!   mapped by each transcriber but shared in the page cache).
//! - The library prints its own errors to stderr; the codes it returns carry only a generic
//!   text ("Unknown error").
//!
//! # The library's VAD is off
//! `moonshine_transcribe_without_streaming` normally runs the library's own voice detector
//! over the input and transcribes each stretch it finds. voxrt turns it off (option
//! `vad_threshold=0`): a call transcribes exactly the samples given, as one line. voxrt cuts
//! segments with its own VAD already, and the library's detector (in 0.0.73) is one instance
//! shared by every transcriber in the process, whose state carries over between calls: a call
//! after one that ended mid-speech starts with a phantom line (the tiny model hears "You"),
//! and two transcribers on two threads change each other's results (measured: "R Front.
//! Center." for Front_Center). With it off, results depend only on the samples.
//!
//! The cost: the model transcribes whatever it is given, and on silence or noise the tiny
//! model says "You". [`Transcriber::transcribe`] returns `""` without calling the library for
//! digital silence and for input too short to hold a word ([`MIN_SAMPLES`]); anything else is
//! transcribed, so feed it speech.
//!
//! ```no_run
//! use std::path::Path;
//! use voxrt_actors::transcription::SpeechLibrary;
//!
//! let root = Path::new("models/moonshine-tiny-en/moonshine_voice");
//! let library = SpeechLibrary::open(&root.join("libmoonshine.so"))?;
//! let mut transcriber = library.transcriber(&root.join("assets/tiny-en"))?;
//! let text = transcriber.transcribe(&vec![0.0; 16_000])?;
//! assert_eq!(text, "");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod moonshine;

use std::ffi::{c_char, CStr, CString};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moonshine::Api;

/// Input shorter than this (100 ms at 16 kHz) is transcribed as `""` without calling the
/// library: it holds no word, and the library fails on 512 to 1023 samples (ONNX Runtime
/// rejects the encoder's input shape, code -1).
pub const MIN_SAMPLES: usize = 1_600;

/// Input whose every sample is smaller than this (one 16-bit step) is digital silence,
/// transcribed as `""` without calling the library (the model would say "You").
const SILENCE_PEAK: f32 = 1.0 / 32_768.0;

/// The files a model directory must hold (Moonshine's non-streaming tiny/base layout).
pub const MODEL_FILES: [&str; 3] = [
    "encoder_model.ort",
    "decoder_model_merged.ort",
    "tokenizer.bin",
];

/// Why the speech library or a model could not be loaded. Printed to operators at startup,
/// so every message names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// There is no file at the library path.
    #[error("speech library {} does not exist (scripts/fetch-models installs it)", .path.display())]
    LibraryMissing {
        /// The path given.
        path: PathBuf,
    },
    /// The dynamic loader refused the library: not a shared library, wrong architecture, or
    /// one of its own dependencies (its ONNX Runtime in `../moonshine_voice.libs/`) missing.
    #[error("cannot load speech library {}: {message}", .path.display())]
    LibraryUnloadable {
        /// The path given.
        path: PathBuf,
        /// The loader's message (`dlerror`).
        message: String,
    },
    /// The library lacks a function voxrt calls: it is not libmoonshine, or another version.
    #[error("speech library {} has no symbol {name} (not libmoonshine 0.0.73?)", .path.display())]
    SymbolMissing {
        /// The library's path.
        path: PathBuf,
        /// The missing symbol.
        name: &'static str,
    },
    /// The library's API version is not the one voxrt's struct layouts are written for.
    #[error(
        "speech library {} has API version {found}; voxrt needs {expected} \
         (install the one scripts/fetch-models pins)",
        .path.display()
    )]
    UnsupportedVersion {
        /// The library's path.
        path: PathBuf,
        /// What `moonshine_get_version` returned.
        found: i32,
        /// What voxrt supports.
        expected: i32,
    },
    /// The model directory does not exist (or is not a directory).
    #[error("speech model directory {} does not exist", .path.display())]
    ModelDirMissing {
        /// The directory given.
        path: PathBuf,
    },
    /// The model directory lacks one of [`MODEL_FILES`].
    #[error(
        "speech model file {} is missing (a model directory holds {})",
        .path.display(),
        MODEL_FILES.join(", ")
    )]
    ModelFileMissing {
        /// The missing file's full path.
        path: PathBuf,
        /// Its name, one of [`MODEL_FILES`].
        file: &'static str,
    },
    /// The library could not load the model (corrupt or incompatible files).
    #[error(
        "speech library refused the model in {}: {message} (code {code}; the library logs \
         the cause to stderr)",
        .path.display()
    )]
    ModelRejected {
        /// The model directory.
        path: PathBuf,
        /// The library's error code (negative).
        code: i32,
        /// The library's message for it.
        message: String,
    },
}

/// The library failed to transcribe (its message for the code it returned).
#[derive(Debug, thiserror::Error)]
#[error("speech library failed to transcribe: {message} (code {code})")]
pub struct TranscribeError {
    /// The library's error code (negative).
    pub code: i32,
    /// The library's message for it.
    pub message: String,
}

/// The loaded speech library, shared by every transcriber; `Send + Sync`.
pub struct SpeechLibrary {
    api: Api,
    path: PathBuf,
    /// Opts out of the auto traits: the compiler sees only function pointers, but whether
    /// they may be called from several threads is the C library's promise, stated below.
    _c_library: PhantomData<*const ()>,
}

// SAFETY: the library's C header (upstream moonshine-c-api.h) documents every call as
// thread-safe (its state is guarded internally; calls on one transcriber are serialized). `SpeechLibrary` holds
// only the resolved function pointers and the `libloading::Library` (itself Send + Sync), and
// its methods call only `moonshine_get_version` and `moonshine_load_transcriber_from_files`,
// which touch no per-thread state. So it may be used from, and dropped on, any thread.
unsafe impl Send for SpeechLibrary {}
// SAFETY: as above: concurrent calls through `&SpeechLibrary` are calls the library
// documents as thread-safe.
unsafe impl Sync for SpeechLibrary {}

impl std::fmt::Debug for SpeechLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeechLibrary")
            .field("path", &self.path)
            .field("version", &self.version())
            .finish()
    }
}

impl SpeechLibrary {
    /// Opens the shared library at `path` and resolves every symbol voxrt uses.
    ///
    /// Fails if the file is missing, the loader refuses it (for libmoonshine, usually its
    /// ONNX Runtime missing from `../moonshine_voice.libs/`), a symbol is missing, or its API
    /// version is not [`SpeechLibrary::SUPPORTED_VERSION`].
    pub fn open(path: &Path) -> Result<Arc<SpeechLibrary>, ModelError> {
        if !path.is_file() {
            return Err(ModelError::LibraryMissing {
                path: path.to_path_buf(),
            });
        }
        let library = SpeechLibrary {
            api: Api::open(path)?,
            path: path.to_path_buf(),
            _c_library: PhantomData,
        };
        let found = library.version();
        if found != Self::SUPPORTED_VERSION {
            return Err(ModelError::UnsupportedVersion {
                path: path.to_path_buf(),
                found,
                expected: Self::SUPPORTED_VERSION,
            });
        }
        Ok(Arc::new(library))
    }

    /// The API version voxrt's bindings are written for (moonshine-voice 0.0.73).
    pub const SUPPORTED_VERSION: i32 = moonshine::HEADER_VERSION;

    /// The library's API version (e.g. 20000).
    pub fn version(&self) -> i32 {
        // SAFETY: a function pointer resolved by `Api::open` with its declared C type; it
        // takes no arguments and the library is loaded while `self.api` lives.
        unsafe { (self.api.get_version)() }
    }

    /// The library's path, as given to [`SpeechLibrary::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the model in `model_dir` into a new transcriber. Each holds its own copy of the
    /// model's runtime state (about 100 MB for tiny-en); calls on one transcriber are
    /// serialized by the library, so give each thread its own.
    pub fn transcriber(self: &Arc<Self>, model_dir: &Path) -> Result<Transcriber, ModelError> {
        if !model_dir.is_dir() {
            return Err(ModelError::ModelDirMissing {
                path: model_dir.to_path_buf(),
            });
        }
        for file in MODEL_FILES {
            let path = model_dir.join(file);
            if !path.is_file() {
                return Err(ModelError::ModelFileMissing { path, file });
            }
        }
        // A path with a NUL byte cannot name an existing directory, so is_dir() above has
        // already refused it; this is the same answer should it ever get here.
        let c_dir = path_to_c(model_dir).ok_or_else(|| ModelError::ModelDirMissing {
            path: model_dir.to_path_buf(),
        })?;
        let options = &moonshine::OPTIONS;
        // SAFETY: `c_dir` is a NUL-terminated string alive for the call; `options` points to
        // `options.len()` entries whose strings are C literals, alive for the whole program;
        // the version argument is the header version our struct layouts follow.
        let handle = unsafe {
            (self.api.load_transcriber)(
                c_dir.as_ptr(),
                moonshine::MODEL_ARCH_TINY,
                options.as_ptr(),
                options.len() as u64,
                moonshine::HEADER_VERSION,
            )
        };
        if handle < 0 {
            return Err(ModelError::ModelRejected {
                path: model_dir.to_path_buf(),
                code: handle,
                message: self.error_message(handle),
            });
        }
        Ok(Transcriber {
            library: Arc::clone(self),
            handle,
            _c_transcriber: PhantomData,
        })
    }

    /// The library's text for an error code.
    fn error_message(&self, code: i32) -> String {
        // SAFETY: a function pointer resolved by `Api::open` with its declared C type; any
        // code is accepted (unknown ones map to a generic string).
        let text = unsafe { (self.api.error_to_string)(code) };
        // SAFETY: `text` is checked for null; otherwise the library returns a pointer to a
        // static NUL-terminated string.
        unsafe { c_text(text) }.unwrap_or_else(|| format!("unknown error {code}"))
    }
}

/// One loaded model; `Send` (moved to its thread), not `Sync`. Frees its handle on drop and
/// keeps the library loaded meanwhile.
///
/// ```compile_fail
/// fn shared_between_threads<T: Sync>() {}
/// shared_between_threads::<voxrt_actors::transcription::Transcriber>();
/// ```
pub struct Transcriber {
    library: Arc<SpeechLibrary>,
    /// The library's handle (>= 0), freed on drop.
    handle: i32,
    /// Opts out of the auto traits: `Send` is granted below on the library's word.
    _c_transcriber: PhantomData<*mut ()>,
}

// SAFETY: the handle names state inside the library, which documents every call as
// thread-safe: a transcriber may be called from (and freed on) any thread, not only the one
// that loaded it. It is not `Sync` and `transcribe` takes `&mut self`, so one thread at a
// time uses it, and the transcript memory a call returns (valid until the next call on the
// same transcriber) is copied out before another call can happen.
unsafe impl Send for Transcriber {}

impl std::fmt::Debug for Transcriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcriber")
            .field("handle", &self.handle)
            .finish()
    }
}

impl Transcriber {
    /// Transcribes `samples` (16 kHz mono `f32`, -1.0..=1.0) and returns the text of every
    /// line the library found, joined with single spaces and trimmed (`""` when nothing was
    /// recognised). Blocks for the whole transcription (module docs, "Costs").
    ///
    /// Returns `""` without calling the library for fewer than [`MIN_SAMPLES`] samples and
    /// for digital silence. Samples must be finite: one NaN makes the library return `""`
    /// for the whole call (pipeline audio is finite; decoding drops non-finite input).
    pub fn transcribe(&mut self, samples: &[f32]) -> Result<String, TranscribeError> {
        if samples.len() < MIN_SAMPLES || samples.iter().all(|s| s.abs() < SILENCE_PEAK) {
            return Ok(String::new());
        }
        self.call(samples, moonshine::SAMPLE_RATE)
    }

    /// The library's transcription of `samples` at `sample_rate`, unguarded: tests give it
    /// a rate the library refuses, to see a real library error handled.
    #[cfg(test)]
    pub(crate) fn transcribe_at_rate(
        &mut self,
        samples: &[f32],
        sample_rate: i32,
    ) -> Result<String, TranscribeError> {
        self.call(samples, sample_rate)
    }

    fn call(&mut self, samples: &[f32], sample_rate: i32) -> Result<String, TranscribeError> {
        let api = &self.library.api;
        let mut transcript: *mut moonshine::Transcript = std::ptr::null_mut();
        // SAFETY: `samples` is a live slice of exactly `samples.len()` f32s, which the library
        // only reads during the call; `transcript` is a valid place for the out pointer; the
        // handle is one the library returned and has not been freed (we free it only in drop).
        let code = unsafe {
            (api.transcribe)(
                self.handle,
                samples.as_ptr(),
                samples.len() as u64,
                sample_rate,
                0,
                &mut transcript,
            )
        };
        if code < 0 {
            return Err(TranscribeError {
                code,
                message: self.library.error_message(code),
            });
        }
        // SAFETY: on success `transcript` is null or points to a transcript owned by this
        // transcriber, valid until its next call; `&mut self` rules out a next call until
        // `lines_text` has copied the text out.
        Ok(unsafe { lines_text(transcript) })
    }
}

impl Drop for Transcriber {
    fn drop(&mut self) {
        // SAFETY: the handle came from the library and is freed exactly once, here; the
        // library is still loaded (`self.library` is dropped after this runs).
        unsafe { (self.library.api.free_transcriber)(self.handle) }
    }
}

/// Copies the text of every line of `transcript`, trimmed and joined with single spaces.
///
/// # Safety
/// `transcript` is null or points to a valid `transcript_t` whose `lines` (if not null) has
/// `line_count` entries, each `text` null or NUL-terminated, all alive during the call.
unsafe fn lines_text(transcript: *const moonshine::Transcript) -> String {
    // SAFETY: the caller's contract: null or valid.
    let Some(transcript) = (unsafe { transcript.as_ref() }) else {
        return String::new();
    };
    if transcript.lines.is_null() || transcript.line_count == 0 {
        return String::new();
    }
    let Ok(count) = usize::try_from(transcript.line_count) else {
        return String::new();
    };
    // SAFETY: the caller's contract: `lines` is non-null (checked) and has `count` entries.
    let lines = unsafe { std::slice::from_raw_parts(transcript.lines, count) };
    let mut out = String::new();
    for line in lines {
        // SAFETY: the caller's contract: each `text` is null or NUL-terminated.
        let Some(text) = (unsafe { c_text(line.text) }) else {
            continue;
        };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(text);
    }
    out
}

/// A C string as text (invalid UTF-8 replaced), or `None` for a null pointer.
///
/// # Safety
/// `text` is null or points to a NUL-terminated string alive during the call.
unsafe fn c_text(text: *const c_char) -> Option<String> {
    if text.is_null() {
        return None;
    }
    // SAFETY: non-null (checked) and NUL-terminated by the caller's contract.
    Some(
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// `path` as a C string, or `None` if it holds a NUL byte.
fn path_to_c(path: &Path) -> Option<CString> {
    #[cfg(unix)]
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
    #[cfg(not(unix))]
    let bytes = path.to_string_lossy().into_owned().into_bytes();
    CString::new(bytes).ok()
}

// What the threads design relies on, checked at compile time (and `Transcriber: !Sync` in
// the compile_fail doc test on it).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<SpeechLibrary>();
    send_sync::<Arc<SpeechLibrary>>();
    send::<Transcriber>();
};
