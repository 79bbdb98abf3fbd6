//! Time travel: `lifeboat timeline`, `rewind`, `restore-site`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use lifeboat_control::api::{EventsQuery, TimelineReport, on_timeline};
use lifeboat_control::rewind::{RewindReport, RewindRequest};
use lifeboat_control::states::{self, StateRole};
use lifeboat_control::timespec::{TimeSpec, parse_time_spec};
use lifeboat_control::{ControlClient, ControlError, SitePaths};
use lifeboat_core::{Event, Manifest};
use lifeboat_timeline::{RestoreReport, RestoreTarget};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Global;

#[derive(Subcommand, Debug)]
pub enum TimelineCommand {
    /// Show the moments the site can be restored to, capture's state, and what happened
    /// (restarts, maintenance, captures, rewinds). `timeline forget` thins old history.
    Timeline(TimelineArgs),
    /// Rewind the live site to a moment: the copy is restored beside the live state, checked,
    /// started where only you can reach it, and serves only once healthy. `--undo` goes back.
    Rewind(RewindArgs),
    /// Restore the whole site (databases, files, manifest) as of a moment into a new directory,
    /// for inspection or to move it elsewhere. Does not touch the running site.
    RestoreSite(RestoreSiteArgs),
    /// List the site's states: the live one, the one `rewind --undo` goes back to, and older
    /// restored copies, with their size. `states drop NAME` and `states prune` delete them.
    States(StatesArgs),
}

#[derive(Args, Debug)]
pub struct StatesArgs {
    #[command(subcommand)]
    pub sub: Option<StatesSub>,
}

#[derive(Subcommand, Debug)]
pub enum StatesSub {
    /// Delete states by name (never the live one). Dropping the previous state means
    /// `rewind --undo` is no longer possible.
    Drop(DropStatesArgs),
    /// Delete every state that is neither live nor the previous one, and what interrupted
    /// rewinds left behind.
    Prune(PruneStatesArgs),
}

#[derive(Args, Debug)]
pub struct DropStatesArgs {
    /// The states to delete, as `lifeboat states` names them.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Do not ask for confirmation (for scripts).
    #[arg(short = 'y', long)]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct PruneStatesArgs {
    /// Do not ask for confirmation (for scripts).
    #[arg(short = 'y', long)]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct TimelineArgs {
    #[command(subcommand)]
    pub sub: Option<TimelineSub>,
}

#[derive(Subcommand, Debug)]
pub enum TimelineSub {
    /// Keep the checkpoints the --keep-* rules say (and always the newest) and drop the
    /// history only older checkpoints needed; with --prune, free the space right away.
    Forget(ForgetTimelineArgs),
}

#[derive(Args, Debug)]
pub struct ForgetTimelineArgs {
    /// Keep the last N checkpoints.
    #[arg(long, default_value_t = 0)]
    pub keep_last: usize,
    /// Keep the last checkpoint of each of the last N hours.
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: usize,
    /// ... of each of the last N days.
    #[arg(long, default_value_t = 0)]
    pub keep_daily: usize,
    /// ... of each of the last N weeks.
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: usize,
    /// ... of each of the last N months.
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: usize,
    /// Then delete the data nothing needs any more (`vault prune`).
    #[arg(long)]
    pub prune: bool,
}

#[derive(Args, Debug)]
pub struct RewindArgs {
    /// The moment: 2026-11-27T10:15:00Z, "10 minutes ago", before-event:ID, or latest.
    #[arg(long, value_name = "WHEN", required_unless_present = "undo")]
    pub to: Option<String>,
    /// Run the manifest's `[credentials] rotate` hook on the copy before anyone can reach it;
    /// prints the new secrets once.
    #[arg(long, conflicts_with = "undo")]
    pub rotate_credentials: bool,
    /// Go back to the state that was live before the last rewind.
    #[arg(long)]
    pub undo: bool,
    /// Do not ask for confirmation (for scripts).
    #[arg(short = 'y', long)]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct RestoreSiteArgs {
    /// The moment: 2026-11-27T10:15:00Z, "10 minutes ago", before-event:ID, or latest.
    #[arg(long, value_name = "WHEN", default_value = "latest")]
    pub to: String,
    /// Restore a fork instead: the state a node kept aside when it joined another primary
    /// (its own writes the timeline does not continue), as `lifeboat timeline` names it.
    #[arg(long, value_name = "NAME", conflicts_with = "to")]
    pub fork: Option<String>,
    /// The directory to restore into (must not exist or be empty).
    #[arg(long, value_name = "DIR")]
    pub into: PathBuf,
    /// Read the vault from this destination with a password (on another machine), instead of
    /// the site's own key and destinations.
    #[arg(long, value_name = "DEST")]
    pub repo: Option<String>,
    /// With --repo: read the key from this file (else $LIFEBOAT_PASSWORD, else a prompt).
    #[arg(long, value_name = "FILE", requires = "repo")]
    pub password_file: Option<PathBuf>,
}

