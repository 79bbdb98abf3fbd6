//! lifeboat-control: the daemon behind `lifeboat up` and the client the other commands use.
//!
//! - [`daemon`]: start a site (front door + supervisor + reconcile loop + local API) and stop it
//!   gracefully.
//! - [`store`]: the durable desired state (scale, maintenance) and event history (redb).
//! - [`api`] / [`client`]: the local API over `.lifeboat/control.sock`.
//! - [`logs`]: instance logs read straight from disk.
//! - [`capture`]: continuous capture of the live state into the site's vault
//!   ([`vault_key`]: its key and repository); [`rewind`]: rewind and undo;
//!   [`timespec`]: the times `--to` accepts.
//!
//! Nothing here prints; the CLI owns the terminal. The store and API formats are specified in
//! `crates/control/FORMATS.md`.
#![forbid(unsafe_code)]

pub mod api;
mod api_listener;
pub mod capture;
pub mod client;
pub mod daemon;
mod error;
pub mod isolation;
pub mod logs;
pub mod mariadb;
pub mod node;
mod paths;
pub mod rewind;
mod site;
mod state_use;
pub mod states;
pub mod store;
pub mod timespec;
pub mod vault_key;
pub mod view;

pub use client::ControlClient;
pub use daemon::{RunningSite, UpOptions, start_site};
pub use error::ControlError;
pub use paths::{SITE_STATE, SitePaths};
