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
    #[error(
        "cannot run `nft` (install nftables: apt-get install nftables, or scripts/install-test-deps)"
    )]
    NoNft(#[source] std::io::Error),
    #[error("`{command}` in host {host} failed: {stderr}")]
    InHost {
        host: String,
        command: String,
        stderr: String,
    },
}

/// The nftables table a slow link's packet drops live in, inside the host.
pub const SLOW_LINK_TABLE: &str = "lbsim_slow_link";
/// A host's one interface on the LAN (inside its namespace).
const LINK_DEV: &str = "eth0";

/// How a host's link is made slow and lossy: a token bucket (tbf) on what it sends, and a
/// share of its packets dropped each way (nftables `numgen random`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowLink {
    /// What the host may send, in kbit/s.
    pub rate_kbit: u32,
    /// The share of packets dropped, in and out, in percent.
    pub drop_percent: u8,
}

impl SlowLink {
    /// The simulator's slow link: 1 mbit/s out, 10% of the packets dropped each way.
    pub const SIMULATED: SlowLink = SlowLink {
        rate_kbit: 1000,
        drop_percent: 10,
    };

    /// In words, for evidence.
    pub fn describe(&self) -> String {
        format!(
            "tbf rate {} kbit/s on what it sends, nftables dropping {}% of the packets each way",
            self.rate_kbit, self.drop_percent
        )
    }
}

/// What a host's link carries now: the root qdisc and the drop table, with their counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    /// The root qdisc's kind (`noqueue` when nothing is set, `tbf` when slowed).
    pub qdisc: String,
    /// Bytes the qdisc sent, and packets it held back over its rate (`overlimits`) and
    /// dropped.
    pub sent_bytes: u64,
    pub overlimits: u64,
    pub qdisc_dropped: u64,
    /// Whether the drop table exists, and the packets its rules dropped.
    pub drop_table: bool,
    pub dropped: u64,
}

/// The environment variable that names the `nft` binary to use (`nft` on PATH by default).
pub const NFT_ENV: &str = "LIFEBOAT_NFT";

fn nft() -> String {
    std::env::var(NFT_ENV).unwrap_or_else(|_| "nft".into())
}

/// Whether `nft` (or `$LIFEBOAT_NFT`) can be run here.
pub fn nft_available() -> bool {
    Command::new(nft())
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
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

    /// Makes the host's link slow and lossy (see [`SlowLink`]); undone by [`Host::clear_link`]
    /// (or with the host). On an error, what was set is removed.
    pub fn slow_link(&self, spec: SlowLink) -> Result<(), LanError> {
        if !nft_available() {
            return Err(LanError::NoNft(std::io::Error::other(
                "nft --version failed",
            )));
        }
        let rate = format!("{}kbit", spec.rate_kbit);
        self.run_in(
            "tc",
            &[
                "qdisc", "add", "dev", LINK_DEV, "root", "tbf", "rate", &rate, "burst", "32kbit",
                "latency", "400ms",
            ],
            None,
        )?;
        let n = spec.drop_percent.min(100);
        let rules = format!(
            "table inet {SLOW_LINK_TABLE} {{\n\
             chain out {{ type filter hook output priority 0; policy accept; \
             oifname \"{LINK_DEV}\" numgen random mod 100 < {n} counter drop; }}\n\
             chain in {{ type filter hook input priority 0; policy accept; \
             iifname \"{LINK_DEV}\" numgen random mod 100 < {n} counter drop; }}\n}}\n"
        );
        if let Err(e) = self.run_in(&nft(), &["-f", "-"], Some(&rules)) {
            let _ = self.clear_link();
            return Err(e);
        }
        Ok(())
    }

    /// Removes what [`Host::slow_link`] set (what of it exists).
    pub fn clear_link(&self) -> Result<(), LanError> {
        let state = self.link_state();
        if state.qdisc != "noqueue" && !state.qdisc.is_empty() {
            self.run_in("tc", &["qdisc", "del", "dev", LINK_DEV, "root"], None)?;
        }
        if state.drop_table {
            self.run_in(&nft(), &["delete", "table", "inet", SLOW_LINK_TABLE], None)?;
        }
        Ok(())
    }

    /// What the host's link carries now, read from `tc` and `nft` inside it.
    pub fn link_state(&self) -> LinkState {
        let mut state = LinkState::default();
        if let Ok(out) = self.run_in(
            "tc",
            &["-s", "qdisc", "show", "dev", LINK_DEV, "root"],
            None,
        ) {
            // "qdisc tbf 8001: root refcnt 3 rate 1Mbit ...\n Sent 1 bytes 2 pkt (dropped 3, overlimits 4 requeues 0)"
            let words: Vec<&str> = out.split_whitespace().collect();
            state.qdisc = words.get(1).map(|w| w.to_string()).unwrap_or_default();
            let after = |key: &str| {
                words
                    .iter()
                    .position(|w| *w == key)
                    .and_then(|i| words.get(i + 1))
                    .and_then(|v| v.trim_end_matches(',').parse().ok())
                    .unwrap_or(0)
            };
            state.overlimits = after("overlimits");
            state.sent_bytes = after("Sent");
            state.qdisc_dropped = after("(dropped");
        }
        if let Ok(out) = self.run_in(&nft(), &["list", "table", "inet", SLOW_LINK_TABLE], None) {
            state.drop_table = true;
            let words: Vec<&str> = out.split_whitespace().collect();
            state.dropped = words
                .windows(2)
                .filter(|w| w[0] == "packets")
                .filter_map(|w| w[1].parse::<u64>().ok())
                .sum();
        }
        state
    }

    /// `program args` inside the host, `input` on its stdin; its output.
    fn run_in(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, LanError> {
        use std::io::Write;
        let mut child = self
            .command(program)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(LanError::NoIp)?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            let _ = stdin.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().map_err(LanError::NoIp)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(LanError::InHost {
                host: self.name.clone(),
                command: format!("{program} {}", args.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
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

    /// A slow link really drops and shapes what the host sends, and its undo leaves the
    /// link as it was: no tbf qdisc, no drop table.
    #[test]
    fn a_slow_link_drops_packets_and_is_removed_without_a_trace() {
        if !nix::unistd::Uid::effective().is_root() || !nft_available() {
            eprintln!("skipped: needs root and nft");
            return;
        }
        let lan = Lan::new(2).unwrap();
        let (h, to) = (lan.host(0), lan.host(1).ip);
        let before = h.link_state();
        assert!(!before.drop_table && before.qdisc != "tbf", "{before:?}");
        h.slow_link(SlowLink::SIMULATED).unwrap();
        let set = h.link_state();
        assert_eq!(set.qdisc, "tbf", "{set:?}");
        assert!(set.drop_table, "{set:?}");
        // 400 datagrams of 1 KiB sent from inside the host: about 10% are dropped.
        let path = h.netns_path();
        std::thread::spawn(move || {
            crate::netns::enter(&path).unwrap();
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..400 {
                let _ = sock.send_to(&[0u8; 1024], (to, 9));
            }
        })
        .join()
        .unwrap();
        let after = h.link_state();
        assert!(
            (10..=100).contains(&after.dropped),
            "about 40 of 400 dropped: {after:?}"
        );
        assert!(
            after.sent_bytes > 0 && after.overlimits > 0,
            "the rest was sent at the rate, held back over it: {after:?}"
        );
        h.clear_link().unwrap();
        let cleared = h.link_state();
        assert!(
            !cleared.drop_table && cleared.qdisc != "tbf",
            "nothing is left: {cleared:?}"
        );
        // Clearing a clear link changes nothing and does not fail.
        h.clear_link().unwrap();
    }
}
