//! What each site command does: call lifeboat-control, hand the answer to `output`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use lifeboat_control::api::{EventsQuery, MaintenanceRequest};
use lifeboat_control::{ControlClient, ControlError, UpOptions, logs, start_site};
use lifeboat_core::status::parse_scale_arg;

use super::{
    EventsArgs, ExecArgs, InstanceArgs, LogsArgs, MaintenanceCommand, ScaleArgs, UpArgs, output,
    shown,
};
use crate::Global;

pub(super) async fn up(dir: &Path, args: UpArgs, global: &Global) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LIFEBOAT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Not dumpable: no process of the same user (the site's own, when lifeboat is not root)
    // may read this one's memory, environment or view of the file system through /proc.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("lifeboat: warning: could not protect this process from its own user ({e})");
    }
    let shim = this_binary().context("could not find the lifeboat binary to wrap instances")?;
    let mut site = start_site(
        dir,
        UpOptions {
            listen: args.listen,
            shim: Some(shim),
            enable_wal: args.enable_wal,
            node: node_options(&args)?,
        },
    )
    .await?;
    // What the owner must know goes to the terminal as it happens, not only to `events`.
    if let Some(mut alerts) = site.take_alerts() {
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match alerts.recv().await {
                    Ok(alert) => eprintln!("lifeboat: {alert}"),
                    Err(RecvError::Lagged(n)) => {
                        eprintln!("lifeboat: ({n} more warnings; see `lifeboat events`)")
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }
    output::up(site.name(), site.proxy_addr(), global.json);
    if let Some(key) = site.vault_key_created() {
        eprintln!(
            "A new vault key for this site's backups was made at {}.\n\
             Copy it somewhere safe, away from this machine (`lifeboat vault key export`):\n\
             a backup whose key dies with the machine is no backup.",
            key.display()
        );
    }
    site.run_until(stop_signal()).await?;
    if !global.json {
        println!("stopped");
    }
    Ok(ExitCode::SUCCESS)
}

/// Who this node is, when `--node` (or LIFEBOAT_NODE) is given: all three are needed then.
fn node_options(args: &UpArgs) -> anyhow::Result<Option<lifeboat_control::node::NodeOptions>> {
    match (&args.node, &args.zone, args.advertise) {
        (None, None, None) => Ok(None),
        (Some(node), Some(zone), Some(advertise)) => {
            Ok(Some(lifeboat_control::node::NodeOptions {
                node: node.clone(),
                zone: zone.clone(),
                advertise,
            }))
        }
        _ => anyhow::bail!(
            "a node of a cluster needs all three of --node NAME, --zone ZONE and --advertise IP (or LIFEBOAT_NODE, LIFEBOAT_ZONE, LIFEBOAT_ADVERTISE)"
        ),
    }
}

/// Resolves on Ctrl-C or SIGTERM with the reason.
async fn stop_signal() -> String {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "interrupted".into();
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted (Ctrl-C)".into(),
        _ = term.recv() => "terminated (SIGTERM)".into(),
    }
}

