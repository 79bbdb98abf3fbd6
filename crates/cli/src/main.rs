//! The `lifeboat` command. Thin: it parses arguments, calls the library crates, and owns all
//! terminal output (human text, `--json`, progress bars). Libraries never print.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the front door allocates per request (headers, bodies), and mimalloc's
/// thread-local free lists suit its one-runtime-per-core threads (`bench/proxy-vs-nginx.sh`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod simulate;
mod site;
mod timeline;
mod vault;

/// Lifeboat: run a web site reliably, capture its state continuously, rewind it to any moment.
#[derive(Parser, Debug)]
#[command(name = "lifeboat", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The site directory (where lifeboat.toml is). Defaults to the current directory.
    #[arg(short = 'C', long = "dir", global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every command sees.
#[derive(Debug, Clone)]
pub struct Global {
    pub dir: PathBuf,
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    #[command(flatten)]
    Site(site::SiteCommand),
    #[command(flatten)]
    Timeline(timeline::TimelineCommand),
    #[command(flatten)]
    Vault(vault::VaultCommand),
    /// Copy the whole site from its vault into a sandbox, break it on purpose (load spikes,
    /// killed processes, attacks, corruption; on a cluster also lost machines, zones, network
    /// and etcd members) one fault at a time, and score how it held.
    /// Never touches the live site. Exit code 0 only when every target held.
    Simulate(simulate::SimulateArgs),
    /// Internal: holds an ordinary user's simulation sandbox network and hands the simulator
    /// sockets made in it (see `lifeboat_sim::netns`).
    #[command(name = "__sim-sockets", hide = true)]
    SimSockets,
}

fn main() -> ExitCode {
    quiet_on_closed_output();
    let cli = Cli::parse();
    if let Command::Site(site::SiteCommand::Up(_)) = &cli.command {
        give_memory_back_when_idle();
    }
    let global = Global {
        dir: cli.dir.clone().unwrap_or_else(|| PathBuf::from(".")),
        json: cli.json,
    };
    let result = match cli.command {
        Command::Site(cmd) => site::run(cmd, &global),
        Command::Timeline(cmd) => timeline::run(cmd, &global),
        Command::Vault(cmd) => vault::run(cmd, &global),
        Command::Simulate(args) => simulate::run(args, &global),
        Command::SimSockets => lifeboat_sim::netns::serve_sockets()
            .map(|()| ExitCode::SUCCESS)
            .map_err(anyhow::Error::msg),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The setting `lifeboat up` runs with: mimalloc returns the pages freed to the OS at once
/// (`MIMALLOC_PURGE_DELAY=0`) instead of after 1 s. The delay is only acted on when the
/// allocator next takes or frees a whole page, which a daemon idling between requests seldom
/// does: the pages a burst of load or a shipped upload freed stayed resident. Idle RSS of
/// `bench/idle-rss.sh`: 50.5 MiB with the default delay, 32.3 MiB without (release, no LTO);
/// the front door's requests/s and p99 against nginx did not move (bench/README.md).
const ALLOCATOR_SETTINGS: [(&str, &str); 1] = [("MIMALLOC_PURGE_DELAY", "0")];

/// mimalloc reads its settings from the environment when the process starts, before `main`,
/// and offers no safe way to change them after; so `up` starts itself again (same pid,
/// arguments and terminal) with them, unless they are set already (then the owner's values
/// win). If that fails, `up` runs as it is. The daemon's own helper (`__hold-sqlite`)
/// inherits them; the site's processes do not see them (isolation gives them a clean
/// environment).
fn give_memory_back_when_idle() {
    use std::os::unix::process::CommandExt;
    if ALLOCATOR_SETTINGS
        .iter()
        .any(|(name, _)| std::env::var_os(name).is_some())
    {
        return;
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    // /proc/self/exe: this very binary, even if the file was replaced since it started.
    let _err = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .envs(ALLOCATOR_SETTINGS)
        .exec();
}

/// `lifeboat status | head -3` closes our stdout early. Rust's `println!` then panics with
/// "failed printing to stdout: Broken pipe"; a command-line tool should just stop, as `cat`
/// does (exit status 141 = killed by SIGPIPE, what shells expect).
fn quiet_on_closed_output() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}
