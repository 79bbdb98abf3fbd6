//! The sandbox: a copy of the site restored from its vault, run by a Lifeboat of its own.
//!
//! It lives beside the site dir, as `.NAME.simulate/` (a sibling, so paths the site's code
//! takes relative to itself, such as `../../target`, resolve as they do for the site): the
//! site's code, the state restored from the vault, and a manifest whose front door is a fresh
//! port on 127.0.0.1 and whose vault is its own `.lifeboat/vault`, never the site's
//! destinations. The simulator's own files are in its `.lifeboat/simulate/` (hidden from the
//! site's processes like the rest of `.lifeboat`): `run.json` names the processes this
//! simulation started (and its network namespace), `lifeboat.log` is the sandbox lifeboat's
//! output. The vault's second destination is the sandbox's own S3 server (`s3s-fs`, data in
//! `.lifeboat/s3`), or a local folder when `s3s-fs` is not installed.
//!
//! As root the sandbox has a network namespace of its own with nothing but loopback
//! (`netns.rs`): its lifeboat, its instances and its S3 server start in it, and the
//! simulator's traffic reaches the front door from inside it, so the copy cannot reach
//! anything outside (a mail server, an API, the live site's database).
//!
//! Never touches the live site: it only reads the site dir (to copy the code) and runs
//! `lifeboat restore-site` on it, which reads the vault (outside the sandbox's network). Whatever happens, nothing of the
//! sandbox stays running: its lifeboat is started through the instance shim (it dies with
//! the simulation, and its instances with it), `Drop` kills what is left, and the next
//! simulation cleans up after a `kill -9` using `run.json`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_control::api::StatusReport;
use lifeboat_control::{ControlClient, SitePaths};
use lifeboat_core::manifest::{LIFEBOAT_DIR, MANIFEST_FILE, Manifest};
use lifeboat_core::status::InstanceState;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SimError};
use crate::lan::{self, LanNames};
use crate::netns::{self, Dialer, Netns};
pub(crate) use crate::procs::alive;
use crate::procs::{Spawner, cmdline, cwd_under, processes_under};
use crate::s3_server::{self, S3Server};
use crate::{slow_disk, state_disk};

pub mod cluster;
mod reach;

/// The sandbox's second vault destination when there is no S3 server (relative to its dir),
/// the one taken down.
pub const SECOND_DESTINATION: &str = ".lifeboat/vault-b";

/// Where the sandbox's S3 server keeps its data (relative to its dir).
const S3_DATA: &str = ".lifeboat/s3";

/// The sandbox vault's second destination: the one the vault-destination-down fault takes down.
pub enum SecondDestination {
    /// The sandbox's own `s3s-fs`.
    S3(S3Server),
    /// A local folder ([`SECOND_DESTINATION`]): `s3s-fs` was not found; why.
    Folder { why_not_s3: String },
}

/// How long the sandbox's lifeboat may take to serve with every instance healthy.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// What this simulation started, so the next one can clean up after a `kill -9`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RunFile {
    /// The `lifeboat simulate` process.
    simulate_pid: u32,
    /// Every `lifeboat up` started for the sandbox (a restart adds one).
    lifeboat_pids: Vec<u32>,
    /// Filesystems mounted in the sandbox (the state's small disk), recorded before mounting.
    #[serde(default)]
    mounts: Vec<PathBuf>,
    /// The sandbox's network namespace, recorded before it is made.
    #[serde(default)]
    netns: Option<String>,
    /// Every `s3s-fs` started for the sandbox (a restart adds one).
    #[serde(default)]
    s3_pids: Vec<u32>,
    /// cgroups made for the slow-disk fault, recorded before they are made.
    #[serde(default)]
    cgroups: Vec<PathBuf>,
    /// A cluster sandbox's LAN (its bridge and hosts), recorded before it is made.
    #[serde(default)]
    lan: Option<LanNames>,
    /// A cluster sandbox's node dirs beside it (all but the first), recorded before made.
    #[serde(default)]
    node_dirs: Vec<PathBuf>,
    /// Every etcd member started for a cluster sandbox (a restart adds one).
    #[serde(default)]
    etcd_pids: Vec<u32>,
}

