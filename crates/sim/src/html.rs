//! `report.html`: one self-contained page (no script, no outside resource) with the
//! scorecard, inline SVG plots of throughput, latency and errors over time with each fault's
//! window shaded, the faults' figures, and the events the sandbox's Lifeboat recorded.
//! Every text that comes from the site (events, paths, names) is HTML-escaped.

use std::fmt::Write;

use crate::report::{ClusterReport, NodeLine, Report, TimeSeries};

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}table{border-collapse:collapse;width:100%}\
td,th{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;font-size:.9em;vertical-align:top}\
.pass{color:#176f2c;font-weight:bold}.fail{color:#b3261e;font-weight:bold}.info{color:#555}\
.advice{color:#555;font-size:.9em}.verdict{font-size:1.3em;padding:.5em;border-radius:4px}\
.verdict.pass{background:#e6f4ea}.verdict.fail{background:#fce8e6}svg{background:#fafafa;border:1px solid #eee}\
.alert{color:#b3261e}";

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut h = String::new();
    let _ = writeln!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>lifeboat simulate: {}</title>\
         <style>{STYLE}</style></head><body>\n<h1>lifeboat simulate: {}</h1>",
        escape(&r.site),
        escape(&r.site)
    );
    let _ = writeln!(
        h,
        "<p class=\"verdict {}\">{}</p>\n<p>Started {} &middot; {:.0} s{} &middot; the site as of {} &middot; \
         availability {:.2}% of {} requests &middot; capacity {}{:.0} requests/s &middot; \
         {} acknowledged writes lost</p>",
        if r.passed { "pass" } else { "fail" },
        if r.passed {
            "Every target held."
        } else {
            "Some targets did not hold."
        },
        escape(&r.started_at),
        r.duration_s,
        if r.quick { " (quick)" } else { "" },
        escape(&r.restored_time),
        r.availability * 100.0,
        r.requests,
        if r.capacity_is_lower_bound {
            "at least "
        } else {
            "about "
        },
        r.capacity_rps,
        r.lost_acknowledged_writes
    );
    let _ = writeln!(
        h,
        "<p>The sandbox: {} &middot; its vault's second destination: {}</p>",
        escape(&r.sandbox.network),
        if r.sandbox.second_destination == "s3" {
            "its own S3 server (s3s-fs)"
        } else {
            "a local folder"
        }
    );
    h.push_str("<h2>Scorecard</h2>\n<table>\n");
    for l in &r.scorecard {
        let (class, word) = match l.passed {
            Some(true) => ("pass", "pass"),
            Some(false) => ("fail", "FAIL"),
            None => ("info", "note"),
        };
        let _ = write!(
            h,
            "<tr><td class=\"{class}\">{word}</td><td>{}",
            escape(&l.text)
        );
        if let Some(a) = &l.advice {
            let _ = write!(h, "<div class=\"advice\">&rarr; {}</div>", escape(a));
        }
        h.push_str("</td></tr>\n");
    }
    h.push_str("</table>\n<h2>Over time</h2>\n");
    let windows: Vec<(f64, f64, String)> = r
        .faults
        .iter()
        .filter(|f| f.skipped.is_none())
        .map(|f| {
            (
                f.injected_at_s,
                f.undone_at_s.max(f.injected_at_s + 0.1),
                f.name.clone(),
            )
        })
        .collect();
    let ts = &r.timeseries;
    h.push_str(&plot(
        "Good answers per second",
        ts,
        &ts.ok_rps,
        "#1a73e8",
        &windows,
    ));
    h.push_str(&plot(
        "Latency p99 (ms)",
        ts,
        &ts.p99_ms,
        "#e37400",
        &windows,
    ));
    h.push_str(&plot(
        "Failed or too slow answers per second",
        ts,
        &ts.error_rps,
        "#b3261e",
        &windows,
    ));
    h.push_str(
        "<h2>Faults</h2>\n<table><tr><th>fault</th><th>result</th><th>requests</th><th>availability</th>\
         <th>p50 / p99 ms</th><th>lost writes</th><th>what happened</th></tr>\n",
    );
    let _ = writeln!(
        h,
        "<tr><td>baseline</td><td></td><td>{}</td><td>{:.2}%</td><td>{:.1} / {:.1}</td><td>{}</td><td></td></tr>",
        r.baseline.requests,
        r.baseline.availability * 100.0,
        r.baseline.p50_ms,
        r.baseline.p99_ms,
        r.baseline.lost_acknowledged_writes
    );
    for f in &r.faults {
        let (class, word) = match (&f.skipped, f.passed) {
            (Some(_), _) => ("info", "not run"),
            (None, true) => ("pass", "pass"),
            (None, false) => ("fail", "FAIL"),
        };
        let mut what = escape(f.skipped.as_deref().unwrap_or(&f.evidence));
        if f.skipped.is_none() && !f.undo_evidence.is_empty() {
            let _ = write!(what, "; undone: {}", escape(&f.undo_evidence));
        }
        for (label, v) in [
            ("recovered after", f.recovered_after_s),
            ("RTO", f.rto_s),
            ("RPO", f.rpo_s),
            ("noticed after", f.detected_after_s),
        ] {
            if let Some(v) = v {
                let _ = write!(what, "; {label} {v:.1} s");
            }
        }
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"{class}\">{word}</td><td>{}</td><td>{:.2}%</td><td>{:.1} / {:.1}</td>\
             <td>{}</td><td>{what}</td></tr>",
            escape(&f.title),
            f.figures.requests,
            f.figures.availability * 100.0,
            f.figures.p50_ms,
            f.figures.p99_ms,
            f.figures.lost_acknowledged_writes
        );
    }
    h.push_str("</table>\n");
    if let Some(c) = &r.sandbox.cluster {
        h.push_str(&nodes_table(r, c));
    }
    h.push_str("<h2>What the sandbox's Lifeboat recorded</h2>\n<table>\n");
    for e in &r.events {
        let node = e
            .node
            .as_deref()
            .map(|n| format!("<td>{}</td>", escape(n)))
            .unwrap_or_default();
        let _ = writeln!(
            h,
            "<tr><td>{:+.1} s</td>{node}<td{}>{}</td></tr>",
            e.t_s,
            if e.alert { " class=\"alert\"" } else { "" },
            escape(&e.text)
        );
    }
    h.push_str("</table>\n</body></html>\n");
    h
}

/// The cluster's nodes: where each ran, its role when the run started and when it ended,
/// and what each fault did to it.
fn nodes_table(r: &Report, c: &ClusterReport) -> String {
    let mut h = String::new();
    let _ = writeln!(
        h,
        "<h2>The cluster's nodes</h2>\n<p>{} &middot; durability {} &middot; LAN {} (services \
         host {})</p>\n<table><tr><th>node</th><th>zone</th><th>host</th><th>role at the start\
         </th><th>role at the end</th><th>what the faults did to it</th></tr>",
        escape(&c.topology),
        escape(&c.durability),
        escape(&c.bridge),
        escape(&c.services_host)
    );
    for n in &c.nodes {
        let did = node_history(r, n);
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{} ({}){}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&n.name),
            escape(&n.zone),
            escape(&n.host),
            escape(&n.address),
            if n.etcd_member { ", etcd member" } else { "" },
            escape(&n.role_at_start),
            escape(&n.role_at_end),
            if did.is_empty() {
                "nothing".to_string()
            } else {
                did.iter()
                    .map(|d| escape(d))
                    .collect::<Vec<_>>()
                    .join("<br>")
            }
        );
    }
    h.push_str("</table>\n");
    h
}

