//! Site commands: up, status, maintenance, scale, events, logs, down.
use std::process::ExitCode;

use clap::Subcommand;

use crate::Global;

#[derive(Subcommand, Debug)]
pub enum SiteCommand {
    /// Show the site's instances, front door and maintenance state.
    Status,
}

pub fn run(cmd: SiteCommand, _global: &Global) -> anyhow::Result<ExitCode> {
    match cmd {
        SiteCommand::Status => anyhow::bail!("not built yet"),
    }
}
