//! The checkers: figures of a window of the run computed from the recorded outcomes
//! (availability, latency percentiles from an HDR histogram, outage), the capacity found by
//! the spike, the set checker for write probes, and the scorecard's words and advice.
//! Pure functions over plain values: no I/O, no clock.

use std::collections::BTreeSet;
use std::time::Duration;

use hdrhistogram::Histogram;
use lifeboat_core::manifest::Targets;

use crate::faults::FaultKind;
use crate::load::{Kind, Outcome};
use crate::report::{FaultReport, PhaseReport, ScoreLine, TimeSeries};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Whether a visitor would call this answer available: 2xx/3xx within the response time.
pub fn good(o: &Outcome, targets: &Targets) -> bool {
    o.ok() && o.latency <= targets.response_time
}

fn visitors(outcomes: &[Outcome]) -> impl Iterator<Item = &Outcome> {
    outcomes.iter().filter(|o| o.kind != Kind::Attack)
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 5 min, 3 significant digits.
    Histogram::new_with_bounds(1, 300_000_000, 3).expect("valid histogram bounds")
}

/// The figures of the visitors' requests meant to leave in `[start, end)`.
pub fn phase_figures(
    outcomes: &[Outcome],
    start: Duration,
    end: Duration,
    targets: &Targets,
) -> PhaseReport {
    let mut hist = histogram();
    let (mut requests, mut errors) = (0u64, 0u64);
    let (mut first_bad, mut last_bad): (Option<Duration>, Option<Duration>) = (None, None);
    for o in visitors(outcomes).filter(|o| o.intended >= start && o.intended < end) {
        requests += 1;
        let _ = hist.record((o.latency.as_micros() as u64).max(1));
        if !good(o, targets) {
            errors += 1;
            // From the first failed request's send time to the end of the last one: how long
            // visitors met trouble (a hung instance makes them wait, not fail at once).
            let ended = o.intended + o.latency.min(targets.response_time);
            first_bad = Some(first_bad.map_or(o.intended, |f| f.min(o.intended)));
            last_bad = Some(last_bad.map_or(ended, |l| l.max(ended)));
        }
    }
    let span = end.saturating_sub(start).as_secs_f64().max(0.001);
    let q = |q: f64| {
        if requests == 0 {
            0.0
        } else {
            hist.value_at_quantile(q) as f64 / 1000.0
        }
    };
    PhaseReport {
        start_s: start.as_secs_f64(),
        end_s: end.as_secs_f64(),
        requests,
        errors,
        availability: if requests == 0 {
            1.0
        } else {
            (requests - errors) as f64 / requests as f64
        },
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        max_ms: if requests == 0 {
            0.0
        } else {
            hist.max() as f64 / 1000.0
        },
        throughput_rps: (requests - errors) as f64 / span,
        outage_s: match (first_bad, last_bad) {
            (Some(f), Some(l)) => (l - f).as_secs_f64().max(0.001),
            _ => 0.0,
        },
        lost_acknowledged_writes: 0,
    }
}

/// Per-bucket throughput, errors and p99 of the visitors' requests over `[0, end)`.
pub fn timeseries(
    outcomes: &[Outcome],
    end: Duration,
    bucket: Duration,
    targets: &Targets,
) -> TimeSeries {
    let n = (end.as_secs_f64() / bucket.as_secs_f64()).ceil() as usize;
    let mut hists: Vec<Histogram<u64>> = (0..n).map(|_| histogram()).collect();
    let mut ok = vec![0u64; n];
    let mut bad = vec![0u64; n];
    for o in visitors(outcomes) {
        let i = (o.intended.as_secs_f64() / bucket.as_secs_f64()) as usize;
        if i >= n {
            continue;
        }
        let _ = hists[i].record((o.latency.as_micros() as u64).max(1));
        if good(o, targets) {
            ok[i] += 1;
        } else {
            bad[i] += 1;
        }
    }
    let per_s = 1.0 / bucket.as_secs_f64();
    TimeSeries {
        bucket_s: bucket.as_secs_f64(),
        t: (0..n).map(|i| i as f64 * bucket.as_secs_f64()).collect(),
        ok_rps: ok.iter().map(|&c| c as f64 * per_s).collect(),
        error_rps: bad.iter().map(|&c| c as f64 * per_s).collect(),
        p99_ms: hists
            .iter()
            .map(|h| {
                if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(0.99) as f64 / 1000.0
                }
            })
            .collect(),
        sent_rps: ok
            .iter()
            .zip(&bad)
            .map(|(a, b)| (a + b) as f64 * per_s)
            .collect(),
    }
}

