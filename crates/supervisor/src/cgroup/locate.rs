//! Where this process sits in the machine's cgroup hierarchies, read from `/proc/self/cgroup`
//! and `/proc/self/mountinfo`. Pure parsing: the caller reads the files.
//!
//! A machine has either one unified (v2) hierarchy, or v1 hierarchies each holding some
//! controllers (`/sys/fs/cgroup/memory`, `/sys/fs/cgroup/cpu,cpuacct`, ...), or both at once
//! ("hybrid": v1 controllers and a v2 hierarchy that holds whatever v1 does not). A
//! controller is attached to at most one of them, so each is looked up on its own.

use std::path::{Path, PathBuf};

/// The controllers Lifeboat uses: memory, pids and cpu enforce the manifest's limits; cpuacct
/// (v1 only: v2 always counts CPU time) tells how much CPU an instance used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Controller {
    Memory,
    Pids,
    Cpu,
    CpuAcct,
}

impl Controller {
    pub(crate) const ALL: [Controller; 4] = [
        Controller::Memory,
        Controller::Pids,
        Controller::Cpu,
        Controller::CpuAcct,
    ];

    /// The kernel's name for it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
            Controller::CpuAcct => "cpuacct",
        }
    }
}

/// Where this process is: its own cgroup directory in each v1 hierarchy (with the
/// controllers that hierarchy holds) and in the v2 hierarchy, when mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Located {
    pub v1: Vec<(Vec<Controller>, PathBuf)>,
    pub v2: Option<PathBuf>,
}

/// Reads `/proc/self/cgroup` (`ID:CONTROLLERS:PATH` lines; v2 is `0::PATH`) against
/// `/proc/self/mountinfo`. A hierarchy that is not mounted, or whose mount does not show the
/// cgroup this process is in (a container that sees only part of the tree), is left out:
/// Lifeboat only creates cgroups where it can see its own.
pub(crate) fn locate(proc_cgroup: &str, mountinfo: &str) -> Located {
    let mounts = parse_mountinfo(mountinfo);
    let mut located = Located::default();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            located.v2 = mounts
                .iter()
                .filter(|m| m.fstype == "cgroup2")
                .find_map(|m| m.dir_of(path));
            continue;
        }
        let names: Vec<&str> = controllers.split(',').collect();
        let ours: Vec<Controller> = Controller::ALL
            .into_iter()
            .filter(|c| names.contains(&c.name()))
            .collect();
        if ours.is_empty() {
            continue;
        }
        let dir = mounts
            .iter()
            .filter(|m| {
                m.fstype == "cgroup" && names.iter().all(|n| m.options.iter().any(|o| o == n))
            })
            .find_map(|m| m.dir_of(path));
        if let Some(dir) = dir {
            located.v1.push((ours, dir));
        }
    }
    located
}

struct Mount {
    /// The directory of the hierarchy that appears at the mount point.
    root: String,
    point: PathBuf,
    fstype: String,
    /// Super options: for a v1 cgroup mount, its controllers (`rw,cpu,cpuacct`).
    options: Vec<String>,
}

impl Mount {
    /// The directory, under this mount, of the cgroup `path` (as `/proc/self/cgroup` says it).
    fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let rel = if self.root == "/" {
            path
        } else {
            let rest = path.strip_prefix(self.root.as_str())?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None; // `/a/bc` is not under the root `/a/b`
            }
            rest
        };
        let rel = rel.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            return None;
        }
        Some(if rel.is_empty() {
            self.point.clone()
        } else {
            self.point.join(rel)
        })
    }
}