/// What each cluster fault that ran did to node `n`, in order.
fn node_history(r: &Report, n: &NodeLine) -> Vec<String> {
    let mut did = Vec::new();
    for f in r.faults.iter().filter(|f| f.skipped.is_none()) {
        let hit = f.node.as_deref() == Some(n.name.as_str());
        let back = match (f.rejoined_as_standby, f.rejoined_after_s) {
            (Some(true), Some(s)) => format!(", back as a standby after {s:.1} s"),
            (Some(false), _) => ", NOT back as a standby".to_string(),
            _ => String::new(),
        };
        let what = match f.name.as_str() {
            "node-loss" if hit => Some(format!("its machine died as the primary{back}")),
            "partition" if hit => Some(format!(
                "cut off the LAN as the primary{}{back}",
                match f.old_primary_fenced {
                    Some(true) => ", stopped leading (fenced)",
                    Some(false) => ", still said it led",
                    None => "",
                }
            )),
            "zone-loss" if f.zone.as_deref() == Some(n.zone.as_str()) => Some(format!(
                "its zone died{}{back}",
                if hit { " (it led)" } else { "" }
            )),
            "etcd-member-loss" if hit => Some(format!(
                "its etcd member killed; {}",
                if f.primary_unchanged == Some(true) {
                    "it led on in the same term"
                } else {
                    "it did NOT lead on"
                }
            )),
            "standby-loss" if hit => Some(format!("its machine died as a standby{back}")),
            "slow-link" if hit => Some(format!(
                "its link slow and lossy as the primary ({} packets dropped); {}{back}",
                f.link_dropped_packets.unwrap_or(0),
                if f.primary_unchanged == Some(true) {
                    "it led on in the same term"
                } else {
                    "it lost the lead"
                }
            )),
            _ => None,
        };
        if let Some(what) = what {
            did.push(format!("{}: {what}", f.name));
        }
        if f.new_primary.as_deref() == Some(n.name.as_str()) {
            did.push(format!(
                "{}: took over{}",
                f.name,
                f.recovered_after_s
                    .map(|s| format!(", serving after {s:.1} s"))
                    .unwrap_or_default()
            ));
        }
    }
    did
}