/// The capacity the spike's ramp found: the good answers per second of the busiest
/// one-second window before the first window that broke the targets (more than 1% failed or
/// p99 above target). `true` with it when no window broke (the site has more).
pub fn capacity(
    outcomes: &[Outcome],
    start: Duration,
    end: Duration,
    targets: &Targets,
) -> (f64, bool) {
    let mut best = 0.0f64;
    let mut t = start;
    while t + Duration::from_secs(1) <= end {
        let f = phase_figures(outcomes, t, t + Duration::from_secs(1), targets);
        let broke = f.requests > 0 && (f.availability < 0.99 || f.p99_ms > ms(targets.p99));
        if broke {
            return (best, false);
        }
        best = best.max(f.throughput_rps);
        t += Duration::from_millis(500);
    }
    (best, true)
}

/// A window of the run in which writes were given up on purpose (a rewind's).
#[derive(Debug, Clone, Copy)]
pub struct Discarded {
    /// Writes acknowledged from here on may be gone...
    pub from: Duration,
    /// ...up to the moment the rewind's restored copy served.
    pub until: Duration,
}

/// The set checker: which acknowledged writes meant to leave before `by` are missing from
/// `found`, leaving out those a rewind discarded on purpose and those `already` counted.
pub fn lost_writes(
    outcomes: &[Outcome],
    found: &BTreeSet<u64>,
    by: Duration,
    discarded: &[Discarded],
    already: &BTreeSet<u64>,
) -> BTreeSet<u64> {
    outcomes
        .iter()
        .filter(|o| o.kind == Kind::Write && o.ok() && o.intended + o.latency <= by)
        .filter_map(|o| o.probe.map(|p| (p, o)))
        .filter(|(_, o)| {
            !discarded
                .iter()
                .any(|d| o.intended + o.latency > d.from && o.intended < d.until)
        })
        .map(|(p, _)| p)
        .filter(|p| !found.contains(p) && !already.contains(p))
        .collect()
}

/// What the scorecard needs to know of the site to give advice.
#[derive(Debug, Clone)]
pub struct SiteFacts {
    pub process: String,
    pub replicas: u32,
    pub health_declared: bool,
    pub health_path: String,
    pub integrity_check_interval: Option<Duration>,
    /// On a cluster: `sync` or `async`, and the primary's lease.
    pub durability: Option<String>,
    pub lease_ttl: Option<Duration>,
}

fn pct(x: f64) -> String {
    let p = x * 100.0;
    if p >= 99.95 || p == 0.0 || p.fract() == 0.0 {
        format!("{p:.0}%")
    } else if p > 99.0 {
        format!("{p:.2}%")
    } else {
        format!("{p:.1}%")
    }
}

