//! The fault catalogue: how each fault is injected into the sandbox, the evidence that it
//! really happened, and how it is undone.
//!
//! Every injected fault is held by an [`Injected`] whose `Drop` undoes what can be undone at
//! once (a stopped instance gets SIGCONT, an attack's tasks are aborted), so an early exit
//! (an error, Ctrl-C, a panic) leaves no fault behind; what lives in the sandbox's files goes
//! with the sandbox. Nothing here touches anything outside the sandbox, and all traffic goes
//! to its front door on 127.0.0.1.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::task::JoinSet;

use crate::error::Result;
pub use crate::fault_tools::{UPLOAD_NAME, plant_upload};
use crate::fault_tools::{bring_back, flip_bytes, join, proc_state, slow_client, wait_for};
use crate::load::{Http, Kind, Load, Recorder, RequestSpec, Scenario};
use crate::sandbox::{Sandbox, SecondDestination, alive, healthy_instances};
use crate::slow_disk::Throttle;

pub mod cluster;
mod storage;
pub use cluster::not_applicable;
pub use storage::{CatchUp, FsyncTimes};

/// The faults the simulator knows, in the order a run injects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The arrival rate ramps up to ten times the baseline.
    UsageSpike,
    /// `kill -9` of one instance.
    KillInstance,
    /// SIGSTOP of one instance (hung, not dead), SIGCONT when undone.
    HangInstance,
    /// `kill -9` of every instance at once.
    KillAllInstances,
    /// Many clients that open connections and send their request a byte at a time.
    SlowClients,
    /// Thousands of wrong passwords on the login path.
    CredentialStuffing,
    /// One of the sandbox's two vault destinations unreachable while the site writes, then back.
    VaultDestinationDown,
    /// The disk that holds the state full (a small filesystem of the sandbox's, filled).
    DiskFull,
    /// The disk that holds the state slow (its block device throttled to a few operations a
    /// second for the sandbox's processes).
    SlowDisk,
    /// `kill -9` of the sandbox's Lifeboat, then started again.
    KillLifeboat,
    /// Files written into a data dir by something that should not (a "virus"); then a rewind
    /// to just before.
    Virus,
    /// Bytes flipped in a database page; then a rewind to just before.
    Corruption,
    /// A cluster: `kill -9` of everything on the primary's host (its etcd member too); then
    /// the host comes back and its node must follow as a standby.
    NodeLoss,
    /// A cluster: the primary's host cut off the LAN, then plugged back in.
    Partition,
    /// A cluster: one etcd member killed, then started again (nothing should change).
    EtcdMemberLoss,
    /// A cluster: every host of the primary's zone killed, then back.
    ZoneLoss,
    /// A cluster: `kill -9` of everything on a standby's host; then the host comes back and
    /// its node must follow again. The primary must serve on, in the same term.
    StandbyLoss,
    /// A cluster: the primary's link made slow (tbf, 1 mbit/s out) and lossy (nftables drops
    /// 10% of its packets each way), then set back.
    SlowLink,
}

impl FaultKind {
    pub const ALL: [FaultKind; 18] = [
        FaultKind::UsageSpike,
        FaultKind::KillInstance,
        FaultKind::HangInstance,
        FaultKind::KillAllInstances,
        FaultKind::SlowClients,
        FaultKind::CredentialStuffing,
        FaultKind::VaultDestinationDown,
        FaultKind::DiskFull,
        FaultKind::SlowDisk,
        FaultKind::KillLifeboat,
        FaultKind::Virus,
        FaultKind::Corruption,
        FaultKind::EtcdMemberLoss,
        FaultKind::StandbyLoss,
        FaultKind::SlowLink,
        FaultKind::NodeLoss,
        FaultKind::Partition,
        FaultKind::ZoneLoss,
    ];

