//! Where a site's Lifeboat files live: everything under `<site>/.lifeboat/`, a directory only
//! the owner can enter (0700) because it holds the control socket and the bypass token.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ControlError;

/// The name of the site's original state: its own directory.
pub const SITE_STATE: &str = "site";

/// The paths of one site. Every path it hands out is absolute, whatever directory the site
/// was named by and wherever the command runs: instances, hooks, capture and the store all run
/// in other working directories, and a relative path would silently name another place there.
#[derive(Debug, Clone)]
pub struct SitePaths {
    /// The site directory (where lifeboat.toml is), absolute.
    pub dir: PathBuf,
}

impl SitePaths {
    /// The paths of the site in `dir` (relative to the current directory when relative).
    /// Symlinks are resolved when the dir exists, so two spellings of one site agree.
    pub fn new(dir: impl AsRef<Path>) -> SitePaths {
        let dir = dir.as_ref();
        let dir = dir
            .canonicalize()
            .or_else(|_| std::path::absolute(dir))
            .unwrap_or_else(|_| dir.to_path_buf());
        SitePaths { dir }
    }

    pub fn manifest(&self) -> PathBuf {
        self.dir.join(lifeboat_core::MANIFEST_FILE)
    }

    /// `<site>/.lifeboat`
    pub fn lifeboat_dir(&self) -> PathBuf {
        self.dir.join(".lifeboat")
    }

    /// The desired state and event store.
    pub fn store(&self) -> PathBuf {
        self.lifeboat_dir().join("state.redb")
    }

    /// The local API socket (mode 0600).
    pub fn socket(&self) -> PathBuf {
        self.lifeboat_dir().join("control.sock")
    }

    /// Per-instance log files, written by the supervisor.
    pub fn logs(&self) -> PathBuf {
        self.lifeboat_dir().join("logs")
    }

    /// The site's vault key (mode 0600): the password of the site's vault repository.
    pub fn vault_key(&self) -> PathBuf {
        self.lifeboat_dir().join("vault.key")
    }

    /// Objects waiting for a vault destination that was down.
    pub fn spool(&self) -> PathBuf {
        self.lifeboat_dir().join("spool")
    }

    /// Restored copies of the site's state made by `rewind`, one directory each.
    pub fn states(&self) -> PathBuf {
        self.lifeboat_dir().join("states")
    }

    /// Capture's positions for the state named `state` (`site` for the site dir itself).
    pub fn capture(&self, state: &str) -> PathBuf {
        self.lifeboat_dir().join("capture").join(state)
    }

    /// The directory of the state named `state`: the site dir for `site`, else a restored
    /// copy under [`SitePaths::states`].
    pub fn state_dir(&self, state: &str) -> PathBuf {
        if state == SITE_STATE {
            self.dir.clone()
        } else {
            self.states().join(state)
        }
    }

    /// Creates `.lifeboat/` (and `logs/`) readable by the owner only.
    pub fn create(&self) -> Result<(), ControlError> {
        let dir = self.lifeboat_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(ControlError::io("create", &dir))?;
        // An existing dir keeps its old mode through `create`; tighten it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(ControlError::io("set permissions of", &dir))?;
        let logs = self.logs();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&logs)
            .map_err(ControlError::io("create", &logs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_absolute_even_for_a_relative_site_dir() {
        let paths = SitePaths::new("examples/guestbook");
        assert!(paths.dir.is_absolute(), "{}", paths.dir.display());
        for p in [
            paths.store(),
            paths.socket(),
            paths.state_dir(SITE_STATE),
            paths.state_dir("20261204T000000Z-at-x"),
            paths.capture("x"),
            paths.logs(),
        ] {
            assert!(p.is_absolute(), "{}", p.display());
        }
        assert!(
            paths
                .state_dir("n")
                .ends_with("examples/guestbook/.lifeboat/states/n")
        );
    }
}
