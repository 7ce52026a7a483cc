//! The per-chunk hot path of one session, next to the raw library calls it wraps, on the
//! same real speech (alsa-utils' Front_Center.wav, 48 kHz mono, looped) in 20 ms chunks:
//!
//! - `ours/*`: what the actors do per 20 ms client chunk, without the actors: decode
//!   `pcm_s16le`, resample to 16 kHz ([`StreamResampler`]: `Fft` at 48 kHz, `Sinc` at
//!   44,056 Hz, a rate whose ratio to 16 kHz does not reduce), then [`VadProcessor`] and
//!   [`LevelProcessor`] on the block.
//! - `raw/*`: the same work as bare rubato and earshot calls (i16 to f32 by hand, rubato's
//!   `Fft` with the same block, earshot on 256-sample frames), so the ratio `ours / raw` is
//!   the cost of our wrapping: staging, alignment, the VAD's noise floor, the level meter.
//!
//! - `vad/speech_with_pauses/*`: [`VadProcessor`] alone on the load generator's audio (the
//!   eight spoken alsa-utils recordings, each followed by 1 s of digital silence, at 16 kHz),
//!   with the silence gate on and off.
//!
//!   cargo bench -p voxrt-actors --bench hot_path
//!
//! Figures and their meaning: docs/benchmarks.md.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler, WindowFunction};
use std::sync::Arc;
use voxrt_actors::audio::{decode_to_mono, Encoding, InputFormat, StreamResampler};
use voxrt_actors::processors::{LevelProcessor, Processor, VadProcessor};
use voxrt_actors::settings::{LevelSettings, VadSettings};
use voxrt_actors::AudioBlock;

const SPEECH: &str = "/usr/share/sounds/alsa/Front_Center.wav";
/// The load generator's default recordings (loadgen/src/audio.rs).
const RECORDINGS: [&str; 8] = [
    "Front_Center",
    "Front_Left",
    "Front_Right",
    "Rear_Center",
    "Rear_Left",
    "Rear_Right",
    "Side_Left",
    "Side_Right",
];
/// Chunks per measured iteration: 10 s of audio, so per-iteration overhead vanishes and the
/// VAD sees speech and silence in their natural proportion.
const CHUNKS: usize = 500;

/// The recording's samples (16-bit mono PCM in a canonical WAV).
fn speech_i16() -> Vec<i16> {
    wav_i16(SPEECH)
}