/// The scorecard line of one fault: pass or fail in plain words, and what to change.
pub fn fault_line(
    f: &FaultReport,
    kind: FaultKind,
    targets: &Targets,
    site: &SiteFacts,
) -> ScoreLine {
    if let Some(why) = &f.skipped {
        return ScoreLine {
            passed: None,
            text: format!("{}: not run ({why})", f.title),
            advice: None,
        };
    }
    let lost = f.figures.lost_acknowledged_writes;
    let dropped = 1.0 - f.figures.availability;
    let mut text = match kind {
        FaultKind::UsageSpike => format!(
            "{}: {} of requests answered in time, p99 {:.0} ms",
            f.title,
            pct(f.figures.availability),
            f.figures.p99_ms
        ),
        _ if kind.rewinds() => format!(
            "{}: rewound to just before it in {:.1} s, {:.1} s of history given up{}",
            f.title,
            f.rto_s.unwrap_or(0.0),
            f.rpo_s.unwrap_or(0.0),
            match (kind, f.removed_by_rewind, f.upload_restored) {
                (FaultKind::Virus, Some(true), _) => ", the planted files are gone",
                (FaultKind::Virus, _, _) => ", the planted files are STILL THERE",
                (_, _, Some(true)) => ", the truncated upload is back byte for byte",
                (_, _, Some(false)) => ", the truncated upload was NOT restored",
                _ => "",
            }
        ),
        FaultKind::NodeLoss | FaultKind::ZoneLoss | FaultKind::Partition => format!(
            "{}: {} (zone {}) was lost; {} served after {:.1} s, {} of requests answered in \
             time; {}",
            f.title,
            f.node.as_deref().unwrap_or("?"),
            f.zone.as_deref().unwrap_or("?"),
            f.new_primary.as_deref().unwrap_or("no other node"),
            f.recovered_after_s.unwrap_or(f64::NAN),
            pct(f.figures.availability),
            match (f.rejoined_as_standby, f.rejoined_after_s) {
                (Some(true), Some(after)) =>
                    format!("back, it followed as a standby after {after:.1} s"),
                _ => "back, it did NOT follow as a standby".into(),
            }
        ),
        FaultKind::StandbyLoss => format!(
            "{}: standby {} (zone {}) was lost; {}, {} of requests answered in time; {}; {}",
            f.title,
            f.node.as_deref().unwrap_or("?"),
            f.zone.as_deref().unwrap_or("?"),
            if f.primary_unchanged == Some(true) {
                "the primary served on in the same term"
            } else {
                "the primary CHANGED"
            },
            pct(f.figures.availability),
            writes_while(f),
            match (f.rejoined_as_standby, f.rejoined_after_s) {
                (Some(true), Some(after)) =>
                    format!("back, it followed as a standby after {after:.1} s"),
                _ => "back, it did NOT follow as a standby".into(),
            }
        ),
        FaultKind::SlowLink => format!(
            "{}: {} of requests answered in time, p99 {:.0} ms; {} packets dropped, {} held \
             back over the rate; {}; {}",
            f.title,
            pct(f.figures.availability),
            f.figures.p99_ms,
            f.link_dropped_packets.unwrap_or(0),
            f.link_overlimits.unwrap_or(0),
            writes_while(f),
            match (f.primary_unchanged, &f.new_primary) {
                (Some(true), _) => "the same node led throughout, in the same term".to_string(),
                (_, Some(new)) => format!("the primary lost its lease and {new} took over"),
                _ => "no node led and served after it".to_string(),
            }
        ),
        FaultKind::EtcdMemberLoss => format!(
            "{}: {} of requests answered in time; {}",
            f.title,
            pct(f.figures.availability),
            if f.primary_unchanged == Some(true) {
                "the same node led throughout, in the same term"
            } else {
                "the primary CHANGED"
            }
        ),
        _ if kind.takes_all_down() => format!(
            "{}: serving again after {:.1} s, {} of requests answered in time",
            f.title,
            f.recovered_after_s.unwrap_or(f64::NAN),
            pct(f.figures.availability)
        ),
        FaultKind::DiskFull if f.figures.errors == 0 => format!(
            "{}: no request failed, writes included (the database's files still had room)",
            f.title
        ),
        FaultKind::DiskFull => format!(
            "{}: {} of reads answered in time, {} of all requests; {}",
            f.title,
            pct(f.read_availability.unwrap_or(0.0)),
            pct(f.figures.availability),
            match f.recovered_after_s {
                Some(r) => format!("writing again {r:.1} s after it filled"),
                None => "writes did not come back".into(),
            }
        ),
        FaultKind::SlowDisk => format!(
            "{}: {} of requests answered in time, p99 {:.0} ms; an fsync'd write took {} \
             instead of {}",
            f.title,
            pct(f.figures.availability),
            f.figures.p99_ms,
            ms_or_unknown(f.fsync_ms_during),
            ms_or_unknown(f.fsync_ms_before)
        ),
        FaultKind::VaultDestinationDown => format!(
            "{} ({}): {} of requests answered in time; {}; once back it caught up on {} objects \
             in {:.1} s",
            f.title,
            match f.destination.as_deref() {
                Some("s3") => "the sandbox's S3 server killed",
                _ => "a local folder",
            },
            pct(f.figures.availability),
            match f.detected_after_s {
                Some(after) => format!("Lifeboat reported it down after {after:.1} s"),
                None => "Lifeboat did not report it down while it was (its S3 client kept \
                         retrying)"
                    .into(),
            },
            f.vault_backlog_objects.unwrap_or(0),
            f.vault_catch_up_s.unwrap_or(f64::NAN)
        ),
        _ if f.figures.errors == 0 => format!("{}: no request failed", f.title),
        _ => format!(
            "{}: {} of requests failed {}",
            f.title,
            pct(dropped),
            if f.figures.outage_s < 0.1 {
                "at once".to_string()
            } else {
                format!("over {:.1} s", f.figures.outage_s)
            }
        ),
    };
    if lost > 0 {
        text.push_str(&format!("; {lost} acknowledged writes LOST"));
    }
    let advice = if !f.passed {
        Some(advise(f, kind, targets, site))
    } else {
        None
    };
    ScoreLine {
        passed: Some(f.passed),
        text,
        advice,
    }
}

