//! One timeline worker per site: an OS file lock in the capture state dir, held for the
//! worker's life, so a restarted worker waits for the old one to let go of the captures.

use std::time::Instant;

use crate::error::{Result, TimelineError, io_err};

/// Takes the site's worker lock, waiting up to 30 s for a worker that is shutting down.
pub(crate) fn lock_site(state_dir: &std::path::Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(state_dir).map_err(io_err("create", state_dir))?;
    let path = state_dir.join("worker.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(TimelineError::Invalid(format!(
                    "another timeline worker holds {}; stop it (one worker per site) and try again",
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("lock", &path)(e)),
        }
    }
}
