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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let global = Global {
        dir: cli.dir.clone().unwrap_or_else(|| PathBuf::from(".")),
        json: cli.json,
    };
    let result = match cli.command {
        Command::Site(cmd) => site::run(cmd, &global),
        Command::Timeline(cmd) => timeline::run(cmd, &global),
        Command::Vault(cmd) => vault::run(cmd, &global),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
