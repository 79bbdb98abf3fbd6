//! The scorecard: one line per finding in a site owner's words, a lost acknowledged write
//! first, then failures, passes and notes; and the write probes' tally.

use std::collections::BTreeSet;

use lifeboat_core::manifest::Targets;

use crate::checker::{self, Discarded, SiteFacts};
use crate::faults::FaultKind;
use crate::load::{self, Kind};
use crate::report::{PhaseReport, ScoreLine, WritesReport};
use crate::run::Phase;

pub(crate) fn writes_report(
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

pub(crate) fn scorecard(
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
            lines.push(match (&p.report.detected_by, p.report.detected_after_s) {
                (Some(by), Some(after)) => ScoreLine {
                    passed: None,
                    text: format!("the password guessing was recorded after {after:.1} s ({by})"),
                    advice: None,
                },
                _ => ScoreLine {
                    passed: None,
                    text: "the password guessing was not recorded".into(),
                    advice: Some(
                        "Lifeboat counts answers 401 and 403 per visitor ([proxy]                          auth_failure_alert): a login page that answers a wrong password with                          200 is not seen; answer it 401"
                            .into(),
                    ),
                },
            });
        }
    }
    // async: a takeover may lose what was acknowledged and not yet shipped; said whatever
    // this run happened to lose.
    let takeovers: Vec<&Phase> = phases
        .iter()
        .filter(|p| {
            matches!(
                p.kind,
                FaultKind::NodeLoss | FaultKind::ZoneLoss | FaultKind::Partition
            ) && p.report.skipped.is_none()
        })
        .collect();
    if facts.durability.as_deref() == Some("async") && !takeovers.is_empty() {
        let lost_in: u64 = takeovers
            .iter()
            .map(|p| p.report.figures.lost_acknowledged_writes)
            .sum();
        let window = takeovers
            .iter()
            .filter_map(|p| {
                p.report
                    .unconfirmed_changes
                    .map(|c| (p.report.name.as_str(), c))
            })
            .map(|(name, c)| format!("{c} before {name}"))
            .collect::<Vec<_>>();
        lines.push(ScoreLine {
            passed: None,
            text: format!(
                "durability = \"async\": the primary answers a write before any standby has \
                 it, so a takeover loses what was not shipped yet: {lost_in} acknowledged \
                 writes were lost in {} takeover{} here{}",
                takeovers.len(),
                if takeovers.len() == 1 { "" } else { "s" },
                if window.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (changes no standby in another zone had yet: {})",
                        window.join(", ")
                    )
                }
            ),
            advice: Some(
                "set durability = \"sync\" in [cluster] so a write is answered only once a \
                 standby in another zone has it (each write then waits for it)"
                    .into(),
            ),
        });
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
