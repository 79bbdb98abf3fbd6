//! One simulation from start to report: the sandbox, the load, the phases (a baseline, then
//! one fault per phase, each undone before the next), the read-backs, and the report.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use lifeboat_control::ControlClient;
use lifeboat_control::api::EventsQuery;
use lifeboat_core::manifest::{SimulateSpec, Targets};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::checker::{self, Discarded, SiteFacts};
use crate::error::Result;
use crate::faults::{self, Ctx, FaultKind};
use crate::load::{self, Http, Kind, Load, Recorder, RequestSpec, Scenario};
use crate::report::*;
use crate::rewind_check::{Extra, destroy_and_rewind, restore_point};
use crate::sandbox::Sandbox;
use crate::scorecard::{scorecard, writes_report};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    /// The site dir (where lifeboat.toml is).
    pub site_dir: PathBuf,
    /// The moment to restore (`restore-site --to`): `latest` by default.
    pub at: String,
    /// Short phases (≤ 60 s in all on the guestbook), for CI.
    pub quick: bool,
    /// Keep the sandbox after the run.
    pub keep: bool,
    /// The `lifeboat` binary that restores and runs the sandbox.
    pub lifeboat_bin: PathBuf,
    /// Only these faults (all when empty).
    pub only: Vec<FaultKind>,
    /// A site with `[cluster]`: the copy's nodes and zones, (name, zone) in order, instead of
    /// the live cluster's (empty: the live cluster's, or three in three zones).
    pub nodes: Vec<(String, String)>,
}

/// What the caller is told while it runs (the CLI draws it). Never called with a lock held.
pub trait Progress: Send + Sync {
    /// A step before or after the phases ("restoring the site from its vault").
    fn step(&self, text: &str);
    /// Phase `index` of `count` starts and lasts about `duration`.
    fn phase(&self, index: usize, count: usize, name: &str, duration: Duration);
    /// Every quarter second during a phase: requests so far and how many failed.
    fn tick(&self, requests: u64, failed: u64);
}

/// A simulation's result: the report and, with `--keep`, where the sandbox stays.
pub struct Outcome {
    pub report: Report,
    pub kept: Option<PathBuf>,
}

/// How long each part of a phase lasts.
#[derive(Debug, Clone, Copy)]
struct Timing {
    baseline: Duration,
    /// Before the fault, after the fault's hold, and at least the whole phase.
    lead: Duration,
    hold: Duration,
    tail: Duration,
    spike: Duration,
}

impl Timing {
    fn new(quick: bool) -> Timing {
        if quick {
            Timing {
                baseline: Duration::from_secs(4),
                lead: Duration::from_millis(500),
                hold: Duration::from_millis(1500),
                tail: Duration::from_millis(1000),
                spike: Duration::from_secs(5),
            }
        } else {
            Timing {
                baseline: Duration::from_secs(20),
                lead: Duration::from_secs(3),
                hold: Duration::from_secs(8),
                tail: Duration::from_secs(5),
                spike: Duration::from_secs(20),
            }
        }
    }
}

/// Runs one simulation of the site in `opts.site_dir`.
pub async fn simulate(opts: &Options, progress: &dyn Progress) -> Result<Outcome> {
    let started_at = OffsetDateTime::now_utc();
    progress.step("restoring the site from its vault into a sandbox");
    let mut sandbox = Sandbox::create(
        &opts.site_dir,
        &opts.at,
        &opts.lifeboat_bin,
        opts.keep,
        &opts.nodes,
    )
    .await?;
    let result = run_phases(opts, progress, &mut sandbox, started_at).await;
    progress.step("stopping the sandbox");
    let kept = sandbox.close().await;
    result.map(|report| Outcome { report, kept })
}

