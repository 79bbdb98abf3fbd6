//! Vault commands: `vault init/verify/forget/prune/status/sync`, `backup`, `snapshots`,
//! `restore`. Thin: parse arguments, read the password, call lifeboat-vault, print text or
//! `--json`, draw progress bars only on a terminal.
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use lifeboat_vault::{
    BackupOptions, KdfParams, KeepPolicy, OpenOptions, PruneOptions, Repository, RestoreOptions,
    VerifyOptions,
};

use crate::Global;

mod output;
mod progress;

#[derive(Subcommand, Debug)]
pub enum VaultCommand {
    /// Manage a vault repository: init, verify, forget, prune, status, sync.
    #[command(subcommand)]
    Vault(VaultSub),
    /// Back up directories into the vault; prints the new snapshot's id.
    Backup(BackupArgs),
    /// List the snapshots in a repository, oldest first.
    Snapshots(SnapshotsArgs),
    /// Restore a snapshot (or part of it) into a directory.
    Restore(RestoreArgs),
}

#[derive(Subcommand, Debug)]
pub enum VaultSub {
    /// Create a repository on one or more destinations (local directories, s3://bucket/prefix).
    Init(InitArgs),
    /// Check the repository on every destination; exits 1 if anything is damaged or missing.
    Verify(VerifyArgs),
    /// Remove snapshots not kept by the --keep-* rules (run `vault prune` afterwards).
    Forget(ForgetArgs),
    /// Delete data that no snapshot needs any more.
    Prune(PruneArgs),
    /// Per destination: reachable, objects behind (waiting in the local spool), last success.
    Status(RepoArgs),
    /// Send objects waiting in the local spool to destinations that are back.
    Sync(RepoArgs),
    /// The site's own vault key (made by the first `lifeboat up` with a [vault]).
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Print the site's vault key and destinations, to keep somewhere safe away from this
    /// machine: without it, the site's vault can not be read.
    Export,
}

/// How to reach and open a repository.
#[derive(Args, Debug, Clone)]
pub struct RepoArgs {
    /// Any one destination of the repository (it knows all of them).
    #[arg(long, env = "LIFEBOAT_REPO", value_name = "DEST")]
    pub repo: String,
    /// Read the password from this file (else $LIFEBOAT_PASSWORD, else a prompt on a terminal).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Where objects for unreachable destinations wait (default ~/.cache/lifeboat/spool).
    #[arg(long, env = "LIFEBOAT_SPOOL", value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Wait this long for another process's lock to go away.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub lock_wait: Duration,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// A destination: a local directory or s3://bucket/prefix?endpoint=URL&region=R. Repeat for
    /// several; every object is written to each.
    #[arg(long = "dest", required = true, value_name = "DEST")]
    pub dests: Vec<String>,
    /// How many destinations must hold an object before a backup counts as done (default: all).
    #[arg(long)]
    pub quorum: Option<usize>,
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    #[arg(long, env = "LIFEBOAT_SPOOL", value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// INSECURE, for tests only: wrap the key with a minimal argon2id (64 KiB, 1 pass) so
    /// every command starts faster. Anyone who copies keys/ can then try passwords very fast.
    /// The key stays marked as weakly wrapped: `vault status` and `vault verify` say so.
    #[arg(long)]
    pub insecure_fast_kdf: bool,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Read every file even if unchanged since the previous snapshot.
    #[arg(long)]
    pub force: bool,
    /// What to back up. One directory: its contents form the snapshot; several: each by name.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Snapshot id (or a unique prefix), or `latest`.
    pub snapshot: String,
    /// Directory to restore into; must be empty unless --overwrite.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Restore only this path of the snapshot (repeatable), e.g. uploads/2026/.
    #[arg(long, value_name = "PATH")]
    pub include: Vec<String>,
    /// Restore into a non-empty directory, replacing entries the snapshot has.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Download every pack and check every blob (reads all data).
    #[arg(long)]
    pub read_data: bool,
    /// Check only this destination.
    #[arg(long, value_name = "DEST")]
    pub destination: Option<String>,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[arg(long, default_value_t = 0)]
    pub keep_last: usize,
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: usize,
    #[arg(long, default_value_t = 0)]
    pub keep_daily: usize,
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: usize,
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: usize,
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: usize,
    /// Always keep snapshots with this tag (repeatable).
    #[arg(long = "keep-tag", value_name = "TAG")]
    pub keep_tags: Vec<String>,
    /// Show what would be removed without removing it.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Leftover packs of interrupted backups are deleted once older than this.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub unindexed_grace: Duration,
}