/// What the writes sent while a standby was down or the link slow met, in words.
fn writes_while(f: &FaultReport) -> String {
    match (
        f.writes_during,
        f.writes_acknowledged_during,
        f.longest_write_s,
    ) {
        (Some(0), _, _) | (None, _, _) => "no write was sent meanwhile".into(),
        (Some(n), Some(acked), Some(longest)) if acked == n && longest < 1.0 => {
            format!("all {n} writes sent meanwhile acknowledged, the longest after {longest:.1} s")
        }
        (Some(n), Some(acked), Some(longest)) if acked == n => format!(
            "writes stalled: all {n} sent meanwhile acknowledged, but one only after \
             {longest:.1} s"
        ),
        (Some(n), Some(acked), Some(longest)) => format!(
            "writes stalled: {acked} of {n} sent meanwhile acknowledged, one waited {longest:.1} s"
        ),
        (Some(n), _, _) => format!("{n} writes sent meanwhile"),
    }
}

fn advise(f: &FaultReport, kind: FaultKind, targets: &Targets, site: &SiteFacts) -> String {
    let p = &site.process;
    if !f.undone && kind.cluster_only() {
        return format!(
            "the node did not come back as it should ({}); see its lifeboat-NODE.log in the \
             sandbox (--keep)",
            f.undo_evidence
        );
    }
    if !f.undone {
        return format!(
            "the fault was not undone ({}); see the sandbox's lifeboat.log",
            f.undo_evidence
        );
    }
    if f.figures.lost_acknowledged_writes > 0 && site.durability.as_deref() == Some("async") {
        return "acknowledged writes were lost when the primary went: set durability = \"sync\" \
                in [cluster], so a write is answered only once a standby in another zone has it"
            .into();
    }
    if f.figures.lost_acknowledged_writes > 0 {
        return "acknowledged writes were lost: make the site answer only after its writes are \
                committed, and check the vault's destinations (`lifeboat status`)"
            .into();
    }
    let dropped = pct(1.0 - f.figures.availability);
    match kind {
        FaultKind::UsageSpike => format!(
            "the site keeps up with about {:.0} requests/s: raise replicas in [processes.{p}] \
             (now {}), give instances more cpu, or cache what visitors read",
            f.figures.throughput_rps, site.replicas
        ),
        FaultKind::KillInstance if site.replicas < 2 => format!(
            "with 1 replica, killing it drops {dropped} of requests for {:.1} s: set replicas = 2 \
             in [processes.{p}]",
            f.figures.outage_s
        ),
        FaultKind::KillInstance | FaultKind::KillAllInstances if !site.health_declared => format!(
            "requests kept going to a dead instance for {:.1} s: add a health check, e.g. health = \
             {{ path = \"/healthz\", interval = \"1s\" }} in [processes.{p}]",
            f.figures.outage_s
        ),
        FaultKind::HangInstance if site.replicas < 2 => format!(
            "with 1 replica, a hung instance stops the site ({dropped} of requests failed or \
             waited past {:.1} s): set replicas = 2 in [processes.{p}] and give it a health \
             check with a short timeout",
            targets.response_time.as_secs_f64()
        ),
        FaultKind::HangInstance if !site.health_declared => format!(
            "a hung instance kept getting requests ({dropped} failed or waited past {:.1} s): add \
             health = {{ path = \"/healthz\", interval = \"500ms\", timeout = \"500ms\" }} in \
             [processes.{p}]",
            targets.response_time.as_secs_f64()
        ),
        FaultKind::HangInstance => format!(
            "requests already sent to a hung instance wait until it runs again ({dropped} failed \
             or waited past {:.1} s): shorten the health check's interval and timeout of \
             [processes.{p}] (path {}) so fewer are sent to it",
            targets.response_time.as_secs_f64(),
            site.health_path
        ),
        FaultKind::SlowClients => "slow clients crowd out visitors: lower [proxy] body_timeout or \
                                   raise max_connections"
            .into(),
        FaultKind::DiskFull if !f.undone => "the site did not take writes again once there was \
             room: look at its log in the sandbox (--keep) and restart it after a full disk"
            .into(),
        FaultKind::DiskFull => format!(
            "a full disk took reads down too ({} answered in time): keep the state on a disk \
             with room to spare and an alert well before it fills",
            pct(f.read_availability.unwrap_or(0.0))
        ),
        FaultKind::SlowDisk => format!(
            "a slow disk under the state slowed the site ({dropped} of requests failed or took \
             longer than {:.1} s, p99 {:.0} ms): keep the state on a disk with low write \
             latency (a local SSD, not a busy network disk), and watch its latency",
            targets.response_time.as_secs_f64(),
            f.figures.p99_ms
        ),
        FaultKind::VaultDestinationDown if !f.undone => "the destination that was down did not \
             catch up: look at `lifeboat vault status` and the capture errors in `lifeboat events`"
            .into(),
        FaultKind::VaultDestinationDown => format!(
            "visitors felt the destination going down ({dropped} failed): capture should never \
             hold up the site; report it as a bug with the sandbox's lifeboat.log (--keep)"
        ),
        FaultKind::CredentialStuffing => format!(
            "the attack on the login path slowed the site for visitors ({dropped} failed): \
             rate-limit the login path, or make a failed login cheap"
        ),
        FaultKind::KillAllInstances | FaultKind::KillLifeboat => format!(
            "the site took {:.1} s to serve again (target {:.0} s): make the app start faster, \
             or raise [simulate] targets.rto if that is acceptable",
            f.recovered_after_s.unwrap_or(f64::NAN),
            targets.rto.as_secs_f64()
        ),
        FaultKind::Virus if f.removed_by_rewind != Some(true) => {
            "the rewind did not remove the planted files: check that the data dir is in [state] dirs".into()
        }
        FaultKind::Corruption if f.upload_restored == Some(false) => {
            "the rewind did not give the truncated upload back: check that the data dir is in \
             [state] dirs and that capture runs (`lifeboat status`)"
                .into()
        }
        FaultKind::Virus | FaultKind::Corruption => format!(
            "the rewind took {:.1} s (target {:.0} s): a smaller checkpoint_interval in [vault] \
             leaves less to replay",
            f.rto_s.unwrap_or(f64::NAN),
            targets.rto.as_secs_f64()
        ),
        FaultKind::NodeLoss | FaultKind::ZoneLoss | FaultKind::Partition => format!(
            "another node took {:.1} s to serve (target {:.0} s): a shorter [cluster] lease_ttl \
             (now {}) lets a standby take over sooner, at the cost of more false alarms on a \
             slow network",
            f.recovered_after_s.unwrap_or(f64::NAN),
            targets.rto.as_secs_f64(),
            site.lease_ttl
                .map_or("2s".into(), |d| format!("{:.0}s", d.as_secs_f64()))
        ),
        FaultKind::StandbyLoss if f.primary_unchanged != Some(true) => "losing a standby \
             changed the primary: it should not; report it as a bug with the sandbox's \
             lifeboat-NODE.log files (--keep)"
            .into(),
        FaultKind::StandbyLoss if f.etcd_leader_lost == Some(true) => format!(
            "visitors felt a standby going ({dropped} failed): its machine also held etcd's \
             leader, so the primary could not renew its lease until etcd had elected another, \
             and it cannot serve on without every other member's confirmation (the lost \
             standby's too): run etcd's members on machines of their own, or with a shorter \
             election timeout (--heartbeat-interval 50 --election-timeout 500)"
        ),
        FaultKind::StandbyLoss => format!(
            "visitors felt a standby going ({dropped} failed; {}): with durability = \"sync\" \
             a write waits for a standby in another zone, so keep at least two standbys in \
             zones other than the primary's (three nodes in three zones)",
            writes_while(f)
        ),
        FaultKind::SlowLink => format!(
            "a slow, lossy link at the primary failed {dropped} of requests (p99 {:.0} ms): \
             keep the nodes on a reliable network; everything the primary sends shares it \
             (answers, the stream to the standbys, the vault's uploads: see what it sent in \
             the evidence), with durability = \"sync\" every write crosses it to a standby, \
             and a lease_ttl (now {}) shorter than the link's stalls moves the primary",
            f.figures.p99_ms,
            site.lease_ttl
                .map_or("2s".into(), |d| format!("{:.0}s", d.as_secs_f64()))
        ),
        FaultKind::EtcdMemberLoss if f.primary_unchanged != Some(true) => "losing one etcd \
             member changed the primary: run etcd with three or five members, with --pre-vote, \
             on machines of their own"
            .into(),
        FaultKind::EtcdMemberLoss => format!(
            "visitors felt one etcd member going ({dropped} failed): a node should not need \
             every member; report it as a bug with the sandbox's logs (--keep)"
        ),
        FaultKind::KillInstance => format!(
            "killing one of {} instances dropped {dropped} of requests for {:.1} s: check the \
             health check of [processes.{p}] and that requests are safe to retry",
            site.replicas, f.figures.outage_s
        ),
    }
}