/// The scenario of the visitors: the manifest's reads and probe, or the health path.
fn visitor_scenario(spec: &SimulateSpec, health_path: &str) -> Scenario {
    let mut requests: Vec<RequestSpec> = spec
        .reads
        .iter()
        .map(|r| RequestSpec {
            method: Method::GET,
            path: r.path.clone(),
            body: None,
            content_type: None,
            kind: Kind::Read,
            weight: r.weight,
        })
        .collect();
    if requests.is_empty() {
        requests.push(RequestSpec {
            method: Method::GET,
            path: health_path.to_string(),
            body: None,
            content_type: None,
            kind: Kind::Read,
            weight: 9,
        });
    }
    if let Some(p) = &spec.probe {
        let reads: u32 = requests.iter().map(|r| r.weight).sum();
        requests.push(RequestSpec {
            method: Method::from_bytes(p.method.as_bytes()).unwrap_or(Method::POST),
            path: p.path.clone(),
            body: Some(p.body.clone()),
            content_type: Some(p.content_type.clone()),
            kind: Kind::Write,
            weight: p.weight.unwrap_or((reads / 9).max(1)),
        });
    }
    Scenario { requests }
}

fn site_facts(sandbox: &Sandbox) -> SiteFacts {
    let m = &sandbox.manifest;
    let (process, spec) = m
        .processes
        .iter()
        .find(|(_, p)| p.http)
        .or_else(|| m.processes.iter().next())
        .expect("a validated manifest has a process");
    let health_declared = sandbox
        .raw_manifest
        .get("processes")
        .and_then(|p| p.get(process))
        .and_then(|p| p.get("health"))
        .is_some();
    SiteFacts {
        process: process.clone(),
        replicas: spec.replicas,
        health_declared,
        health_path: spec.health.path.clone(),
        integrity_check_interval: m.vault.as_ref().map(|v| v.integrity_check_interval),
        durability: m
            .cluster
            .as_ref()
            .map(|c| format!("{:?}", c.durability).to_lowercase()),
        lease_ttl: m.cluster.as_ref().map(|c| c.lease_ttl),
    }
}

pub(crate) struct Phase {
    pub kind: FaultKind,
    pub report: FaultReport,
}

/// What a run carries from phase to phase.
struct Run<'a> {
    progress: &'a dyn Progress,
    targets: Targets,
    timing: Timing,
    quick: bool,
    http: Http,
    recorder: Arc<Recorder>,
    load: Load,
    base_rate: f64,
    login: Option<RequestSpec>,
    /// The probe's read-back path, when the load writes.
    read_back: Option<String>,
    /// Windows in which rewinds gave writes up on purpose.
    discarded: Vec<Discarded>,
    /// Probes found lost so far.
    lost: BTreeSet<u64>,
    /// What the spike found: (good answers/s, whether the site had more).
    capacity: (f64, bool),
    /// On a cluster: each node's role when the baseline started.
    roles_at_start: Vec<String>,
}

/// What happened to one fault in its phase, before the figures are computed.
struct Happened {
    at: Duration,
    evidence: String,
    skipped: Option<String>,
    undone: faults::Undone,
    extra: Extra,
}

impl Happened {
    fn not_run(at: Duration, why: String) -> Happened {
        Happened {
            at,
            evidence: String::new(),
            skipped: Some(why),
            undone: nothing_to_undo(),
            extra: Extra::default(),
        }
    }
}