    /// The name in the report and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::UsageSpike => "usage-spike",
            FaultKind::KillInstance => "kill-instance",
            FaultKind::HangInstance => "hang-instance",
            FaultKind::KillAllInstances => "kill-all-instances",
            FaultKind::SlowClients => "slow-clients",
            FaultKind::CredentialStuffing => "credential-stuffing",
            FaultKind::VaultDestinationDown => "vault-destination-down",
            FaultKind::DiskFull => "disk-full",
            FaultKind::SlowDisk => "slow-disk",
            FaultKind::KillLifeboat => "kill-lifeboat",
            FaultKind::Virus => "virus",
            FaultKind::Corruption => "corruption",
            FaultKind::NodeLoss => "node-loss",
            FaultKind::Partition => "partition",
            FaultKind::EtcdMemberLoss => "etcd-member-loss",
            FaultKind::ZoneLoss => "zone-loss",
            FaultKind::StandbyLoss => "standby-loss",
            FaultKind::SlowLink => "slow-link",
        }
    }

    /// What it does, in a site owner's words.
    pub fn title(self) -> &'static str {
        match self {
            FaultKind::UsageSpike => "usage spike (up to 10x the visitors)",
            FaultKind::KillInstance => "one instance killed (kill -9)",
            FaultKind::HangInstance => "one instance hung (SIGSTOP)",
            FaultKind::KillAllInstances => "every instance killed at once",
            FaultKind::SlowClients => "a flood of slow clients",
            FaultKind::CredentialStuffing => "credential stuffing on the login path",
            FaultKind::VaultDestinationDown => "a vault destination down during writes, then back",
            FaultKind::DiskFull => "the state's disk full",
            FaultKind::SlowDisk => "the state's disk slow (20 writes/s)",
            FaultKind::KillLifeboat => "Lifeboat itself killed (kill -9) and started again",
            FaultKind::Virus => "a virus writes files into the uploads",
            FaultKind::Corruption => "database corruption (bytes flipped in a page)",
            FaultKind::NodeLoss => "the primary's machine dies (every process killed), then back",
            FaultKind::Partition => "the primary's machine cut off the network, then back",
            FaultKind::EtcdMemberLoss => "one etcd member killed, then started again",
            FaultKind::ZoneLoss => "the primary's whole zone dies, then back",
            FaultKind::StandbyLoss => "a standby's machine dies during writes, then back",
            FaultKind::SlowLink => "the primary's network link slow (1 mbit/s) and lossy (10%)",
        }
    }

    /// Whether the site is rewound after it (the fault destroys or plants data).
    pub fn rewinds(self) -> bool {
        matches!(self, FaultKind::Virus | FaultKind::Corruption)
    }

    /// Whether it takes the whole site down (for a cluster: until another node takes over),
    /// so it is judged by its recovery time rather than by the share of requests answered.
    pub fn takes_all_down(self) -> bool {
        matches!(
            self,
            FaultKind::KillAllInstances
                | FaultKind::KillLifeboat
                | FaultKind::Corruption
                | FaultKind::NodeLoss
                | FaultKind::Partition
                | FaultKind::ZoneLoss
        )
    }

    /// Whether it needs a site on several nodes.
    pub fn cluster_only(self) -> bool {
        matches!(
            self,
            FaultKind::NodeLoss
                | FaultKind::Partition
                | FaultKind::EtcdMemberLoss
                | FaultKind::ZoneLoss
                | FaultKind::StandbyLoss
                | FaultKind::SlowLink
        )
    }
}

/// A fault as it was injected: the evidence, and what undoing it takes.
pub struct Injected {
    pub kind: FaultKind,
    /// What shows it really happened (pids killed, files written, answers seen).
    pub evidence: String,
    /// Set when the fault could not be injected: why.
    pub skipped: Option<String>,
    /// When, since the run started.
    pub at: Duration,
    /// Wall-clock time of the injection (for events and rewinds).
    pub wall: time::OffsetDateTime,
    stopped_group: Option<i32>,
    attack: Option<JoinSet<()>>,
    attack_load: Option<Load>,
    /// Files planted (virus) or damaged (corruption).
    pub files: Vec<PathBuf>,
    /// A destination moved away (`from`, `to`) with a file in its place.
    moved_destination: Option<(PathBuf, PathBuf)>,
    /// The sandbox's S3 server was killed (the undo starts it again; if the run ends first,
    /// the sandbox's teardown has nothing left to stop).
    s3_killed: bool,
    /// A destination taken down: when Lifeboat reported it down, and what it said.
    noticed: Option<(Duration, String)>,
    /// The filler file that fills the state's disk.
    filler: Option<PathBuf>,
    /// The state's disk throttled, the dir the probe writes in, and the fsync times before
    /// and during.
    throttle: Option<(Throttle, PathBuf, FsyncTimes)>,
    /// A cluster fault: what it hit.
    cluster: Option<cluster::ClusterHit>,
}

impl Injected {
    fn new(kind: FaultKind, recorder: &Recorder) -> Injected {
        Injected {
            kind,
            evidence: String::new(),
            skipped: None,
            at: recorder.now(),
            wall: time::OffsetDateTime::now_utc(),
            stopped_group: None,
            attack: None,
            attack_load: None,
            files: Vec::new(),
            moved_destination: None,
            s3_killed: false,
            noticed: None,
            filler: None,
            throttle: None,
            cluster: None,
        }
    }

