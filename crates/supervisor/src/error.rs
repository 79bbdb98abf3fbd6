//! The supervisor's error type. Every message says what failed, where, and what to do next.

use std::path::PathBuf;

/// What can go wrong when setting up the supervisor or cleaning up after a previous run.
/// (Failures of a single instance are not errors: they are reported in its status and events.)
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot create the directory {path} ({source}); check that the site dir is writable")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the run file {path} ({source}); check its permissions")]
    ReadRunFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the run file {path} is damaged ({reason}); check with `ps -eo pid,pgid,cmd` that no \
         instance of the previous run is left, then delete the file"
    )]
    DamagedRunFile { path: PathBuf, reason: String },
    #[error("cannot write the run file {path} ({source}); check that the disk is not full")]
    WriteRunFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another lifeboat (pid {pid}) is still running the site {site:?}; stop it with \
         `lifeboat down` (or kill {pid}) before starting the site again"
    )]
    AlreadyRunning { site: String, pid: u32 },
    #[error(
        "cannot kill the leftover instance process {pid} of the previous run ({source}); \
         kill it by hand (`kill -9 {pid}`) and start again"
    )]
    KillLeftover { pid: u32, source: nix::Error },
}
