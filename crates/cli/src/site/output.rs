//! Everything the site commands print: aligned tables for people, JSON with `--json`.

use std::net::SocketAddr;

use lifeboat_control::api::{MaintenanceReport, ScaleChange, StatusReport};
use lifeboat_core::Event;
use lifeboat_core::manifest::format_size;

pub(super) fn up(site: &str, proxy: SocketAddr, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({ "site": site, "proxy": format!("http://{proxy}") })
        );
    } else {
        println!("{site} is up: front door at http://{proxy}");
        println!("Ctrl-C or `lifeboat down` stops it; `lifeboat status` shows the instances.");
    }
}

pub(super) fn status(report: &StatusReport, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("status serializes")
        );
        return;
    }
    let maintenance = if report.maintenance { "ON" } else { "off" };
    println!(
        "site {}   front door {}   maintenance {maintenance}",
        report.site, report.proxy
    );
    if let (Some(node), Some(role)) = (&report.node, &report.role) {
        use lifeboat_control::node::NodeRole;
        let role = match role {
            NodeRole::Joining => "joining".to_string(),
            NodeRole::Primary { term } => format!("primary (term {term})"),
            NodeRole::Standby { leader, term } => {
                format!("standby, forwarding to {leader} (term {term})")
            }
            NodeRole::Fenced { term, why } => format!("fenced in term {term}: {why}"),
            NodeRole::HandingOver { term, to } => {
                format!("handing over to {to} (term {term}): requests are held")
            }
        };
        println!("node {node}: {role}");
        if let Some(why) = &report.election {
            println!("  no primary; this node waits: {why}");
        }
        if let Some(r) = &report.replica {
            let detail = r
                .detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            let idle = r
                .idle_seconds
                .map(|s| format!(", last change applied {s:.1}s ago"))
                .unwrap_or_default();
            println!(
                "  copy of the state: {}{detail}, {}, applied {}/{} ({} batches, {} bytes{idle}), {} restores from the vault",
                r.state,
                if r.ready { "whole" } else { "not whole yet" },
                r.applied.0,
                r.applied.1,
                r.batches_applied,
                r.bytes_applied,
                r.resyncs
            );
            if let Some(e) = &r.last_error {
                println!("  copy of the state: last error: {e}");
            }
        }
        if !report.nodes.is_empty() {
            let mut rows = vec![
                [
                    "NODE",
                    "ZONE",
                    "ROLE",
                    "TERM",
                    "APPLIED",
                    "FRONT DOOR",
                    "BEHIND",
                    "HEALTH",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for n in &report.nodes {
                rows.push(vec![
                    n.name.clone(),
                    n.zone.clone(),
                    n.role.clone(),
                    n.term.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                    format!("{}/{}", n.applied.0, n.applied.1),
                    n.front_door.clone(),
                    match &n.behind {
                        None => "-".into(),
                        Some(b) if !b.connected => "not connected".into(),
                        Some(b) if b.changes == 0 => "0".into(),
                        Some(b) => format!(
                            "{} changes, {} bytes, {:.1}s",
                            b.changes, b.bytes, b.seconds
                        ),
                    },
                    n.health.clone().unwrap_or_else(|| "ok".into()),
                ]);
            }
            print_table(&rows);
        }
        if let Some(w) = &report.loss_window {
            match &w.best_standby {
                Some(best) if w.changes == 0 => println!(
                    "durability async: {best} (another zone) holds everything; losing this node now loses nothing acknowledged"
                ),
                Some(best) => println!(
                    "durability async: losing this node now loses {} changes ({} bytes, the oldest {:.1}s old) that {best} (another zone) does not have yet",
                    w.changes, w.bytes, w.seconds
                ),
                None => println!(
                    "durability async: no standby in another zone is connected; losing this node now loses every change since the last segment in the vault"
                ),
            }
        }
    }
    if report.state != lifeboat_control::SITE_STATE && !report.state.is_empty() {
        println!(
            "live state: {} (a rewound copy; `lifeboat rewind --undo` goes back)",
            report.state
        );
        println!(
            "  the site dir's own data is the state kept for undo: run commands against the \
             live data with `lifeboat exec -- CMD`"
        );
    }
    if let Some(c) = &report.capture {
        if c.running {
            let checkpoint = c
                .last_checkpoint
                .as_ref()
                .map(|k| format!(", last checkpoint {}", crate::timeline::rfc3339(k.time)))
                .unwrap_or_default();
            println!(
                "capture: running, last segment {}, lag {} ms{checkpoint}",
                c.last_segment_seq
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "none".into()),
                c.lag_ms
            );
        } else {
            println!(
                "capture: not running: {}",
                c.waiting.as_deref().unwrap_or("unknown")
            );
        }
        if let Some(e) = &c.last_error {
            println!("  last error: {e}");
        }
        for d in &c.destinations {
            let reach = if d.reachable { "ok" } else { "UNREACHABLE" };
            println!(
                "  vault {}: {reach}, {} objects ({} bytes) behind",
                d.url, d.objects_behind, d.bytes_behind
            );
        }
    }
    for (process, desired) in &report.desired {
        let of_process = report.instances.iter().filter(|i| &i.process == process);
        let healthy = of_process
            .filter(|i| i.state == lifeboat_core::status::InstanceState::Healthy)
            .count();
        println!("{process}: {healthy} of {desired} healthy");
        let limits = report
            .instances
            .iter()
            .find(|i| &i.process == process)
            .and_then(|i| i.limits.as_ref());
        if let Some(limits) = limits {
            println!("  {}", limits_line(limits));
        }
    }
    let mut rows = vec![
        [
            "INSTANCE",
            "PROCESS",
            "PID",
            "PORT",
            "STATE",
            "RESTARTS",
            "LAST EXIT",
            "MEMORY",
            "PIDS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in &report.instances {
        let mut state = i.state.as_str().to_string();
        if let Some(ms) = i.next_restart_in_ms {
            state.push_str(&format!(
                " (restart in {})",
                humantime::format_duration(std::time::Duration::from_millis(ms / 100 * 100))
            ));
        }
        rows.push(vec![
            i.id.clone(),
            i.process.clone(),
            i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            i.port.to_string(),
            state,
            i.restarts.to_string(),
            i.last_exit.clone().unwrap_or_else(|| "-".into()),
            usage_of(
                i.usage.as_ref().and_then(|u| u.memory_bytes),
                i.limits.as_ref().and_then(|l| l.memory_bytes),
                format_size,
            ),
            usage_of(
                i.usage.as_ref().and_then(|u| u.pids),
                i.limits.as_ref().and_then(|l| l.pids),
                |n| n.to_string(),
            ),
        ]);
    }
    print_table(&rows);
    for i in &report.instances {
        if let Some(error) = &i.last_error {
            println!("{}: {error}", i.id);
        }
        if let Some(u) = i.usage.as_ref().filter(|u| u.oom_kills > 0) {
            let limit = i.limits.as_ref().and_then(|l| l.memory_bytes);
            let killed = match u.oom_kills {
                1 => "1 process".to_string(),
                n => format!("{n} processes"),
            };
            println!(
                "{}: over its memory limit{}, the kernel killed {killed} of it (`lifeboat logs {}` says when)",
                i.id,
                limit
                    .map(|b| format!(" of {}", format_size(b)))
                    .unwrap_or_default(),
                i.id
            );
        }
        let unhealthy = i.state != lifeboat_core::status::InstanceState::Healthy;
        if let Some(check) = i.health_check.as_ref().filter(|_| unhealthy) {
            println!("{}: last health check: {check}", i.id);
        }
    }
    if let Some(p) = &report.isolation {
        let mut held = vec![format!("runs as {}", p.user)];
        if p.private_mounts {
            held.push("Lifeboat's files hidden (private mounts)".into());
        }
        if p.landlock {
            held.push("Landlock".into());
        }
        held.push("clean environment".into());
        println!("isolation: {}", held.join(", "));
        for missing in &p.missing {
            println!("  missing: {missing}");
        }
    }
    for warning in &report.warnings {
        println!("warning: {warning}");
    }
}

/// A process's limits in one line: `limits per instance: memory 512MiB, cpu 1.5, pids 200`.
fn limits_line(limits: &lifeboat_control::api::LimitsReport) -> String {
    let memory = limits
        .memory_bytes
        .map_or_else(|| "no limit".to_string(), format_size);
    let cpu = limits
        .cpu
        .map_or_else(|| "no limit".to_string(), |c| c.to_string());
    let pids = limits
        .pids
        .map_or_else(|| "no limit".to_string(), |p| p.to_string());
    let enforced = if limits.enforced {
        ""
    } else {
        " (not enforced, see the warning below)"
    };
    format!("limits per instance: memory {memory}, cpu {cpu}, pids {pids}{enforced}")
}

/// `USED/LIMIT`, `USED` without a limit, `-` when unknown (not running, no cgroup).
fn usage_of<T: Copy>(used: Option<T>, limit: Option<T>, show: impl Fn(T) -> String) -> String {
    match (used, limit) {
        (Some(u), Some(l)) => format!("{}/{}", show(u), show(l)),
        (Some(u), None) => show(u),
        (None, _) => "-".to_string(),
    }
}

fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

pub(super) fn switchover(report: &lifeboat_control::node::SwitchoverReport, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("report serializes")
        );
        return;
    }
    println!(
        "{} is the primary now (term {}), taking over from {} (term {}); requests were held for {} ms, none failed",
        report.to, report.new_term, report.from, report.old_term, report.held_ms
    );
}