pub(super) async fn status(dir: &Path, global: &Global) -> anyhow::Result<ExitCode> {
    let report = ControlClient::for_site(dir)?.status().await?;
    output::status(&report, global.json);
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn switchover(dir: &Path, to: &str, global: &Global) -> anyhow::Result<ExitCode> {
    let report = ControlClient::for_site(dir)?.switchover(to).await?;
    output::switchover(&report, global.json);
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn maintenance(
    dir: &Path,
    cmd: MaintenanceCommand,
    global: &Global,
) -> anyhow::Result<ExitCode> {
    let client = ControlClient::for_site(dir)?;
    let req = match cmd {
        MaintenanceCommand::On { message, allow } => MaintenanceRequest {
            on: true,
            message,
            allow,
        },
        MaintenanceCommand::Off => MaintenanceRequest {
            on: false,
            message: None,
            allow: vec![],
        },
    };
    let report = client.maintenance(req).await?;
    let proxy = client.status().await.map(|s| s.proxy).unwrap_or_default();
    output::maintenance(&report, &proxy, global.json);
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn scale(
    dir: &Path,
    args: ScaleArgs,
    global: &Global,
) -> anyhow::Result<ExitCode> {
    let mut scale = BTreeMap::new();
    for pair in &args.pairs {
        let (process, n) = parse_scale_arg(pair)?;
        scale.insert(process, n);
    }
    let changes = ControlClient::for_site(dir)?.scale(scale).await?;
    output::scale(&changes, global.json);
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn events(
    dir: &Path,
    args: EventsArgs,
    global: &Global,
) -> anyhow::Result<ExitCode> {
    let client = match ControlClient::for_site(dir) {
        Ok(client) => client,
        Err(ControlError::NotRunning { .. }) if !args.follow => {
            // The daemon is down: its history is still in the store.
            let events = lifeboat_control::store::stored_events(dir, args.last)?;
            output::events(&events, global.json, false);
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    // Ask for at least one event so `--follow -n 0` knows where the history ends now.
    let events = client
        .events(&EventsQuery {
            last: Some(args.last.max(1)),
            ..Default::default()
        })
        .await?;
    let mut after = events.last().map(|e| e.seq).unwrap_or(0);
    let shown = &events[events.len().saturating_sub(args.last)..];
    output::events(shown, global.json, args.follow);
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        let query = EventsQuery {
            after: Some(after),
            wait_ms: Some(30_000),
            ..Default::default()
        };
        let more = client.events(&query).await?;
        if let Some(last) = more.last() {
            after = last.seq;
        }
        output::events(&more, global.json, true);
    }
}

pub(super) async fn logs(dir: &Path, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let mut offset = logs::log_len(dir, &args.instance);
    for line in logs::last_lines(dir, &args.instance, args.lines)? {
        println!("{line}");
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        let (text, next) = logs::read_new(dir, &args.instance, offset)?;
        print!("{text}");
        offset = next;
        if text.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

pub(super) async fn down(dir: &Path, global: &Global) -> anyhow::Result<ExitCode> {
    let client = ControlClient::for_site(dir)?;
    client.down().await?;
    // The daemon removes its socket as the very last step of a graceful stop.
    let deadline = Instant::now() + Duration::from_secs(120);
    while client.socket_exists() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "lifeboat for {} was asked to stop but is still running after 2 minutes; look at its terminal, or stop it with SIGTERM",
                shown(dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if global.json {
        println!("{}", serde_json::json!({ "stopped": true }));
    } else {
        println!("stopped the site in {}", shown(dir));
    }
    Ok(ExitCode::SUCCESS)
}

/// `lifeboat exec -- CMD`: asks the daemon (or, when none runs, the store) how the site's
/// processes see the live state, then becomes the command in that view. The process is
/// replaced, so the command owns the terminal, its signals and the exit code.
pub(super) fn exec(dir: &Path, args: ExecArgs) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let shim = this_binary().context("could not find the lifeboat binary to run the command")?;
    let view = {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            match ControlClient::for_site(dir) {
                Ok(client) => client.exec_view(args.process.as_deref()).await,
                Err(ControlError::NotRunning { .. }) => {
                    lifeboat_control::view::offline_view(dir, args.process.as_deref(), &shim).await
                }
                Err(e) => Err(e),
            }
        })?
    };
    // The command is the shim's to run; its parent (our parent, once we are replaced) is the
    // one it must outlive no longer than.
    let parent = nix::unistd::getppid().as_raw().to_string();
    // The command gets the site's environment, not the owner's (which may hold Lifeboat's
    // secrets), but keeps the terminal's settings.
    let terminal = ["TERM", "COLORTERM", "COLUMNS", "LINES"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k, v)));
    let err = std::process::Command::new(&shim)
        .args(view.shim_args(&args.command))
        .current_dir(&view.dir)
        .env_clear()
        .envs(view.full_env())
        .envs(terminal)
        .env("LIFEBOAT_SUPERVISOR_PID", parent)
        .exec();
    Err(anyhow::anyhow!("could not run {}: {err}", shim.display()))
}

pub(super) fn instance(args: InstanceArgs) -> anyhow::Result<ExitCode> {
    // With no sandbox options the command line is `__instance -- sh -c ...`, and clap takes
    // that `--` for its own: every sandbox option starts with `--`, so a first argument that
    // does not is the command.
    let mut args = args.args;
    if args
        .first()
        .is_some_and(|a| !a.to_string_lossy().starts_with("--"))
    {
        args.insert(0, "--".into());
    }
    let (sandbox, command) = lifeboat_supervisor::shim::Sandbox::from_args(&args)?;
    let err = lifeboat_supervisor::shim::exec_instance(&sandbox, command);
    Err(anyhow::anyhow!("could not start the instance: {err}"))
}

/// The program that wraps the site's processes: this very binary. `/proc/self/exe` names the
/// running image even after the file was replaced (an upgrade while the site runs), so restarts
/// keep working, with the same version as the daemon; elsewhere, the path it was started from.
fn this_binary() -> std::io::Result<std::path::PathBuf> {
    let proc_exe = std::path::PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe);
    }
    std::env::current_exe()
}

/// `lifeboat import-db`: a dump file or a running server into the site's MariaDB database.
pub(super) async fn import_db(
    dir: &Path,
    args: super::ImportDbArgs,
    global: &Global,
) -> anyhow::Result<ExitCode> {
    let target = lifeboat_control::mariadb::import_target(dir).await?;
    let report = match (&args.dump, &args.from_server) {
        (Some(dump), _) => {
            let (spec, db, dump) = (target.spec, target.database, dump.clone());
            tokio::task::spawn_blocking(move || lifeboat_mariadb::import_dump(&spec, &db, &dump))
                .await??
        }
        (None, Some(server)) => {
            let (host, port) = match server.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse()
                        .with_context(|| format!("{p:?} is not a port number"))?,
                ),
                None => (server.clone(), 3306),
            };
            let password = std::env::var("LIFEBOAT_IMPORT_PASSWORD").context(
                "set LIFEBOAT_IMPORT_PASSWORD to the password of the server to copy from (it is never taken from the command line)",
            )?;
            let source = lifeboat_mariadb::RemoteSource {
                host,
                port,
                socket: None,
                user: args
                    .user
                    .clone()
                    .context("--user is needed with --from-server")?,
                password,
                database: args
                    .database
                    .clone()
                    .context("--database is needed with --from-server")?,
            };
            let (spec, db) = (target.spec, target.database);
            tokio::task::spawn_blocking(move || {
                lifeboat_mariadb::import_from_server(&spec, &source, &db)
            })
            .await??
        }
        (None, None) => unreachable!("clap requires a source"),
    };
    if global.json {
        println!(
            "{}",
            serde_json::json!({"database": report.database, "tables": report.tables})
        );
    } else {
        println!(
            "imported {} table(s) into the site's database {}",
            report.tables, report.database
        );
    }
    Ok(ExitCode::SUCCESS)
}