/// Whether a fault's phase held its targets.
pub fn fault_passed(f: &FaultReport, kind: FaultKind, targets: &Targets) -> bool {
    if f.skipped.is_some() {
        return true;
    }
    let writes_ok = f.figures.lost_acknowledged_writes <= targets.lost_writes;
    let rto = targets.rto.as_secs_f64();
    let held = if kind.rewinds() {
        f.rto_s.is_some_and(|r| r <= rto)
            && (kind != FaultKind::Virus || f.removed_by_rewind == Some(true))
            && f.upload_restored != Some(false)
    } else if kind == FaultKind::DiskFull {
        // Writes may be refused while the disk is full; reads must go on.
        f.read_availability.unwrap_or(0.0) >= targets.availability
    } else if kind.takes_all_down() {
        f.recovered_after_s.is_some_and(|r| r <= rto)
    } else if matches!(kind, FaultKind::EtcdMemberLoss | FaultKind::StandbyLoss) {
        f.primary_unchanged == Some(true) && f.figures.availability >= targets.availability
    } else {
        f.figures.availability >= targets.availability
    };
    f.undone && writes_ok && held
}

/// The line about corruption being noticed, for information.
pub fn detection_line(f: &FaultReport, site: &SiteFacts) -> Option<ScoreLine> {
    if f.skipped.is_some() {
        return None;
    }
    Some(match (&f.detected_by, f.detected_after_s) {
        (Some(by), Some(after)) => ScoreLine {
            passed: None,
            text: format!("the corruption was noticed after {after:.1} s ({by})"),
            advice: None,
        },
        _ => ScoreLine {
            passed: None,
            text: "the corruption was not noticed during its phase".into(),
            advice: Some(match site.integrity_check_interval {
                Some(i) => format!(
                    "Lifeboat checks the database every {} ([vault] integrity_check_interval): \
                     lower it to notice damage sooner",
                    humantime_short(i)
                ),
                None => "add a [vault] so Lifeboat checks the database".into(),
            }),
        },
    })
}