async fn run_phases(
    opts: &Options,
    progress: &dyn Progress,
    sandbox: &mut Sandbox,
    started_at: OffsetDateTime,
) -> Result<Report> {
    let spec = sandbox.manifest.simulate.clone().unwrap_or_default();
    let facts = site_facts(sandbox);
    // On a cluster, every node's front door, as DNS with every node's address would give.
    let http = match &sandbox.cluster {
        Some(c) => Http::to_any(&c.front_doors(), sandbox.dialer.clone()),
        None => Http::new(sandbox.front_door, sandbox.dialer.clone()),
    };
    let recorder = Recorder::new();
    let base_rate = f64::from(spec.rate);
    let load = Load::start(
        http.clone(),
        recorder.clone(),
        visitor_scenario(&spec, &facts.health_path),
        base_rate,
    );
    let mut run = Run {
        progress,
        targets: spec.targets.clone(),
        timing: Timing::new(opts.quick),
        quick: opts.quick,
        http,
        recorder,
        load,
        base_rate,
        login: spec.login.as_ref().map(|l| RequestSpec {
            method: Method::POST,
            path: l.path.clone(),
            body: Some(l.body.clone()),
            content_type: Some(l.content_type.clone()),
            kind: Kind::Attack,
            weight: 1,
        }),
        read_back: spec.probe.as_ref().map(|p| p.read_back.clone()),
        discarded: Vec::new(),
        lost: BTreeSet::new(),
        capacity: (0.0, true),
        roles_at_start: match &sandbox.cluster {
            Some(c) => c.roles().await,
            None => Vec::new(),
        },
    };
    // A site on one node runs no cluster fault unless asked for one (it is then skipped).
    let cluster = sandbox.cluster.is_some();
    let kinds: Vec<FaultKind> = FaultKind::ALL
        .into_iter()
        .filter(|k| {
            if opts.only.is_empty() {
                cluster || !k.cluster_only()
            } else {
                opts.only.contains(k)
            }
        })
        .collect();
    let count = kinds.len() + 1;
    let baseline = run.baseline(count).await;
    let mut phases = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        phases.push(run.phase(i + 2, count, kind, sandbox).await?);
    }
    progress.step("final read-back of every acknowledged write");
    run.finish(sandbox, started_at, baseline, phases, &facts)
        .await
}