/// A canonical 16-bit mono WAV's samples.
fn wav_i16(path: &str) -> Vec<i16> {
    let bytes =
        std::fs::read(path).expect("alsa-utils speech recording (apt-get install alsa-utils)");
    let data = bytes
        .windows(4)
        .position(|w| w == b"data")
        .expect("WAV data chunk")
        + 8;
    bytes[data..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// `CHUNKS` chunks of 20 ms at `rate`, the recording looped with 1 s of silence, as
/// `pcm_s16le` (the recording is 48 kHz; other rates take every n-th sample or repeat, which
/// is fine for timing).
fn chunks(rate: u32) -> Vec<Vec<u8>> {
    let mut speech = speech_i16();
    speech.extend(std::iter::repeat_n(0, 48_000));
    let frames = rate as usize / 50;
    let mut pos = 0.0f64;
    let step = 48_000.0 / f64::from(rate);
    (0..CHUNKS)
        .map(|_| {
            (0..frames)
                .flat_map(|_| {
                    let s = speech[pos as usize % speech.len()];
                    pos += step;
                    s.to_le_bytes()
                })
                .collect()
        })
        .collect()
}

/// Our hot path for one session's stream of chunks.
struct Ours {
    format: InputFormat,
    resampler: StreamResampler,
    vad: VadProcessor,
    level: LevelProcessor,
    mono: Vec<f32>,
    out: Vec<f32>,
    events: Vec<voxrt_actors::ServerEvent>,
    start: u64,
}

impl Ours {
    fn new(rate: u32) -> Self {
        Self {
            format: InputFormat {
                sample_rate: rate,
                channels: 1,
                encoding: Encoding::PcmS16le,
            },
            resampler: StreamResampler::new(rate).expect("resampler"),
            vad: VadProcessor::new(VadSettings {
                threshold: 0.5,
                silence_ms: 500,
                min_speech_ms: 250,
            }),
            level: LevelProcessor::new(LevelSettings { interval_ms: 100 }),
            mono: Vec::with_capacity(rate as usize / 50),
            out: Vec::with_capacity(1024),
            events: Vec::new(),
            start: 0,
        }
    }

    fn chunk(&mut self, data: &[u8]) {
        self.mono.clear();
        decode_to_mono(&self.format, data, &mut self.mono);
        self.out.clear();
        self.resampler
            .process(&self.mono, &mut self.out)
            .expect("resample");
        if self.out.is_empty() {
            return;
        }
        let block = AudioBlock {
            samples: Arc::from(&self.out[..]),
            start: self.start,
            received: None,
        };
        self.start += self.out.len() as u64;
        self.events.clear();
        self.vad.process(&block, &mut self.events);
        self.level.process(&block, &mut self.events);
    }
}

/// The same work as bare library calls: i16 -> f32, rubato `Fft` (48 kHz, 10 ms blocks as
/// ours), earshot on every 256 16 kHz samples.
struct Raw {
    fft: Fft<f32>,
    staged: Vec<f32>,
    out: Vec<f32>,
    frame: Vec<i16>,
    vad: Box<earshot::Detector>,
}

impl Raw {
    fn new() -> Self {
        let fft = Fft::<f32>::new_custom(
            48_000,
            16_000,
            480,
            1,
            1,
            WindowFunction::BlackmanHarris2,
            FixedSync::Input,
        )
        .expect("fft");
        let out = vec![0.0; fft.output_frames_max()];
        Self {
            fft,
            staged: Vec::with_capacity(960),
            out,
            frame: Vec::with_capacity(256),
            vad: earshot::Detector::default_boxed(),
        }
    }

    fn chunk(&mut self, data: &[u8]) {
        self.staged.extend(
            data.chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0),
        );
        while self.staged.len() >= 480 {
            let input = InterleavedSlice::new(&self.staged[..480], 1, 480).expect("input");
            let frames = self.out.len();
            let mut output = InterleavedSlice::new_mut(&mut self.out, 1, frames).expect("output");
            let (_, written) = self
                .fft
                .process_into_buffer(&input, &mut output, None)
                .expect("fft");
            for &s in &self.out[..written] {
                self.frame.push((s * 32767.0) as i16);
                if self.frame.len() == 256 {
                    std::hint::black_box(self.vad.predict_i16(&self.frame));
                    self.frame.clear();
                }
            }
            self.staged.drain(..480);
        }
    }
}

/// The load generator's audio at 16 kHz in 20 ms pipeline blocks: each recording (48 kHz,
/// through our resampler) followed by 1 s of digital silence; about 20 s, 40 % silence.
fn speech_with_pauses() -> Vec<AudioBlock> {
    let mut audio = Vec::new();
    for name in RECORDINGS {
        let mono: Vec<f32> = wav_i16(&format!("/usr/share/sounds/alsa/{name}.wav"))
            .into_iter()
            .map(|s| f32::from(s) / 32768.0)
            .collect();
        let mut resampler = StreamResampler::new(48_000).expect("resampler");
        resampler.process(&mono, &mut audio).expect("resample");
        resampler.flush(&mut audio).expect("resample");
        audio.resize(audio.len() + 16_000, 0.0);
    }
    audio
        .chunks(320)
        .enumerate()
        .map(|(i, block)| AudioBlock {
            samples: Arc::from(block),
            start: i as u64 * 320,
            received: None,
        })
        .collect()
}

/// The VAD alone, silence gate on and off; per 20 ms block.
fn bench_vad(c: &mut Criterion) {
    let blocks = speech_with_pauses();
    let settings = VadSettings {
        threshold: 0.5,
        silence_ms: 500,
        min_speech_ms: 100,
    };
    let mut group = c.benchmark_group("vad");
    group.throughput(Throughput::Elements(blocks.len() as u64));
    for (name, gate) in [
        ("speech_with_pauses/gate_on", true),
        ("speech_with_pauses/gate_off", false),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || (VadProcessor::with_gate(settings, gate), Vec::new()),
                |(vad, events)| {
                    for block in &blocks {
                        vad.process(block, events);
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_20ms_chunk");
    // One iteration is CHUNKS chunks; report per chunk.
    group.throughput(Throughput::Elements(CHUNKS as u64));
    for (name, rate) in [("ours/fft_48k", 48_000), ("ours/sinc_44056", 44_056)] {
        let data = chunks(rate);
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || Ours::new(rate),
                |ours| data.iter().for_each(|chunk| ours.chunk(chunk)),
                BatchSize::LargeInput,
            )
        });
    }
    let data = chunks(48_000);
    group.bench_function("raw/rubato_fft_48k+earshot", |b| {
        b.iter_batched_ref(
            Raw::new,
            |raw| data.iter().for_each(|chunk| raw.chunk(chunk)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench, bench_vad);
criterion_main!(benches);
