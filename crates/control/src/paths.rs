//! Where a site's Lifeboat files live: everything under `<site>/.lifeboat/`, a directory only
//! the owner can enter (0700) because it holds the control socket and the bypass token.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ControlError;

/// The paths of one site.
#[derive(Debug, Clone)]
pub struct SitePaths {
    /// The site directory (where lifeboat.toml is).
    pub dir: PathBuf,
}

impl SitePaths {
    pub fn new(dir: impl AsRef<Path>) -> SitePaths {
        SitePaths {
            dir: dir.as_ref().to_path_buf(),
        }
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
