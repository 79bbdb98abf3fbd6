//! Restores a snapshot with the library alone, for profiling restore without building the
//! CLI (`perf record -g target/release/examples/restore REPO SNAPSHOT TARGET`). The password
//! comes from `LIFEBOAT_PASSWORD`. Prints the summary as JSON.
use std::sync::Arc;

use lifeboat_vault::{NoProgress, OpenOptions, Repository, RestoreOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [repo, snapshot, target] = args.as_slice() else {
        return Err("usage: restore REPO SNAPSHOT|latest TARGET".into());
    };
    let password = std::env::var("LIFEBOAT_PASSWORD")
        .map_err(|_| "set LIFEBOAT_PASSWORD to the repository password")?;
    let repo =
        Arc::new(Repository::open(repo, password.as_bytes(), &OpenOptions::default()).await?);
    let snap = repo.find_snapshot(snapshot).await?;
    let summary = repo
        .restore(
            snap.snapshot.tree,
            target.as_ref(),
            &RestoreOptions::default(),
            Arc::new(NoProgress),
        )
        .await?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