pub fn run(cmd: TimelineCommand, global: &Global) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cmd {
            TimelineCommand::Timeline(TimelineArgs { sub: None }) => {
                timeline(&global.dir, global).await
            }
            TimelineCommand::Timeline(TimelineArgs {
                sub: Some(TimelineSub::Forget(args)),
            }) => forget(&global.dir, args, global).await,
            TimelineCommand::Rewind(args) => rewind(&global.dir, args, global).await,
            TimelineCommand::RestoreSite(args) => restore_site(&global.dir, args, global).await,
            TimelineCommand::States(args) => states(&global.dir, args, global).await,
        }
    })
}

/// A time as every command prints it (RFC 3339).
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn load_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = SitePaths::new(dir).manifest();
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "could not read {}; run this in the site dir or give -C DIR",
            path.display()
        )
    })?;
    Ok(Manifest::parse(&path.display().to_string(), &text)?)
}

async fn timeline(dir: &Path, global: &Global) -> anyhow::Result<ExitCode> {
    let report = match ControlClient::for_site(dir) {
        Ok(client) => client.timeline().await?,
        Err(ControlError::NotRunning { .. }) => offline_timeline(dir).await?,
        Err(e) => return Err(e.into()),
    };
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_timeline(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// The timeline while lifeboat is down: the vault with the site's key, events from the store.
async fn offline_timeline(dir: &Path) -> anyhow::Result<TimelineReport> {
    let manifest = load_manifest(dir)?;
    let spec = manifest.vault.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "this site has no [vault] section in lifeboat.toml, so nothing is captured; add one (see crates/core/MANIFEST.md)"
        )
    })?;
    let paths = SitePaths::new(dir);
    let repo = lifeboat_control::vault_key::open_existing(&paths, &spec).await?;
    let restore_points = lifeboat_timeline::list_restore_points(&repo).await?;
    let events = lifeboat_control::store::stored_events(dir, 5000)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| on_timeline(&e.what))
        .collect();
    let states = lifeboat_control::store::stored_states(dir).unwrap_or_default();
    Ok(TimelineReport {
        site: manifest.site,
        state: states.live,
        previous_state: states.previous,
        capture: None,
        restore_points,
        events,
    })
}

fn print_timeline(r: &TimelineReport) {
    let previous = r
        .previous_state
        .as_deref()
        .map(|p| format!(" (`rewind --undo` goes back to {p})"))
        .unwrap_or_default();
    println!("site {}   live state {}{previous}", r.site, r.state);
    match &r.capture {
        None => println!("capture: lifeboat is not running"),
        Some(c) if !c.running => println!(
            "capture: not running: {}",
            c.waiting.as_deref().unwrap_or("unknown")
        ),
        Some(c) => {
            let last = c
                .last_shipped_at
                .map(|t| format!(" at {}", rfc3339(t)))
                .unwrap_or_default();
            println!(
                "capture: running, last segment {}{last}, lag {} ms",
                c.last_segment_seq
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "none".into()),
                c.lag_ms
            );
            if let Some(e) = &c.last_error {
                println!("  last error: {e}");
            }
            for d in &c.destinations {
                let reach = if d.reachable {
                    "reachable"
                } else {
                    "UNREACHABLE"
                };
                println!(
                    "  {}: {reach}, {} objects ({} bytes) behind",
                    d.url, d.objects_behind, d.bytes_behind
                );
            }
        }
    }
    let points = &r.restore_points;
    match (points.checkpoints.first(), points.segments.last()) {
        (None, _) => println!("restorable: nothing yet (the first checkpoint is not stored)"),
        (Some(first), last) => {
            let until = last.map(|s| s.to).unwrap_or(first.time).max(first.time);
            println!(
                "restorable: any moment from {} to {}",
                rfc3339(first.time),
                rfc3339(until)
            );
        }
    }
    if points.segments.len() > 1 {
        println!("  (segment runs with gaps between them:)");
        for s in &points.segments {
            println!(
                "  segments {}-{}: {} .. {}",
                s.first_seq,
                s.last_seq,
                rfc3339(s.from),
                rfc3339(s.to)
            );
        }
    }
    for g in &points.gaps {
        println!(
            "  NOT restorable from {} to {}: MariaDB capture lost transactions there (see the events)",
            rfc3339(g.from),
            rfc3339(g.until)
        );
    }
    println!("checkpoints:");
    for c in &points.checkpoints {
        let short = c.snapshot.get(..12).unwrap_or(&c.snapshot);
        println!("  {}  {short}  segment {}", rfc3339(c.time), c.seq);
    }
    if !points.forks.is_empty() {
        println!(
            "forks (states nodes kept aside; `lifeboat restore-site --fork NAME --into DIR`):"
        );
        for f in &points.forks {
            let d = &f.description;
            println!(
                "  {}  {}  node {}, term {}: {}",
                d.name,
                rfc3339(d.kept_at),
                d.node,
                d.term,
                d.why
            );
        }
    }
    println!("events (rewind to just before one with --to before-event:ID):");
    for e in &r.events {
        println!("  #{:<5} {}  {}", e.seq, rfc3339(e.at), e.what.describe());
    }
}

