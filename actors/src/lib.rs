//! voxrt's actors and audio pipeline.
//!
//! # Layout
//! - [`registry`]: the `SessionRegistry` actor: admission, limits, TTL/idle sweeps, shutdown.
//! - [`session`]: the `Session` actor, one per WebSocket: frames in, events out.
//! - [`pipeline`]: builds a session's stages; separable from the connection feeding it.
//! - [`resampler`]: the `Resampler` actor: decode, downmix, resample to 16 kHz, fan out.
//! - [`processor`]: the `ProcessorStage` actor that runs one [`processors::Processor`].
//! - [`processors`]: the `Processor` trait, the catalog, and the built-ins `level` and `vad`.
//! - [`audio`]: formats and the streaming resampler (plain DSP, no actors).
//! - [`protocol`]: protocol v1 wire types; [`error`]: errors with stable client codes.
//! - [`intake`]: paces WebSocket bytes into actix's decoder so it buffers at most a frame,
//!   and names the protocol violations actix reports only as I/O errors.
//! - [`fragments`]: reassembles fragmented WebSocket messages, bounded by the frame limits.
//! - [`metrics`]: Prometheus metrics and per-stage statistics shared by every actor.
//! - [`settings`]: the tunables the server's config feeds in; [`counters`]: shared counters.
//!
//! Data flows session -> resampler -> processors over bounded mailboxes; when a stage is
//! full the session applies the configured [`settings::BackpressurePolicy`].
#![warn(missing_docs)]

pub mod audio;
pub mod counters;
pub mod error;
pub mod fragments;
pub mod intake;
pub mod metrics;
pub mod pipeline;
pub mod processor;
pub mod processors;
pub mod protocol;
pub mod registry;
pub mod resampler;
pub mod session;
pub mod settings;

pub use protocol::ServerEvent;
pub use resampler::AudioBlock;