/// The sandbox of one site: where it is, and its running lifeboat.
pub struct Sandbox {
    /// `.NAME.simulate/` beside the site dir: the copy of the site.
    pub root: PathBuf,
    /// The same dir, as the site dir of the sandbox's lifeboat.
    pub site: PathBuf,
    /// The simulator's own files (`root/.lifeboat/simulate`).
    work: PathBuf,
    /// The copy's front door.
    pub front_door: SocketAddr,
    /// The copy's manifest, as it runs.
    pub manifest: Manifest,
    /// The copy's manifest as TOML, for facts the validated one does not keep.
    pub raw_manifest: toml::Table,
    /// The moment restored, as `restore-site` reported it.
    pub restored_time: String,
    /// The dir holding the state's databases, on a small disk of its own (as root), or why not.
    pub state_disk: Result<PathBuf, String>,
    /// The sandbox's network (a namespace with only loopback), or why it has none.
    pub network: Result<String, String>,
    /// Opens the simulator's connections to the sandbox, in its network namespace.
    pub dialer: Dialer,
    /// The vault's second destination, the one taken down.
    pub second: SecondDestination,
    /// On a site with `[cluster]`: the nodes, their hosts and etcd.
    pub cluster: Option<cluster::ClusterSandbox>,
    /// A cluster sandbox's services host address (its S3 server listens there).
    services_ip: Option<std::net::Ipv4Addr>,
    netns: Option<Netns>,
    /// As an ordinary user, the holder of the sandbox's network, which its processes join.
    user_netns: Option<netns::UserNetns>,
    lifeboat_bin: PathBuf,
    lifeboat: Option<Child>,
    spawner: Spawner,
    run: RunFile,
    keep: bool,
    closed: bool,
}

/// Where the sandbox of the site in `site_dir` lives.
pub fn sandbox_root(site_dir: &Path) -> Result<PathBuf> {
    let abs =
        std::fs::canonicalize(site_dir).map_err(SimError::io("find the site dir", site_dir))?;
    let name = abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "site".into());
    let parent = abs.parent().unwrap_or(Path::new("/"));
    Ok(parent.join(format!(".{name}.simulate")))
}

/// Where the simulator keeps its own files in a sandbox.
fn work_dir(root: &Path) -> PathBuf {
    root.join(LIFEBOAT_DIR).join("simulate")
}

