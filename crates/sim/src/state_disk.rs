//! A small disk of its own for the sandbox's state, so the disk-full fault can fill it and the
//! slow-disk fault can slow it without touching the machine's disks: as root, the dir that
//! holds the databases (e.g. `data/`) is moved onto a filesystem of a fixed size (what the
//! state uses now plus a margin) before the sandbox's lifeboat starts: ext4 on a loop device
//! whose image is in the sandbox (a block device, which the slow-disk fault can throttle), or
//! a tmpfs where loop devices are not available.
//!
//! Every mount made here is recorded in the sandbox's `run.json` first and undone when the
//! sandbox is torn down; the next simulation undoes what a killed one left (`mounts_under`).
//! Never mounts anything outside the sandbox.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Room left on the state's disk beyond what the state uses when the sandbox starts.
pub const MARGIN: u64 = 24 * 1024 * 1024;

/// The filler file the disk-full fault writes.
pub const FILLER: &str = "lbsim-disk-filler";

/// Whether this process may mount a filesystem (the fault needs root).
pub fn can_mount() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Moves the contents of `dir` onto a filesystem mounted at `dir`, sized to what they use plus
/// [`MARGIN`]: ext4 on a loop device over `image` (made here), else a tmpfs. Returns the size.
/// On failure nothing stays mounted and `dir` is as it was.
pub fn limit(dir: &Path, image: &Path) -> io::Result<u64> {
    let used: u64 = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    let size = (used + MARGIN).div_ceil(4096) * 4096;
    let meta = std::fs::metadata(dir)?;
    let aside = dir.with_extension("lbsim-orig");
    std::fs::rename(dir, &aside)?;
    let made = (|| {
        std::fs::create_dir(dir)?;
        if mount_loop(dir, image, size).is_err() {
            let _ = std::fs::remove_file(image);
            mount(
                Some("tmpfs"),
                dir,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(format!("size={size}").as_str()),
            )
            .map_err(io::Error::from)?;
        }
        std::fs::set_permissions(dir, meta.permissions())?;
        std::os::unix::fs::chown(dir, Some(meta.uid()), Some(meta.gid()))?;
        copy_tree(&aside, dir)
    })();
    match made {
        Ok(()) => {
            std::fs::remove_dir_all(&aside)?;
            Ok(size)
        }
        Err(e) => {
            let _ = umount2(dir, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir_all(dir);
            let _ = std::fs::rename(&aside, dir);
            Err(e)
        }
    }
}

/// Mounts a new ext4 of `size` bytes (plus room for its own metadata) at `dir`, on a loop
/// device over `image`. The loop device goes away with the mount (`mount -o loop` sets it to
/// clear itself), so unmounting is all the undo there is.
fn mount_loop(dir: &Path, image: &Path, size: u64) -> io::Result<()> {
    // ext4's journal and tables take about 5 MiB of a disk this small.
    let file = std::fs::File::create(image)?;
    file.set_len(size + 8 * 1024 * 1024)?;
    drop(file);
    run(std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0"])
        .arg(image))?;
    run(std::process::Command::new("mount")
        .args(["-o", "loop,nosuid,nodev"])
        .arg(image)
        .arg(dir))?;
    // Not part of the site's state.
    let _ = std::fs::remove_dir(dir.join("lost+found"));
    Ok(())
}

fn run(cmd: &mut std::process::Command) -> io::Result<()> {
    let out = cmd.stdin(std::process::Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The block device (major, minor) the filesystem of `dir` is on; `None` for a filesystem
/// without one (a tmpfs).
pub fn block_device(dir: &Path) -> Option<(u64, u64)> {
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    Path::new(&format!("/sys/dev/block/{major}:{minor}"))
        .exists()
        .then_some((major, minor))
}

/// Undoes [`limit`]: unmounts the filesystem at `dir`; with `keep`, its contents are first copied
/// to a plain dir that takes its place (for `--keep`).
pub fn release(dir: &Path, keep: bool) -> io::Result<()> {
    if keep {
        let kept = dir.with_extension("lbsim-kept");
        std::fs::create_dir_all(&kept)?;
        let meta = std::fs::metadata(dir)?;
        std::fs::set_permissions(&kept, meta.permissions())?;
        std::os::unix::fs::chown(&kept, Some(meta.uid()), Some(meta.gid()))?;
        copy_tree(dir, &kept)?;
        umount2(dir, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
        std::fs::remove_dir(dir)?;
        std::fs::rename(&kept, dir)
    } else {
        umount2(dir, MntFlags::MNT_DETACH).map_err(io::Error::from)
    }
}

/// The loop image of the state's disk, in the simulator's own dir of the sandbox.
pub fn image_in(work: &Path) -> PathBuf {
    work.join("state-disk.img")
}

/// Every mount point at or beneath `root` (from `/proc/self/mountinfo`), deepest first.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Unmounts every mount beneath `root` (what a killed simulation left).
pub fn release_all_under(root: &Path) -> Vec<PathBuf> {
    let found = mounts_under(root);
    for m in &found {
        let _ = umount2(m.as_path(), MntFlags::MNT_DETACH);
    }
    found
}

/// Fills the disk of `dir` with a filler file until it refuses more; returns the bytes written.
pub fn fill(dir: &Path) -> io::Result<u64> {
    use std::io::Write;
    let mut file = std::fs::File::create(dir.join(FILLER))?;
    let chunk = vec![0x5au8; 1024 * 1024];
    let mut written = 0u64;
    // Bounded: the disk is at most what the state used plus the margin.
    for _ in 0..100_000 {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => return Err(e),
        }
    }
    // Whatever fits of the last partial chunk, byte ranges smaller than a page.
    for size in [65536usize, 4096, 512] {
        while let Ok(n) = file.write(&chunk[..size]) {
            if n == 0 {
                break;
            }
            written += n as u64;
        }
    }
    let _ = file.sync_all();
    Ok(written)
}

/// Free bytes on the disk of `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    for entry in walkdir::WalkDir::new(from).min_depth(1) {
        let entry = entry.map_err(io::Error::other)?;
        let rel = entry.path().strip_prefix(from).map_err(io::Error::other)?;
        let dest = to.join(rel);
        let meta = entry.metadata().map_err(io::Error::other)?;
        if meta.is_dir() {
            std::fs::create_dir_all(&dest)?;
        } else if entry.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &dest)?;
            continue;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
        std::fs::set_permissions(&dest, meta.permissions())?;
        std::os::unix::fs::chown(&dest, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(super::unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(super::unescape("/plain"), "/plain");
    }
}