    fn skip(mut self, why: impl Into<String>) -> Injected {
        self.skipped = Some(why.into());
        self
    }
}

impl Drop for Injected {
    /// Undoes at once what must never outlive the run.
    fn drop(&mut self) {
        if let Some(pgid) = self.stopped_group.take() {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGCONT);
        }
        if let Some(mut set) = self.attack.take() {
            set.abort_all();
        }
        drop(self.attack_load.take());
        if let Some((dir, aside)) = self.moved_destination.take() {
            let _ = bring_back(&dir, &aside);
        }
        if let Some(filler) = self.filler.take() {
            let _ = std::fs::remove_file(filler);
        }
        // Its own Drop lifts the limits and moves the processes back.
        drop(self.throttle.take());
    }
}

/// What the fault needs from the run.
pub struct Ctx<'a> {
    pub sandbox: &'a mut Sandbox,
    pub http: &'a Http,
    pub recorder: &'a Arc<Recorder>,
    /// The visitors' load (the spike changes its rate).
    pub load: &'a Load,
    pub base_rate: f64,
    pub login: Option<RequestSpec>,
    /// How many slow clients / how fast the stuffing goes.
    pub slow_clients: usize,
    pub attack_rate: f64,
    /// How long a destination taken down waits for Lifeboat to report it down.
    pub notice_within: Duration,
    /// How long a cluster fault waits for another node to serve, or a node to rejoin.
    pub rto: Duration,
}

