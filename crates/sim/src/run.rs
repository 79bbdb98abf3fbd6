//! One simulation from start to report: the sandbox, the load, the phases (a baseline, then
//! one fault per phase, each undone before the next), the read-backs, and the report.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use lifeboat_control::api::EventsQuery;
use lifeboat_control::rewind::RewindRequest;
use lifeboat_control::timespec::TimeSpec;
use lifeboat_core::manifest::{SimulateSpec, Targets};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::checker::{self, Discarded, SiteFacts};
use crate::error::Result;
use crate::faults::{self, Ctx, FaultKind};
use crate::load::{self, Http, Kind, Load, Recorder, RequestSpec, Scenario};
use crate::report::*;
use crate::sandbox::Sandbox;

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

struct Phase {
    kind: FaultKind,
    report: FaultReport,
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

/// Before a destructive fault: everything captured so far is shipped, and the moment after
/// that is the restore point. Returns when writes may start to be given up (run time) and
/// the restore point (wall clock).
async fn restore_point(
    sandbox: &Sandbox,
    recorder: &Recorder,
) -> Result<(Duration, OffsetDateTime)> {
    // Writes acknowledged before t0 were committed before it; `ship` returns once the vault
    // holds everything committed until it was called, so they are all before the restore
    // point. Writes acknowledged after t0 may be on either side of it.
    let t0 = recorder.now();
    sandbox.client()?.ship().await?;
    Ok((t0, OffsetDateTime::now_utc()))
}

#[derive(Default)]
struct Extra {
    rpo_s: Option<f64>,
    rto_s: Option<f64>,
    detected_after_s: Option<f64>,
    detected_by: Option<String>,
    on_timeline: Option<bool>,
    removed_by_rewind: Option<bool>,
    upload_restored: Option<bool>,
    rewind_error: Option<String>,
}

/// After a virus or a corruption: watch for it to be noticed for `watch`, then rewind the
/// sandbox to the restore point taken just before and check what the rewind gave back.
async fn destroy_and_rewind(
    kind: FaultKind,
    f: &faults::Injected,
    sandbox: &mut Sandbox,
    recorder: &Recorder,
    watch: Duration,
    restore_to: OffsetDateTime,
    upload: Option<&[u8]>,
) -> Result<Extra> {
    let mut extra = Extra::default();
    let client = sandbox.client()?;
    let watch_until = recorder.now() + watch;
    while recorder.now() < watch_until && extra.detected_by.is_none() {
        if kind == FaultKind::Corruption {
            let events = client
                .events(&EventsQuery {
                    after: None,
                    last: Some(200),
                    wait_ms: None,
                })
                .await
                .unwrap_or_default();
            if let Some(e) = events.iter().find(|e| {
                e.at >= f.wall
                    && matches!(
                        e.what,
                        lifeboat_core::events::EventKind::IntegrityFailed { .. }
                    )
            }) {
                extra.detected_after_s = Some((e.at - f.wall).as_seconds_f64().max(0.0));
                extra.detected_by = Some(format!("Lifeboat event: {}", e.what.describe()));
            } else if let Some(o) = recorder
                .outcomes()
                .iter()
                .filter(|o| o.intended >= f.at && o.kind != Kind::Attack && o.status >= 500)
                .min_by_key(|o| o.intended)
            {
                extra.detected_after_s = Some((o.intended - f.at).as_secs_f64());
                extra.detected_by = Some(format!("the site answered {}", o.status));
            }
        }
        if kind == FaultKind::Virus && extra.on_timeline.is_none() {
            // On the timeline: once shipped, the vault covers a moment after the planting.
            let _ = client.ship().await;
            if let Ok(tl) = client.timeline().await {
                let covered = tl.restore_points.segments.iter().any(|s| s.to >= f.wall);
                extra.on_timeline = Some(covered);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rewind_started = recorder.now();
    let req = RewindRequest {
        to: TimeSpec::At { time: restore_to },
        rotate_credentials: false,
    };
    match client.rewind(&req).await {
        Ok(r) => {
            extra.rto_s = Some((recorder.now() - rewind_started).as_secs_f64());
            let restored = r.restored_time.unwrap_or(restore_to);
            extra.rpo_s = Some((f.wall - restored).as_seconds_f64().max(0.0));
            if kind == FaultKind::Virus {
                let dir = sandbox.live_state_dir().await?;
                let names: Vec<_> = f.files.iter().filter_map(|p| p.file_name()).collect();
                let left = names
                    .iter()
                    .filter(|n| {
                        sandbox
                            .manifest
                            .state
                            .dirs
                            .iter()
                            .any(|d| dir.join(d).join(n).exists())
                    })
                    .count();
                extra.removed_by_rewind = Some(left == 0);
            }
            if let (Some(bytes), Some(dir)) = (upload, sandbox.manifest.state.dirs.first()) {
                let path = sandbox
                    .live_state_dir()
                    .await?
                    .join(dir)
                    .join(faults::UPLOAD_NAME);
                extra.upload_restored = Some(std::fs::read(&path).is_ok_and(|b| b == bytes));
            }
        }
        Err(e) => extra.rewind_error = Some(format!("the rewind failed: {e}")),
    }
    Ok(extra)
}

fn writes_report(
    outcomes: &[load::Outcome],
    found: &BTreeSet<u64>,
    discarded: &[Discarded],
    lost: &BTreeSet<u64>,
) -> WritesReport {
    let writes: Vec<_> = outcomes.iter().filter(|o| o.kind == Kind::Write).collect();
    let acked: Vec<_> = writes.iter().filter(|o| o.ok()).collect();
    let in_discard = |o: &load::Outcome| {
        discarded
            .iter()
            .any(|d| o.intended + o.latency > d.from && o.intended < d.until)
    };
    WritesReport {
        sent: writes.len() as u64,
        acknowledged: acked.len() as u64,
        found: acked
            .iter()
            .filter(|o| o.probe.is_some_and(|p| found.contains(&p)))
            .count() as u64,
        discarded_by_rewind: acked
            .iter()
            .filter(|o| in_discard(o) && !o.probe.is_some_and(|p| found.contains(&p)))
            .count() as u64,
        indeterminate: writes.iter().filter(|o| !o.ok()).count() as u64,
        lost_ids: lost.iter().copied().take(100).collect(),
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

fn scorecard(
    baseline: &PhaseReport,
    phases: &[Phase],
    writes: &WritesReport,
    capacity: (f64, bool),
    targets: &Targets,
    facts: &SiteFacts,
    lost: u64,
) -> Vec<ScoreLine> {
    let mut lines = Vec::new();
    // A lost acknowledged write is said first, whatever else happened.
    lines.push(if writes.sent == 0 {
        ScoreLine {
            passed: None,
            text: "writes were not checked: the load sent no write probe".into(),
            advice: Some("add [simulate] probe = { path = ..., body = \"...{id}...\", read_back = ... } so lost writes are counted".into()),
        }
    } else if lost > targets.lost_writes {
        ScoreLine {
            passed: Some(false),
            text: format!(
                "{lost} of {} acknowledged writes were LOST (the site said they were saved; a later read did not find them)",
                writes.acknowledged
            ),
            advice: Some("see which faults lost them below; a write must be committed before the site answers".into()),
        }
    } else {
        ScoreLine {
            passed: Some(true),
            text: format!(
                "no acknowledged write was lost ({} acknowledged, {} found, {} given up by rewinds on purpose)",
                writes.acknowledged, writes.found, writes.discarded_by_rewind
            ),
            advice: None,
        }
    });
    let base_ok = baseline.availability >= targets.availability;
    let p99_ok = baseline.p99_ms <= targets.p99.as_secs_f64() * 1000.0;
    lines.push(ScoreLine {
        passed: Some(base_ok && p99_ok),
        text: format!(
            "normal load: {} of requests answered in time, p50 {:.1} ms, p99 {:.1} ms (target {:.0} ms)",
            pct(baseline.availability),
            baseline.p50_ms,
            baseline.p99_ms,
            targets.p99.as_secs_f64() * 1000.0
        ),
        advice: (!(base_ok && p99_ok)).then(|| {
            "the site is slow or failing even without a fault: look at `lifeboat logs` of the sandbox (--keep) and the site's own performance".to_string()
        }),
    });
    let spiked = phases.iter().any(|p| p.kind == FaultKind::UsageSpike);
    lines.extend(spiked.then(|| ScoreLine {
        passed: None,
        text: if capacity.1 {
            format!(
                "capacity: at least {:.0} requests/s (the whole spike was served in time)",
                capacity.0
            )
        } else {
            format!(
                "capacity: about {:.0} requests/s before latency or errors rose",
                capacity.0
            )
        },
        advice: None,
    }));
    for p in phases {
        lines.push(checker::fault_line(&p.report, p.kind, targets, facts));
        if p.kind == FaultKind::Corruption
            && let Some(l) = checker::detection_line(&p.report, facts)
        {
            lines.push(l);
        }
        if p.kind == FaultKind::CredentialStuffing && p.report.skipped.is_none() {
            lines.push(ScoreLine {
                passed: None,
                text: "Lifeboat does not record failed logins yet: the attack shows only as load"
                    .into(),
                advice: None,
            });
        }
    }
    // Failures first, then passes, then information; the lost-writes line stays on top when it failed.
    let (first, rest) = lines.split_at(1);
    let mut rest = rest.to_vec();
    rest.sort_by_key(|l| match l.passed {
        Some(false) => 0,
        Some(true) => 1,
        None => 2,
    });
    if first[0].passed == Some(false) {
        std::iter::once(first[0].clone()).chain(rest).collect()
    } else {
        let mut all = rest;
        let pos = all
            .iter()
            .position(|l| l.passed != Some(false))
            .unwrap_or(all.len());
        all.insert(pos, first[0].clone());
        all
    }
}

fn pct(x: f64) -> String {
    let p = x * 100.0;
    if p >= 99.995 {
        "100%".into()
    } else if p >= 99.0 {
        format!("{p:.2}%")
    } else {
        format!("{p:.1}%")
    }
}
