//! The sandbox of a site with `[cluster]`: one virtual host per node of the live cluster
//! (same names and zones) on a LAN of the sandbox's own (`lan.rs`), plus a services host for
//! the sandbox's S3 server and the simulator's clients; an etcd of its own (a member on each
//! of the first three node hosts; with two nodes the third on the services host); one copy of the site per node, each started with
//! `lifeboat up DIR --node --zone --advertise` inside its host.
//!
//! Node 1's copy is the sandbox dir itself (it holds the restored state and starts first, so
//! it leads with the restored data); the others are siblings, `.NAME.simulate.nK`, with the
//! code, the manifest and the vault key, and restore from the sandbox's vault when they join,
//! as a new machine would. Every node's vault is the sandbox's own: the first node's
//! `.lifeboat/vault` (by absolute path) and the S3 server on the services host.
//!
//! Never does: start anything outside the LAN's hosts but through the spawner (parent-death
//! signal), or make a namespace, bridge, process or dir that `run.json` does not name first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_control::ControlClient;
use lifeboat_control::api::StatusReport;
use lifeboat_control::node::NodeRole;
use lifeboat_core::manifest::{LIFEBOAT_DIR, MANIFEST_FILE, Manifest};

use super::{Sandbox, copy_code, healthy_instances, write_run_file};
use crate::error::{Result, SimError};
use crate::lan::{Lan, LanNames};
use crate::load::Http;
use crate::netns::Dialer;
use crate::s3_server;

/// The port of every node's front door, on its host's address.
pub const FRONT_DOOR_PORT: u16 = 8080;
/// etcd's client port on a member's host.
const ETCD_PORT: u16 = 2379;
/// The environment variable that names the `etcd` binary to use.
pub const ETCD_ENV: &str = "LIFEBOAT_ETCD";

/// Which nodes the copy gets, and where that came from.
#[derive(Debug, Clone)]
pub struct Topology {
    /// (node name, zone), in order.
    pub nodes: Vec<(String, String)>,
    /// Where they came from, for the report: the live site, `--nodes`, or the default and
    /// why.
    pub source: String,
}

/// The nodes and zones `given` (`--nodes`) when there are any; else the live cluster's from
/// the live site's status; three nodes in three zones when it does not answer or shows no
/// nodes.
pub async fn topology(site_dir: &Path, given: &[(String, String)]) -> Topology {
    if !given.is_empty() {
        return Topology {
            nodes: given.to_vec(),
            source: "the nodes and zones given with --nodes".into(),
        };
    }
    let why = match ControlClient::for_site(site_dir) {
        Ok(client) => match tokio::time::timeout(Duration::from_secs(5), client.status()).await {
            Ok(Ok(s)) if !s.nodes.is_empty() => {
                let mut nodes: Vec<(String, String)> =
                    s.nodes.into_iter().map(|n| (n.name, n.zone)).collect();
                nodes.sort();
                nodes.truncate(9);
                return Topology {
                    nodes,
                    source: "the live site's nodes and zones".into(),
                };
            }
            Ok(Ok(_)) => "the live site's status shows no nodes".to_string(),
            Ok(Err(e)) => format!("the live site does not answer ({e})"),
            Err(_) => "the live site did not answer within 5 s".to_string(),
        },
        Err(e) => format!("the live site does not answer ({e})"),
    };
    Topology {
        nodes: (1..=3)
            .map(|i| (format!("n{i}"), format!("z{i}")))
            .collect(),
        source: format!("three nodes in three zones, the default ({why})"),
    }
}

/// Where `etcd` is: `$LIFEBOAT_ETCD`, on PATH, in a `.tools/bin` beside the `lifeboat`
/// binary or one of its parent dirs, or Debian's `/usr/bin/etcd`.
pub fn find_etcd(lifeboat_bin: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ETCD_ENV).map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("etcd"));
    let beside = lifeboat_bin
        .ancestors()
        .skip(1)
        .map(|dir| dir.join(".tools/bin/etcd"));
    on_path
        .chain(beside)
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| p.is_file())
}

