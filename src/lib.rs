//! voxrt server: settings, routes, startup and shutdown around the actors in `voxrt-actors`.
//!
//! # Layout
//! - [`settings`]: the one typed `Settings` struct, layered loading and validation.
//! - [`server`]: binds, starts the registry and HTTP workers, and shuts down in order.
//! - `routes`: `GET /v1/stream` admission and upgrade.
//! - `refusal`: HTTP JSON errors before the upgrade.
//! - [`logging`]: tracing setup.
//!
//! Like mini-redis, the binary is thin: tests call the same [`server::start`] on
//! `127.0.0.1:0` and get the bound address back.
#![warn(missing_docs)]

pub mod logging;
mod refusal;
mod routes;
pub mod server;
pub mod settings;

pub use server::{start, RunningServer, StartError};
pub use settings::Settings;
pub use voxrt_actors as actors;

use actix::Addr;
use std::sync::Arc;
use voxrt_actors::processors::ProcessorCatalog;
use voxrt_actors::registry::SessionRegistry;
use voxrt_actors::session::SessionConfig;

/// What every request handler shares.
pub(crate) struct AppState {
    settings: Arc<Settings>,
    session_config: Arc<SessionConfig>,
    catalog: Arc<ProcessorCatalog>,
    registry: Addr<SessionRegistry>,
}
