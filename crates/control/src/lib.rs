//! lifeboat-control: the daemon behind `lifeboat up` and the client the other commands use.
//!
//! - [`daemon`]: start a site (front door + supervisor + reconcile loop + local API) and stop it
//!   gracefully.
//! - [`store`]: the durable desired state (scale, maintenance) and event history (redb).
//! - [`api`] / [`client`]: the local API over `.lifeboat/control.sock`.
//! - [`logs`]: instance logs read straight from disk.
//!
//! Nothing here prints; the CLI owns the terminal. The store and API formats are specified in
//! `crates/control/FORMATS.md`.
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod daemon;
mod error;
pub mod logs;
mod paths;
mod site;
pub mod store;

pub use client::ControlClient;
pub use daemon::{RunningSite, UpOptions, start_site};
pub use error::ControlError;
pub use paths::SitePaths;