/// Injects `kind`. A fault that cannot be injected here comes back with `skipped` set.
pub async fn inject(kind: FaultKind, ctx: &mut Ctx<'_>) -> Result<Injected> {
    let mut f = Injected::new(kind, ctx.recorder);
    match kind {
        FaultKind::UsageSpike => {
            // The ramp itself is driven by the phase (`spike_rate`); here it only starts.
            f.evidence = format!("arrival rate ramps from {:.0}/s", ctx.base_rate);
        }
        FaultKind::KillInstance | FaultKind::KillAllInstances => {
            let status = ctx.sandbox.status().await?;
            let pids: Vec<u32> = healthy_instances(&status)
                .iter()
                .filter_map(|i| i.pid)
                .take(if kind == FaultKind::KillInstance {
                    1
                } else {
                    usize::MAX
                })
                .collect();
            if pids.is_empty() {
                return Ok(f.skip("no instance was running"));
            }
            f.at = ctx.recorder.now();
            for &pid in &pids {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            let dead = wait_for(Duration::from_secs(5), || pids.iter().all(|&p| !alive(p))).await;
            f.evidence = format!(
                "SIGKILL sent to pid {}; {}",
                join(&pids),
                if dead {
                    "dead"
                } else {
                    "still alive after 5 s"
                }
            );
            if !dead {
                f.skipped = Some(format!("pid {} did not die", join(&pids)));
            }
        }
        FaultKind::HangInstance => {
            let status = ctx.sandbox.status().await?;
            let Some(pid) = healthy_instances(&status).iter().find_map(|i| i.pid) else {
                return Ok(f.skip("no instance was running"));
            };
            f.at = ctx.recorder.now();
            // The instance leads its own process group: stop all of it (workers too).
            if let Err(e) = killpg(Pid::from_raw(pid as i32), Signal::SIGSTOP) {
                return Ok(f.skip(format!("SIGSTOP to process group {pid} failed: {e}")));
            }
            f.stopped_group = Some(pid as i32);
            let stopped = wait_for(Duration::from_secs(2), || proc_state(pid) == Some('T')).await;
            f.evidence = format!(
                "SIGSTOP sent to process group {pid}; its state is {}",
                proc_state(pid).map_or("gone".into(), |c| c.to_string())
            );
            if !stopped {
                f.skipped = Some(format!("process {pid} did not stop"));
            }
        }
        FaultKind::SlowClients => {
            let mut set = JoinSet::new();
            let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel(ctx.slow_clients.max(1));
            for _ in 0..ctx.slow_clients {
                set.spawn(slow_client(
                    ctx.sandbox.dialer.clone(),
                    ctx.sandbox.front_door,
                    opened_tx.clone(),
                ));
            }
            drop(opened_tx);
            let mut opened = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while opened < ctx.slow_clients {
                match tokio::time::timeout_at(deadline, opened_rx.recv()).await {
                    Ok(Some(())) => opened += 1,
                    _ => break,
                }
            }
            f.at = ctx.recorder.now();
            f.evidence = format!(
                "{opened} of {} connections open, each sending its request one byte a second",
                ctx.slow_clients
            );
            f.attack = Some(set);
        }
        FaultKind::CredentialStuffing => {
            let Some(login) = ctx.login.clone() else {
                return Ok(f.skip(
                    "no login path: add [simulate] login = { path = \"/login\" } to attack it",
                ));
            };
            f.evidence = format!(
                "POST {} with random passwords at {:.0}/s",
                login.path, ctx.attack_rate
            );
            f.attack_load = Some(Load::start(
                ctx.http.clone(),
                ctx.recorder.clone(),
                Scenario {
                    requests: vec![login],
                },
                ctx.attack_rate,
            ));
        }
        FaultKind::VaultDestinationDown => {
            if matches!(ctx.sandbox.second, SecondDestination::S3(_)) {
                storage::s3_down(&mut f, ctx).await;
            } else {
                storage::folder_down(&mut f, ctx).await;
            }
        }
        FaultKind::DiskFull => {
            let dir = match &ctx.sandbox.state_disk {
                Ok(dir) => dir.clone(),
                Err(why) => return Ok(f.skip(why.clone())),
            };
            if ctx.sandbox.status().await?.state != lifeboat_control::SITE_STATE {
                return Ok(f.skip("a rewind moved the live state off the small disk"));
            }
            f.at = ctx.recorder.now();
            f.filler = Some(dir.join(crate::state_disk::FILLER));
            let written = crate::state_disk::fill(&dir)
                .map_err(crate::error::SimError::io("fill the disk of", &dir))?;
            let free = crate::state_disk::free_bytes(&dir).unwrap_or(u64::MAX);
            f.evidence = format!(
                "{:.1} MiB written to fill the disk of {}; {free} bytes left",
                written as f64 / 1048576.0,
                dir.display()
            );
            if free > 64 * 1024 {
                f.skipped = Some(format!("the disk of {} did not fill up", dir.display()));
            }
        }
        FaultKind::SlowDisk => storage::slow_down(&mut f, ctx).await?,
        FaultKind::KillLifeboat => {
            f.at = ctx.recorder.now();
            let Some(pid) = ctx.sandbox.kill_lifeboat() else {
                return Ok(f.skip("the sandbox's lifeboat was not running"));
            };
            let refused = ctx
                .sandbox
                .dialer
                .connect(ctx.sandbox.front_door)
                .await
                .is_err();
            f.evidence = format!(
                "SIGKILL sent to lifeboat pid {pid}; {}",
                if refused {
                    "its front door refuses connections"
                } else {
                    "its front door still accepts connections"
                }
            );
        }
        FaultKind::Virus => {
            let dirs = &ctx.sandbox.manifest.state.dirs;
            let Some(dir) = dirs.first().cloned() else {
                return Ok(f.skip("the site has no data dir ([state] dirs) to infect"));
            };
            let dir = ctx.sandbox.live_state_dir().await?.join(dir);
            f.at = ctx.recorder.now();
            f.wall = time::OffsetDateTime::now_utc();
            for n in 0..20 {
                let path = dir.join(format!("lbsim-virus-{n:02}.php"));
                let body = format!("<?php /* planted by lifeboat simulate, file {n} */ ?>\n");
                std::fs::write(&path, body.repeat(64))
                    .map_err(crate::error::SimError::io("plant a file at", &path))?;
                f.files.push(path);
            }
            f.evidence = format!("{} files written into {}", f.files.len(), dir.display());
        }
        FaultKind::NodeLoss
        | FaultKind::Partition
        | FaultKind::EtcdMemberLoss
        | FaultKind::ZoneLoss
        | FaultKind::StandbyLoss
        | FaultKind::SlowLink => {
            if let Some(why) = cluster::inject(&mut f, ctx.sandbox, ctx.recorder, ctx.rto).await {
                f.skipped = Some(why);
            }
        }
        FaultKind::Corruption => {
            let Some(db) = ctx.sandbox.manifest.state.sqlite.first().cloned() else {
                return Ok(f.skip("the site has no SQLite database ([state] sqlite) to corrupt"));
            };
            let path = ctx.sandbox.live_state_dir().await?.join(db);
            f.at = ctx.recorder.now();
            f.wall = time::OffsetDateTime::now_utc();
            match flip_bytes(&path) {
                Ok(what) => f.evidence = what,
                Err(e) => return Ok(f.skip(format!("could not damage {}: {e}", path.display()))),
            }
            f.files.push(path);
            // The upload planted before the restore point, cut in half.
            if let Some(dir) = ctx.sandbox.manifest.state.dirs.first() {
                let upload = ctx
                    .sandbox
                    .live_state_dir()
                    .await?
                    .join(dir)
                    .join(UPLOAD_NAME);
                if let Ok(meta) = std::fs::metadata(&upload) {
                    let half = meta.len() / 2;
                    let cut = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&upload)
                        .and_then(|file| file.set_len(half));
                    if cut.is_ok() {
                        f.evidence
                            .push_str(&format!("; {} truncated to {half} bytes", upload.display()));
                        f.files.push(upload);
                    }
                }
            }
        }
    }
    Ok(f)
}