impl Run<'_> {
    /// The baseline: the load alone.
    async fn baseline(&mut self, count: usize) -> PhaseReport {
        self.progress
            .phase(1, count, "baseline", self.timing.baseline);
        let start = self.recorder.now();
        self.hold(self.timing.baseline).await;
        let end = self.recorder.now();
        let mut figures =
            checker::phase_figures(&self.recorder.outcomes(), start, end, &self.targets);
        figures.lost_acknowledged_writes = self.newly_lost_writes().await;
        figures
    }

    /// One fault's phase: lead, inject, hold, undo, tail; then its figures and verdict.
    async fn phase(
        &mut self,
        index: usize,
        count: usize,
        kind: FaultKind,
        sandbox: &mut Sandbox,
    ) -> Result<Phase> {
        let planned = if kind == FaultKind::UsageSpike {
            self.timing.spike
        } else {
            self.timing.lead + self.timing.hold + self.timing.tail
        };
        self.progress.phase(index, count, kind.name(), planned);
        let start = self.recorder.now();
        if sandbox.cluster.is_some() {
            // Faults act on the node that leads now.
            sandbox.follow_primary().await;
        }
        let happened = if let Some(why) = faults::not_applicable(kind, sandbox) {
            Happened::not_run(self.recorder.now(), why)
        } else if kind == FaultKind::UsageSpike {
            self.spike(sandbox).await?
        } else if sandbox.lifeboat_pid().is_none() {
            let why = "the sandbox's lifeboat is not running: an earlier fault left it down";
            Happened::not_run(self.recorder.now(), why.into())
        } else {
            self.fault(kind, sandbox).await
        };
        let undone_at = self.recorder.now();
        // The tail: the site after the fault, until the planned end of the phase.
        let tail = if kind == FaultKind::UsageSpike {
            Duration::ZERO
        } else {
            self.timing.tail
        };
        self.hold((start + planned).saturating_sub(undone_at).max(tail))
            .await;
        let end = self.recorder.now();
        let mut figures =
            checker::phase_figures(&self.recorder.outcomes(), start, end, &self.targets);
        figures.lost_acknowledged_writes = self.newly_lost_writes().await;
        let read_availability = (kind == FaultKind::DiskFull).then(|| {
            let reads: Vec<_> = self
                .recorder
                .outcomes()
                .into_iter()
                .filter(|o| o.kind == Kind::Read)
                .collect();
            checker::phase_figures(&reads, start, end, &self.targets).availability
        });
        let Happened {
            at,
            evidence,
            skipped,
            undone,
            extra,
        } = happened;
        let catch_up = undone.catch_up;
        let fsync = undone.fsync;
        let cl = undone.cluster.unwrap_or_default();
        let fsync_ms = |pick: fn(&faults::FsyncTimes) -> Option<Duration>| {
            fsync
                .as_ref()
                .and_then(pick)
                .map(|d| d.as_secs_f64() * 1000.0)
        };
        // A standby lost or the link slow: what the writes meant to leave meanwhile met.
        let writes = matches!(kind, FaultKind::StandbyLoss | FaultKind::SlowLink)
            && skipped.is_none()
            && self.read_back.is_some();
        let (writes_during, writes_acked, longest_write) = if writes {
            let during: Vec<_> = self
                .recorder
                .outcomes()
                .into_iter()
                .filter(|o| o.kind == Kind::Write && o.intended >= at && o.intended < undone_at)
                .collect();
            (
                Some(during.len() as u64),
                Some(during.iter().filter(|o| o.ok()).count() as u64),
                during
                    .iter()
                    .map(|o| o.latency.as_secs_f64())
                    .reduce(f64::max),
            )
        } else {
            (None, None, None)
        };
        let link = cl.link.clone();
        let destination = (kind == FaultKind::VaultDestinationDown && skipped.is_none())
            .then(|| sandbox.second_destination_kind().to_string());
        let mut report = FaultReport {
            name: kind.name().into(),
            title: kind.title().into(),
            passed: true,
            skipped,
            injected_at_s: at.as_secs_f64(),
            undone_at_s: undone_at.as_secs_f64(),
            evidence,
            undone: undone.ok,
            undo_evidence: undone.evidence,
            figures,
            recovered_after_s: undone.recovered_after.map(|d| d.as_secs_f64()),
            rpo_s: extra.rpo_s,
            rto_s: extra.rto_s,
            detected_after_s: extra.detected_after_s.or(undone
                .detected
                .as_ref()
                .map(|(after, _)| after.as_secs_f64())),
            detected_by: extra.detected_by.or(undone.detected.map(|(_, by)| by)),
            on_timeline: extra.on_timeline,
            removed_by_rewind: extra.removed_by_rewind,
            upload_restored: extra.upload_restored,
            read_availability,
            destination,
            vault_backlog_objects: catch_up.map(|c| c.backlog_objects),
            vault_backlog_bytes: catch_up.map(|c| c.backlog_bytes),
            vault_catch_up_s: catch_up.and_then(|c| c.after).map(|d| d.as_secs_f64()),
            fsync_ms_before: fsync_ms(|t| t.before),
            fsync_ms_during: fsync_ms(|t| t.during),
            fsync_ms_after: fsync_ms(|t| t.after),
            node: (!cl.node.is_empty()).then(|| cl.node.clone()),
            zone: (!cl.zone.is_empty()).then(|| cl.zone.clone()),
            new_primary: cl.new_primary,
            rejoined_as_standby: cl.rejoined_as_standby,
            rejoined_after_s: cl.rejoined_after.map(|d| d.as_secs_f64()),
            old_primary_fenced: cl.old_primary_fenced,
            primary_unchanged: cl.primary_unchanged,
            writes_during,
            writes_acknowledged_during: writes_acked,
            longest_write_s: longest_write,
            link_dropped_packets: link.as_ref().map(|l| l.dropped),
            link_overlimits: link.as_ref().map(|l| l.overlimits),
            unconfirmed_changes: cl.unconfirmed,
            etcd_leader_lost: cl.etcd_leader_lost,
        };
        if let Some(why) = extra.rewind_error {
            report.undone = false;
            report.undo_evidence = why;
        }
        report.passed = checker::fault_passed(&report, kind, &self.targets);
        Ok(Phase { kind, report })
    }

    /// The usage spike: the arrival rate ramps to ten times the baseline; the capacity is
    /// where latency or errors began.
    async fn spike(&mut self, sandbox: &mut Sandbox) -> Result<Happened> {
        let mut ctx = self.ctx(sandbox);
        let f = faults::inject(FaultKind::UsageSpike, &mut ctx).await?;
        let ramp = self.timing.spike.mul_f64(0.8);
        let ramp_start = self.recorder.now();
        while self.recorder.now() < ramp_start + ramp {
            let p = (self.recorder.now() - ramp_start).as_secs_f64() / ramp.as_secs_f64();
            self.load.set_rate(faults::spike_rate(self.base_rate, p));
            self.hold(Duration::from_millis(250)).await;
        }
        let ramp_end = self.recorder.now();
        let mut ctx = self.ctx(sandbox);
        let undone = faults::undo(f, &mut ctx, self.targets.rto).await?;
        self.capacity = checker::capacity(
            &self.recorder.outcomes(),
            ramp_start,
            ramp_end,
            &self.targets,
        );
        self.hold(self.timing.spike.saturating_sub(ramp)).await;
        Ok(Happened {
            at: ramp_start,
            evidence: format!("arrival rate ramped to {:.0}/s", self.base_rate * 10.0),
            skipped: None,
            undone,
            extra: Extra::default(),
        })
    }

    /// Any other fault. One that cannot be injected is reported as not run, one whose undo
    /// or rewind fails as not undone; the run goes on either way.
    async fn fault(&mut self, kind: FaultKind, sandbox: &mut Sandbox) -> Happened {
        // Before a corruption, an upload to damage with the database (captured during the
        // lead, so it is before the restore point).
        let upload = if kind == FaultKind::Corruption {
            faults::plant_upload(sandbox).await.ok().flatten()
        } else {
            None
        };
        self.hold(self.timing.lead).await;
        let before = if kind.rewinds() {
            match restore_point(sandbox, &self.recorder).await {
                Ok(point) => Some(point),
                Err(e) => {
                    let why = format!("no restore point could be taken before it: {e}");
                    return Happened::not_run(self.recorder.now(), why);
                }
            }
        } else {
            None
        };
        let f = match faults::inject(kind, &mut self.ctx(sandbox)).await {
            Ok(f) => f,
            Err(e) => {
                let why = format!("it could not be injected: {e}");
                return Happened::not_run(self.recorder.now(), why);
            }
        };
        if let Some(why) = f.skipped.clone() {
            return Happened {
                evidence: f.evidence.clone(),
                ..Happened::not_run(f.at, why)
            };
        }
        let (at, evidence) = (f.at, f.evidence.clone());
        let mut extra = Extra::default();
        if let Some((t0, restore_to)) = before {
            let watch = self.timing.hold;
            extra = destroy_and_rewind(
                kind,
                &f,
                sandbox,
                &self.recorder,
                watch,
                restore_to,
                upload.as_deref(),
            )
            .await
            .unwrap_or_else(|e| Extra {
                rewind_error: Some(format!("the rewind failed: {e}")),
                ..Extra::default()
            });
            self.discarded.push(Discarded {
                from: t0,
                until: self.recorder.now(),
            });
        } else if kind != FaultKind::KillLifeboat {
            // The fault is in place for the hold, counted from its injection (waiting for
            // Lifeboat to notice it is part of it).
            let held = self.recorder.now().saturating_sub(at);
            self.hold(self.timing.hold.saturating_sub(held)).await;
        }
        // `f` undoes itself if this fails; the failure is the phase's result.
        let rto = self.targets.rto;
        let undone = faults::undo(f, &mut self.ctx(sandbox), rto)
            .await
            .unwrap_or_else(|e| faults::Undone {
                evidence: format!("the undo failed: {e}"),
                ..Default::default()
            });
        Happened {
            at,
            evidence,
            skipped: None,
            undone,
            extra,
        }
    }

    /// What a fault needs from the run.
    fn ctx<'s>(&'s self, sandbox: &'s mut Sandbox) -> Ctx<'s> {
        Ctx {
            sandbox,
            http: &self.http,
            recorder: &self.recorder,
            load: &self.load,
            base_rate: self.base_rate,
            login: self.login.clone(),
            slow_clients: if self.quick { 100 } else { 300 },
            attack_rate: (self.base_rate * 6.0).min(500.0),
            notice_within: Duration::from_secs(if self.quick { 3 } else { 20 }),
            rto: self.targets.rto,
        }
    }

    /// The read-back after a phase: acknowledged writes it does not show, not counted before
    /// and not given up by a rewind. A read-back that gets no answer checks nothing (the
    /// final one must answer).
    async fn newly_lost_writes(&mut self) -> u64 {
        let Some(path) = &self.read_back else {
            return 0;
        };
        // Only writes acknowledged before the read-back was sent must be in its answer.
        let sent = self.recorder.now();
        let Ok(found) = load::read_back_tokens(&self.http, path, &self.recorder.run_id).await
        else {
            return 0;
        };
        let outcomes = self.recorder.outcomes();
        let lost = checker::lost_writes(&outcomes, &found, sent, &self.discarded, &self.lost);
        self.lost.extend(&lost);
        lost.len() as u64
    }

    /// Waits `d`, telling the progress display how the load goes.
    async fn hold(&self, d: Duration) {
        hold(self.progress, &self.recorder, d).await;
    }

    /// The final read-back, the events, the figures of the whole run, the scorecard.
    async fn finish(
        mut self,
        sandbox: &Sandbox,
        started_at: OffsetDateTime,
        baseline: PhaseReport,
        mut phases: Vec<Phase>,
        facts: &SiteFacts,
    ) -> Result<Report> {
        self.load.stop().await;
        let outcomes = self.recorder.outcomes();
        let mut writes = WritesReport::default();
        let mut read_back_failed = None;
        if let Some(path) = &self.read_back {
            let sent = self.recorder.now();
            match load::read_back_tokens(&self.http, path, &self.recorder.run_id).await {
                Ok(found) => {
                    let lost =
                        checker::lost_writes(&outcomes, &found, sent, &self.discarded, &self.lost);
                    if let Some(last) = phases.last_mut() {
                        last.report.figures.lost_acknowledged_writes += lost.len() as u64;
                        last.report.passed =
                            checker::fault_passed(&last.report, last.kind, &self.targets);
                    }
                    self.lost.extend(lost);
                    writes = writes_report(&outcomes, &found, &self.discarded, &self.lost);
                }
                Err(why) => read_back_failed = Some(why),
            }
        }
        let events = sandbox_events(sandbox, started_at).await;
        let end = self.recorder.now();
        let all = checker::phase_figures(&outcomes, Duration::ZERO, end, &self.targets);
        let bucket = Duration::from_millis(if self.quick { 250 } else { 500 });
        let timeseries = checker::timeseries(&outcomes, end, bucket, &self.targets);
        let targets = &self.targets;
        let lost = self.lost.len() as u64;
        let mut scorecard = scorecard(
            &baseline,
            &phases,
            &writes,
            self.capacity,
            targets,
            facts,
            lost,
        );
        if let Some(why) = read_back_failed {
            scorecard.insert(0, ScoreLine {
                passed: Some(false),
                text: format!(
                    "the writes could not be read back at the end ({why}), so lost writes were \
                     not counted"
                ),
                advice: Some(
                    "check that [simulate] probe.read_back answers 200 with every entry written"
                        .into(),
                ),
            });
        }
        let mut sandbox_report = sandbox.report();
        if let (Some(report), Some(c)) = (sandbox_report.cluster.as_mut(), &sandbox.cluster) {
            let at_end = c.roles().await;
            for (i, n) in report.nodes.iter_mut().enumerate() {
                n.role_at_start = self.roles_at_start.get(i).cloned().unwrap_or_default();
                n.role_at_end = at_end.get(i).cloned().unwrap_or_default();
            }
        }
        scorecard.extend(sandbox_notes(&sandbox_report, &phases));
        let passed = scorecard.iter().all(|l| l.passed != Some(false));
        Ok(Report {
            version: REPORT_VERSION,
            site: sandbox.manifest.site.clone(),
            passed,
            started_at: started_at.format(&Rfc3339).unwrap_or_default(),
            duration_s: (OffsetDateTime::now_utc() - started_at).as_seconds_f64(),
            quick: self.quick,
            restored_time: sandbox.restored_time.clone(),
            targets: TargetsReport {
                availability: targets.availability,
                response_time_ms: targets.response_time.as_secs_f64() * 1000.0,
                p99_ms: targets.p99.as_secs_f64() * 1000.0,
                lost_writes: targets.lost_writes,
                rto_s: targets.rto.as_secs_f64(),
            },
            availability: all.availability,
            requests: all.requests,
            errors: all.errors,
            lost_acknowledged_writes: lost,
            writes,
            capacity_rps: self.capacity.0,
            capacity_is_lower_bound: self.capacity.1,
            sandbox: sandbox_report,
            baseline,
            faults: phases.into_iter().map(|p| p.report).collect(),
            scorecard,
            timeseries,
            events,
        })
    }
}