pub(super) fn maintenance(report: &MaintenanceReport, proxy: &str, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("report serializes")
        );
        return;
    }
    if !report.on {
        println!("maintenance is off: visitors get the real site");
        return;
    }
    println!(
        "maintenance is on: visitors get a 503 page saying {:?}",
        report.message
    );
    if let Some(token) = &report.bypass_token {
        println!("to see the real site yourself, send the header or cookie:");
        println!("  X-Lifeboat-Bypass: {token}");
        println!("  Cookie: lifeboat_bypass={token}");
        println!("  e.g. curl -H 'X-Lifeboat-Bypass: {token}' {proxy}/");
    }
    for ip in &report.allow {
        println!("requests from {ip} get the real site");
    }
}

pub(super) fn scale(changes: &[ScaleChange], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(changes).expect("changes serialize")
        );
        return;
    }
    for c in changes {
        if c.from == c.to {
            println!("{} stays at {}", c.process, c.to);
        } else {
            println!("{}: {} -> {} instances", c.process, c.from, c.to);
        }
    }
}

/// Prints events; with `lines` (follow mode) JSON is one event per line.
pub(super) fn events(events: &[Event], json: bool, lines: bool) {
    if json && !lines {
        println!(
            "{}",
            serde_json::to_string_pretty(events).expect("events serialize")
        );
        return;
    }
    for e in events {
        if json {
            println!("{}", serde_json::to_string(e).expect("events serialize"));
        } else {
            let format = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            let at = e.at.format(&format).unwrap_or_default();
            println!("{at}  {}", e.what.describe());
        }
    }
}