async fn forget(dir: &Path, args: ForgetTimelineArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let policy = lifeboat_timeline::KeepPolicy {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: 0,
        tags: Vec::new(),
    };
    if policy.is_empty() {
        anyhow::bail!(
            "say what to keep, e.g. --keep-daily 14 --keep-hourly 48; nothing was changed"
        );
    }
    let manifest = load_manifest(dir)?;
    let spec = manifest.vault.clone().ok_or_else(|| {
        anyhow::anyhow!("this site has no [vault] section in lifeboat.toml, so it has no timeline")
    })?;
    let repo =
        Arc::new(lifeboat_control::vault_key::open_existing(&SitePaths::new(dir), &spec).await?);
    let report = lifeboat_timeline::apply_retention(&repo, &policy).await?;
    let pruned = if args.prune {
        Some(
            repo.prune(&lifeboat_vault::PruneOptions {
                unindexed_grace: std::time::Duration::from_secs(3600),
                lock_wait: std::time::Duration::from_secs(60),
                ..lifeboat_vault::PruneOptions::default()
            })
            .await?,
        )
    } else {
        None
    };
    if global.json {
        println!(
            "{}",
            serde_json::json!({ "retention": report, "prune": pruned })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "kept {} checkpoints, forgot {}; {} segment objects deleted",
        report.kept.len(),
        report.forgotten.len(),
        report.segment_objects_deleted
    );
    if let Some(first) = report.kept.first() {
        println!("the timeline now starts at {}", rfc3339(first.time));
    }
    match pruned {
        Some(p) => println!(
            "pruned: {} packs deleted, {} bytes freed",
            p.packs_deleted, p.bytes_freed
        ),
        None => println!(
            "run `lifeboat timeline forget ... --prune` (or `lifeboat vault prune`) to free the space"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "{question}\nnothing was changed; pass --yes to confirm when not on a terminal"
        );
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

fn describe_spec(spec: &TimeSpec) -> String {
    match spec {
        TimeSpec::At { time } => rfc3339(*time),
        TimeSpec::BeforeEvent { id } => format!("just before event #{id}"),
        TimeSpec::Latest => "the latest captured moment".into(),
    }
}

async fn rewind(dir: &Path, args: RewindArgs, global: &Global) -> anyhow::Result<ExitCode> {
    // The time is read before anything else, so a typo changes nothing and asks nothing.
    let spec = match &args.to {
        Some(to) => {
            Some(parse_time_spec(to, OffsetDateTime::now_utc()).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let client = ControlClient::for_site(dir)?;
    let site = client.status().await?;
    let question = match &spec {
        None => format!(
            "Undo the last rewind of {}: serve the state that was live before it again?",
            site.site
        ),
        Some(spec) => format!(
            "Rewind {} to {}? The live state is kept for `lifeboat rewind --undo`.",
            site.site,
            describe_spec(spec)
        ),
    };
    if !args.yes && !confirm(&question)? {
        println!("nothing changed");
        return Ok(ExitCode::FAILURE);
    }
    let report = match spec {
        None => client.undo().await?,
        Some(to) => {
            client
                .rewind(&RewindRequest {
                    to,
                    rotate_credentials: args.rotate_credentials,
                })
                .await?
        }
    };
    print_rewind(&report, global.json);
    Ok(ExitCode::SUCCESS)
}

fn print_rewind(r: &RewindReport, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(r).expect("report serializes")
        );
        return;
    }
    match r.restored_time {
        Some(t) => println!(
            "rewound to {}: now serving {} ({})",
            rfc3339(t),
            r.state,
            r.state_dir
        ),
        None => println!("rewind undone: now serving {} ({})", r.state, r.state_dir),
    }
    for db in &r.databases {
        println!(
            "  {}: {} transactions replayed, integrity ok",
            db.name, db.commits_applied
        );
    }
    if r.restored_time.is_some() {
        println!(
            "  {} files ({} bytes) restored and verified",
            r.files, r.file_bytes
        );
    }
    println!("  instances: {}", r.instances.join(", "));
    println!(
        "  the previous state {} stays in {}; `lifeboat rewind --undo` goes back to it",
        r.previous, r.previous_dir
    );
    if let Some(creds) = &r.credentials {
        println!("credentials rotated; the hook said (shown only now, write it down):");
        for line in creds.lines() {
            println!("  {line}");
        }
    }
    println!(
        "serving the restored copy {:.1} s after the command; took {:.1} s in all",
        r.serving_ms as f64 / 1000.0,
        r.took_ms as f64 / 1000.0
    );
    if !r.phases_ms.is_empty() {
        let phases: Vec<String> = r
            .phases_ms
            .iter()
            .map(|(name, ms)| format!("{name} {:.1} s", *ms as f64 / 1000.0))
            .collect();
        println!("  {}", phases.join(", "));
    }
}

/// The events of the site, from the daemon or (while it is down) its store.
async fn site_events(dir: &Path) -> anyhow::Result<Vec<Event>> {
    match ControlClient::for_site(dir) {
        Ok(client) => Ok(client
            .events(&EventsQuery {
                last: Some(1_000_000),
                ..Default::default()
            })
            .await?),
        Err(_) => Ok(lifeboat_control::store::stored_events(dir, 1_000_000)?),
    }
}

async fn restore_site(
    dir: &Path,
    args: RestoreSiteArgs,
    global: &Global,
) -> anyhow::Result<ExitCode> {
    if let Ok(mut entries) = std::fs::read_dir(&args.into)
        && entries.next().is_some()
    {
        anyhow::bail!(
            "{} is not empty; restore-site writes only into a new or empty directory, so nothing was changed",
            args.into.display()
        );
    }
    let spec = parse_time_spec(&args.to, OffsetDateTime::now_utc()).map_err(anyhow::Error::msg)?;
    let repo = Arc::new(open_site_vault(dir, &args).await?);
    if let Some(name) = &args.fork {
        let report = lifeboat_timeline::restore_fork(&repo, name, &args.into).await?;
        print_fork_restore(&report, &args.into, global.json);
        return Ok(ExitCode::SUCCESS);
    }
    let target = match spec {
        TimeSpec::Latest => RestoreTarget::Latest,
        TimeSpec::At { time } => RestoreTarget::Time(time),
        TimeSpec::BeforeEvent { id } => {
            let events = site_events(dir).await?;
            let event = events.iter().find(|e| e.seq == id).ok_or_else(|| {
                anyhow::anyhow!(
                    "there is no event {id}; `lifeboat timeline` lists the events and their ids"
                )
            })?;
            RestoreTarget::Time(event.at - time::Duration::nanoseconds(1))
        }
    };
    let report = lifeboat_timeline::restore_site(&repo, target, &args.into).await?;
    print_restore(&report, &args.into, global.json);
    Ok(ExitCode::SUCCESS)
}

/// The vault `restore-site` reads: `--repo` with a password, or the site's own.
async fn open_site_vault(
    dir: &Path,
    args: &RestoreSiteArgs,
) -> anyhow::Result<lifeboat_vault::Repository> {
    Ok(match &args.repo {
        Some(url) => {
            let password = crate::vault::read_password(args.password_file.as_ref(), false)?;
            lifeboat_vault::Repository::open(
                url,
                &password,
                &lifeboat_vault::OpenOptions::default(),
            )
            .await?
        }
        None => {
            let manifest = load_manifest(dir)?;
            let spec = manifest.vault.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "this site has no [vault] section in lifeboat.toml; give the vault with --repo DEST"
                )
            })?;
            // A running site ships what it holds first, so "latest" means now.
            if let Ok(client) = ControlClient::for_site(dir) {
                let _ = client.ship().await;
            }
            lifeboat_control::vault_key::open_existing(&SitePaths::new(dir), &spec).await?
        }
    })
}

fn print_fork_restore(r: &lifeboat_timeline::ForkRestoreReport, into: &Path, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(r).expect("report serializes")
        );
        return;
    }
    let d = &r.fork.description;
    println!(
        "restored fork {} (the state {} kept aside at {}, term {}) into {}",
        d.name,
        d.node,
        rfc3339(d.kept_at),
        d.term,
        into.display()
    );
    for db in &r.databases {
        println!("  {db}: integrity ok");
    }
    println!("  {} files ({} bytes)", r.files, r.file_bytes);
}

