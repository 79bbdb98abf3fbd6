//! The means the faults use: a slow client, bytes flipped in a database page, an upload to
//! damage, a destination moved away and back, a process's state. No decisions: `faults.rs`
//! says when each is used.

use std::io::{Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::error::Result;
use crate::sandbox::Sandbox;

/// The file the simulator uploads before a corruption, to damage it and check that the
/// rewind gives it back byte for byte.
pub const UPLOAD_NAME: &str = "lbsim-upload.bin";

/// Places an "upload" (64 KiB) in the first data dir of the live state; returns its bytes.
pub async fn plant_upload(sandbox: &Sandbox) -> Result<Option<Vec<u8>>> {
    let Some(dir) = sandbox.manifest.state.dirs.first() else {
        return Ok(None);
    };
    let path = sandbox.live_state_dir().await?.join(dir).join(UPLOAD_NAME);
    let bytes: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &bytes).map_err(crate::error::SimError::io("upload a file to", &path))?;
    Ok(Some(bytes))
}

/// Puts a destination taken down back where it was.
pub(crate) fn bring_back(dir: &std::path::Path, aside: &std::path::Path) -> std::io::Result<()> {
    if dir.is_file() {
        std::fs::remove_file(dir)?;
    }
    std::fs::rename(aside, dir)
}

/// Polls the sandbox's capture report until the second destination matches `cond`.
pub(crate) async fn destination_state(
    sandbox: &Sandbox,
    within: Duration,
    cond: impl Fn(&lifeboat_control::capture::DestinationReport) -> bool,
) -> Option<lifeboat_control::capture::DestinationReport> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Ok(status) = sandbox.status().await
            && let Some(d) = status
                .capture
                .iter()
                .flat_map(|c| &c.destinations)
                .find(|d| sandbox.is_second_destination(&d.url))
            && cond(d)
        {
            return Some(d.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Opens a connection and sends a request head one byte a second, until aborted.
pub(crate) async fn slow_client(
    dialer: crate::netns::Dialer,
    addr: std::net::SocketAddr,
    opened: tokio::sync::mpsc::Sender<()>,
) {
    let Ok(mut conn) = dialer.connect(addr).await else {
        return;
    };
    let _ = opened.send(()).await;
    let head = b"GET /slow HTTP/1.1\r\nHost: sandbox\r\nX-Slow: ";
    for &byte in head.iter().chain(std::iter::repeat(&b'a')) {
        if conn.write_all(&[byte]).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Overwrites 256 bytes in the middle of the database's last page (never the header, so
/// SQLite still opens the file and finds the damage when it reads the page).
pub(crate) fn flip_bytes(path: &std::path::Path) -> std::io::Result<String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut header = [0u8; 100];
    std::io::Read::read_exact(&mut file, &mut header)?;
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u64::from(n).max(512),
    };
    let len = file.metadata()?.len();
    if len < 2 * page_size {
        return Err(std::io::Error::other(format!(
            "it has fewer than 2 pages ({len} bytes)"
        )));
    }
    let page = len / page_size - 1;
    let offset = page * page_size + page_size / 4;
    let garbage: Vec<u8> = (0..256u32)
        .map(|i| (i.wrapping_mul(151) ^ 0xA5) as u8)
        .collect();
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(&garbage)?;
    file.sync_all()?;
    Ok(format!(
        "256 bytes overwritten in page {} of {} (page size {page_size})",
        page + 1,
        path.display()
    ))
}

/// The one-letter state of a process (`R`, `S`, `T` stopped, `Z`), or `None` when it is gone.
pub(crate) fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

pub(crate) async fn wait_for(within: Duration, cond: impl Fn() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

pub(crate) fn join(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
