//! Virtual hosts on one machine: network namespaces, each with its own loopback and one
//! interface on a bridge of their own (a LAN), so that a node can run per host, a host can be
//! cut off the network (a partition) or lose every process (the machine dies). Used by the
//! simulator's cluster sandbox and by the cluster tests. Needs root and `ip` (iproute2).
//!
//! Never does: leave a namespace or the bridge behind. Everything a [`Lan`] made is removed
//! when it drops; its names are known before anything is made ([`LanNames`]), so a caller
//! can record them first and a killed process's LAN is removed by the next one
//! ([`remove`], or the registry a test LAN keeps under [`TEST_REGISTRY`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::{Deserialize, Serialize};

/// Where each live test LAN records its creator, for cleaning up after killed test binaries.
pub const TEST_REGISTRY: &str = "/tmp/lifeboat-test-lans";

/// Why a LAN could not be made or changed.
#[derive(Debug, thiserror::Error)]
pub enum LanError {
    #[error("virtual hosts are network namespaces, which need root; run as root")]
    NotRoot,
    #[error("cannot run `ip` (install iproute2)")]
    NoIp(#[source] std::io::Error),
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
}

/// One virtual host: a network namespace with an address on the LAN.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    /// The namespace's name (also what `ip netns exec` takes).
    pub name: String,
    pub ip: Ipv4Addr,
    /// The bridge end of its cable: down = the host is cut off.
    pub cable: String,
}

impl Host {
    /// `program` run inside the host (`ip netns exec NAME program`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// The file that stands for the host's namespace (for `setns`).
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Every process running in the host.
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.name)
    }

    /// kill -9 of every process of the host, as when the machine dies; returns their pids.
    pub fn kill_everything(&self) -> Vec<u32> {
        let pids = self.pids();
        for pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        pids
    }
}

/// The names of a LAN's bridge and hosts, known before any is made.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LanNames {
    pub bridge: String,
    pub hosts: Vec<Host>,
}

impl LanNames {
    /// `n` hosts named `PREFIX` + `ID` + `hI`, with `10.X.Y.1` to `10.X.Y.n` on a /24 of their
    /// own (`ID` is two random bytes in hex and gives X.Y, so LANs made at once do not meet).
    /// `prefix` + 9 characters must fit an interface name (15).
    pub fn new(prefix: &str, n: usize) -> LanNames {
        assert!(n < 250 && prefix.len() <= 6);
        let raw: [u8; 2] = rand::random();
        let id = format!("{:02x}{:02x}", raw[0], raw[1]);
        let (x, y) = (raw[0].max(1), raw[1]);
        LanNames {
            bridge: format!("{prefix}{id}br"),
            hosts: (1..=n)
                .map(|i| Host {
                    name: format!("{prefix}{id}h{i}"),
                    ip: Ipv4Addr::new(10, x, y, i as u8),
                    cable: format!("{prefix}{id}v{i}"),
                })
                .collect(),
        }
    }
}

/// A LAN of virtual hosts on one bridge.
pub struct Lan {
    pub bridge: String,
    pub hosts: Vec<Host>,
    /// The registry file naming this LAN's creator (test LANs).
    registered: Option<PathBuf>,
}