/// One node of the copy.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub zone: String,
    /// Its host in the LAN (the same index).
    pub host: usize,
    /// Its copy of the site.
    pub dir: PathBuf,
    child: Option<Child>,
}

/// One etcd member, on host `host`.
#[derive(Debug)]
struct Member {
    host: usize,
    child: Option<Child>,
}

/// The running parts of a cluster sandbox.
pub struct ClusterSandbox {
    pub lan: Lan,
    pub nodes: Vec<Node>,
    members: Vec<Member>,
    etcd_bin: PathBuf,
    /// Where its nodes and zones came from (the live site, `--nodes`, the default and why).
    pub topology: String,
}

impl ClusterSandbox {
    /// Node `i`'s front door.
    pub fn front_door(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.lan.host(i).ip, FRONT_DOOR_PORT))
    }

    /// Every node's front door, in order.
    pub fn front_doors(&self) -> Vec<SocketAddr> {
        (0..self.nodes.len()).map(|i| self.front_door(i)).collect()
    }

    /// The hosts that run an etcd member.
    pub fn etcd_hosts(&self) -> Vec<usize> {
        self.members.iter().map(|m| m.host).collect()
    }

    /// The pid of node `i`'s lifeboat.
    pub fn node_pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// Node `i`'s status, when it answers within two seconds.
    pub async fn status(&self, i: usize) -> Option<StatusReport> {
        let client = ControlClient::for_site(&self.nodes[i].dir).ok()?;
        tokio::time::timeout(Duration::from_secs(2), client.status())
            .await
            .ok()?
            .ok()
    }

    /// The node that leads and serves now (primary, every instance healthy), with its term;
    /// the newest term when two say so (a cut-off one has not noticed yet).
    pub async fn serving_primary(&self) -> Option<(usize, u64)> {
        let mut best: Option<(usize, u64)> = None;
        for i in 0..self.nodes.len() {
            let Some(s) = self.status(i).await else {
                continue;
            };
            let Some(NodeRole::Primary { term }) = s.role else {
                continue;
            };
            let desired: u32 = s.desired.values().sum();
            if desired == 0 || (healthy_instances(&s).len() as u32) < desired {
                continue;
            }
            if best.is_none_or(|(_, t)| term > t) {
                best = Some((i, term));
            }
        }
        best
    }

    /// Each node's role in words (`primary (term 7)`, `standby of n2`, `fenced`, `joining`,
    /// `not answering`), in order.
    pub async fn roles(&self) -> Vec<String> {
        let mut roles = Vec::new();
        for i in 0..self.nodes.len() {
            roles.push(match self.status(i).await.map(|s| s.role) {
                None => "not answering".to_string(),
                Some(None) => "no role".to_string(),
                Some(Some(NodeRole::Primary { term })) => format!("primary (term {term})"),
                Some(Some(NodeRole::Standby { leader, .. })) => format!("standby of {leader}"),
                Some(Some(NodeRole::Fenced { .. })) => "fenced".to_string(),
                Some(Some(NodeRole::Joining)) => "joining".to_string(),
                Some(Some(NodeRole::HandingOver { to, .. })) => format!("handing over to {to}"),
            });
        }
        roles
    }

    /// Whether node `i` follows a primary as a standby whose copy streams.
    pub async fn is_streaming_standby(&self, i: usize) -> bool {
        let Some(s) = self.status(i).await else {
            return false;
        };
        matches!(s.role, Some(NodeRole::Standby { .. }))
            && s.replica.is_some_and(|r| r.ready && r.state == "streaming")
    }

    /// Waits until `cond` holds, checking every 100 ms, at most `within`; how long it took.
    pub async fn wait_until<F, Fut>(&self, within: Duration, mut cond: F) -> Option<Duration>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        loop {
            if cond().await {
                return Some(started.elapsed());
            }
            if started.elapsed() >= within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Cuts host `i` off the LAN.
    pub fn cut(&self, i: usize) -> Result<(), String> {
        self.lan.cut(i).map_err(|e| e.to_string())
    }

    /// Plugs host `i` back in.
    pub fn heal(&self, i: usize) -> Result<(), String> {
        self.lan.heal(i).map_err(|e| e.to_string())
    }

    /// kill -9 of everything on host `i` (its lifeboat, instances, etcd member); their pids.
    pub fn kill_host(&mut self, i: usize) -> Vec<u32> {
        let mut pids = self.lan.host(i).kill_everything();
        for child in self.nodes[i].child.iter_mut().chain(
            self.members
                .iter_mut()
                .filter(|m| m.host == i)
                .filter_map(|m| m.child.as_mut()),
        ) {
            let _ = child.kill();
            let _ = child.wait();
            pids.push(child.id());
        }
        self.nodes[i].child = None;
        for m in self.members.iter_mut().filter(|m| m.host == i) {
            m.child = None;
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// kill -9 of the etcd member on host `i`; its pid.
    pub fn kill_etcd(&mut self, i: usize) -> Option<u32> {
        let m = self.members.iter_mut().find(|m| m.host == i)?;
        let mut child = m.child.take()?;
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        Some(pid)
    }

    /// Whether the etcd member on host `i` answers its health check (from the services host).
    pub async fn etcd_healthy(&self, dialer: &Dialer, i: usize) -> bool {
        let addr = SocketAddr::from((self.lan.host(i).ip, ETCD_PORT));
        let http = Http::new(addr, dialer.clone());
        matches!(
            http.send(http::Method::GET, "/health", None).await,
            Ok((200, body)) if String::from_utf8_lossy(&body).contains("true")
        )
    }

    /// The host whose etcd member leads etcd now, as the members that answer say
    /// (`/v3/maintenance/status` through each member's JSON gateway, from the services host).
    pub async fn etcd_leader_host(&self, dialer: &Dialer) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let addr = SocketAddr::from((self.lan.host(m.host).ip, ETCD_PORT));
            let http = Http::new(addr, dialer.clone());
            let answer = tokio::time::timeout(
                Duration::from_secs(1),
                http.send(
                    http::Method::POST,
                    "/v3/maintenance/status",
                    Some(("{}".into(), "application/json")),
                ),
            )
            .await;
            let Ok(Ok((200, body))) = answer else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
                continue;
            };
            // uint64 fields come as strings from the gateway.
            let id = v["header"]["member_id"].as_str().map(str::to_string);
            if let Some(id) = id {
                ids.push((m.host, id));
            }
            if let Some(l) = v["leader"].as_str() {
                leader = Some(l.to_string());
            }
        }
        let leader = leader?;
        ids.into_iter()
            .find(|(_, id)| *id == leader)
            .map(|(h, _)| h)
    }

    fn kill_all(&mut self) {
        for child in self
            .nodes
            .iter_mut()
            .filter_map(|n| n.child.as_mut())
            .chain(self.members.iter_mut().filter_map(|m| m.child.as_mut()))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        for n in &mut self.nodes {
            n.child = None;
        }
        for m in &mut self.members {
            m.child = None;
        }
    }
}

