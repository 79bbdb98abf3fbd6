//! `lifeboat-supervisor` runs a site's instances on one node: it spawns each instance in its own
//! process group with `$PORT` set, captures its output in size-capped rotated log files,
//! restarts it when it crashes (backing off when it crash-loops), stops it gracefully (SIGTERM,
//! then SIGKILL after a timeout), and makes sure no instance outlives lifeboat: instances are
//! started through a shim that arms a parent-death signal, and the next run kills whatever a
//! crashed run left behind (recorded in a run file).
//!
//! It never prints: what happens is reported through [`Supervisor::instances`] and
//! [`Supervisor::subscribe`], and instance output goes to the log files.
#![forbid(unsafe_code)]

pub mod backoff;
mod cgroup;
mod error;
mod group;
mod landlock;
pub mod logs;
mod runfile;
pub mod shim;
mod spawn;
mod supervisor;
mod types;
mod usage;

pub use backoff::{BackoffPolicy, RestartDecision, RestartTracker};
pub use error::SupervisorError;
pub use supervisor::Supervisor;
pub use types::{
    ExitInfo, InstanceSpec, InstanceState, InstanceStatus, ResourceLimits, Shim, SupervisorConfig,
    SupervisorEvent,
};
