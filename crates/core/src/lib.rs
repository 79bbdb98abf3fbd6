//! lifeboat-core: what a site is (the manifest), what happens to it (events), and the pure
//! decisions about it (planning, instance state). No I/O, no async runtime: everything here is
//! plain values in and plain values out, so it is tested without sockets or clocks.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod events;
pub mod layout;
pub mod manifest;
mod manifest_error;
pub mod plan;
pub mod status;

pub use events::{Event, EventKind};
pub use manifest::{MANIFEST_FILE, Manifest, ManifestError};
pub use manifest_error::{Location, Problem};