/// The arrival rate of the spike at `progress` (0..=1) of its ramp: from the baseline up to
/// ten times it.
pub fn spike_rate(base: f64, progress: f64) -> f64 {
    base * (1.0 + 9.0 * progress.clamp(0.0, 1.0))
}

/// What undoing a fault showed.
#[derive(Debug, Default)]
pub struct Undone {
    pub evidence: String,
    /// The undo did what it should (the process runs again, the attack stopped, the lifeboat
    /// serves).
    pub ok: bool,
    /// For a fault that took the site down: how long from the injection until it served again.
    pub recovered_after: Option<Duration>,
    /// An attack Lifeboat noticed: how long after the injection, and the event that says so.
    pub detected: Option<(Duration, String)>,
    /// A vault destination back after it was down: what it had to catch up on, and how long.
    pub catch_up: Option<CatchUp>,
    /// The slow disk: fsync times before, during and after.
    pub fsync: Option<FsyncTimes>,
    /// A cluster fault: who led after it, whether the hosts came back as standbys.
    pub cluster: Option<cluster::ClusterUndone>,
}

/// Undoes `f` (a rewind for the virus and corruption is the phase's business).
pub async fn undo(mut f: Injected, ctx: &mut Ctx<'_>, rto: Duration) -> Result<Undone> {
    let mut u = Undone::default();
    match f.kind {
        FaultKind::UsageSpike => {
            ctx.load.set_rate(ctx.base_rate);
            u.ok = true;
            u.evidence = format!("arrival rate back to {:.0}/s", ctx.base_rate);
        }
        FaultKind::KillInstance | FaultKind::KillAllInstances => {
            // Lifeboat restarts them itself; the undo is to see that it did.
            match ctx.sandbox.wait_serving(rto).await {
                Ok(_) => {
                    u.ok = true;
                    u.recovered_after = Some(ctx.recorder.now().saturating_sub(f.at));
                    u.evidence = "Lifeboat restarted the killed instances".into();
                }
                Err(e) => u.evidence = format!("not back within {rto:?}: {e}"),
            }
        }
        FaultKind::HangInstance => {
            if let Some(pgid) = f.stopped_group.take() {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGCONT);
                let running = wait_for(Duration::from_secs(2), || {
                    proc_state(pgid as u32).is_none_or(|s| s != 'T')
                })
                .await;
                u.ok = running;
                u.evidence = format!(
                    "SIGCONT sent to process group {pgid}; {}",
                    if running {
                        "it runs again"
                    } else {
                        "it is still stopped"
                    }
                );
            }
        }
        FaultKind::SlowClients => {
            if let Some(mut set) = f.attack.take() {
                set.abort_all();
                while set.join_next().await.is_some() {}
            }
            u.ok = true;
            u.evidence = "every slow connection closed".into();
        }
        FaultKind::CredentialStuffing => {
            if let Some(load) = f.attack_load.take() {
                load.stop().await;
            }
            let attempts = ctx
                .recorder
                .outcomes()
                .iter()
                .filter(|o| o.kind == Kind::Attack && o.intended >= f.at)
                .count();
            u.ok = true;
            u.evidence = format!("{attempts} wrong passwords sent, then the attack stopped");
            u.detected = auth_failures_recorded(ctx.sandbox, f.wall).await;
        }
        FaultKind::VaultDestinationDown => {
            u.detected = f.noticed.take();
            if f.s3_killed {
                f.s3_killed = false;
                storage::s3_back(&f, ctx, rto, &mut u).await;
            } else if let Some((dir, aside)) = f.moved_destination.take() {
                if let Err(e) = bring_back(&dir, &aside) {
                    u.evidence = format!("could not bring {} back: {e}", dir.display());
                    return Ok(u);
                }
                let what = format!("{} back", dir.display());
                storage::catch_up(&f, ctx, rto, &mut u, what).await;
            }
        }
        FaultKind::DiskFull => {
            if let Some(filler) = f.filler.take() {
                if let Err(e) = std::fs::remove_file(&filler) {
                    u.evidence = format!("could not remove {}: {e}", filler.display());
                    return Ok(u);
                }
                let back = ctx.recorder.now();
                // Space is back; the site should take writes again (when the load writes).
                let writes = ctx
                    .recorder
                    .outcomes()
                    .iter()
                    .any(|o| o.kind == Kind::Write);
                let started = Instant::now();
                let mut resumed = None;
                while writes && resumed.is_none() && started.elapsed() < rto {
                    resumed = ctx
                        .recorder
                        .outcomes()
                        .iter()
                        .filter(|o| o.kind == Kind::Write && o.ok() && o.intended >= back)
                        .map(|o| o.intended + o.latency)
                        .min();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                u.ok = !writes || resumed.is_some();
                u.recovered_after = resumed.map(|r| r.saturating_sub(f.at));
                u.evidence = match (writes, resumed) {
                    (false, _) => "the filler removed (no write probe to see writes resume)".into(),
                    (true, Some(r)) => format!(
                        "the filler removed; a write was acknowledged {:.1} s later",
                        r.saturating_sub(back).as_secs_f64()
                    ),
                    (true, None) => {
                        format!("the filler removed, but no write succeeded within {rto:?}")
                    }
                };
            }
        }
        FaultKind::SlowDisk => storage::speed_up(&mut f, &mut u).await,
        FaultKind::KillLifeboat => {
            // As systemd would: start it again at once.
            match ctx.sandbox.start_lifeboat().await {
                Ok(()) => {
                    u.ok = true;
                    u.recovered_after = Some(ctx.recorder.now().saturating_sub(f.at));
                    u.evidence = format!(
                        "lifeboat started again (pid {}) and serves",
                        ctx.sandbox.lifeboat_pid().unwrap_or(0)
                    );
                }
                Err(e) => u.evidence = format!("lifeboat did not come back: {e}"),
            }
        }
        FaultKind::Virus | FaultKind::Corruption => {
            u.ok = true;
            if let Some(c) = ctx.sandbox.cluster.as_ref() {
                // The primary rewound; its standbys take the rewound state from the vault.
                // The next fault starts from a whole cluster.
                let primary = c.serving_primary().await.map(|(i, _)| i);
                let others: Vec<usize> =
                    (0..c.nodes.len()).filter(|&i| Some(i) != primary).collect();
                let streaming = c
                    .wait_until(rto, || async {
                        for &i in &others {
                            if !c.is_streaming_standby(i).await {
                                return false;
                            }
                        }
                        true
                    })
                    .await;
                u.ok = primary.is_some() && streaming.is_some();
                u.evidence = match streaming {
                    Some(after) => format!(
                        "every standby follows the rewound state again after {:.1} s",
                        after.as_secs_f64()
                    ),
                    None => format!(
                        "not every standby followed the rewound state within {:.0} s",
                        rto.as_secs_f64()
                    ),
                };
            }
        }
        FaultKind::NodeLoss
        | FaultKind::Partition
        | FaultKind::EtcdMemberLoss
        | FaultKind::ZoneLoss
        | FaultKind::StandbyLoss
        | FaultKind::SlowLink => cluster::undo(&mut f, ctx.sandbox, rto, &mut u).await,
    }
    Ok(u)
}

/// Whether the sandbox's Lifeboat recorded the password guessing (an `AuthFailures` event
/// after `since`), looking for up to two seconds: when, and the event in words.
async fn auth_failures_recorded(
    sandbox: &Sandbox,
    since: time::OffsetDateTime,
) -> Option<(Duration, String)> {
    let client = sandbox.client().ok()?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let events = client
            .events(&lifeboat_control::api::EventsQuery {
                after: None,
                last: Some(200),
                wait_ms: None,
            })
            .await
            .unwrap_or_default();
        if let Some(e) = events.iter().find(|e| {
            e.at >= since
                && matches!(
                    e.what,
                    lifeboat_core::events::EventKind::AuthFailures { .. }
                )
        }) {
            let after = (e.at - since).max(time::Duration::ZERO);
            return Some((
                after.unsigned_abs(),
                format!("Lifeboat event: {}", e.what.describe()),
            ));
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
