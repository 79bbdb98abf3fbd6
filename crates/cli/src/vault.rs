//! Vault commands: vault init/verify/forget/prune/status, backup, snapshots, restore.
use std::process::ExitCode;

use clap::Subcommand;

use crate::Global;

#[derive(Subcommand, Debug)]
pub enum VaultCommand {
    /// List the snapshots in a repository.
    Snapshots,
}

pub fn run(cmd: VaultCommand, _global: &Global) -> anyhow::Result<ExitCode> {
    match cmd {
        VaultCommand::Snapshots => anyhow::bail!("not built yet"),
    }
}