pub fn run(cmd: VaultCommand, global: &Global) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(cmd, global))
}

pub(crate) fn read_password(file: Option<&PathBuf>, confirm: bool) -> anyhow::Result<Vec<u8>> {
    if let Some(f) = file {
        let s = std::fs::read_to_string(f)
            .with_context(|| format!("reading the password file {}", f.display()))?;
        let s = s.strip_suffix('\n').unwrap_or(&s);
        return Ok(s.strip_suffix('\r').unwrap_or(s).as_bytes().to_vec());
    }
    if let Ok(p) = std::env::var("LIFEBOAT_PASSWORD") {
        return Ok(p.into_bytes());
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password("vault password: ").context("reading the password")?;
        if confirm {
            let again = rpassword::prompt_password("again: ").context("reading the password")?;
            anyhow::ensure!(p == again, "the two passwords differ; nothing was created");
        }
        return Ok(p.into_bytes());
    }
    anyhow::bail!(
        "no password: set LIFEBOAT_PASSWORD, pass --password-file FILE, or run on a terminal"
    )
}

/// How to open a repository; `kdf` only matters for `init` (`None`: strong).
fn open_options(spool: Option<&PathBuf>, kdf: Option<KdfParams>) -> OpenOptions {
    OpenOptions {
        spool_dir: spool.cloned(),
        kdf,
        // S3 keys come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, never from arguments.
        s3_credentials: None,
    }
}

async fn open(args: &RepoArgs) -> anyhow::Result<Arc<Repository>> {
    let password = read_password(args.password_file.as_ref(), false)?;
    let repo = Repository::open(
        &args.repo,
        &password,
        &open_options(args.spool.as_ref(), None),
    )
    .await?;
    Ok(Arc::new(repo))
}