impl Lan {
    /// A test LAN of `n` hosts (`lbt` names), registered under [`TEST_REGISTRY`] so the next
    /// test binary removes it if this one is killed.
    pub fn new(n: usize) -> Result<Lan, LanError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(LanError::NotRoot);
        }
        clean_stale_test_lans();
        let names = LanNames::new("lbt", n);
        let file = PathBuf::from(TEST_REGISTRY).join(&names.bridge);
        let _ = std::fs::create_dir_all(TEST_REGISTRY);
        let _ = std::fs::write(&file, std::process::id().to_string());
        let mut lan = Lan::make(&names)?;
        lan.registered = Some(file);
        Ok(lan)
    }

    /// Makes the LAN `names` names. On an error, what was made is removed.
    pub fn make(names: &LanNames) -> Result<Lan, LanError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(LanError::NotRoot);
        }
        let bridge = &names.bridge;
        let mut lan = Lan {
            bridge: bridge.clone(),
            hosts: Vec::new(),
            registered: None,
        };
        ip(&["link", "add", bridge, "type", "bridge"])?;
        ip(&["link", "set", bridge, "up"])?;
        for host in &names.hosts {
            let (name, cable) = (&host.name, &host.cable);
            ip(&["netns", "add", name])?;
            lan.hosts.push(host.clone());
            ip(&[
                "link", "add", cable, "type", "veth", "peer", "name", "eth0", "netns", name,
            ])?;
            ip(&["link", "set", cable, "master", bridge, "up"])?;
            let addr = format!("{}/24", host.ip);
            ip(&["-n", name, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", name, "link", "set", "eth0", "up"])?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
        }
        Ok(lan)
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Cuts host `i` off the LAN (its processes keep running): a network partition.
    pub fn cut(&self, i: usize) -> Result<(), LanError> {
        ip(&["link", "set", &self.hosts[i].cable, "down"])
    }

    /// Plugs host `i` back in.
    pub fn heal(&self, i: usize) -> Result<(), LanError> {
        ip(&["link", "set", &self.hosts[i].cable, "up"])
    }

    /// Whether host `i` is plugged in (its cable is up).
    pub fn is_connected(&self, i: usize) -> bool {
        let out = run(&["-o", "link", "show", &self.hosts[i].cable]);
        out.is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("state UP")
        })
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let names = LanNames {
            bridge: self.bridge.clone(),
            hosts: std::mem::take(&mut self.hosts),
        };
        remove(&names);
        if let Some(file) = self.registered.take() {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Kills what runs in the LAN's hosts, deletes them, their cables and the bridge (what
/// exists of them). A cable is deleted by name: a namespace a thread is still in outlives its
/// name, and its cable with it.
pub fn remove(names: &LanNames) {
    for host in &names.hosts {
        if host.netns_path().exists() {
            host.kill_everything();
            let _ = run(&["netns", "del", &host.name]);
        }
        if !host.cable.is_empty() && Path::new("/sys/class/net").join(&host.cable).exists() {
            let _ = run(&["link", "del", &host.cable]);
        }
    }
    if Path::new("/sys/class/net").join(&names.bridge).exists() {
        let _ = run(&["link", "del", &names.bridge]);
    }
}

/// Whether anything of the LAN still exists (a namespace or the bridge).
pub fn exists(names: &LanNames) -> bool {
    let net = Path::new("/sys/class/net");
    net.join(&names.bridge).exists()
        || names
            .hosts
            .iter()
            .any(|h| h.netns_path().exists() || net.join(&h.cable).exists())
}

/// Removes the test LANs of test binaries that are gone.
fn clean_stale_test_lans() {
    let Ok(entries) = std::fs::read_dir(TEST_REGISTRY) else {
        return;
    };
    let namespaces: Vec<String> = run(&["netns", "list"])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for entry in entries.flatten() {
        let bridge = entry.file_name().to_string_lossy().to_string();
        let creator: Option<u32> = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let alive = creator.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        let Some(stem) = bridge.strip_suffix("br") else {
            continue;
        };
        if !alive {
            let prefix = format!("{stem}h");
            let hosts = namespaces
                .iter()
                .filter(|n| n.starts_with(&prefix))
                .map(|n| Host {
                    name: n.clone(),
                    ip: Ipv4Addr::UNSPECIFIED,
                    cable: format!("{stem}v{}", &n[prefix.len()..]),
                })
                .collect();
            remove(&LanNames {
                bridge: bridge.clone(),
                hosts,
            });
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn pids_in(netns: &str) -> Vec<u32> {
    run(&["netns", "pids", netns])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn run(args: &[&str]) -> Result<Output, LanError> {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(LanError::NoIp)
}

fn ip(args: &[&str]) -> Result<(), LanError> {
    let out = run(args)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LanError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made and removed on its own: two hosts, a cable cut and plugged back, nothing left.
    #[test]
    fn a_lan_is_made_cut_healed_and_removed_without_a_trace() {
        if !nix::unistd::Uid::effective().is_root() {
            assert!(matches!(Lan::new(2), Err(LanError::NotRoot)));
            return;
        }
        let names = LanNames::new("lbu", 2);
        let lan = Lan::make(&names).unwrap();
        assert!(exists(&names));
        assert!(lan.hosts.iter().all(|h| h.netns_path().exists()));
        assert!(lan.is_connected(0));
        lan.cut(0).unwrap();
        assert!(!lan.is_connected(0));
        lan.heal(0).unwrap();
        assert!(lan.is_connected(0));
        drop(lan);
        assert!(!exists(&names), "nothing of the LAN is left");
    }
}
