//! `lifeboat simulate`: copies the site from its vault into a sandbox, breaks it on purpose one
//! fault at a time, and scores how it held. Thin: `lifeboat-sim` does the work; this draws the
//! progress, prints the scorecard and writes the report.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lifeboat_sim::{FaultKind, Options, Progress, Report};

use crate::Global;

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// The moment of the site to copy: 2026-11-27T10:15:00Z, "10 minutes ago", or latest.
    #[arg(long, value_name = "WHEN", default_value = "latest")]
    pub at: String,
    /// Short phases (under a minute in all; a site on three nodes about 70 s), for CI.
    #[arg(long)]
    pub quick: bool,
    /// Write report.json and report.html into DIR (default: a new
    /// lifeboat-simulate-SITE-TIME dir in the current one).
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Keep the sandbox (beside the site dir, `.NAME.simulate/`, and on a cluster its other
    /// nodes' `.NAME.simulate.nK/`) for inspection; the next simulation removes it.
    #[arg(long)]
    pub keep: bool,
    /// Only these faults, e.g. `--only kill-instance,virus` (the baseline always runs).
    #[arg(long, value_name = "FAULT", value_delimiter = ',', value_parser = fault_name)]
    pub only: Vec<FaultKind>,
    /// A site with [cluster]: the copy's nodes and zones, e.g. `--nodes n1=z1,n2=z2` (by
    /// default the live cluster's, or three nodes in three zones when it does not run).
    #[arg(long, value_name = "NAME=ZONE", value_delimiter = ',', value_parser = node_and_zone)]
    pub nodes: Vec<(String, String)>,
}

fn node_and_zone(s: &str) -> Result<(String, String), String> {
    let ok = |w: &str| {
        !w.is_empty()
            && w.len() <= 32
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    match s.split_once('=') {
        Some((name, zone)) if ok(name) && ok(zone) => Ok((name.to_string(), zone.to_string())),
        _ => Err(format!(
            "{s:?} is not NAME=ZONE (letters, digits, - and _, e.g. n1=eu-west-1a)"
        )),
    }
}

fn fault_name(s: &str) -> Result<FaultKind, String> {
    FaultKind::ALL
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| {
            let names: Vec<_> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            format!(
                "no fault is named {s:?}; the faults are {}",
                names.join(", ")
            )
        })
}

/// The terminal's view of a run: a spinner with the phase and the load's counts, or plain
/// lines on stderr when it is not a terminal.
struct Display {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress for Display {
    fn step(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(text.to_string()),
            None if !self.quiet => eprintln!("simulate: {text}"),
            None => {}
        }
    }

    fn phase(&self, index: usize, count: usize, name: &str, duration: Duration) {
        let text = format!(
            "phase {index}/{count}: {name} (~{:.0} s)",
            duration.as_secs_f64()
        );
        match &self.bar {
            Some(bar) => bar.set_prefix(text),
            None if !self.quiet => eprintln!("simulate: {text}"),
            None => {}
        }
    }

    fn tick(&self, requests: u64, failed: u64) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{requests} requests, {failed} failed"));
            bar.tick();
        }
    }
}

pub fn run(args: SimulateArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(simulate(args, global))
}

async fn simulate(args: SimulateArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let mut names: Vec<&str> = args.nodes.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() < args.nodes.len() || args.nodes.len() > 9 {
        anyhow::bail!("--nodes names at most 9 nodes, each once");
    }
    let opts = Options {
        site_dir: global.dir.clone(),
        at: args.at.clone(),
        quick: args.quick,
        keep: args.keep,
        lifeboat_bin: std::env::current_exe()?,
        only: args.only.clone(),
        nodes: args.nodes.clone(),
    };
    let bar = (std::io::stderr().is_terminal() && !global.json).then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {prefix} {msg}")
                .expect("a valid progress template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let display = Display {
        bar,
        quiet: global.json,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Ctrl-C or SIGTERM drop the simulation: the sandbox and every fault are undone as it drops.
    let outcome = tokio::select! {
        r = lifeboat_sim::simulate(&opts, &display) => r?,
        _ = tokio::signal::ctrl_c() => {
            if let Some(bar) = &display.bar { bar.finish_and_clear(); }
            eprintln!("simulate: interrupted; the sandbox was stopped and removed");
            return Ok(ExitCode::from(130));
        }
        _ = term.recv() => {
            if let Some(bar) = &display.bar { bar.finish_and_clear(); }
            eprintln!("simulate: stopped; the sandbox was stopped and removed");
            return Ok(ExitCode::from(143));
        }
    };
    if let Some(bar) = &display.bar {
        bar.finish_and_clear();
    }
    let report = outcome.report;
    let dir = args.report.unwrap_or_else(|| {
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_default();
        PathBuf::from(format!("lifeboat-simulate-{}-{stamp}", report.site))
    });
    lifeboat_sim::write_report(&report, &dir)?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_scorecard(&report);
        println!("report: {}", dir.join("report.html").display());
        if let Some(kept) = &outcome.kept {
            println!(
                "sandbox kept in {} (the next simulation removes it)",
                kept.display()
            );
        }
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_scorecard(r: &Report) {
    println!(
        "{}: {} in {:.0} s on a copy of the site as of {}",
        r.site,
        if r.passed {
            "every target held"
        } else {
            "some targets did not hold"
        },
        r.duration_s,
        r.restored_time
    );
    for line in &r.scorecard {
        let word = match line.passed {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "note",
        };
        println!("  {word}  {}", line.text);
        if let Some(advice) = &line.advice {
            println!("        -> {advice}");
        }
    }
}