fn ms_or_unknown(ms: Option<f64>) -> String {
    ms.map_or("an unknown time".into(), |ms| format!("{ms:.1} ms"))
}

fn humantime_short(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{:.0}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(t_ms: u64, lat_ms: u64, status: u16, kind: Kind, probe: Option<u64>) -> Outcome {
        Outcome {
            intended: Duration::from_millis(t_ms),
            latency: Duration::from_millis(lat_ms),
            status,
            kind,
            probe,
        }
    }

    #[test]
    fn slow_and_failed_answers_lower_availability_and_set_the_outage() {
        let t = Targets::default();
        let outcomes = vec![
            o(0, 10, 200, Kind::Read, None),
            o(100, 3000, 200, Kind::Read, None),
            o(1100, 10, 0, Kind::Read, None),
            o(1200, 10, 200, Kind::Read, None),
            o(1300, 10, 401, Kind::Attack, None),
        ];
        let f = phase_figures(&outcomes, Duration::ZERO, Duration::from_secs(2), &t);
        assert_eq!((f.requests, f.errors), (4, 2));
        assert_eq!(f.availability, 0.5);
        // From the slow one's send (0.1 s) to when it counted as failed (0.1 + 2 s).
        assert!((f.outage_s - 2.0).abs() < 1e-9, "{}", f.outage_s);
    }

    #[test]
    fn an_acknowledged_write_missing_from_the_read_back_is_lost_unless_a_rewind_discarded_it() {
        let outcomes = vec![
            o(0, 10, 201, Kind::Write, Some(0)),
            o(100, 10, 201, Kind::Write, Some(1)),
            o(5000, 10, 201, Kind::Write, Some(2)),
            o(200, 10, 0, Kind::Write, Some(3)),
        ];
        let found = BTreeSet::from([0]);
        let d = [Discarded {
            from: Duration::from_secs(4),
            until: Duration::from_secs(6),
        }];
        let lost = lost_writes(
            &outcomes,
            &found,
            Duration::from_secs(10),
            &d,
            &BTreeSet::new(),
        );
        assert_eq!(lost, BTreeSet::from([1]));
    }

    #[test]
    fn capacity_is_the_last_window_that_held() {
        let t = Targets::default();
        let mut outcomes = Vec::new();
        for i in 0..100 {
            outcomes.push(o(i * 10, 5, 200, Kind::Read, None));
        }
        for i in 0..100 {
            outcomes.push(o(
                1000 + i * 5,
                5,
                if i % 2 == 0 { 503 } else { 200 },
                Kind::Read,
                None,
            ));
        }
        let (cap, lower_bound) = capacity(&outcomes, Duration::ZERO, Duration::from_secs(2), &t);
        assert!(!lower_bound);
        assert!((cap - 100.0).abs() < 1.0, "{cap}");
    }

    fn cluster_facts(durability: &str) -> SiteFacts {
        SiteFacts {
            process: "web".into(),
            replicas: 2,
            health_declared: true,
            health_path: "/healthz".into(),
            integrity_check_interval: None,
            durability: Some(durability.into()),
            lease_ttl: Some(Duration::from_secs(2)),
        }
    }

    fn takeover(kind: FaultKind) -> FaultReport {
        FaultReport {
            name: kind.name().into(),
            title: kind.title().into(),
            undone: true,
            recovered_after_s: Some(2.5),
            node: Some("n1".into()),
            zone: Some("z1".into()),
            new_primary: Some("n2".into()),
            rejoined_as_standby: Some(true),
            rejoined_after_s: Some(0.8),
            figures: PhaseReport {
                availability: 0.5,
                ..PhaseReport::default()
            },
            ..FaultReport::default()
        }
    }

    #[test]
    fn a_takeover_is_judged_by_its_time_and_the_old_primary_following_again() {
        let t = Targets::default();
        let facts = cluster_facts("sync");
        for kind in [
            FaultKind::NodeLoss,
            FaultKind::Partition,
            FaultKind::ZoneLoss,
        ] {
            let mut f = takeover(kind);
            // Half the phase's requests failed: a takeover is judged by its time.
            assert!(fault_passed(&f, kind, &t), "{kind:?}");
            f.passed = true;
            let line = fault_line(&f, kind, &t, &facts);
            assert!(line.text.contains("n2 served after 2.5 s"), "{}", line.text);
            assert!(line.text.contains("followed as a standby"), "{}", line.text);
            f.recovered_after_s = Some(t.rto.as_secs_f64() + 1.0);
            f.passed = fault_passed(&f, kind, &t);
            assert!(!f.passed);
            let advice = fault_line(&f, kind, &t, &facts).advice.unwrap();
            assert!(advice.contains("lease_ttl"), "{advice}");
            // Back, it must follow again.
            let mut f = takeover(kind);
            f.undone = false;
            f.rejoined_as_standby = Some(false);
            f.undo_evidence = "n1 started again; not following as a standby within 30s".into();
            assert!(!fault_passed(&f, kind, &t));
            let line = fault_line(&f, kind, &t, &facts);
            assert!(line.text.contains("did NOT follow"), "{}", line.text);
            assert!(line.advice.unwrap().contains("did not come back"));
        }
    }

    #[test]
    fn writes_lost_on_an_async_cluster_get_the_advice_to_make_it_sync() {
        let t = Targets::default();
        let mut f = takeover(FaultKind::NodeLoss);
        f.figures.lost_acknowledged_writes = 3;
        assert!(!fault_passed(&f, FaultKind::NodeLoss, &t));
        let line = fault_line(&f, FaultKind::NodeLoss, &t, &cluster_facts("async"));
        assert!(
            line.text.contains("3 acknowledged writes LOST"),
            "{}",
            line.text
        );
        assert!(line.advice.unwrap().contains("durability = \"sync\""));
    }

    #[test]
    fn losing_an_etcd_member_passes_only_when_the_same_primary_leads_on() {
        let t = Targets::default();
        let kind = FaultKind::EtcdMemberLoss;
        let mut f = FaultReport {
            undone: true,
            primary_unchanged: Some(true),
            figures: PhaseReport {
                availability: 1.0,
                ..PhaseReport::default()
            },
            ..FaultReport::default()
        };
        assert!(fault_passed(&f, kind, &t));
        f.primary_unchanged = Some(false);
        f.passed = fault_passed(&f, kind, &t);
        assert!(!f.passed);
        let line = fault_line(&f, kind, &t, &cluster_facts("sync"));
        assert!(line.text.contains("the primary CHANGED"), "{}", line.text);
        assert!(line.advice.unwrap().contains("three or five members"));
    }

    #[test]
    fn a_lost_standby_passes_only_when_the_same_primary_leads_and_it_follows_again() {
        let t = Targets::default();
        let kind = FaultKind::StandbyLoss;
        let mut f = FaultReport {
            name: kind.name().into(),
            title: kind.title().into(),
            undone: true,
            node: Some("n2".into()),
            zone: Some("z2".into()),
            primary_unchanged: Some(true),
            rejoined_as_standby: Some(true),
            rejoined_after_s: Some(0.7),
            writes_during: Some(10),
            writes_acknowledged_during: Some(10),
            longest_write_s: Some(0.02),
            figures: PhaseReport {
                availability: 1.0,
                ..PhaseReport::default()
            },
            ..FaultReport::default()
        };
        assert!(fault_passed(&f, kind, &t));
        f.passed = true;
        let line = fault_line(&f, kind, &t, &cluster_facts("sync"));
        assert!(
            line.text.contains("standby n2 (zone z2) was lost"),
            "{}",
            line.text
        );
        assert!(
            line.text.contains("served on in the same term"),
            "{}",
            line.text
        );
        assert!(line.text.contains("all 10 writes"), "{}", line.text);
        assert!(
            line.text.contains("followed as a standby after 0.7 s"),
            "{}",
            line.text
        );
        // Writes stalled with no other standby to confirm them: said, and advised on.
        f.writes_acknowledged_during = Some(0);
        f.longest_write_s = Some(5.0);
        f.figures.availability = 0.8;
        f.passed = fault_passed(&f, kind, &t);
        assert!(!f.passed);
        let line = fault_line(&f, kind, &t, &cluster_facts("sync"));
        assert!(
            line.text.contains("writes stalled: 0 of 10"),
            "{}",
            line.text
        );
        assert!(line.advice.unwrap().contains("two standbys in zones"));
        // Its machine held etcd's leader too: the advice says what that did.
        f.etcd_leader_lost = Some(true);
        let advice = fault_line(&f, kind, &t, &cluster_facts("sync"))
            .advice
            .unwrap();
        assert!(advice.contains("also held etcd's leader"), "{advice}");
        f.etcd_leader_lost = None;
        // The primary changed: a failure whatever the availability.
        f.figures.availability = 1.0;
        f.primary_unchanged = Some(false);
        f.passed = fault_passed(&f, kind, &t);
        assert!(!f.passed);
        let line = fault_line(&f, kind, &t, &cluster_facts("sync"));
        assert!(line.text.contains("the primary CHANGED"), "{}", line.text);
    }

    #[test]
    fn a_slow_link_is_judged_by_availability_and_says_what_it_dropped() {
        let t = Targets::default();
        let kind = FaultKind::SlowLink;
        let mut f = FaultReport {
            name: kind.name().into(),
            title: kind.title().into(),
            undone: true,
            primary_unchanged: Some(false),
            new_primary: Some("n3".into()),
            link_dropped_packets: Some(88),
            link_overlimits: Some(900),
            figures: PhaseReport {
                availability: 0.995,
                p99_ms: 1012.0,
                ..PhaseReport::default()
            },
            ..FaultReport::default()
        };
        // A takeover during it is reported, not failed: visitors are what counts.
        assert!(fault_passed(&f, kind, &t));
        f.passed = true;
        let line = fault_line(&f, kind, &t, &cluster_facts("sync"));
        assert!(line.text.contains("88 packets dropped"), "{}", line.text);
        assert!(line.text.contains("n3 took over"), "{}", line.text);
        f.figures.availability = 0.5;
        f.passed = fault_passed(&f, kind, &t);
        assert!(!f.passed);
        let advice = fault_line(&f, kind, &t, &cluster_facts("sync"))
            .advice
            .unwrap();
        assert!(advice.contains("lease_ttl"), "{advice}");
    }
}
