//! Virtual hosts for the cluster tests: network namespaces on one machine, each with its own
//! loopback and one interface on a shared bridge (a LAN), so that a test can run a node per
//! host, cut one host off the network (a partition), or kill every process of a host (the
//! machine dies). Needs root (it says so otherwise).
//!
//! Everything a `Lan` made is undone when it drops, even when the test panics; a test binary
//! killed outright leaves its namespaces behind, and the next `Lan::new` removes those of
//! creators that are gone (recorded under `/tmp/lifeboat-test-lans/`).
#![allow(dead_code, reason = "each cluster test uses a different part")]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Where each live LAN records its creator, for cleaning up after killed test binaries.
const REGISTRY: &str = "/tmp/lifeboat-test-lans";

/// One virtual host: a network namespace with an address on the LAN.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name (also what `ip netns exec` takes).
    pub name: String,
    pub ip: Ipv4Addr,
    /// The bridge end of its cable: down = the host is cut off.
    cable: String,
}

impl Host {
    /// `program` run inside the host (`ip netns exec NAME program`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Every process running in the host.
    pub fn pids(&self) -> Vec<u32> {
        let out = run(Command::new("ip").args(["netns", "pids", &self.name]));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// kill -9 of every process of the host, as when the machine dies; returns how many.
    pub fn kill_everything(&self) -> usize {
        let pids = self.pids();
        for pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        pids.len()
    }
}

/// A LAN of virtual hosts on one bridge.
pub struct Lan {
    id: String,
    bridge: String,
    pub hosts: Vec<Host>,
}

impl Lan {
    /// `n` hosts, `10.X.Y.1` to `10.X.Y.n` on a /24 of their own (X.Y random, so LANs of tests
    /// running at once do not meet).
    pub fn new(n: usize) -> Lan {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the cluster tests make network namespaces and need root; run them as root"
        );
        assert!(n < 250);
        clean_stale();
        let raw: [u8; 2] = rand::random();
        let id = format!("{:02x}{:02x}", raw[0], raw[1]);
        let (x, y) = (raw[0].max(1), raw[1]);
        std::fs::create_dir_all(REGISTRY).unwrap();
        std::fs::write(
            PathBuf::from(REGISTRY).join(&id),
            std::process::id().to_string(),
        )
        .unwrap();
        let bridge = format!("lbt{id}br");
        let mut lan = Lan {
            id: id.clone(),
            bridge: bridge.clone(),
            hosts: Vec::new(),
        };
        must(Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]));
        must(Command::new("ip").args(["link", "set", &bridge, "up"]));
        for i in 1..=n {
            let name = format!("lbt{id}h{i}");
            let cable = format!("lbt{id}v{i}");
            let ip = Ipv4Addr::new(10, x, y, i as u8);
            must(Command::new("ip").args(["netns", "add", &name]));
            lan.hosts.push(Host {
                name: name.clone(),
                ip,
                cable: cable.clone(),
            });
            must(Command::new("ip").args([
                "link", "add", &cable, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ]));
            must(Command::new("ip").args(["link", "set", &cable, "master", &bridge, "up"]));
            must(Command::new("ip").args([
                "-n",
                &name,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]));
            must(Command::new("ip").args(["-n", &name, "link", "set", "eth0", "up"]));
            must(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        }
        lan
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Cuts host `i` off the LAN (its processes keep running): a network partition.
    pub fn cut(&self, i: usize) {
        must(Command::new("ip").args(["link", "set", &self.hosts[i].cable, "down"]));
    }

    /// Plugs host `i` back in.
    pub fn heal(&self, i: usize) {
        must(Command::new("ip").args(["link", "set", &self.hosts[i].cable, "up"]));
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        remove(
            &self.id,
            &self.bridge,
            self.hosts.iter().map(|h| h.name.clone()),
        );
    }
}

/// Kills what runs in the namespaces, deletes them and the bridge, forgets the LAN.
fn remove(id: &str, bridge: &str, namespaces: impl Iterator<Item = String>) {
    for ns in namespaces {
        let out = run(Command::new("ip").args(["netns", "pids", &ns]));
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        run(Command::new("ip").args(["netns", "del", &ns]));
    }
    run(Command::new("ip").args(["link", "del", bridge]));
    let _ = std::fs::remove_file(PathBuf::from(REGISTRY).join(id));
}

/// Removes the LANs of test binaries that are gone.
fn clean_stale() {
    let Ok(entries) = std::fs::read_dir(REGISTRY) else {
        return;
    };
    let namespaces =
        String::from_utf8_lossy(&run(Command::new("ip").args(["netns", "list"])).stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect::<Vec<_>>();
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().to_string();
        let creator: Option<u32> = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let alive = creator.is_some_and(|pid| PathBuf::from(format!("/proc/{pid}")).exists());
        if !alive {
            let prefix = format!("lbt{id}h");
            remove(
                &id,
                &format!("lbt{id}br"),
                namespaces
                    .iter()
                    .filter(|n| n.starts_with(&prefix))
                    .cloned(),
            );
        }
    }
}

fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .expect("run ip (iproute2 must be installed)")
}

fn must(command: &mut Command) {
    let out = run(command);
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
