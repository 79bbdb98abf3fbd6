//! One simulation from start to report: the sandbox, the load, the phases (a baseline, then
//! one fault per phase, each undone before the next), the read-backs, and the report.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use lifeboat_control::api::EventsQuery;
use lifeboat_core::manifest::SimulateSpec;
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
    let mut sandbox =
        Sandbox::create(&opts.site_dir, &opts.at, &opts.lifeboat_bin, opts.keep).await?;
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
    }
}

pub(crate) struct Phase {
    pub kind: FaultKind,
    pub report: FaultReport,
}

async fn run_phases(
    opts: &Options,
    progress: &dyn Progress,
    sandbox: &mut Sandbox,
    started_at: OffsetDateTime,
) -> Result<Report> {
    let spec = sandbox.manifest.simulate.clone().unwrap_or_default();
    let targets = spec.targets.clone();
    let facts = site_facts(sandbox);
    let timing = Timing::new(opts.quick);
    let http = Http::new(sandbox.front_door);
    let recorder = Recorder::new();
    let base_rate = f64::from(spec.rate);
    let scenario = visitor_scenario(&spec, &facts.health_path);
    let load = Load::start(http.clone(), recorder.clone(), scenario, base_rate);
    let login = spec.login.as_ref().map(|l| RequestSpec {
        method: Method::POST,
        path: l.path.clone(),
        body: Some(l.body.clone()),
        content_type: Some(l.content_type.clone()),
        kind: Kind::Attack,
        weight: 1,
    });
    let kinds: Vec<FaultKind> = FaultKind::ALL
        .into_iter()
        .filter(|k| opts.only.is_empty() || opts.only.contains(k))
        .collect();
    let count = kinds.len() + 1;

    // Baseline.
    progress.phase(1, count, "baseline", timing.baseline);
    let b_start = recorder.now();
    hold(progress, &recorder, timing.baseline).await;
    let b_end = recorder.now();
    let mut baseline = checker::phase_figures(&recorder.outcomes(), b_start, b_end, &targets);

    let mut discarded: Vec<Discarded> = Vec::new();
    let mut lost_so_far: BTreeSet<u64> = BTreeSet::new();
    let read_back = spec.probe.as_ref().map(|p| p.read_back.clone());
    if let Some(path) = &read_back {
        // Only writes acknowledged before the read-back was sent must be in its answer.
        let sent = recorder.now();
        // A read-back that gets no answer checks nothing; the final one must answer.
        let found = load::read_back_tokens(&http, path, &recorder.run_id)
            .await
            .ok();
        let lost = found
            .map(|found| {
                checker::lost_writes(&recorder.outcomes(), &found, sent, &discarded, &lost_so_far)
            })
            .unwrap_or_default();
        baseline.lost_acknowledged_writes = lost.len() as u64;
        lost_so_far.extend(lost);
    }

    let mut phases: Vec<Phase> = Vec::new();
    let mut capacity = (0.0, true);
    for (i, kind) in kinds.iter().copied().enumerate() {
        let planned = if kind == FaultKind::UsageSpike {
            timing.spike
        } else {
            timing.lead + timing.hold + timing.tail
        };
        progress.phase(i + 2, count, kind.name(), planned);
        let start = recorder.now();
        let mut ctx = Ctx {
            sandbox: &mut *sandbox,
            http: &http,
            recorder: &recorder,
            load: &load,
            base_rate,
            login: login.clone(),
            slow_clients: if opts.quick { 100 } else { 300 },
            attack_rate: (base_rate * 6.0).min(500.0),
        };
        let mut extra = Extra::default();
        let (injected, undone) = if kind == FaultKind::UsageSpike {
            let f = faults::inject(kind, &mut ctx).await?; // the spike only changes the rate
            let ramp = timing.spike.mul_f64(0.8);
            let ramp_start = recorder.now();
            while recorder.now() < ramp_start + ramp {
                let p = (recorder.now() - ramp_start).as_secs_f64() / ramp.as_secs_f64();
                load.set_rate(faults::spike_rate(base_rate, p));
                hold(progress, &recorder, Duration::from_millis(250)).await;
            }
            let ramp_end = recorder.now();
            let u = faults::undo(f, &mut ctx, targets.rto).await?;
            capacity = checker::capacity(&recorder.outcomes(), ramp_start, ramp_end, &targets);
            hold(progress, &recorder, timing.spike.saturating_sub(ramp)).await;
            ((ramp_start, String::new(), None), u)
        } else if ctx.sandbox.lifeboat_pid().is_none() {
            let why = "the sandbox's lifeboat is not running: an earlier fault left it down";
            (
                (recorder.now(), String::new(), Some(why.to_string())),
                nothing_to_undo(),
            )
        } else {
            // Before a corruption, an upload to damage with the database (captured during
            // the lead, so it is before the restore point).
            let upload = if kind == FaultKind::Corruption {
                faults::plant_upload(ctx.sandbox).await.ok().flatten()
            } else {
                None
            };
            hold(progress, &recorder, timing.lead).await;
            let before = if kind.rewinds() {
                restore_point(ctx.sandbox, &recorder).await.map(Some)
            } else {
                Ok(None)
            };
            // A fault that cannot be injected is reported as not run; the run goes on.
            let injected = match before {
                Ok(before) => faults::inject(kind, &mut ctx).await.map(|f| (f, before)),
                Err(e) => Err(e),
            };
            match injected {
                Err(e) => (
                    (
                        recorder.now(),
                        String::new(),
                        Some(format!("it could not be injected: {e}")),
                    ),
                    nothing_to_undo(),
                ),
                Ok((f, _)) if f.skipped.is_some() => (
                    (f.at, f.evidence.clone(), f.skipped.clone()),
                    nothing_to_undo(),
                ),
                Ok((f, before)) => {
                    let (at, evidence) = (f.at, f.evidence.clone());
                    if let (true, Some((t0, t_wall))) = (kind.rewinds(), before) {
                        extra = destroy_and_rewind(
                            kind,
                            &f,
                            ctx.sandbox,
                            &recorder,
                            timing.hold,
                            t_wall,
                            upload.as_deref(),
                        )
                        .await
                        .unwrap_or_else(|e| Extra {
                            rewind_error: Some(format!("the rewind failed: {e}")),
                            ..Extra::default()
                        });
                        discarded.push(Discarded {
                            from: t0,
                            until: recorder.now(),
                        });
                    } else if kind != FaultKind::KillLifeboat {
                        hold(progress, &recorder, timing.hold).await;
                    }
                    // `f` undoes itself if this fails; the failure is the phase's result.
                    let u = faults::undo(f, &mut ctx, targets.rto)
                        .await
                        .unwrap_or_else(|e| faults::Undone {
                            evidence: format!("the undo failed: {e}"),
                            ..Default::default()
                        });
                    ((at, evidence, None), u)
                }
            }
        };
        let undone_at = recorder.now();
        // The tail: the site after the fault, until the planned end of the phase.
        let planned_end = start + planned;
        let rest =
            planned_end
                .saturating_sub(recorder.now())
                .max(if kind == FaultKind::UsageSpike {
                    Duration::ZERO
                } else {
                    timing.tail
                });
        hold(progress, &recorder, rest).await;
        let end = recorder.now();
        let mut figures = checker::phase_figures(&recorder.outcomes(), start, end, &targets);
        if let Some(path) = &read_back {
            let sent = recorder.now();
            // A read-back that gets no answer checks nothing; the final one must answer.
            let found = load::read_back_tokens(&http, path, &recorder.run_id)
                .await
                .ok();
            let lost = found
                .map(|found| {
                    checker::lost_writes(
                        &recorder.outcomes(),
                        &found,
                        sent,
                        &discarded,
                        &lost_so_far,
                    )
                })
                .unwrap_or_default();
            figures.lost_acknowledged_writes = lost.len() as u64;
            lost_so_far.extend(lost);
        }
        let ((at, evidence, skipped), undone) = (injected, undone);
        let mut report = FaultReport {
            name: kind.name().into(),
            title: kind.title().into(),
            passed: true,
            skipped,
            injected_at_s: at.as_secs_f64(),
            undone_at_s: undone_at.as_secs_f64(),
            evidence: if evidence.is_empty() {
                format!("arrival rate ramped to {:.0}/s", base_rate * 10.0)
            } else {
                evidence
            },
            undone: undone.ok,
            undo_evidence: undone.evidence,
            figures,
            recovered_after_s: undone.recovered_after.map(|d| d.as_secs_f64()),
            rpo_s: extra.rpo_s,
            rto_s: extra.rto_s,
            detected_after_s: extra.detected_after_s,
            detected_by: extra.detected_by,
            on_timeline: extra.on_timeline,
            removed_by_rewind: extra.removed_by_rewind,
            upload_restored: extra.upload_restored,
            read_availability: (kind == FaultKind::DiskFull).then(|| {
                let reads: Vec<_> = recorder
                    .outcomes()
                    .into_iter()
                    .filter(|o| o.kind == Kind::Read)
                    .collect();
                checker::phase_figures(&reads, start, end, &targets).availability
            }),
        };
        if extra.rewind_error.is_some() {
            report.undone = false;
            report.undo_evidence = extra.rewind_error.unwrap_or_default();
        }
        report.passed = checker::fault_passed(&report, kind, &targets);
        phases.push(Phase { kind, report });
    }
    progress.step("final read-back of every acknowledged write");
    load.stop().await;
    let outcomes = recorder.outcomes();
    let mut writes = WritesReport::default();
    let mut read_back_failed = None;
    if let Some(path) = &read_back {
        let sent = recorder.now();
        let found = match load::read_back_tokens(&http, path, &recorder.run_id).await {
            Ok(found) => found,
            Err(why) => {
                read_back_failed = Some(why);
                BTreeSet::new()
            }
        };
        let lost = if read_back_failed.is_some() {
            BTreeSet::new()
        } else {
            checker::lost_writes(&outcomes, &found, sent, &discarded, &lost_so_far)
        };
        if let Some(last) = phases.last_mut() {
            last.report.figures.lost_acknowledged_writes += lost.len() as u64;
            last.report.passed = checker::fault_passed(&last.report, last.kind, &targets);
        }
        lost_so_far.extend(lost);
        writes = writes_report(&outcomes, &found, &discarded, &lost_so_far);
    }
    let events = sandbox_events(sandbox, &recorder, started_at).await;
    let end = recorder.now();
    let all = checker::phase_figures(&outcomes, Duration::ZERO, end, &targets);
    let timeseries = checker::timeseries(
        &outcomes,
        end,
        Duration::from_millis(if opts.quick { 250 } else { 500 }),
        &targets,
    );
    let mut scorecard = scorecard(
        &baseline,
        &phases,
        &writes,
        capacity,
        &targets,
        &facts,
        lost_so_far.len() as u64,
    );
    if let Some(why) = read_back_failed {
        scorecard.insert(0, ScoreLine {
            passed: Some(false),
            text: format!("the writes could not be read back at the end ({why}), so lost writes were not counted"),
            advice: Some("check that [simulate] probe.read_back answers 200 with every entry written".into()),
        });
    }
    let passed = scorecard.iter().all(|l| l.passed != Some(false));
    Ok(Report {
        version: REPORT_VERSION,
        site: sandbox.manifest.site.clone(),
        passed,
        started_at: started_at.format(&Rfc3339).unwrap_or_default(),
        duration_s: (OffsetDateTime::now_utc() - started_at).as_seconds_f64(),
        quick: opts.quick,
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
        lost_acknowledged_writes: lost_so_far.len() as u64,
        writes,
        capacity_rps: capacity.0,
        capacity_is_lower_bound: capacity.1,
        baseline,
        faults: phases.into_iter().map(|p| p.report).collect(),
        scorecard,
        timeseries,
        events,
    })
}

/// A fault that was not injected left nothing to undo.
fn nothing_to_undo() -> faults::Undone {
    faults::Undone {
        ok: true,
        evidence: "nothing was injected".into(),
        recovered_after: None,
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

async fn sandbox_events(
    sandbox: &Sandbox,
    recorder: &Recorder,
    started_at: OffsetDateTime,
) -> Vec<EventLine> {
    let Ok(client) = sandbox.client() else {
        return Vec::new();
    };
    let events = client
        .events(&EventsQuery {
            after: None,
            last: Some(500),
            wait_ms: None,
        })
        .await
        .unwrap_or_default();
    let _ = recorder;
    events
        .into_iter()
        .map(|e| EventLine {
            seq: e.seq,
            at: e.at.format(&Rfc3339).unwrap_or_default(),
            t_s: (e.at - started_at).as_seconds_f64(),
            text: e.what.describe(),
            alert: e.what.is_alert(),
        })
        .collect()
}