/// Notes on what the sandbox could not do here (cut the network, run an S3 server).
fn sandbox_notes(sandbox: &SandboxReport, phases: &[Phase]) -> Vec<ScoreLine> {
    let mut notes = Vec::new();
    if !sandbox.network_isolated {
        notes.push(ScoreLine {
            passed: None,
            text: format!(
                "the copy's code could reach other machines and the host's services ({})",
                sandbox.network
            ),
            advice: Some(
                "install util-linux 2.38+ (`unshare`) and iproute2 (`ip`) and allow unprivileged \
                 user namespaces (sysctl kernel.unprivileged_userns_clone=1), or run `lifeboat \
                 simulate` as root: the copy then runs in a network namespace of its own with \
                 only loopback"
                    .into(),
            ),
        });
    }
    let destination_down = phases
        .iter()
        .any(|p| p.kind == FaultKind::VaultDestinationDown && p.report.skipped.is_none());
    if let (true, Some(why)) = (destination_down, &sandbox.why_not_s3) {
        notes.push(ScoreLine {
            passed: None,
            text: format!(
                "the vault destination taken down was a local folder, not an S3 server ({why})"
            ),
            advice: Some(format!(
                "install s3s-fs (scripts/install-test-deps, or set {}) so the simulator takes \
                 a real S3 server down",
                crate::s3_server::BINARY_ENV
            )),
        });
    }
    notes
}

