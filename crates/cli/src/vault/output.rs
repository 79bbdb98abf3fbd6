//! Printing vault results as text for people or JSON for scripts.
use std::path::Path;

use lifeboat_vault::format::Config;
use lifeboat_vault::{
    DestinationStatus, KeyInfo, PruneSummary, RestoreSummary, SnapshotEntry, VerifyReport,
};
use serde_json::json;

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
}

fn short(id: &lifeboat_vault::Id) -> String {
    id.to_hex()[..8].to_string()
}

/// What a weakly wrapped key means and what to do, for stderr (also under `--json`).
fn warn_if_weak(key: &KeyInfo) {
    if key.weak {
        eprintln!(
            "warning: the key {} is weakly wrapped (argon2id, {} KiB, {} pass(es): settings for tests): \
             anyone who copies it can try passwords very fast; for real data, make a new repository (without --insecure-fast-kdf) and back up into it",
            key.key, key.kdf.memory_kib, key.kdf.iterations
        );
    }
}

pub fn init(c: &Config, key: &KeyInfo, json: bool) {
    warn_if_weak(key);
    if json {
        print_json(&json!({"id": c.id, "destinations": c.destinations, "quorum": c.quorum}));
    } else {
        println!(
            "created repository {} on {} destination(s), quorum {}:",
            c.id,
            c.destinations.len(),
            c.quorum
        );
        for d in &c.destinations {
            println!("  {d}");
        }
    }
}

fn snapshot_json(s: &SnapshotEntry) -> serde_json::Value {
    json!({
        "id": s.id.to_hex(),
        "short_id": short(&s.id),
        "time": s.snapshot.time,
        "host": s.snapshot.host,
        "paths": s.snapshot.paths,
        "tags": s.snapshot.tags,
        "tree": s.snapshot.tree.to_hex(),
        "parent": s.snapshot.parent.map(|p| p.to_hex()),
        "summary": s.snapshot.summary,
    })
}

pub fn backup(s: &SnapshotEntry, json: bool) {
    if json {
        print_json(&snapshot_json(s));
    } else {
        let m = &s.snapshot.summary;
        eprintln!(
            "{} files ({} unchanged), {} bytes; stored {} new bytes in {} pack(s)",
            m.files, m.files_unchanged, m.bytes, m.new_bytes_stored, m.packs
        );
        println!("{}", s.id.to_hex());
    }
}

pub fn snapshots(list: &[SnapshotEntry], json: bool) {
    if json {
        print_json(&serde_json::Value::Array(
            list.iter().map(snapshot_json).collect(),
        ));
        return;
    }
    println!(
        "{:<10} {:<31} {:<16} {:<20} paths",
        "id", "time", "host", "tags"
    );
    for s in list {
        println!(
            "{:<10} {:<31} {:<16} {:<20} {}",
            short(&s.id),
            s.snapshot.time,
            s.snapshot.host,
            s.snapshot.tags.join(","),
            s.snapshot.paths.join(" ")
        );
    }
    println!("{} snapshot(s)", list.len());
}

pub fn restore(s: &SnapshotEntry, r: &RestoreSummary, to: &Path, json: bool) {
    if json {
        print_json(&json!({"snapshot": s.id.to_hex(), "target": to, "summary": r}));
    } else {
        println!(
            "restored snapshot {} to {}: {} files written ({} bytes), {} unchanged files kept, {} dirs, {} symlinks, {} packs read",
            short(&s.id),
            to.display(),
            r.files_written,
            r.bytes_written,
            r.files_reused,
            r.dirs,
            r.symlinks,
            r.packs_read
        );
    }
}

pub fn verify(r: &VerifyReport, json: bool) {
    for key in &r.keys {
        warn_if_weak(key);
    }
    if json {
        print_json(&serde_json::to_value(r).expect("serializes"));
        return;
    }
    println!("{} snapshot(s) checked", r.snapshots);
    for p in &r.problems {
        println!(
            "PROBLEM {}: {} (snapshots: {})",
            p.object,
            p.what,
            p.snapshots.join(", ")
        );
    }
    for d in &r.destinations {
        let state = if !d.reachable {
            "UNREACHABLE"
        } else if d.problems.is_empty() {
            "ok"
        } else {
            "DAMAGED"
        };
        println!(
            "{state:<11} {} ({} packs read, {} unindexed packs)",
            d.url, d.packs_checked, d.unindexed_packs
        );
        for p in &d.problems {
            println!(
                "  {}: {} (needed by snapshots: {})",
                p.object,
                p.what,
                if p.snapshots.is_empty() {
                    "none".to_string()
                } else {
                    p.snapshots.join(", ")
                }
            );
        }
    }
    if r.is_ok() {
        println!("no problems found");
    }
}

pub fn forget(removed: &[SnapshotEntry], dry_run: bool, json: bool) {
    if json {
        print_json(
            &json!({"dry_run": dry_run, "removed": removed.iter().map(snapshot_json).collect::<Vec<_>>()}),
        );
        return;
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for s in removed {
        println!("{verb} {} {}", short(&s.id), s.snapshot.time);
    }
    println!(
        "{verb} {} snapshot(s); run `lifeboat vault prune` to free their data",
        removed.len()
    );
}

pub fn prune(s: &PruneSummary, json: bool) {
    if json {
        print_json(&serde_json::to_value(s).expect("serializes"));
    } else {
        println!(
            "deleted {} pack(s), repacked {}, wrote {}, freed {} bytes, replaced {} index(es)",
            s.packs_deleted, s.packs_repacked, s.packs_written, s.bytes_freed, s.indexes_replaced
        );
    }
}

pub fn status(list: &[DestinationStatus], quorum: usize, key: &KeyInfo, json: bool) {
    warn_if_weak(key);
    if json {
        print_json(&json!({"quorum": quorum, "destinations": list, "key": key}));
        return;
    }
    println!(
        "key: {} (argon2id, {} KiB, {} pass(es)){}",
        key.key,
        key.kdf.memory_kib,
        key.kdf.iterations,
        if key.weak { ", WEAKLY WRAPPED" } else { "" }
    );
    println!("quorum: {quorum} of {}", list.len());
    for d in list {
        println!(
            "{:<12} {}  behind: {} object(s)  last success: {}{}",
            if d.reachable {
                "reachable"
            } else {
                "UNREACHABLE"
            },
            d.url,
            d.objects_behind,
            d.last_success.as_deref().unwrap_or("never"),
            d.last_error
                .as_ref()
                .map(|e| format!("  last error: {e}"))
                .unwrap_or_default()
        );
    }
}
