//! Reading an instance's log files straight from disk, so `lifeboat logs` works whether or
//! not the daemon runs. The supervisor writes `<site>/.lifeboat/logs/<instance>.log` and
//! rotates it to `.log.1`, `.log.2`, ... (oldest last).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::{ControlError, SitePaths};

/// The current log file of `instance`.
pub fn log_path(site_dir: &Path, instance: &str) -> PathBuf {
    SitePaths::new(site_dir)
        .logs()
        .join(format!("{instance}.log"))
}

/// The last `n` lines of the instance's log (looking into rotated files when the current one
/// is shorter), oldest first.
pub fn last_lines(site_dir: &Path, instance: &str, n: usize) -> Result<Vec<String>, ControlError> {
    let current = log_path(site_dir, instance);
    match std::fs::symlink_metadata(&current) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ControlError::PermissionDenied {
                dir: site_dir.to_path_buf(),
            });
        }
        Err(_) => {
            return Err(ControlError::NoLogs {
                instance: instance.to_string(),
                dir: site_dir.to_path_buf(),
            });
        }
    }
    let mut lines: Vec<String> = Vec::new();
    let mut files = vec![current.clone()];
    for i in 1..10 {
        let rotated = PathBuf::from(format!("{}.{i}", current.display()));
        if !rotated.exists() {
            break;
        }
        files.push(rotated);
    }
    for file in files {
        let text = std::fs::read(&file).map_err(ControlError::io("read", &file))?;
        let text = String::from_utf8_lossy(&text);
        let mut older: Vec<String> = text.lines().map(str::to_string).collect();
        older.append(&mut lines);
        lines = older;
        if lines.len() >= n {
            break;
        }
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines.split_off(skip))
}

/// Follows a log file: reads what was appended since `offset`; starts over when the file was
/// rotated (it got shorter). Returns the new text and the offset to continue from.
pub fn read_new(
    site_dir: &Path,
    instance: &str,
    offset: u64,
) -> Result<(String, u64), ControlError> {
    let path = log_path(site_dir, instance);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), 0)),
        Err(e) => return Err(ControlError::io("read", &path)(e)),
    };
    let len = file
        .metadata()
        .map_err(ControlError::io("read", &path))?
        .len();
    let start = if len < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(start))
        .map_err(ControlError::io("read", &path))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)
        .map_err(ControlError::io("read", &path))?;
    Ok((
        String::from_utf8_lossy(&buf).into_owned(),
        start + buf.len() as u64,
    ))
}

/// The current length of the log, where `--follow` starts after printing the last lines.
pub fn log_len(site_dir: &Path, instance: &str) -> u64 {
    std::fs::metadata(log_path(site_dir, instance))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_span_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let logs = SitePaths::new(dir.path()).logs();
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("web-1.log.1"), "a\nb\n").unwrap();
        std::fs::write(logs.join("web-1.log"), "c\n").unwrap();
        assert_eq!(last_lines(dir.path(), "web-1", 2).unwrap(), vec!["b", "c"]);
        assert_eq!(
            last_lines(dir.path(), "web-1", 10).unwrap(),
            vec!["a", "b", "c"]
        );
        assert!(matches!(
            last_lines(dir.path(), "web-9", 1),
            Err(ControlError::NoLogs { .. })
        ));
    }
}