fn print_restore(r: &RestoreReport, into: &Path, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(r).expect("report serializes")
        );
        return;
    }
    println!(
        "restored the site as of {} into {}",
        rfc3339(r.restored_time),
        into.display()
    );
    for db in &r.databases {
        println!(
            "  {}: {} transactions replayed on checkpoint {}, integrity ok",
            db.name,
            db.commits_applied,
            r.checkpoint
                .snapshot
                .get(..12)
                .unwrap_or(&r.checkpoint.snapshot)
        );
    }
    println!(
        "  {} files ({} bytes), each verified",
        r.files, r.file_bytes
    );
}

/// The daemon when it runs, else `None` (the store and the states are then used directly).
async fn running_daemon(dir: &Path) -> anyhow::Result<Option<ControlClient>> {
    match ControlClient::for_site(dir) {
        Ok(client) => Ok(Some(client)),
        Err(ControlError::NotRunning { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn states(dir: &Path, args: StatesArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let manifest = load_manifest(dir)?;
    let daemon = running_daemon(dir).await?;
    let list = match &daemon {
        Some(client) => client.states().await?,
        None => states::list_offline(dir, &manifest.state)?,
    };
    let (req, yes) = match args.sub {
        None => {
            if global.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_states(&list);
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some(StatesSub::Drop(a)) => (
            states::DropRequest {
                names: a.names,
                ..Default::default()
            },
            a.yes,
        ),
        Some(StatesSub::Prune(a)) => (
            states::DropRequest {
                all_kept: true,
                ..Default::default()
            },
            a.yes,
        ),
    };
    // Checked here first, so a typo or the live state is refused before anything is asked.
    let record = lifeboat_control::store::StatesRecord {
        live: list
            .iter()
            .find(|s| s.role == StateRole::Live)
            .map(|s| s.name.clone())
            .unwrap_or_else(|| lifeboat_control::SITE_STATE.into()),
        previous: list
            .iter()
            .find(|s| s.role == StateRole::Previous)
            .map(|s| s.name.clone()),
    };
    let (chosen, _) = states::plan_drop(
        &list,
        &record,
        &states::DropRequest {
            allow_previous: true,
            ..req.clone()
        },
    )?;
    if chosen.is_empty() {
        println!("nothing to drop: every state is live or kept for `rewind --undo`");
        return Ok(ExitCode::SUCCESS);
    }
    let mut question = format!(
        "Delete {} ({})?",
        chosen
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        mib(chosen.iter().map(|s| s.bytes).sum())
    );
    if chosen.iter().any(|s| s.role == StateRole::Previous) {
        question.push_str(
            " `lifeboat rewind --undo` goes back to one of them: undo will no longer be possible.",
        );
    }
    if !yes && !confirm(&question)? {
        println!("nothing changed");
        return Ok(ExitCode::FAILURE);
    }
    let req = states::DropRequest {
        allow_previous: true,
        ..req
    };
    let report = match &daemon {
        Some(client) => client.drop_states(&req).await?,
        None => states::drop_offline(dir, &manifest.state, &req)?,
    };
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    for s in &report.dropped {
        println!("dropped {} ({})", s.name, mib(s.bytes));
    }
    println!("{} freed", mib(report.freed_bytes));
    match &report.previous {
        Some(p) => println!("`lifeboat rewind --undo` goes back to {p}"),
        None => println!("there is no state to undo to"),
    }
    Ok(ExitCode::SUCCESS)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn print_states(list: &[states::StateInfo]) {
    let width = list.iter().map(|s| s.name.len()).max().unwrap_or(5).max(5);
    println!("{:width$}  {:10}  {:>12}  CHANGED", "STATE", "ROLE", "SIZE");
    for s in list {
        let role = match s.role {
            StateRole::Live => "live",
            StateRole::Previous => "previous",
            StateRole::Kept => "kept",
            StateRole::Incomplete => "incomplete",
        };
        let changed = s.modified.map(rfc3339).unwrap_or_else(|| "-".into());
        println!(
            "{:width$}  {:10}  {:>12}  {changed}",
            s.name,
            role,
            mib(s.bytes)
        );
    }
    let kept: u64 = list
        .iter()
        .filter(|s| matches!(s.role, StateRole::Kept | StateRole::Incomplete))
        .map(|s| s.bytes)
        .sum();
    if kept > 0 {
        println!("`lifeboat states prune` frees {}", mib(kept));
    }
}