/// One line plot over the run with the fault windows shaded and named.
fn plot(
    title: &str,
    ts: &TimeSeries,
    values: &[f64],
    color: &str,
    windows: &[(f64, f64, String)],
) -> String {
    const W: f64 = 960.0;
    const H: f64 = 160.0;
    const PAD: f64 = 40.0;
    let t_end = ts.t.last().map_or(1.0, |t| t + ts.bucket_s).max(1.0);
    let v_max = values.iter().copied().fold(0.0f64, f64::max).max(1.0) * 1.1;
    let x = |t: f64| PAD + (t / t_end) * (W - PAD - 10.0);
    let y = |v: f64| H - 20.0 - (v / v_max) * (H - 35.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<h3>{}</h3>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\">",
        escape(title)
    );
    for (i, (from, to, name)) in windows.iter().enumerate() {
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"10\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" opacity=\"0.35\"><title>{}</title></rect>\
             <text x=\"{:.1}\" y=\"{}\" font-size=\"9\" fill=\"#555\">{}</text>",
            x(*from),
            (x(*to) - x(*from)).max(1.0),
            H - 30.0,
            if i % 2 == 0 { "#f9ab00" } else { "#fdd663" },
            escape(name),
            x(*from) + 1.0,
            20 + (i % 3) * 10,
            escape(name)
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{PAD}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#999\"/>\
         <text x=\"2\" y=\"{2:.0}\" font-size=\"10\">{3:.0}</text><text x=\"2\" y=\"{0}\" font-size=\"10\">0</text>\
         <text x=\"{1}\" y=\"{4}\" font-size=\"10\" text-anchor=\"end\">{5:.0} s</text>",
        H - 20.0,
        W - 10.0,
        y(v_max / 1.1) + 4.0,
        v_max / 1.1,
        H - 6.0,
        t_end
    );
    let points: Vec<String> =
        ts.t.iter()
            .zip(values)
            .map(|(t, v)| format!("{:.1},{:.1}", x(t + ts.bucket_s / 2.0), y(*v)))
            .collect();
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n</svg>",
        points.join(" ")
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_site_cannot_open_a_tag() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }

    #[test]
    fn a_cluster_report_gets_a_table_of_its_nodes_with_what_each_fault_did() {
        use crate::report::FaultReport;
        let node = |name: &str, zone: &str, start: &str, end: &str| NodeLine {
            name: name.into(),
            zone: zone.into(),
            host: format!("lbsh{}", &name[1..]),
            address: "10.1.2.3".into(),
            etcd_member: true,
            role_at_start: start.into(),
            role_at_end: end.into(),
        };
        let mut r = Report::default();
        r.sandbox.cluster = Some(ClusterReport {
            nodes: vec![
                node("n1", "z1", "primary (term 5)", "standby of n2"),
                node("n2", "z2", "standby of n1", "primary (term 9)"),
                node("n<3>", "z3", "standby of n1", "standby of n2"),
            ],
            durability: "sync".into(),
            ..ClusterReport::default()
        });
        r.faults = vec![
            FaultReport {
                name: "node-loss".into(),
                node: Some("n1".into()),
                zone: Some("z1".into()),
                new_primary: Some("n2".into()),
                recovered_after_s: Some(2.4),
                rejoined_as_standby: Some(true),
                rejoined_after_s: Some(3.5),
                ..FaultReport::default()
            },
            FaultReport {
                name: "standby-loss".into(),
                node: Some("n<3>".into()),
                zone: Some("z3".into()),
                rejoined_as_standby: Some(true),
                rejoined_after_s: Some(1.0),
                primary_unchanged: Some(true),
                ..FaultReport::default()
            },
            FaultReport {
                name: "slow-link".into(),
                skipped: Some("no nft".into()),
                node: Some("n2".into()),
                ..FaultReport::default()
            },
        ];
        let page = render(&r);
        assert!(page.contains("The cluster's nodes"), "{page}");
        assert!(
            page.contains("<td>primary (term 5)</td><td>standby of n2</td>"),
            "{page}"
        );
        assert!(
            page.contains(
                "node-loss: its machine died as the primary, back as a standby after 3.5 s"
            )
        );
        assert!(page.contains("node-loss: took over, serving after 2.4 s"));
        assert!(page.contains("<td>n&lt;3&gt;</td>"), "names are escaped");
        assert!(page.contains(
            "standby-loss: its machine died as a standby, back as a standby after 1.0 s"
        ));
        assert!(!page.contains("slow-link:"), "a skipped fault did nothing");
        // A site on one node has no such table.
        r.sandbox.cluster = None;
        assert!(!render(&r).contains("The cluster's nodes"));
    }
}
