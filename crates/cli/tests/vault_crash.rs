//! Crash safety of the real `lifeboat` process: backups and prunes are killed with SIGKILL at
//! random moments, many times. After every kill the repository verifies, and every snapshot
//! that was reported done (its id printed) restores byte for byte.
mod common_vault;

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common_vault::*;

/// Small deterministic random numbers; the seed is printed so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

enum Ending {
    Killed,
    /// Stdout, and how long it ran.
    Finished(String, Duration),
}

/// Starts `lifeboat ARGS`, kills it with SIGKILL after `delay` unless it finished before.
fn run_and_maybe_kill(s: &Scratch, args: &[&str], delay: Duration) -> Ending {
    let mut child = s
        .lifeboat()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let deadline = started + delay;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(
                status.success(),
                "lifeboat {args:?} failed after earlier kills: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return Ending::Finished(String::from_utf8(out.stdout).unwrap(), started.elapsed());
        }
        if Instant::now() >= deadline {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return Ending::Killed;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Which command made and which removed each object of both destinations, so a failed verify
/// says who wrote the reference and who deleted the object (and whether it ever existed).
#[derive(Default)]
struct Journal {
    /// `repo-x/key` -> modification time (ns), as of the last record.
    present: BTreeMap<String, u128>,
    /// Per step: what it was, what appeared, what went.
    steps: Vec<(String, Vec<String>, Vec<String>)>,
}

impl Journal {
    fn list(s: &Scratch) -> BTreeMap<String, u128> {
        fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut BTreeMap<String, u128>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    walk(root, &p, out);
                } else {
                    let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                    let t = m.modified().unwrap().duration_since(std::time::UNIX_EPOCH);
                    out.insert(rel, t.unwrap().as_nanos());
                }
            }
        }
        let mut out = BTreeMap::new();
        for repo in ["repo-a", "repo-b"] {
            for dir in ["data", "index", "snapshots"] {
                walk(&s.path(""), &s.path(&format!("{repo}/{dir}")), &mut out);
            }
        }
        out
    }

    /// Records what `what` changed.
    fn record(&mut self, s: &Scratch, what: String) {
        let now = Journal::list(s);
        let added = now
            .iter()
            .filter(|(k, t)| self.present.get(*k) != Some(t))
            .map(|(k, t)| format!("{k} (mtime {}.{:09})", t / 1_000_000_000, t % 1_000_000_000))
            .collect();
        let removed = self
            .present
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        self.steps.push((what, added, removed));
        self.present = now;
    }

    /// The history of every object key named in `report`.
    fn explain(&self, report: &str) -> String {
        let mut out = String::new();
        let keys: std::collections::BTreeSet<&str> = report
            .split_whitespace()
            .filter(|w| w.starts_with("data/") || w.starts_with("index/"))
            .map(|w| w.trim_end_matches([',', ':', ')']))
            .collect();
        for key in keys {
            out.push_str(&format!("history of {key}:\n"));
            for (what, added, removed) in &self.steps {
                for a in added.iter().filter(|a| a.contains(key)) {
                    out.push_str(&format!("  {what}: wrote {a}\n"));
                }
                for r in removed.iter().filter(|r| r.contains(key)) {
                    out.push_str(&format!("  {what}: removed {r}\n"));
                }
            }
        }
        out
    }
}

fn assert_verifies(s: &Scratch, journal: &Journal, after: &str) {
    let out = s.run(&["vault", "verify", "--repo", "repo-a"]);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "verify failed after {after}:\n{report}\n{}",
        journal.explain(&report)
    );
}

/// Every listed snapshot that was reported done restores exactly as it was backed up.
fn assert_reported_snapshots_restore(
    s: &Scratch,
    expected: &HashMap<String, std::path::PathBuf>,
) -> usize {
    let mut checked = 0;
    for snap in s.snapshots("repo-a") {
        let id = snap["id"].as_str().unwrap();
        let Some(copy) = expected.get(id) else {
            continue;
        };
        let to = s.path(&format!("check-{id}"));
        s.ok(&[
            "restore",
            "--repo",
            "repo-b",
            id,
            "--to",
            to.to_str().unwrap(),
        ]);
        assert_same_tree(copy, &to);
        std::fs::remove_dir_all(&to).unwrap();
        checked += 1;
    }
    checked
}

fn mutate(s: &Scratch, rng: &mut Rng, round: u64) {
    let data = s.path("data");
    for _ in 0..3 {
        let i = rng.below(20);
        write(
            &data,
            &format!("uploads/2026/{i:02}/photo-{i}.jpg"),
            &noise(rng.next(), 20_000 + rng.below(60_000) as usize),
        );
    }
    write(
        &data,
        &format!("uploads/new/{round}.bin"),
        &noise(rng.next(), rng.below(400_000) as usize),
    );
    let mut db = std::fs::read(data.join("db/site.sqlite")).unwrap();
    let at = rng.below(db.len() as u64) as usize;
    db[at] ^= 0x5a;
    std::fs::write(data.join("db/site.sqlite"), db).unwrap();
}

