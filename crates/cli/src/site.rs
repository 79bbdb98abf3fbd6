//! Site commands: up, status, maintenance, scale, events, logs, down. Thin: each parses its
//! arguments, calls lifeboat-control, and prints the answer as text or `--json`.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::Global;

mod output;
mod run;

#[derive(Subcommand, Debug)]
pub enum SiteCommand {
    /// Run the site in DIR in the foreground: its front door, its instances, the control API.
    /// Ctrl-C, SIGTERM or `lifeboat down` stop it gracefully.
    Up(UpArgs),
    /// Show the site's front door, maintenance switch and instances.
    Status,
    /// Switch maintenance mode: visitors get a 503 page, the owner gets through with a bypass.
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
    /// Set how many instances of a process run, e.g. `lifeboat scale web=5`. Kept across restarts.
    Scale(ScaleArgs),
    /// List what happened to the site: starts, crashes, restarts, health, maintenance, scaling.
    Events(EventsArgs),
    /// Print an instance's output (stdout and stderr), e.g. `lifeboat logs web-2`.
    /// Works whether or not lifeboat is running.
    Logs(LogsArgs),
    /// Stop the site: drain the front door, stop every instance, stop the daemon.
    Down,
    /// Move the primary role of a site on several nodes to another node, e.g. before taking
    /// the primary's machine down for maintenance. Run it on the primary; requests are held
    /// for the moment of the switch, none fails.
    Switchover(SwitchoverArgs),
    /// Run a command against the live state the way the site's processes see it, e.g.
    /// `lifeboat exec -- python manage.py migrate`: from the site dir, with the process's
    /// environment, and after a rewind with the restored state at the site's own paths.
    Exec(ExecArgs),
    /// Bring an existing MariaDB/MySQL database into the site's own (`[state] mariadb`), while
    /// the site runs: from a dump file (`mariadb-dump --single-transaction DB > dump.sql`) or
    /// straight from a running server. What is imported is captured like any other write.
    ImportDb(ImportDbArgs),
    /// Internal: runs one instance so it dies with lifeboat (used by the supervisor).
    #[command(name = "__instance", hide = true)]
    Instance(InstanceArgs),
    /// Internal: keeps the site dir's databases open while lifeboat runs (see
    /// `lifeboat_control::view::hold_databases`).
    #[command(name = "__hold-sqlite", hide = true)]
    HoldSqlite(HoldArgs),
}

#[derive(Args, Debug)]
pub struct SwitchoverArgs {
    /// The standby that takes over.
    #[arg(long, value_name = "NODE")]
    pub to: String,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// The site directory (where lifeboat.toml is). Defaults to -C DIR or the current directory.
    #[arg(value_name = "DIR")]
    pub site_dir: Option<PathBuf>,
    /// Listen on this address instead of the manifest's `[proxy] listen`; port 0 picks a free one.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Switch the declared SQLite databases that are not in WAL mode to it (capture needs it;
    /// the app needs no change). Without it, such a database is named on the terminal and
    /// not captured.
    #[arg(long)]
    pub enable_wal: bool,
    /// This node's name, for a site with [cluster] in its manifest.
    #[arg(long, env = "LIFEBOAT_NODE", value_name = "NAME")]
    pub node: Option<String>,
    /// This node's zone (nodes in one zone may fail together).
    #[arg(long, env = "LIFEBOAT_ZONE", value_name = "ZONE")]
    pub zone: Option<String>,
    /// The address the other nodes reach this one at.
    #[arg(long, env = "LIFEBOAT_ADVERTISE", value_name = "IP")]
    pub advertise: Option<std::net::IpAddr>,
}

