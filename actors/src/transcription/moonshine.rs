//! The raw C interface of Moonshine's `libmoonshine.so`: struct layouts, function types and
//! symbol loading. Nothing here is safe to call on its own; `super` wraps it.
//!
//! There is no C header in the wheel `scripts/fetch-models` installs (moonshine-voice
//! 0.0.73), so these follow that wheel's own ctypes binding (`moonshine_voice/moonshine_api.py`,
//! `transcriber.py`), which is what the library was built against: header version 20000. Newer
//! upstream headers have different structs; do not copy from them without bumping the wheel.
//! Only the calls voxrt makes are declared.

use libloading::Library;
use std::ffi::{c_char, c_void};
use std::path::Path;

use super::ModelError;

/// `MOONSHINE_HEADER_VERSION` of the layouts below: passed to the loader, and what
/// `moonshine_get_version` must return for them to hold.
pub(super) const HEADER_VERSION: i32 = 20000;
/// `MOONSHINE_MODEL_ARCH_TINY`: the non-streaming tiny model (`assets/tiny-en`).
pub(super) const MODEL_ARCH_TINY: u32 = 0;
/// Sample rate voxrt passes: pipeline audio is 16 kHz, the model's own rate.
pub(super) const SAMPLE_RATE: i32 = 16_000;

/// `transcript_line_t`: one line (with voxrt's options, the whole input). Only `text`
/// is read; the rest is declared so the array stride is right (88 bytes, as the Python
/// binding checks).
#[repr(C)]
#[allow(dead_code)]
pub(super) struct TranscriptLine {
    /// NUL-terminated UTF-8 (usually), owned by the transcriber; may be null.
    pub text: *const c_char,
    pub audio_data: *const f32,
    pub audio_data_count: usize,
    pub start_time: f32,
    pub duration: f32,
    pub id: u64,
    pub is_complete: i8,
    pub is_updated: i8,
    pub is_new: i8,
    pub has_text_changed: i8,
    pub have_speakers_changed: i8,
    /// `speaker_span_t*` (not read).
    pub speaker_spans: *const c_void,
    pub speaker_span_count: u64,
    pub last_transcription_latency_ms: u32,
    /// `transcript_word_t*` (not read).
    pub words: *const c_void,
    pub word_count: u64,
}

/// `transcript_t`: the lines of one transcription, owned by the transcriber and valid until
/// the next call on it.
#[repr(C)]
pub(super) struct Transcript {
    pub lines: *const TranscriptLine,
    pub line_count: u64,
}

/// `moonshine_option_t`: a name/value pair of C strings, both read during the load call only.
#[repr(C)]
pub(super) struct MoonshineOption {
    pub name: *const c_char,
    pub value: *const c_char,
}

/// The options every transcriber is loaded with (see `super`'s docs, "The library's VAD").
/// `vad_threshold` 0 makes the library treat all input as speech: each call transcribes
/// exactly the samples given, and never touches the library's voice detector, whose one
/// instance is shared by every transcriber in the process and keeps state between calls.
pub(super) const OPTIONS: [MoonshineOption; 1] = [MoonshineOption {
    name: c"vad_threshold".as_ptr(),
    value: c"0".as_ptr(),
}];

// The sizes the 0.0.73 binding asserts for 64-bit targets: a wrong field here would walk the
// lines array with the wrong stride.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<TranscriptLine>() == 88);
    assert!(std::mem::size_of::<Transcript>() == 16);
    assert!(std::mem::size_of::<MoonshineOption>() == 16);
};

/// `int32_t moonshine_get_version(void)`.
pub(super) type GetVersionFn = unsafe extern "C" fn() -> i32;
/// `const char *moonshine_error_to_string(int32_t error)`: a static string, or null.
pub(super) type ErrorToStringFn = unsafe extern "C" fn(i32) -> *const c_char;
/// `int32_t moonshine_load_transcriber_from_files(const char *path, uint32_t model_arch,
/// const moonshine_option_t *options, uint64_t options_count, int32_t moonshine_version)`:
/// a transcriber handle (>= 0) or an error code (< 0).
pub(super) type LoadTranscriberFn =
    unsafe extern "C" fn(*const c_char, u32, *const MoonshineOption, u64, i32) -> i32;
/// `void moonshine_free_transcriber(int32_t handle)`.
pub(super) type FreeTranscriberFn = unsafe extern "C" fn(i32);
/// `int32_t moonshine_transcribe_without_streaming(int32_t handle, const float *audio,
/// uint64_t audio_length, int32_t sample_rate, uint32_t flags, transcript_t **out)`: 0 (or
/// any non-negative value) on success, an error code (< 0) otherwise.
pub(super) type TranscribeFn =
    unsafe extern "C" fn(i32, *const f32, u64, i32, u32, *mut *mut Transcript) -> i32;

/// The opened library and the functions voxrt calls.
///
/// Invariant: the function pointers point into `_library`, which is dropped (and possibly
/// unloaded) only with this struct, so they are valid for as long as it lives.
pub(super) struct Api {
    pub get_version: GetVersionFn,
    pub error_to_string: ErrorToStringFn,
    pub load_transcriber: LoadTranscriberFn,
    pub free_transcriber: FreeTranscriberFn,
    pub transcribe: TranscribeFn,
    _library: Library,
}

impl Api {
    /// Opens the library at `path` (which must exist) and resolves every symbol.
    pub(super) fn open(path: &Path) -> Result<Api, ModelError> {
        // SAFETY: loading runs the library's initialisers (libmoonshine's and its bundled
        // ONNX Runtime's static constructors), which no Rust type can check. voxrt loads only
        // the library its configuration names, the one scripts/fetch-models pins and checks
        // by SHA-256; whoever configures another is trusted like code linked into the server.
        let library = unsafe { Library::new(path) }.map_err(|e| ModelError::LibraryUnloadable {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Api {
            get_version: symbol(&library, path, "moonshine_get_version")?,
            error_to_string: symbol(&library, path, "moonshine_error_to_string")?,
            load_transcriber: symbol(&library, path, "moonshine_load_transcriber_from_files")?,
            free_transcriber: symbol(&library, path, "moonshine_free_transcriber")?,
            transcribe: symbol(&library, path, "moonshine_transcribe_without_streaming")?,
            _library: library,
        })
    }
}

/// Resolves `name` in `library` as a `T`, which must be the symbol's C type (one of the
/// function types above).
fn symbol<T: Copy>(library: &Library, path: &Path, name: &'static str) -> Result<T, ModelError> {
    // SAFETY: `Api::open` names, for each symbol, the function type declared above for it,
    // taken from the 0.0.73 binding's argtypes/restype. The copied pointer outlives the
    // `Symbol` borrow; `Api`'s invariant covers that: it is stored next to the `Library` and
    // dropped with it.
    unsafe { library.get::<T>(name) }
        .map(|s| *s)
        .map_err(|_| ModelError::SymbolMissing {
            path: path.to_path_buf(),
            name,
        })
}