/// The copy's manifest on a cluster: the single-node sandbox's (its own vault, quorum 1) with
/// the front door on every address of the node's host, the vault's first destination by
/// absolute path (one folder every node reaches), and `[cluster]` pointing at the sandbox's
/// etcd without the live site's TLS settings. `[cluster]`'s settings (durability, lease...)
/// are the restored manifest's; when it has none (the site became a cluster after that
/// moment), the live manifest's (`live`).
pub fn cluster_manifest(
    text: &str,
    live: &str,
    vault_dir: &Path,
    second: &str,
    etcd: &[String],
) -> Result<(toml::Table, Manifest)> {
    let (mut raw, _) = super::sandbox_manifest(text, FRONT_DOOR_PORT, second)?;
    if let Some(proxy) = raw.get_mut("proxy").and_then(toml::Value::as_table_mut) {
        proxy.insert("listen".into(), format!("0.0.0.0:{FRONT_DOOR_PORT}").into());
    }
    if let Some(vault) = raw.get_mut("vault").and_then(toml::Value::as_table_mut) {
        vault.insert(
            "destinations".into(),
            toml::Value::Array(vec![vault_dir.display().to_string().into(), second.into()]),
        );
    }
    let cluster_of = |text: &str| {
        text.parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("cluster").and_then(toml::Value::as_table).cloned())
    };
    let mut cluster = cluster_of(text)
        .or_else(|| cluster_of(live))
        .unwrap_or_default();
    for key in ["etcd_ca", "etcd_cert", "etcd_key"] {
        cluster.remove(key);
    }
    cluster.insert(
        "etcd".into(),
        toml::Value::Array(etcd.iter().map(|e| e.as_str().into()).collect()),
    );
    raw.insert("cluster".into(), toml::Value::Table(cluster));
    let manifest = Manifest::parse(
        "sandbox lifeboat.toml",
        &toml::to_string(&raw).unwrap_or_default(),
    )?;
    Ok((raw, manifest))
}

