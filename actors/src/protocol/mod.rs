//! Protocol v1 wire types: the stream's query parameters, control messages clients send and
//! events the server sends. `docs/protocol.md` is the human-readable contract for these.

mod client;
mod server;

pub use client::*;
pub use server::*;