async fn run_async(cmd: VaultCommand, global: &Global) -> anyhow::Result<ExitCode> {
    let json = global.json;
    match cmd {
        VaultCommand::Vault(VaultSub::Init(a)) => {
            let password = read_password(a.password_file.as_ref(), true)?;
            // Weak key wrapping only when asked for by name, never from the environment.
            let kdf = a.insecure_fast_kdf.then(KdfParams::insecure_fast);
            let repo = Repository::init(
                &a.dests,
                a.quorum,
                &password,
                &open_options(a.spool.as_ref(), kdf),
            )
            .await?;
            output::init(repo.config(), repo.key(), json);
        }
        VaultCommand::Backup(a) => {
            let repo = open(&a.repo).await?;
            let opts = BackupOptions {
                tags: a.tags.clone(),
                force_read: a.force,
                lock_wait: a.repo.lock_wait,
                host: None,
            };
            let bar = progress::bar(json);
            let snap = repo.backup(&a.paths, &opts, bar.clone()).await;
            bar.finish();
            output::backup(&snap?, json);
        }
        VaultCommand::Snapshots(a) => {
            let repo = open(&a.repo).await?;
            output::snapshots(&repo.snapshots().await?, json);
        }
        VaultCommand::Restore(a) => {
            let repo = open(&a.repo).await?;
            let snap = repo.find_snapshot(&a.snapshot).await?;
            let opts = RestoreOptions {
                include: a.include.clone(),
                overwrite: a.overwrite,
            };
            let bar = progress::bar(json);
            let summary = repo
                .restore(snap.snapshot.tree, &a.to, &opts, bar.clone())
                .await;
            bar.finish();
            output::restore(&snap, &summary?, &a.to, json);
        }
        VaultCommand::Vault(VaultSub::Verify(a)) => {
            let repo = open(&a.repo).await?;
            let destination = a.destination.as_deref().map(normalize);
            let report = repo
                .verify(&VerifyOptions {
                    read_data: a.read_data,
                    destination,
                })
                .await?;
            output::verify(&report, json);
            if !report.is_ok() {
                return Ok(ExitCode::from(1));
            }
        }
        VaultCommand::Vault(VaultSub::Forget(a)) => {
            let repo = open(&a.repo).await?;
            let policy = KeepPolicy {
                last: a.keep_last,
                hourly: a.keep_hourly,
                daily: a.keep_daily,
                weekly: a.keep_weekly,
                monthly: a.keep_monthly,
                yearly: a.keep_yearly,
                tags: a.keep_tags.clone(),
            };
            let removed = repo.forget(&policy, a.dry_run, a.repo.lock_wait).await?;
            output::forget(&removed, a.dry_run, json);
        }
        VaultCommand::Vault(VaultSub::Prune(a)) => {
            let repo = open(&a.repo).await?;
            let summary = repo
                .prune(&PruneOptions {
                    unindexed_grace: a.unindexed_grace,
                    lock_wait: a.repo.lock_wait,
                    ..PruneOptions::default()
                })
                .await?;
            output::prune(&summary, json);
        }
        VaultCommand::Vault(VaultSub::Status(a)) => {
            let repo = open(&a).await?;
            output::status(&repo.status().await, repo.config().quorum, repo.key(), json);
        }
        VaultCommand::Vault(VaultSub::Key(KeyCommand::Export)) => {
            export_key(&global.dir, json)?;
        }
        VaultCommand::Vault(VaultSub::Sync(a)) => {
            let repo = open(&a).await?;
            let behind = repo.catch_up().await;
            output::status(&repo.status().await, repo.config().quorum, repo.key(), json);
            if !behind.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn export_key(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let paths = lifeboat_control::SitePaths::new(dir);
    let manifest_path = paths.manifest();
    let text = std::fs::read_to_string(&manifest_path).with_context(|| {
        format!(
            "could not read {}; run this in the site dir or give -C DIR",
            manifest_path.display()
        )
    })?;
    let manifest = lifeboat_core::Manifest::parse(&manifest_path.display().to_string(), &text)?;
    let key = lifeboat_control::vault_key::read_key(&paths)?.ok_or_else(|| {
        anyhow::anyhow!(
            "this site has no vault key yet ({} is missing); `lifeboat up` with a [vault] section makes one",
            paths.vault_key().display()
        )
    })?;
    let site_dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let destinations: Vec<String> = manifest
        .vault
        .iter()
        .flat_map(|v| v.destinations.iter())
        .map(|d| lifeboat_control::vault_key::resolve_destination(&site_dir, d))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({ "site": manifest.site, "key": key, "destinations": destinations })
        );
        return Ok(());
    }
    println!(
        "# Vault key of the site {}. Keep it somewhere safe, away from this machine:",
        manifest.site
    );
    println!("# without it nothing in the vault can be read. To restore the site elsewhere:");
    if let Some(d) = destinations.first() {
        println!(
            "#   LIFEBOAT_PASSWORD=<key> lifeboat restore-site --repo {d} --to latest --into DIR"
        );
    }
    println!(
        "# To use it again for this site, put the key alone in {}.",
        paths.vault_key().display()
    );
    for d in &destinations {
        println!("# destination: {d}");
    }
    println!("{key}");
    Ok(())
}

/// Destinations are compared in their stored form (absolute paths).
fn normalize(d: &str) -> String {
    if d.contains("://") {
        return d.trim_end_matches('/').to_string();
    }
    std::path::absolute(d)
        .map(|p| p.to_string_lossy().trim_end_matches('/').to_string())
        .unwrap_or_else(|_| d.to_string())
}