/// The dir of node `k` (from 0): the sandbox itself for the first, siblings for the others.
pub fn node_dir(root: &Path, k: usize) -> PathBuf {
    if k == 0 {
        return root.to_path_buf();
    }
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    root.with_file_name(format!("{name}.n{}", k + 1))
}

impl Sandbox {
    /// Makes the LAN (recorded in `run.json` first): a host per node and a services host,
    /// which the spawner and the dialer enter. The error says why there can be none.
    pub(super) fn make_lan(&mut self, nodes: usize) -> Result<Lan, String> {
        let names = LanNames::new("lbs", nodes + 1);
        self.run.lan = Some(names.clone());
        write_run_file(&self.work, &self.run).map_err(|e| e.to_string())?;
        let lan = Lan::make(&names).map_err(|e| format!("cannot make the virtual hosts: {e}"))?;
        let services = lan.host(nodes);
        self.spawner
            .enter_netns(&services.netns_path())
            .map_err(|e| format!("cannot enter {}: {e}", services.name))?;
        self.dialer = Dialer::inside(&services.netns_path())
            .map_err(|e| format!("cannot open sockets in {}: {e}", services.name))?;
        Ok(lan)
    }

    /// Sets up and starts the copy on every node: the LAN, the S3 server on the services
    /// host, the manifest, etcd, the first node (with the restored state) until it leads and
    /// serves, then the others with its vault key until each streams as a standby.
    pub(super) async fn start_cluster(
        &mut self,
        site_dir: &Path,
        site_manifest: &Manifest,
        manifest_text: &str,
        topology: Topology,
    ) -> Result<()> {
        let etcd_bin = find_etcd(&self.lifeboat_bin).ok_or(SimError::NoEtcd)?;
        let n = topology.nodes.len();
        let lan = self.make_lan(n).map_err(|why| SimError::Cluster { why })?;
        self.network = Ok(format!(
            "{n} virtual hosts and a services host on bridge {} (a LAN of their own)",
            lan.bridge
        ));
        self.services_ip = Some(lan.host(n).ip);
        self.second = self.start_s3_server().await;
        let second_url = match &self.second {
            super::SecondDestination::S3(s3) => s3.url("site"),
            super::SecondDestination::Folder { .. } => self
                .root
                .join(super::SECOND_DESTINATION)
                .display()
                .to_string(),
        };
        // A member on each of the first three node hosts; a cluster of two gets its third on
        // the services host (a witness elsewhere, as two nodes need: with a member on each,
        // losing either would lose etcd's quorum).
        let etcd_hosts: Vec<usize> = if n == 2 {
            vec![0, 1, n]
        } else {
            (0..n.min(3)).collect()
        };
        let etcd_urls: Vec<String> = etcd_hosts
            .iter()
            .map(|&i| format!("http://{}:{ETCD_PORT}", lan.host(i).ip))
            .collect();
        let vault_dir = self.root.join(LIFEBOAT_DIR).join("vault");
        let live = std::fs::read_to_string(site_dir.join(MANIFEST_FILE)).unwrap_or_default();
        let (raw, manifest) =
            cluster_manifest(manifest_text, &live, &vault_dir, &second_url, &etcd_urls)?;
        let text = toml::to_string(&raw).unwrap_or_default();
        self.manifest = manifest;
        self.raw_manifest = raw;
        self.front_door = SocketAddr::from((lan.host(0).ip, FRONT_DOOR_PORT));
        self.state_disk = Err("not made for a cluster sandbox (its nodes share no disk)".into());
        let mut nodes = Vec::new();
        for (k, (name, zone)) in topology.nodes.iter().enumerate() {
            let dir = node_dir(&self.root, k);
            if k > 0 {
                self.run.node_dirs.push(dir.clone());
                write_run_file(&self.work, &self.run)?;
                std::fs::create_dir_all(&dir).map_err(SimError::io("create", &dir))?;
                copy_code(site_dir, &dir, site_manifest)?;
            }
            let path = dir.join(MANIFEST_FILE);
            std::fs::write(&path, &text).map_err(SimError::io("write the manifest", &path))?;
            nodes.push(Node {
                name: name.clone(),
                zone: zone.clone(),
                host: k,
                dir,
                child: None,
            });
        }
        let members = etcd_hosts
            .iter()
            .map(|&host| Member { host, child: None })
            .collect();
        self.cluster = Some(ClusterSandbox {
            lan,
            nodes,
            members,
            etcd_bin,
            topology: topology.source,
        });
        for &i in &etcd_hosts {
            self.start_etcd(i)?;
        }
        self.start_node(0)?;
        let deadline = super::START_DEADLINE;
        let led = self
            .wait_cluster(deadline, |c| async move {
                c.serving_primary().await.is_some_and(|(i, _)| i == 0)
            })
            .await;
        if led.is_none() {
            return Err(self.not_serving(deadline, "the first node did not lead and serve"));
        }
        let key = self.root.join(LIFEBOAT_DIR).join("vault.key");
        for k in 1..n {
            let dir = node_dir(&self.root, k).join(LIFEBOAT_DIR);
            std::fs::create_dir_all(&dir).map_err(SimError::io("create", &dir))?;
            let _ =
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
            std::fs::copy(&key, dir.join("vault.key"))
                .map_err(SimError::io("copy the vault key to", &dir))?;
            self.start_node(k)?;
        }
        let all = self
            .wait_cluster(deadline, |c| async move {
                for k in 1..c.nodes.len() {
                    if !c.is_streaming_standby(k).await {
                        return false;
                    }
                }
                true
            })
            .await;
        if all.is_none() {
            return Err(self.not_serving(deadline, "not every other node streams as a standby"));
        }
        self.site = self.root.clone();
        Ok(())
    }