/// `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS`.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let mut after = after.split(' ');
            let fstype = after.next()?;
            let _source = after.next()?;
            let options = after.next().unwrap_or("");
            Some(Mount {
                root: unescape(fields.get(3)?),
                point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: fstype.to_string(),
                options: options.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` is a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `dir` is a cgroup directory this module may treat as one of a site's (`lifeboat-`
/// NAME `-` 8 hex digits): what the stale sweep looks at, never anything else.
pub(crate) fn is_site_dir_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("lifeboat-") else {
        return false;
    };
    let Some((site, hash)) = rest.rsplit_once('-') else {
        return false;
    };
    !site.is_empty() && hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The name of a site's cgroup: `lifeboat-SITE-HASH`, the hash being of the site dir, so two
/// sites with the same name in different dirs (every test site is `testsite`) never share
/// one, and the same site finds its own again after a restart.
pub(crate) fn site_dir_name(site: &str, site_dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    // FNV-1a: stable across Rust releases (std's hasher is not promised to be), which matters
    // because the name must be found again by the next `lifeboat up`.
    let mut hash: u32 = 0x811c_9dc5;
    for b in site_dir.as_os_str().as_bytes() {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let site: String = site
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("lifeboat-{site}-{hash:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's: v1 controllers each on their own mount, an empty v2 hierarchy beside
    /// them, and the process in a memory cgroup made for it.
    const HYBRID_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n7:blkio:/\n4:memory:/process_api/c027\n1:cpu:/\n2:cpuacct:/\n0::/\n";
    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_controllers_are_found_under_this_process_own_cgroup() {
        let located = locate(HYBRID_CGROUP, HYBRID_MOUNTS);
        assert_eq!(
            located.v1,
            vec![
                (vec![Controller::Pids], PathBuf::from("/sys/fs/cgroup/pids")),
                (
                    vec![Controller::Memory],
                    PathBuf::from("/sys/fs/cgroup/memory/process_api/c027")
                ),
                (vec![Controller::Cpu], PathBuf::from("/sys/fs/cgroup/cpu")),
                (
                    vec![Controller::CpuAcct],
                    PathBuf::from("/sys/fs/cgroup/cpuacct")
                ),
            ]
        );
        assert_eq!(located.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn co_mounted_v1_controllers_share_one_directory() {
        let cgroup = "3:cpu,cpuacct:/system.slice/site.service\n";
        let mounts = "25 20 0:22 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let located = locate(cgroup, mounts);
        assert_eq!(
            located.v1,
            vec![(
                vec![Controller::Cpu, Controller::CpuAcct],
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/system.slice/site.service")
            )]
        );
    }

    #[test]
    fn a_pure_v2_machine_has_one_directory() {
        let cgroup = "0::/user.slice/user-1000.slice/session-2.scope\n";
        let mounts = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let located = locate(cgroup, mounts);
        assert!(located.v1.is_empty());
        assert_eq!(
            located.v2,
            Some(PathBuf::from(
                "/sys/fs/cgroup/user.slice/user-1000.slice/session-2.scope"
            ))
        );
    }

    #[test]
    fn a_mount_showing_only_part_of_the_tree_is_used_only_when_it_holds_this_process() {
        let mounts = "30 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            locate("0::/docker/abc/app\n", mounts).v2,
            Some(PathBuf::from("/sys/fs/cgroup/app"))
        );
        assert_eq!(
            locate("0::/docker/abc\n", mounts).v2,
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(locate("0::/docker/abcd\n", mounts).v2, None);
        assert_eq!(locate("0::/other\n", mounts).v2, None);
    }

    #[test]
    fn without_cgroup_mounts_nothing_is_found() {
        assert_eq!(locate(HYBRID_CGROUP, ""), Located::default());
        assert_eq!(locate("", HYBRID_MOUNTS), Located::default());
    }

    #[test]
    fn escaped_mount_points_are_read_back() {
        let mounts = "41 31 0:38 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            locate("0::/\n", mounts).v2,
            Some(PathBuf::from("/mnt/my cgroups"))
        );
    }

    #[test]
    fn site_cgroup_names_are_stable_distinct_per_dir_and_recognised() {
        let a = site_dir_name("guestbook", Path::new("/srv/a"));
        assert_eq!(a, site_dir_name("guestbook", Path::new("/srv/a")));
        assert_ne!(a, site_dir_name("guestbook", Path::new("/srv/b")));
        assert!(a.starts_with("lifeboat-guestbook-"));
        assert!(is_site_dir_name(&a));
        assert!(!is_site_dir_name("lifeboat-supervisor"));
        assert!(!is_site_dir_name("user.slice"));
        assert!(!is_site_dir_name("lifeboat--0123abcd"));
    }
}