#[test]
fn killed_backups_and_prunes_never_damage_the_repository() {
    // LIFEBOAT_CRASH_SEED replays a failed run.
    let seed = std::env::var("LIFEBOAT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let s = Scratch::new();
    make_site(&s.path("data"));
    s.init(&["repo-a", "repo-b"]);
    let mut journal = Journal::default();

    // How long an uninterrupted backup takes here, to spread the kills over it.
    let started = Instant::now();
    let first = s
        .ok(&["backup", "--repo", "repo-a", "data"])
        .trim()
        .to_string();
    let mut backup_span = started.elapsed().as_millis().max(20) as u64;
    journal.record(&s, format!("first backup {first}"));
    let mut expected = HashMap::new();
    let copy = s.path("expected/0");
    std::fs::create_dir_all(s.path("expected")).unwrap();
    copy_tree(&s.path("data"), &copy);
    expected.insert(first, copy);

    // And an uninterrupted prune with work to do.
    mutate(&s, &mut rng, 0);
    let second = s.ok(&["backup", "--repo", "repo-a", "data"]);
    journal.record(&s, format!("second backup {}", second.trim()));
    s.ok(&["vault", "forget", "--repo", "repo-a", "--keep-last", "1"]);
    journal.record(&s, "forget".into());
    let t = Instant::now();
    let pruned = s.ok(&[
        "vault",
        "prune",
        "--repo",
        "repo-a",
        "--unindexed-grace",
        "0s",
    ]);
    let mut prune_span = t.elapsed().as_millis().max(10) as u64;
    journal.record(&s, format!("first prune ({})", pruned.trim()));
    let (mut backup_kills, mut prune_kills, mut round) = (0, 0, 0u64);
    while (backup_kills < 30 || prune_kills < 10) && round < 120 {
        round += 1;
        mutate(&s, &mut rng, round);
        if backup_kills < 30 || rng.below(2) == 0 {
            let delay = Duration::from_millis(rng.below(backup_span * 5 / 4));
            match run_and_maybe_kill(
                &s,
                &["backup", "--repo", "repo-a", "--lock-wait", "60s", "data"],
                delay,
            ) {
                Ending::Killed => {
                    backup_kills += 1;
                    let what = format!("round {round}: backup killed after {delay:?}");
                    journal.record(&s, what.clone());
                    assert_verifies(&s, &journal, &format!("{what} (seed {seed})"));
                }
                Ending::Finished(out, took) => {
                    let what = format!("round {round}: backup {}", out.trim());
                    journal.record(&s, what.clone());
                    assert_verifies(&s, &journal, &format!("{what} (seed {seed})"));
                    // Aim the next kills within how long a backup actually takes now (the
                    // first one read everything; later ones mostly reuse the parent's).
                    backup_span = took.as_millis().max(20) as u64;
                    let copy = s.path(&format!("expected/{round}"));
                    copy_tree(&s.path("data"), &copy);
                    let id = out.trim().to_string();
                    // Reported done: it restores exactly, right now and (checked at the end)
                    // after every later kill.
                    let to = s.path(&format!("check-{round}"));
                    s.ok(&[
                        "restore",
                        "--repo",
                        "repo-b",
                        &id,
                        "--to",
                        to.to_str().unwrap(),
                    ]);
                    assert_same_tree(&copy, &to);
                    std::fs::remove_dir_all(&to).unwrap();
                    expected.insert(id, copy);
                }
            }
        }
        if round % 2 == 0 {
            s.ok(&[
                "vault",
                "forget",
                "--repo",
                "repo-a",
                "--keep-last",
                "4",
                "--lock-wait",
                "60s",
            ]);
            journal.record(&s, format!("round {round}: forget"));
            let delay = Duration::from_millis(rng.below(prune_span));
            let args = [
                "vault",
                "prune",
                "--repo",
                "repo-a",
                "--unindexed-grace",
                "0s",
                "--lock-wait",
                "60s",
            ];
            match run_and_maybe_kill(&s, &args, delay) {
                Ending::Killed => {
                    prune_kills += 1;
                    let what = format!("round {round}: prune killed after {delay:?}");
                    journal.record(&s, what.clone());
                    assert_verifies(&s, &journal, &format!("{what} (seed {seed})"));
                }
                Ending::Finished(out, took) => {
                    let what = format!("round {round}: prune ({})", out.trim());
                    journal.record(&s, what.clone());
                    // A prune that finished must leave everything verifying too: deleting
                    // what a kept snapshot needs is damage whether or not a kill follows.
                    assert_verifies(&s, &journal, &format!("{what} (seed {seed})"));
                    // Aim the next kills within how long a prune actually takes now.
                    prune_span = took.as_millis().max(5) as u64;
                }
            }
        }
    }
    assert!(
        backup_kills >= 30,
        "only {backup_kills} backups were killed mid-way"
    );
    assert!(
        prune_kills >= 10,
        "only {prune_kills} prunes were killed mid-way"
    );

    // A final clean backup and prune work, and everything reported done restores.
    let last = s
        .ok(&["backup", "--repo", "repo-a", "--lock-wait", "60s", "data"])
        .trim()
        .to_string();
    let copy = s.path("expected/last");
    copy_tree(&s.path("data"), &copy);
    expected.insert(last.clone(), copy);
    journal.record(&s, format!("last backup {last}"));
    let pruned = s.ok(&[
        "vault",
        "prune",
        "--repo",
        "repo-a",
        "--unindexed-grace",
        "0s",
        "--lock-wait",
        "60s",
    ]);
    journal.record(&s, format!("last prune ({})", pruned.trim()));
    let out = s.run(&["vault", "verify", "--repo", "repo-a", "--read-data"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("no problems found"),
        "final verify failed (seed {seed}):\n{report}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        journal.explain(&report)
    );
    let checked = assert_reported_snapshots_restore(&s, &expected);
    assert!(
        checked >= 1,
        "the last backup must be listed and restorable"
    );
    assert!(s.snapshots("repo-a").iter().any(|x| x["id"] == last));
}