#[derive(Subcommand, Debug)]
pub enum MaintenanceCommand {
    /// Show the maintenance page to every visitor; prints the owner's bypass.
    On {
        /// The message on the page (default: the manifest's `[maintenance] message`).
        #[arg(long, value_name = "TEXT")]
        message: Option<String>,
        /// A client address that still gets the real site (repeatable).
        #[arg(long = "allow", value_name = "IP")]
        allow: Vec<std::net::IpAddr>,
    },
    /// Serve the real site again.
    Off,
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// PROCESS=COUNT pairs, e.g. web=5 worker=2.
    #[arg(value_name = "PROCESS=COUNT", required = true)]
    pub pairs: Vec<String>,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// How many of the latest events to show.
    #[arg(short = 'n', long = "last", value_name = "N", default_value_t = 100)]
    pub last: usize,
    /// Keep printing events as they happen.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The instance, e.g. web-2 (see `lifeboat status`).
    pub instance: String,
    /// How many of the latest lines to show.
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 100)]
    pub lines: usize,
    /// Keep printing lines as they are written.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Whose environment the command gets (default: web, or the first process).
    #[arg(long, value_name = "PROCESS")]
    pub process: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["dump", "from_server"])))]
pub struct ImportDbArgs {
    /// A dump file made by `mariadb-dump --single-transaction DB` (or `mysqldump`).
    #[arg(long, value_name = "FILE")]
    pub dump: Option<PathBuf>,
    /// A running server to copy from, HOST[:PORT] (3306 by default); its password is read
    /// from LIFEBOAT_IMPORT_PASSWORD, never from the command line.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub from_server: Option<String>,
    /// The user to log in to that server as.
    #[arg(long, value_name = "USER", requires = "from_server")]
    pub user: Option<String>,
    /// The database to copy from that server.
    #[arg(long, value_name = "DB", requires = "from_server")]
    pub database: Option<String>,
}

#[derive(Args, Debug)]
pub struct HoldArgs {
    /// The lifeboat whose life this holder follows.
    #[arg(long)]
    pub parent: u32,
    /// The databases to hold.
    #[arg(last = true)]
    pub databases: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InstanceArgs {
    /// The sandbox (`--bind FROM TO`, `--hide DIR`, `--cgroup DIR`, `--user NAME`,
    /// `--deny DIR`), then `--` and the command; read by `lifeboat_supervisor::shim`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub args: Vec<std::ffi::OsString>,
}

pub fn run(cmd: SiteCommand, global: &Global) -> anyhow::Result<ExitCode> {
    let cmd = match cmd {
        SiteCommand::Instance(args) => return run::instance(args),
        SiteCommand::Exec(args) => return run::exec(&global.dir, args),
        SiteCommand::HoldSqlite(args) => {
            // Like the daemon: its view of the machine is none of the site's business.
            let _ = nix::sys::prctl::set_dumpable(false);
            lifeboat_control::view::hold_databases(args.parent, &args.databases)?;
            return Ok(ExitCode::SUCCESS);
        }
        other => other,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cmd {
            SiteCommand::Up(args) => {
                let dir = args.site_dir.clone().unwrap_or_else(|| global.dir.clone());
                run::up(&dir, args, global).await
            }
            SiteCommand::Status => run::status(&global.dir, global).await,
            SiteCommand::Maintenance(m) => run::maintenance(&global.dir, m, global).await,
            SiteCommand::Switchover(a) => run::switchover(&global.dir, &a.to, global).await,
            SiteCommand::Scale(s) => run::scale(&global.dir, s, global).await,
            SiteCommand::Events(e) => run::events(&global.dir, e, global).await,
            SiteCommand::Logs(l) => run::logs(&global.dir, l).await,
            SiteCommand::Down => run::down(&global.dir, global).await,
            SiteCommand::ImportDb(a) => run::import_db(&global.dir, a, global).await,
            SiteCommand::Instance(_) | SiteCommand::Exec(_) | SiteCommand::HoldSqlite(_) => {
                unreachable!("handled before the runtime starts")
            }
        }
    })
}

/// The site dir as the user wrote it, for messages.
fn shown(dir: &Path) -> String {
    dir.display().to_string()
}