/// Removes what an earlier simulation of this site left: processes still running (after a
/// `kill -9` of `simulate`) and the sandbox dir (also one kept with `--keep`). Returns the
/// pids it had to kill. Refuses while another simulation of the site is running.
pub fn clean_leftovers(root: &Path) -> Result<Vec<u32>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let run: RunFile = std::fs::read(work_dir(root).join("run.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if run.simulate_pid != 0
        && run.simulate_pid != std::process::id()
        && cmdline(run.simulate_pid).is_some_and(|c| c.contains("simulate"))
    {
        return Err(SimError::Busy {
            pid: run.simulate_pid,
            dir: root.to_path_buf(),
        });
    }
    let mut killed = Vec::new();
    // Its lifeboats first (their instances die with them), then anything else still running
    // from inside the sandbox (a process whose command line or working dir is in it).
    let root_text = root.to_string_lossy().into_owned();
    let dirs: Vec<&Path> = std::iter::once(root)
        .chain(run.node_dirs.iter().map(PathBuf::as_path))
        .collect();
    for pid in run
        .lifeboat_pids
        .iter()
        .chain(&run.s3_pids)
        .chain(&run.etcd_pids)
        .copied()
        .chain(dirs.iter().flat_map(|d| processes_under(d)))
    {
        let ours = dirs.iter().any(|d| {
            cmdline(pid).is_some_and(|c| c.contains(&*d.to_string_lossy())) || cwd_under(pid, d)
        });
        if ours || cmdline(pid).is_some_and(|c| c.contains(&root_text)) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            killed.push(pid);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while killed.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(name) = &run.netns {
        netns::delete(name);
    }
    if let Some(names) = &run.lan {
        lan::remove(names);
    }
    for dir in &run.node_dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    for cgroup in &run.cgroups {
        let _ = slow_disk::remove(cgroup);
    }
    // Then what it had mounted (recorded in run.json, and anything else found beneath it).
    for m in &run.mounts {
        let _ = nix::mount::umount2(m.as_path(), nix::mount::MntFlags::MNT_DETACH);
    }
    state_disk::release_all_under(root);
    std::fs::remove_dir_all(root).map_err(SimError::io("remove the old sandbox", root))?;
    killed.sort_unstable();
    killed.dedup();
    Ok(killed)
}

impl Sandbox {
    /// Restores the site in `site_dir` as of `at` (a `restore-site --to` moment) into a new
    /// sandbox, and starts it under its own lifeboat; returns once every instance is healthy.
    pub async fn create(
        site_dir: &Path,
        at: &str,
        lifeboat_bin: &Path,
        keep: bool,
        nodes: &[(String, String)],
    ) -> Result<Sandbox> {
        let site_manifest = read_manifest(site_dir)?;
        if site_manifest.vault.is_none() {
            return Err(SimError::NoVault);
        }
        let topology = match site_manifest.cluster {
            Some(_) => Some(cluster::topology(site_dir, nodes).await),
            None => None,
        };
        let root = sandbox_root(site_dir)?;
        clean_leftovers(&root)?;
        let work = work_dir(&root);
        std::fs::create_dir_all(&work).map_err(SimError::io("create the sandbox", &root))?;
        // Like `up` makes it: Lifeboat's own dir is readable by its owner only.
        let _ = std::fs::set_permissions(
            root.join(LIFEBOAT_DIR),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        );
        let run = RunFile {
            simulate_pid: std::process::id(),
            ..RunFile::default()
        };
        write_run_file(&work, &run)?;
        let site = root.clone();
        let restored = work.join("restored");
        // From here on a failure removes what was made (unless --keep).
        let mut sandbox = Sandbox {
            root: root.clone(),
            site: site.clone(),
            work: work.clone(),
            front_door: SocketAddr::from(([127, 0, 0, 1], 0)),
            manifest: site_manifest.clone(),
            raw_manifest: toml::Table::new(),
            restored_time: String::new(),
            state_disk: Err("not made yet".into()),
            network: Err("not made yet".into()),
            dialer: Dialer::default(),
            second: SecondDestination::Folder {
                why_not_s3: "not made yet".into(),
            },
            cluster: None,
            services_ip: None,
            netns: None,
            user_netns: None,
            lifeboat_bin: lifeboat_bin.to_path_buf(),
            lifeboat: None,
            spawner: Spawner::start(),
            run: RunFile::default(),
            keep,
            closed: false,
        };
        sandbox.restored_time = restore(lifeboat_bin, site_dir, at, &restored).await?;
        copy_code(site_dir, &site, &site_manifest)?;
        move_state(&restored, &site, &site_manifest)?;
        let text = std::fs::read_to_string(restored.join(MANIFEST_FILE))
            .or_else(|_| std::fs::read_to_string(site_dir.join(MANIFEST_FILE)))
            .map_err(SimError::io(
                "read the manifest",
                site_dir.join(MANIFEST_FILE),
            ))?;
        let _ = std::fs::remove_dir_all(&restored);
        // From here on nothing reads the real vault: the sandbox gets its own network.
        sandbox.run = run;
        if let Some(topology) = topology {
            sandbox
                .start_cluster(site_dir, &site_manifest, &text, topology)
                .await?;
            return Ok(sandbox);
        }
        sandbox.network = sandbox.isolate_network();
        sandbox.second = sandbox.start_s3_server().await;
        let second_url = match &sandbox.second {
            SecondDestination::S3(s3) => s3.url("site"),
            SecondDestination::Folder { .. } => SECOND_DESTINATION.to_string(),
        };
        let port = free_port()?;
        let (raw, manifest) = sandbox_manifest(&text, port, &second_url)?;
        std::fs::write(
            site.join(MANIFEST_FILE),
            toml::to_string(&raw).unwrap_or_default(),
        )
        .map_err(SimError::io(
            "write the sandbox manifest",
            site.join(MANIFEST_FILE),
        ))?;
        sandbox.front_door = SocketAddr::from(([127, 0, 0, 1], port));
        sandbox.manifest = manifest;
        sandbox.raw_manifest = raw;
        sandbox.state_disk = sandbox.limit_state_disk();
        sandbox.start_lifeboat().await?;
        Ok(sandbox)
    }

    /// As root, puts the dir that holds the databases on a small disk of its own (for the
    /// disk-full fault); otherwise says why not. Never fails the run.
    fn limit_state_disk(&mut self) -> Result<PathBuf, String> {
        if !state_disk::can_mount() {
            return Err("needs root to mount a size-limited filesystem for the state".into());
        }
        let Some(parent) = self
            .manifest
            .state
            .sqlite
            .first()
            .and_then(|db| db.parent())
            .filter(|p| !p.as_os_str().is_empty())
        else {
            return Err("the site's database is not in a dir of its own".into());
        };
        let dir = self.site.join(parent);
        self.run.mounts.push(dir.clone());
        if let Err(e) = write_run_file(&self.work, &self.run) {
            return Err(e.to_string());
        }
        match state_disk::limit(&dir, &state_disk::image_in(&self.work)) {
            Ok(_) => Ok(dir),
            Err(e) => {
                self.run.mounts.pop();
                let _ = write_run_file(&self.work, &self.run);
                Err(format!(
                    "could not mount a small disk at {}: {e}",
                    dir.display()
                ))
            }
        }
    }

    /// Starts the sandbox's lifeboat and waits until every instance is healthy.
    pub async fn start_lifeboat(&mut self) -> Result<()> {
        let log = self.work.join("lifeboat.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(SimError::io("open", &log))?;
        let err = out.try_clone().map_err(SimError::io("open", &log))?;
        // Through the instance shim: it arms the parent-death signal, so this lifeboat (and
        // with it its instances) dies with the simulation, even after a kill -9 of it.
        let mut cmd = Command::new(&self.lifeboat_bin);
        cmd.arg("__instance")
            .args(shim_options(self.join_netns()))
            .arg(&self.lifeboat_bin)
            .arg("up")
            .arg(&self.site)
            .env("LIFEBOAT_SUPERVISOR_PID", std::process::id().to_string())
            .env_remove("LIFEBOAT_NODE")
            // Only the sandbox's own S3 server is reached, with the sandbox's keys.
            .env("AWS_ACCESS_KEY_ID", s3_server::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", s3_server::SECRET_KEY)
            .env_remove("AWS_SESSION_TOKEN")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = self.spawner.spawn(cmd).map_err(|source| SimError::Spawn {
            bin: self.lifeboat_bin.clone(),
            source,
        })?;
        self.run.lifeboat_pids.push(child.id());
        write_run_file(&self.work, &self.run)?;
        self.lifeboat = Some(child);
        self.wait_serving(START_DEADLINE).await.map(|_| ())
    }

    /// The process whose network the sandbox's processes join as they start (an ordinary
    /// user's sandbox); as root the spawner's thread is in the namespace already.
    pub(crate) fn join_netns(&self) -> Option<u32> {
        self.user_netns.as_ref().map(netns::UserNetns::pid)
    }

    /// The pid of the sandbox's running lifeboat.
    pub fn lifeboat_pid(&self) -> Option<u32> {
        if let Some(c) = &self.cluster {
            // The node the sandbox follows (the primary).
            let i = c.nodes.iter().position(|n| n.dir == self.site)?;
            return c.node_pid(i);
        }
        self.lifeboat.as_ref().map(Child::id)
    }

    /// Kills the sandbox's lifeboat with SIGKILL and reaps it.
    pub fn kill_lifeboat(&mut self) -> Option<u32> {
        let mut child = self.lifeboat.take()?;
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        Some(pid)
    }

    /// The control client of the sandbox's lifeboat.
    pub fn client(&self) -> Result<ControlClient> {
        let client = ControlClient::for_site(&self.site)?;
        // An ordinary user's sandbox lifeboat admits only its own user namespace.
        Ok(match &self.user_netns {
            Some(_) => client.with_connector(self.dialer.control_connector()),
            None => client,
        })
    }

    /// The sandbox's status.
    pub async fn status(&self) -> Result<StatusReport> {
        Ok(self.client()?.status().await?)
    }

    /// Waits until the sandbox serves with as many healthy instances as desired; returns how
    /// long that took.
    pub async fn wait_serving(&mut self, within: Duration) -> Result<Duration> {
        let started = Instant::now();
        let mut last = String::from("no answer from its control socket yet");
        while started.elapsed() < within {
            if let Some(child) = self.lifeboat.as_mut()
                && let Ok(Some(exit)) = child.try_wait()
            {
                self.lifeboat = None;
                return Err(SimError::SandboxNotServing {
                    secs: started.elapsed().as_secs(),
                    detail: format!("it exited ({exit}){}", self.log_tail()),
                    log: self.work.join("lifeboat.log"),
                });
            }
            match self.status().await {
                Ok(s) => {
                    let desired: u32 = s.desired.values().sum();
                    let healthy = healthy_instances(&s).len() as u32;
                    if healthy >= desired && desired > 0 {
                        return Ok(started.elapsed());
                    }
                    last = format!("{healthy} of {desired} instances healthy");
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(SimError::SandboxNotServing {
            secs: within.as_secs(),
            detail: format!("{last}{}", self.log_tail()),
            log: self.work.join("lifeboat.log"),
        })
    }

    /// The last lines the sandbox's lifeboat printed, for an error (the sandbox may be
    /// removed before the owner reads its log).
    fn log_tail(&self) -> String {
        tail_of(&self.work.join("lifeboat.log"))
    }
}

/// The last lines of a log, for an error.
fn tail_of(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().rev().take(5).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    format!("; it said: {}", tail.join(" / "))
}

impl Sandbox {
    /// The directory of the sandbox's live state (the site copy, or a rewind's copy).
    pub async fn live_state_dir(&self) -> Result<PathBuf> {
        let status = self.status().await?;
        Ok(SitePaths::new(&self.site).state_dir(&status.state))
    }

    /// Stops the sandbox: `lifeboat down`, then whatever is left is killed; the sandbox dir
    /// is removed unless it is kept. Returns the kept dir.
    pub async fn close(mut self) -> Option<PathBuf> {
        // A cluster's copy is thrown away whole: a `down` would only make the others take over.
        if self.cluster.is_none()
            && let Ok(client) = self.client()
        {
            let _ = tokio::time::timeout(Duration::from_secs(20), client.down()).await;
        }
        if let Some(mut child) = self.lifeboat.take() {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.tear_down()
    }

    fn tear_down(&mut self) -> Option<PathBuf> {
        self.closed = true;
        if let Some(mut child) = self.lifeboat.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let root_text = self.root.to_string_lossy().into_owned();
        for pid in processes_under(&self.root) {
            if pid != std::process::id()
                && (cmdline(pid).is_some_and(|c| c.contains(&root_text))
                    || cwd_under(pid, &self.root))
            {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        self.stop_cluster();
        for dir in &self.run.node_dirs {
            for pid in processes_under(dir) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        self.kill_s3_server();
        // Nothing runs in it any more (the LAN's hosts are emptied and removed).
        drop(self.netns.take());
        drop(self.cluster.take());
        self.run.lan = None;
        self.run.netns = None;
        for cgroup in std::mem::take(&mut self.run.cgroups) {
            let _ = slow_disk::remove(&cgroup);
        }
        if let Ok(dir) = &self.state_disk {
            // With --keep the state is copied off the small disk, which goes either way.
            let _ = state_disk::release(dir, self.keep);
            self.run.mounts.clear();
        }
        state_disk::release_all_under(&self.root);
        let _ = std::fs::remove_file(state_disk::image_in(&self.work));
        if self.keep {
            // Nothing runs any more: the next simulation may remove it without asking.
            self.run.simulate_pid = 0;
            let _ = write_run_file(&self.work, &self.run);
            Some(self.root.clone())
        } else {
            for dir in &self.run.node_dirs {
                let _ = std::fs::remove_dir_all(dir);
            }
            let _ = std::fs::remove_dir_all(&self.root);
            None
        }
    }
}

impl Drop for Sandbox {
    /// An early exit (an error, Ctrl-C, a panic) still kills what the sandbox runs.
    fn drop(&mut self) {
        if !self.closed {
            self.tear_down();
        }
    }
}

/// The instances that get traffic now.
pub fn healthy_instances(s: &StatusReport) -> Vec<&lifeboat_control::api::InstanceReport> {
    s.instances
        .iter()
        .filter(|i| i.state == InstanceState::Healthy)
        .collect()
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(SimError::io("read", &path))?;
    Ok(Manifest::parse(&path.display().to_string(), &text)?)
}

/// The instance shim's options for a process of the sandbox, up to the command: joining the
/// network of process `join` if given. Without options the parser takes a first `--` for
/// itself, so the shim needs a second.
pub(crate) fn shim_options(join: Option<u32>) -> Vec<String> {
    match join {
        Some(pid) => vec!["--join-netns".into(), pid.to_string(), "--".into()],
        None => vec!["--".into(), "--".into()],
    }
}

fn write_run_file(work: &Path, run: &RunFile) -> Result<()> {
    let path = work.join("run.json");
    let tmp = work.join("run.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(run).unwrap_or_default())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(SimError::io("write", path))
}

/// `lifeboat restore-site --to AT --into DIR`, the same restore the owner runs; returns the
/// moment restored.
async fn restore(bin: &Path, site_dir: &Path, at: &str, into: &Path) -> Result<String> {
    let out = tokio::process::Command::new(bin)
        .arg("-C")
        .arg(site_dir)
        .args(["restore-site", "--json", "--to", at, "--into"])
        .arg(into)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| SimError::Spawn {
            bin: bin.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(SimError::Restore {
            detail: err.trim().trim_start_matches("error: ").to_string(),
        });
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    Ok(report["restored_time"].as_str().unwrap_or("").to_string())
}

/// Copies the site's code: everything in the site dir but Lifeboat's own dir, the state
/// (restored from the vault instead) and local vault destinations.
fn copy_code(site_dir: &Path, into: &Path, manifest: &Manifest) -> Result<()> {
    let skip: Vec<PathBuf> = [PathBuf::from(LIFEBOAT_DIR)]
        .into_iter()
        .chain(manifest.state.sqlite.iter().flat_map(|db| {
            ["", "-wal", "-shm", "-journal"].map(|suffix| {
                let mut p = db.clone().into_os_string();
                p.push(suffix);
                PathBuf::from(p)
            })
        }))
        .chain(manifest.state.dirs.iter().cloned())
        .chain(manifest.state.mariadb.iter().map(|m| m.dir.clone()))
        .chain(
            manifest
                .vault
                .iter()
                .flat_map(|v| v.destinations.iter())
                .filter(|d| !d.contains("://"))
                .map(PathBuf::from),
        )
        .map(|p| normalise(&p))
        .collect();
    let walk = walkdir::WalkDir::new(site_dir)
        .follow_links(false)
        .into_iter();
    let walk = walk.filter_entry(|e| {
        let rel = e.path().strip_prefix(site_dir).unwrap_or(e.path());
        !skip.iter().any(|s| rel == s)
    });
    for entry in walk {
        let entry = entry.map_err(|e| SimError::Io {
            what: "copy the site's code from",
            path: site_dir.to_path_buf(),
            source: e.into(),
        })?;
        let rel = entry.path().strip_prefix(site_dir).unwrap_or(entry.path());
        let to = into.join(rel);
        let kind = entry.file_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&to).map_err(SimError::io("create", &to))?;
            let mode = entry.metadata().map(|m| m.permissions());
            if let Ok(mode) = mode {
                let _ = std::fs::set_permissions(&to, mode);
            }
        } else if kind.is_symlink() {
            let target =
                std::fs::read_link(entry.path()).map_err(SimError::io("read", entry.path()))?;
            std::os::unix::fs::symlink(target, &to).map_err(SimError::io("create", &to))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &to).map_err(SimError::io("copy", entry.path()))?;
        }
    }
    Ok(())
}

fn normalise(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// Moves the restored databases and data dirs to their places in the copy.
fn move_state(restored: &Path, site: &Path, manifest: &Manifest) -> Result<()> {
    let paths = manifest
        .state
        .sqlite
        .iter()
        .chain(&manifest.state.dirs)
        .chain(manifest.state.mariadb.iter().map(|m| &m.dir));
    for rel in paths {
        let from = restored.join(rel);
        if !from.exists() {
            continue;
        }
        let to = site.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(SimError::io("create", parent))?;
        }
        std::fs::rename(&from, &to).map_err(SimError::io("move the restored state to", &to))?;
    }
    Ok(())
}

/// The copy's manifest: the site's, with the front door on `port` of 127.0.0.1 and the vault
/// in the sandbox's own `.lifeboat/vault` and `second` (its S3 server, or
/// `.lifeboat/vault-b`) with a quorum of 1 (never the site's destinations).
pub fn sandbox_manifest(text: &str, port: u16, second: &str) -> Result<(toml::Table, Manifest)> {
    let mut raw: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| SimError::Restore {
            detail: format!("the restored manifest is not TOML: {e}"),
        })?;
    let proxy = raw
        .entry("proxy")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(proxy) = proxy.as_table_mut() {
        proxy.insert("listen".into(), format!("127.0.0.1:{port}").into());
        // Clients of the simulation are all on 127.0.0.1: never believe their forwarded headers.
        proxy.remove("trusted_proxies");
    }
    if let Some(vault) = raw.get_mut("vault").and_then(toml::Value::as_table_mut) {
        // Two of its own, so that one can go down while the other keeps the quorum of 1.
        vault.insert(
            "destinations".into(),
            toml::Value::Array(vec![".lifeboat/vault".into(), second.into()]),
        );
        vault.insert("quorum".into(), 1.into());
    }
    raw.remove("cluster");
    let manifest = Manifest::parse(
        "sandbox lifeboat.toml",
        &toml::to_string(&raw).unwrap_or_default(),
    )?;
    Ok((raw, manifest))
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(SimError::io("find a free port on", "127.0.0.1"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(SimError::io("find a free port on", "127.0.0.1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_never_uses_the_sites_front_door_or_vault_destinations() {
        let site = r#"
[site]
name = "shop"
[processes.web]
command = "./run"
[proxy]
listen = "0.0.0.0:80"
trusted_proxies = ["10.0.0.5"]
[vault]
destinations = ["/mnt/backup/shop", "s3://bucket/shop"]
quorum = 2
"#;
        let (raw, manifest) = sandbox_manifest(site, 41234, SECOND_DESTINATION).unwrap();
        assert_eq!(manifest.proxy.listen, "127.0.0.1:41234".parse().unwrap());
        assert!(manifest.proxy.trusted_proxies.is_empty());
        let vault = manifest.vault.unwrap();
        assert_eq!(vault.destinations, [".lifeboat/vault", SECOND_DESTINATION]);
        assert_eq!(vault.quorum, Some(1));
        assert!(!toml::to_string(&raw).unwrap().contains("/mnt/backup"));
        assert!(!toml::to_string(&raw).unwrap().contains("s3://"));
    }

    #[test]
    fn the_copys_second_destination_may_be_its_own_s3_server() {
        let site = "[site]\nname = \"shop\"\n[processes.web]\ncommand = \"./run\"\n\
                    [vault]\ndestinations = [\"s3://bucket/shop\"]\n";
        let url = "s3://lbsim/site?endpoint=http://127.0.0.1:41235&region=us-east-1";
        let (_, manifest) = sandbox_manifest(site, 41234, url).unwrap();
        let vault = manifest.vault.unwrap();
        assert_eq!(vault.destinations, [".lifeboat/vault", url]);
        assert_eq!(vault.quorum, Some(1));
    }
}