/// A fault that was not injected left nothing to undo.
fn nothing_to_undo() -> faults::Undone {
    faults::Undone {
        ok: true,
        evidence: "nothing was injected".into(),
        recovered_after: None,
        detected: None,
        catch_up: None,
        fsync: None,
        cluster: None,
    }
}

/// Waits `d`, telling the progress display how the load goes every quarter second.
async fn hold(progress: &dyn Progress, recorder: &Recorder, d: Duration) {
    let until = recorder.now() + d;
    loop {
        let (n, failed) = recorder.counts();
        progress.tick(n, failed);
        let now = recorder.now();
        if now >= until {
            return;
        }
        tokio::time::sleep((until - now).min(Duration::from_millis(250))).await;
    }
}

/// What the sandbox's Lifeboat recorded, for the report: on a cluster every node's events
/// (each node keeps its own: the old primary's are on the old primary), merged by time.
async fn sandbox_events(sandbox: &Sandbox, started_at: OffsetDateTime) -> Vec<EventLine> {
    let clients: Vec<(Option<String>, ControlClient)> = match &sandbox.cluster {
        Some(c) => c
            .nodes
            .iter()
            .filter_map(|n| Some((Some(n.name.clone()), ControlClient::for_site(&n.dir).ok()?)))
            .collect(),
        None => sandbox
            .client()
            .ok()
            .map(|c| (None, c))
            .into_iter()
            .collect(),
    };
    let query = EventsQuery {
        after: None,
        last: Some(500),
        wait_ms: None,
    };
    let mut lines = Vec::new();
    for (node, client) in clients {
        let events = tokio::time::timeout(Duration::from_secs(5), client.events(&query))
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        lines.extend(events.into_iter().map(|e| EventLine {
            node: node.clone(),
            seq: e.seq,
            at: e.at.format(&Rfc3339).unwrap_or_default(),
            t_s: (e.at - started_at).as_seconds_f64(),
            text: e.what.describe(),
            alert: e.what.is_alert(),
        }));
    }
    lines.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    lines
}
