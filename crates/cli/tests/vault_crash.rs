//! Crash safety of the real `lifeboat` process: backups and prunes are killed with SIGKILL at
//! random moments, many times. After every kill the repository verifies, and every snapshot
//! that was reported done (its id printed) restores byte for byte.
mod common_vault;

use std::collections::HashMap;
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

fn assert_verifies(s: &Scratch, after: &str) {
    let out = s.run(&["vault", "verify", "--repo", "repo-a"]);
    assert!(
        out.status.success(),
        "verify failed after {after}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
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
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let s = Scratch::new();
    make_site(&s.path("data"));
    s.init(&["repo-a", "repo-b"]);

    // How long an uninterrupted backup takes here, to spread the kills over it.
    let started = Instant::now();
    let first = s
        .ok(&["backup", "--repo", "repo-a", "data"])
        .trim()
        .to_string();
    let span = started.elapsed().as_millis().max(20) as u64;
    let mut expected = HashMap::new();
    let copy = s.path("expected/0");
    std::fs::create_dir_all(s.path("expected")).unwrap();
    copy_tree(&s.path("data"), &copy);
    expected.insert(first, copy);

    // And an uninterrupted prune with work to do.
    mutate(&s, &mut rng, 0);
    s.ok(&["backup", "--repo", "repo-a", "data"]);
    s.ok(&["vault", "forget", "--repo", "repo-a", "--keep-last", "1"]);
    let t = Instant::now();
    s.ok(&[
        "vault",
        "prune",
        "--repo",
        "repo-a",
        "--unindexed-grace",
        "0s",
    ]);
    let mut prune_span = t.elapsed().as_millis().max(10) as u64;
    let (mut backup_kills, mut prune_kills, mut round) = (0, 0, 0u64);
    while (backup_kills < 30 || prune_kills < 10) && round < 120 {
        round += 1;
        mutate(&s, &mut rng, round);
        if backup_kills < 30 || rng.below(2) == 0 {
            let delay = Duration::from_millis(rng.below(span * 5 / 4));
            match run_and_maybe_kill(
                &s,
                &["backup", "--repo", "repo-a", "--lock-wait", "60s", "data"],
                delay,
            ) {
                Ending::Killed => {
                    backup_kills += 1;
                    assert_verifies(&s, &format!("backup killed after {delay:?} (seed {seed})"));
                }
                Ending::Finished(out, _) => {
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
                    assert_verifies(&s, &format!("prune killed after {delay:?} (seed {seed})"));
                }
                // Aim the next kills within how long a prune actually takes now.
                Ending::Finished(_, took) => prune_span = took.as_millis().max(5) as u64,
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
    s.ok(&[
        "vault",
        "prune",
        "--repo",
        "repo-a",
        "--unindexed-grace",
        "0s",
        "--lock-wait",
        "60s",
    ]);
    let out = s.ok(&["vault", "verify", "--repo", "repo-a", "--read-data"]);
    assert!(out.contains("no problems found"), "{out}");
    let checked = assert_reported_snapshots_restore(&s, &expected);
    assert!(
        checked >= 1,
        "the last backup must be listed and restorable"
    );
    assert!(s.snapshots("repo-a").iter().any(|x| x["id"] == last));
}
