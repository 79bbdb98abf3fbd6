//! Per-instance log files: everything an instance writes to stdout and stderr, plus short notes
//! from the supervisor (started, exited, restarting), kept under a size cap by rotation.
//!
//! The current file is `<id>.log`; when a write would take it past the cap it becomes
//! `<id>.log.1`, older ones shift to `.2`, `.3` ..., and the oldest beyond `keep` is deleted.
//! Logs are for people reading them, so they are not fsynced: a crash may lose the last lines.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The current log file of an instance in `dir`.
pub fn log_file(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.log"))
}

/// The `n`th rotated file (1 = the most recent) next to `current`.
pub fn rotated_file(current: &Path, n: usize) -> PathBuf {
    let mut name = current.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// A size-capped, rotated log file.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl RotatingLog {
    /// Opens `path` for appending (creating it), continuing after what an earlier run wrote.
    pub fn open(path: PathBuf, max_bytes: u64, keep: usize) -> io::Result<RotatingLog> {
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path,
            file,
            size,
            max_bytes: max_bytes.max(1),
            keep,
        })
    }

    /// Appends `bytes`, rotating first if they would take the file past the cap. A single
    /// write larger than the cap is split across files so no file exceeds the cap.
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.size >= self.max_bytes
                || (self.size > 0 && self.size + bytes.len() as u64 > self.max_bytes)
            {
                self.rotate()?;
            }
            let room = (self.max_bytes - self.size) as usize;
            let (now, later) = bytes.split_at(bytes.len().min(room));
            self.file.write_all(now)?;
            self.size += now.len() as u64;
            bytes = later;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(rotated_file(&self.path, self.keep));
        for n in (1..self.keep).rev() {
            match std::fs::rename(rotated_file(&self.path, n), rotated_file(&self.path, n + 1)) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        std::fs::rename(&self.path, rotated_file(&self.path, 1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Opens a log file for appending; new files are readable by the owner only, because an
/// application may print things that are not for everyone's eyes.
fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// A log shared by the threads copying an instance's stdout and stderr.
pub type SharedLog = Arc<Mutex<RotatingLog>>;

/// Appends a supervisor note line (`[lifeboat] ...`) to a shared log; failures are ignored
/// because a full disk must not stop the supervisor from keeping the site up.
pub fn note(log: &SharedLog, text: &str) {
    let line = format!("[lifeboat] {text}\n");
    if let Ok(mut log) = log.lock() {
        let _ = log.write(line.as_bytes());
    }
}

/// Copies everything from `pipe` into `log` until the pipe closes (every process of the
/// instance that held it has exited).
pub fn copy_pipe(mut pipe: impl io::Read, log: SharedLog) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if let Ok(mut log) = log.lock() {
                    // A failed write (disk full) drops these bytes but keeps draining the pipe,
                    // so the instance never blocks on a full pipe.
                    let _ = log.write(&buf[..n]);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn writes_past_the_cap_rotate_into_numbered_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_file(dir.path(), "web-1");
        let mut log = RotatingLog::open(path.clone(), 10, 2).unwrap();
        log.write(b"aaaaaaaa\n").unwrap();
        log.write(b"bbbbbbbb\n").unwrap();
        log.write(b"cccccccc\n").unwrap();
        log.write(b"dddddddd\n").unwrap();
        assert_eq!(read(&path), "dddddddd\n");
        assert_eq!(read(&rotated_file(&path, 1)), "cccccccc\n");
        assert_eq!(read(&rotated_file(&path, 2)), "bbbbbbbb\n");
        assert!(
            !rotated_file(&path, 3).exists(),
            "only `keep` old files stay"
        );
    }

    #[test]
    fn no_file_grows_past_the_cap_even_for_one_big_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_file(dir.path(), "web-1");
        let mut log = RotatingLog::open(path.clone(), 10, 5).unwrap();
        log.write(&[b'x'; 25]).unwrap();
        assert_eq!(read(&path).len(), 5);
        assert_eq!(read(&rotated_file(&path, 1)).len(), 10);
        assert_eq!(read(&rotated_file(&path, 2)).len(), 10);
    }

    #[test]
    fn reopening_continues_the_size_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_file(dir.path(), "web-1");
        RotatingLog::open(path.clone(), 10, 1)
            .unwrap()
            .write(b"12345678")
            .unwrap();
        let mut log = RotatingLog::open(path.clone(), 10, 1).unwrap();
        log.write(b"abc").unwrap();
        assert_eq!(read(&path), "abc");
        assert_eq!(read(&rotated_file(&path, 1)), "12345678");
    }

    #[test]
    fn log_files_are_private_to_their_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = log_file(dir.path(), "web-1");
        RotatingLog::open(path.clone(), 10, 1).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn keep_zero_truncates_instead_of_rotating() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_file(dir.path(), "web-1");
        let mut log = RotatingLog::open(path.clone(), 4, 0).unwrap();
        log.write(b"aaaa").unwrap();
        log.write(b"bb").unwrap();
        assert_eq!(read(&path), "bb");
        assert!(!rotated_file(&path, 1).exists());
    }
}