    /// Waits until `cond` holds of the cluster (every 100 ms, at most `within`).
    pub async fn wait_cluster<'a, F, Fut>(&'a self, within: Duration, cond: F) -> Option<Duration>
    where
        F: Fn(&'a ClusterSandbox) -> Fut,
        Fut: std::future::Future<Output = bool> + 'a,
    {
        let c = self.cluster.as_ref()?;
        c.wait_until(within, || cond(c)).await
    }

    fn not_serving(&self, within: Duration, what: &str) -> SimError {
        let first = self
            .cluster
            .as_ref()
            .and_then(|c| c.nodes.first())
            .map_or("n1".into(), |n| n.name.clone());
        let log = self.work.join(format!("lifeboat-{first}.log"));
        SimError::SandboxNotServing {
            secs: within.as_secs(),
            detail: format!("{what}{}", super::tail_of(&log)),
            log,
        }
    }

    /// Starts (again) the etcd member on host `i`, with its data in the sandbox.
    pub fn start_etcd(&mut self, i: usize) -> Result<u32> {
        let c = self.cluster.as_ref().expect("a cluster sandbox");
        let peers: Vec<String> = c
            .members
            .iter()
            .map(|m| format!("e{}=http://{}:2380", m.host + 1, c.lan.host(m.host).ip))
            .collect();
        let host = c.lan.host(i);
        let ip = host.ip;
        let data = self.work.join(format!("etcd-{}", i + 1));
        let log = self.work.join(format!("etcd-{}.log", i + 1));
        let mut cmd = self.shim_in(&host.name, &c.etcd_bin, &log)?;
        cmd.arg(format!("--name=e{}", i + 1))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls=http://{ip}:{ETCD_PORT}"))
            .arg(format!("--advertise-client-urls=http://{ip}:{ETCD_PORT}"))
            .arg(format!("--listen-peer-urls=http://{ip}:2380"))
            .arg(format!("--initial-advertise-peer-urls=http://{ip}:2380"))
            .arg(format!("--initial-cluster={}", peers.join(",")))
            .arg("--initial-cluster-state=new")
            // A member back from a partition must not force an election (etcd 3.4).
            .arg("--pre-vote");
        let bin = c.etcd_bin.clone();
        let child = self
            .spawner
            .spawn(cmd)
            .map_err(|source| SimError::Spawn { bin, source })?;
        let pid = child.id();
        self.run.etcd_pids.push(pid);
        write_run_file(&self.work, &self.run)?;
        let c = self.cluster.as_mut().expect("a cluster sandbox");
        if let Some(m) = c.members.iter_mut().find(|m| m.host == i) {
            m.child = Some(child);
        }
        Ok(pid)
    }

    /// Starts (again) node `i`'s lifeboat in its host, its output in `lifeboat-NAME.log`.
    pub fn start_node(&mut self, i: usize) -> Result<u32> {
        let c = self.cluster.as_ref().expect("a cluster sandbox");
        let node = &c.nodes[i];
        let host = c.lan.host(i);
        let log = self.work.join(format!("lifeboat-{}.log", node.name));
        let bin = self.lifeboat_bin.clone();
        let mut cmd = self.shim_in(&host.name, &bin, &log)?;
        cmd.arg("up")
            .arg(&node.dir)
            .args(["--node", &node.name, "--zone", &node.zone])
            .arg("--advertise")
            .arg(host.ip.to_string())
            .env_remove("LIFEBOAT_NODE")
            .env("AWS_ACCESS_KEY_ID", s3_server::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", s3_server::SECRET_KEY)
            .env_remove("AWS_SESSION_TOKEN");
        let child = self
            .spawner
            .spawn(cmd)
            .map_err(|source| SimError::Spawn { bin, source })?;
        let pid = child.id();
        self.run.lifeboat_pids.push(pid);
        write_run_file(&self.work, &self.run)?;
        self.cluster.as_mut().expect("a cluster sandbox").nodes[i].child = Some(child);
        Ok(pid)
    }

    /// `program` in the host `netns`, through the instance shim (it dies with the
    /// simulation), its output appended to `log`.
    fn shim_in(&self, netns: &str, program: &Path, log: &Path) -> Result<Command> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(SimError::io("open", log))?;
        let err = out.try_clone().map_err(SimError::io("open", log))?;
        let mut cmd = Command::new(&self.lifeboat_bin);
        cmd.arg("__instance")
            .args(["--", "--", "ip", "netns", "exec", netns])
            .arg(program)
            .env("LIFEBOAT_SUPERVISOR_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        Ok(cmd)
    }

    /// Points the sandbox (its control client, status, faults) at the node that leads and
    /// serves now; its index.
    pub async fn follow_primary(&mut self) -> Option<usize> {
        let (i, _) = self.cluster.as_ref()?.serving_primary().await?;
        self.site = self.cluster.as_ref()?.nodes[i].dir.clone();
        self.front_door = self.cluster.as_ref()?.front_door(i);
        Some(i)
    }

    /// Stops every node and etcd member (the LAN goes with the sandbox).
    pub(super) fn stop_cluster(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            c.kill_all();
        }
    }

    /// The cluster part of the report.
    pub(super) fn cluster_report(&self) -> Option<crate::report::ClusterReport> {
        let c = self.cluster.as_ref()?;
        Some(crate::report::ClusterReport {
            nodes: c
                .nodes
                .iter()
                .map(|n| crate::report::NodeLine {
                    name: n.name.clone(),
                    zone: n.zone.clone(),
                    host: c.lan.host(n.host).name.clone(),
                    address: c.lan.host(n.host).ip.to_string(),
                    etcd_member: c.members.iter().any(|m| m.host == n.host),
                    role_at_start: String::new(),
                    role_at_end: String::new(),
                })
                .collect(),
            bridge: c.lan.bridge.clone(),
            services_host: c
                .lan
                .hosts
                .last()
                .map(|h| h.name.clone())
                .unwrap_or_default(),
            topology: c.topology.clone(),
            etcd_on_services_host: c.members.iter().any(|m| m.host == c.nodes.len()),
            durability: self
                .manifest
                .cluster
                .as_ref()
                .map(|c| format!("{:?}", c.durability).to_lowercase())
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_of_the_copy_uses_the_sandboxs_etcd_and_vault_never_the_sites() {
        let site = r#"
[site]
name = "shop"
[processes.web]
command = "./run"
[proxy]
listen = "0.0.0.0:80"
[vault]
destinations = ["s3://bucket/shop"]
quorum = 1
[cluster]
etcd = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
durability = "sync"
lease_ttl = "3s"
etcd_ca = "/etc/etcd/ca.pem"
etcd_cert = "node.pem"
etcd_key = "node-key.pem"
"#;
        let etcd = ["http://10.9.9.1:2379".to_string()];
        let vault = Path::new("/srv/.shop.simulate/.lifeboat/vault");
        let (raw, m) = cluster_manifest(site, "", vault, "s3://lbsim/site?x", &etcd).unwrap();
        let c = m.cluster.unwrap();
        assert_eq!(c.etcd, etcd);
        assert!(c.etcd_tls.is_none(), "the sandbox's etcd is plain http");
        assert_eq!(
            c.lease_ttl,
            Duration::from_secs(3),
            "the site's settings stay"
        );
        assert_eq!(m.proxy.listen, "0.0.0.0:8080".parse().unwrap());
        let v = m.vault.unwrap();
        assert_eq!(
            v.destinations,
            ["/srv/.shop.simulate/.lifeboat/vault", "s3://lbsim/site?x"]
        );
        let text = toml::to_string(&raw).unwrap();
        assert!(!text.contains("10.0.0.1") && !text.contains("s3://bucket"));
    }

    #[test]
    fn the_first_node_is_the_sandbox_and_the_others_are_beside_it() {
        let root = Path::new("/srv/.shop.simulate");
        assert_eq!(node_dir(root, 0), root);
        assert_eq!(node_dir(root, 2), Path::new("/srv/.shop.simulate.n3"));
    }

    #[test]
    fn a_restored_manifest_without_cluster_takes_the_live_sites_settings() {
        let restored = "[site]\nname = \"shop\"\n[processes.web]\ncommand = \"./run\"\n\
                        [vault]\ndestinations = [\"/v\"]\n";
        let live = format!(
            "{restored}[cluster]\netcd = [\"http://10.0.0.1:2379\"]\ndurability = \"async\"\n"
        );
        let etcd = ["http://10.9.9.1:2379".to_string()];
        let vault = Path::new("/srv/.shop.simulate/.lifeboat/vault");
        let (_, m) = cluster_manifest(restored, &live, vault, "/b", &etcd).unwrap();
        let c = m.cluster.unwrap();
        assert_eq!(c.durability, lifeboat_core::manifest::Durability::Async);
        assert_eq!(c.etcd, etcd);
        // The restored manifest's own [cluster] wins.
        let restored_sync = format!("{restored}[cluster]\netcd = [\"x\"]\ndurability = \"sync\"\n");
        let (_, m) = cluster_manifest(&restored_sync, &live, vault, "/b", &etcd).unwrap();
        assert_eq!(
            m.cluster.unwrap().durability,
            lifeboat_core::manifest::Durability::Sync
        );
    }
}
