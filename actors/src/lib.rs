//! voxrt's actors and audio pipeline.
//!
//! # Layout
//! Layers, each importing only those above it in this list (no import circles):
//! - [`audio`]: formats, decoding, the streaming resampler and [`AudioBlock`] (plain DSP,
//!   no actors); [`transcription`]: offline speech-to-text, the Moonshine C library loaded
//!   at run time behind a safe API (blocking calls, no actors). Beside them, leaves every
//!   layer may use: [`protocol`] (wire types), [`error`] (errors with stable client codes),
//!   [`settings`] (tunables), [`metrics`] and [`counters`] (shared statistics).
//! - [`cluster`]: NATS JetStream (event log, node heartbeats, what a takeover reads), on a
//!   thread of its own; knows the wire types and settings, no actors.
//! - [`processors`]: the `Processor` trait, the catalog, and the built-ins `level` and `vad`.
//! - [`pipeline`]: a session's stages (resampler, processor stages), their messages, and
//!   the one bounded sender every hop uses.
//! - [`session`]: the `Session` actor, which outlives connections: pipeline, outbox,
//!   resume; and [`connection`]: the `Connection` actor, one per WebSocket.
//! - [`registry`]: the `SessionRegistry` actor: admission, limits, TTL/idle sweeps,
//!   resume lookups, shutdown.
//!
//! Audio flows connection -> resampler -> processors over bounded mailboxes; when a stage
//! is full the connection applies the configured [`settings::BackpressurePolicy`].
#![warn(missing_docs)]

pub mod audio;
pub mod cluster;
pub mod connection;
pub mod counters;
pub mod error;
pub mod metrics;
pub mod pipeline;
pub mod processors;
pub mod protocol;
pub mod registry;
pub mod session;
pub mod settings;
pub mod transcription;

pub use audio::AudioBlock;
pub use protocol::ServerEvent;
