//! What can stop a simulation before it has a report. Each error says what happened, where,
//! and what to do; the cause is kept as a source, never flattened into text.

use std::path::PathBuf;

use lifeboat_control::ControlError;
use lifeboat_core::manifest::ManifestError;

/// Why a simulation could not run to its report.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(
        "this site has no [vault] in lifeboat.toml, so there is no copy to simulate on; add a \
         [vault] section and run `lifeboat up` once so the site is captured"
    )]
    NoVault,
    #[error(
        "a site with [cluster] is copied onto virtual hosts, which could not be made ({why}); \
         run `lifeboat simulate` as root on a machine with iproute2"
    )]
    Cluster { why: String },
    #[error(
        "a site with [cluster] is copied with an etcd of its own, and etcd was not found \
         ($LIFEBOAT_ETCD, PATH, .tools/bin, /usr/bin/etcd); install it (Debian's etcd-server, \
         or scripts/install-test-deps)"
    )]
    NoEtcd,
    #[error(
        "could not restore the site from its vault into the sandbox ({detail}); `lifeboat \
         restore-site --into /tmp/check` shows the same restore, and `lifeboat timeline` what \
         the vault holds"
    )]
    Restore { detail: String },
    #[error(
        "another `lifeboat simulate` (pid {pid}) is running on this site in {}; wait for it \
         to end or stop it (Ctrl-C)", dir.display()
    )]
    Busy { pid: u32, dir: PathBuf },
    #[error(
        "the sandbox's lifeboat did not serve within {secs} s ({detail}); its output is in {}",
        log.display()
    )]
    SandboxNotServing {
        secs: u64,
        detail: String,
        log: PathBuf,
    },
    #[error("the sandbox's lifeboat did not do what was asked")]
    Control(#[from] ControlError),
    #[error("could not start the sandbox's lifeboat ({})", bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SimError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> SimError {
        let path = path.into();
        move |source| SimError::Io { what, path, source }
    }
}

pub type Result<T, E = SimError> = std::result::Result<T, E>;
