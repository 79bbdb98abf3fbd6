//! Point-in-time restore: a base backup plus captured transactions, replayed up to a target,
//! into a new data directory that is then started and checked.
//!
//! # What "as of T" means
//!
//! MariaDB's binlog timestamps are whole seconds, too coarse to cut between two transactions
//! of the same second. The cut is made on capture's clock instead: a restore to T holds
//! every captured transaction whose `received_at` is at or before T, in commit order, and
//! none after (the first transaction received after T ends the replay, so the result is
//! always a prefix of the commit order: a consistent database). A transaction is received
//! only after the server wrote and synced it to the binary log, so nothing written after T
//! is ever included. Its limit: a transaction whose commit began before T but that capture
//! received after T is left out — the window is the capture's lag behind the server
//! (milliseconds on the local socket while capture runs; longer while capture is down). For
//! a cut that does not depend on timing, restore to a GTID: exactly the transactions up to
//! and including it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mysql::prelude::Queryable;
use time::OffsetDateTime;

use crate::base::BaseBackup;
use crate::binlog::write_binlog_file;
use crate::error::{MariaDbError, Result, io_err};
use crate::gtid::{Gtid, GtidPos};
use crate::record::TransactionRecord;
use crate::server::{ServerSpec, set_root_password};
use crate::tools;

/// Where a restore stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreTarget {
    /// Every transaction capture received at or before this time (see the module docs).
    Time(OffsetDateTime),
    /// Every transaction up to and including this GTID (its domain), and every transaction
    /// of other domains committed before it.
    Gtid(Gtid),
    /// Everything in the history.
    Latest,
}

impl std::fmt::Display for RestoreTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreTarget::Time(t) => write!(f, "time {t}"),
            RestoreTarget::Gtid(g) => write!(f, "GTID {g}"),
            RestoreTarget::Latest => f.write_str("the latest captured transaction"),
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The restored data directory.
    pub data_dir: PathBuf,
    /// The GTID position it holds.
    pub gtid_pos: GtidPos,
    /// Transactions replayed on top of the base.
    pub transactions_replayed: usize,
    /// The last transaction replayed (`None`: the base alone).
    pub last: Option<Gtid>,
    /// Tables checked with `CHECK TABLE` (`db.table`).
    pub tables_checked: Vec<String>,
    /// How long each step took, in order (milliseconds): where a restore's time goes.
    pub phases_ms: Vec<(&'static str, u64)>,
}

/// Chooses the transactions to replay on `base_pos`: those of `history` (resolved, in seq
/// order) not already in the base, up to the target, checking that each follows the
/// previous one of its domain. Pure: no I/O.
pub fn select_transactions<'a>(
    base_pos: &GtidPos,
    base_taken_at: OffsetDateTime,
    history: &'a [TransactionRecord],
    target: &RestoreTarget,
) -> Result<Vec<&'a TransactionRecord>> {
    let cannot = |why: String| MariaDbError::CannotRestore {
        target: target.to_string(),
        why,
    };
    match target {
        RestoreTarget::Time(t) if *t < base_taken_at => {
            return Err(cannot(format!(
                "the base backup was taken at {base_taken_at}, after it; restore from an older base"
            )));
        }
        RestoreTarget::Gtid(g) if base_pos.get(g.domain).is_some_and(|b| b.seq > g.seq) => {
            return Err(cannot(format!(
                "the base backup already holds {}, after it; restore from an older base",
                base_pos.get(g.domain).expect("checked")
            )));
        }
        _ => {}
    }
    let mut pos = base_pos.clone();
    let mut out = Vec::new();
    let mut reached = matches!(target, RestoreTarget::Latest | RestoreTarget::Time(_))
        || matches!(target, RestoreTarget::Gtid(g) if pos.contains(*g));
    for r in history {
        if reached && matches!(target, RestoreTarget::Gtid(_)) {
            break;
        }
        if base_pos.contains(r.gtid) {
            // In the base. If capture received it after T, the base itself is past T (its
            // consistent point came after that receipt): an older base is needed.
            if let RestoreTarget::Time(t) = target
                && r.received_at > *t
            {
                return Err(cannot(format!(
                    "the base backup already holds {}, received after it; restore from an older base",
                    r.gtid
                )));
            }
            continue;
        }
        if pos.contains(r.gtid) {
            continue;
        }
        if let RestoreTarget::Time(t) = target
            && r.received_at > *t
        {
            break;
        }
        let expected = pos.get(r.gtid.domain).map_or(1, |g| g.seq + 1);
        if r.gtid.seq != expected {
            return Err(cannot(format!(
                "the captured history jumps from {} to {} (transactions are missing); choose a point before {} or restore from a base taken after it",
                pos.get(r.gtid.domain)
                    .map_or_else(|| "the start".to_string(), |g| g.to_string()),
                r.gtid,
                r.gtid
            )));
        }
        pos.advance(r.gtid);
        out.push(r);
        if let RestoreTarget::Gtid(g) = target
            && r.gtid.domain == g.domain
            && r.gtid.seq == g.seq
        {
            reached = true;
        }
    }
    if !reached {
        return Err(cannot(format!(
            "the captured history ends at {pos}; choose a GTID that was captured"
        )));
    }
    Ok(out)
}

/// Restores `base` plus the chosen part of `history` into `spec.data_dir` (absent or empty),
/// with `admin_password` as its new admin password and `spec`'s config; starts a server on
/// it, checks every table of every database with `CHECK TABLE`, and stops it. The returned
/// directory is ready for [`ServerSpec::command`].
pub fn restore(
    spec: &ServerSpec,
    admin_password: &str,
    base: &BaseBackup,
    history: &[TransactionRecord],
    target: &RestoreTarget,
) -> Result<RestoreReport> {
    restore_with_app(spec, admin_password, base, history, target, None)
}

/// The app's database login a restore sets (see [`restore_with_app`]).
#[derive(Debug, Clone, Copy)]
pub struct AppLogin<'a> {
    /// The app's database (created if the restore point predates it).
    pub database: &'a str,
    /// The app's user.
    pub user: &'a str,
    /// The password it gets.
    pub password: &'a str,
}

/// [`restore`], and, once the restored server started cleanly and its tables passed
/// `CHECK TABLE`, the app's user gets `app.password` (created, with its privileges, if the
/// restore point predates it): a restored copy then needs no secret of the original, and a
/// new password makes the old one fail on it.
pub fn restore_with_app(
    spec: &ServerSpec,
    admin_password: &str,
    base: &BaseBackup,
    history: &[TransactionRecord],
    target: &RestoreTarget,
    app: Option<AppLogin<'_>>,
) -> Result<RestoreReport> {
    restore_base_and_replay(
        spec,
        admin_password,
        base,
        history,
        target,
        app,
        BaseFiles::Copy,
    )
}

/// Like [`restore_with_app`], but the base's files are moved into the data dir, not copied:
/// for a base that was itself restored into a scratch dir deleted afterwards (it saves
/// writing the whole database a second time). The base is unusable afterwards. Across file
/// systems the files are copied.
pub fn restore_with_app_moving_base(
    spec: &ServerSpec,
    admin_password: &str,
    base: &BaseBackup,
    history: &[TransactionRecord],
    target: &RestoreTarget,
    app: Option<AppLogin<'_>>,
) -> Result<RestoreReport> {
    restore_base_and_replay(
        spec,
        admin_password,
        base,
        history,
        target,
        app,
        BaseFiles::Move,
    )
}

/// What a restore does with the base's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BaseFiles {
    Copy,
    Move,
}

fn restore_base_and_replay(
    spec: &ServerSpec,
    admin_password: &str,
    base: &BaseBackup,
    history: &[TransactionRecord],
    target: &RestoreTarget,
    app: Option<AppLogin<'_>>,
    files: BaseFiles,
) -> Result<RestoreReport> {
    let chosen = select_transactions(&base.info.gtid_pos, base.info.taken_at, history, target)?;
    // Everything is checked before anything is written.
    for r in &chosen {
        r.verify()?;
    }
    let mut phases = Vec::new();
    let mut clock = std::time::Instant::now();
    let mut lap = |name: &'static str, phases: &mut Vec<(&'static str, u64)>| {
        phases.push((name, clock.elapsed().as_millis() as u64));
        clock = std::time::Instant::now();
    };
    crate::base::open_base_backup(&base.dir)?;
    copy_base_into(&base.dir, &spec.data_dir, files)?;
    if let Some(user) = &spec.os_user {
        crate::server::chown_to(&spec.data_dir, user)?;
    }
    lap("base", &mut phases);
    spec.write_config(admin_password)?;
    set_root_password(spec, admin_password)?;
    lap("admin password", &mut phases);
    let (gtid_pos, tables_checked) = replay_and_check(spec, &base.info.gtid_pos, &chosen, app)?;
    lap("replay and check", &mut phases);
    Ok(RestoreReport {
        data_dir: spec.data_dir.clone(),
        gtid_pos,
        transactions_replayed: chosen.len(),
        last: chosen.last().map(|r| r.gtid),
        tables_checked,
        phases_ms: phases,
    })
}

/// Copies a base backup's files into an empty data directory (Lifeboat's own files and
/// mariadb-backup's bookkeeping are left out).
fn copy_base_into(base: &Path, data_dir: &Path, files: BaseFiles) -> Result<()> {
    if let Ok(mut rd) = std::fs::read_dir(data_dir)
        && rd.next().is_some()
    {
        return Err(MariaDbError::DataDirNotEmpty {
            path: data_dir.to_path_buf(),
        });
    }
    copy_tree(base, data_dir, true, files)
}

fn copy_tree(from: &Path, to: &Path, top: bool, files: BaseFiles) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io_err(to, "create"))?;
    for entry in std::fs::read_dir(from).map_err(io_err(from, "read"))? {
        let entry = entry.map_err(io_err(from, "read"))?;
        let name = entry.file_name();
        let n = name.to_string_lossy();
        if top
            && (n == crate::base::BASE_INFO_FILE
                || n.starts_with("xtrabackup_")
                || n.starts_with("mariadb_backup_")
                || n == "backup-my.cnf")
        {
            continue;
        }
        let src = entry.path();
        let dst = to.join(&name);
        let ft = entry.file_type().map_err(io_err(&src, "stat"))?;
        if ft.is_dir() {
            copy_tree(&src, &dst, false, files)?;
        } else if ft.is_file() {
            // A rename that fails (another file system) falls back to a copy.
            if files == BaseFiles::Copy || std::fs::rename(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).map_err(io_err(&dst, "copy to"))?;
            }
        }
    }
    Ok(())
}

/// Replays `chosen` on a server started on the data dir (binlog on, so the restored server's
/// GTID state continues from the last one replayed), checks the position reached against the
/// expected one, then, in the same server's life, runs `CHECK TABLE` on every table and sets
/// the app's login (kept out of the binlog). Returns the position and the tables checked. One
/// start and one clean stop: a rewind waits for each.
fn replay_and_check(
    spec: &ServerSpec,
    base_pos: &GtidPos,
    chosen: &[&TransactionRecord],
    app: Option<AppLogin<'_>>,
) -> Result<(GtidPos, Vec<String>)> {
    // Replay is not the live site: per-commit fsyncs are not needed (a crash during a
    // restore means restoring again); the clean shutdown below makes everything durable.
    let mut fast = spec.clone();
    fast.port = None;
    fast.extra_options.extend([
        "sync_binlog=0".to_string(),
        "innodb_flush_log_at_trx_commit=2".to_string(),
    ]);
    let password = spec.admin_password()?;
    fast.write_config(&password)?;
    let server = fast.start(Duration::from_secs(60))?;
    {
        let mut conn = fast.connect_admin()?;
        let q = |conn: &mut mysql::Conn, sql: String, doing: &str| {
            conn.query_drop(sql).map_err(|source| MariaDbError::Query {
                socket: fast.socket(),
                doing: doing.to_string(),
                source,
            })
        };
        q(&mut conn, "RESET MASTER".into(), "start a new binlog")?;
        if !base_pos.is_empty() {
            q(
                &mut conn,
                format!("SET GLOBAL gtid_binlog_state = '{base_pos}'"),
                "set the binlog GTID state to the base's",
            )?;
        }
    }
    let mut expected = base_pos.clone();
    for r in chosen {
        expected.advance(r.gtid);
    }
    pipe_in_runs(&fast, chosen, "replay.binlog")?;
    let got = fast.gtid_binlog_pos()?;
    if got != expected {
        return Err(MariaDbError::CannotRestore {
            target: expected.to_string(),
            why: format!(
                "after replay the server holds GTID position {got}, not {expected}; this is a bug in lifeboat, please report it"
            ),
        });
    }
    // The replayed transactions are in the tables now; the restored server's binlog starts
    // after them, at the restore point. Left in it, they would be captured a second time by
    // the restored state's capture (which starts where the binlog starts), and a later restore
    // reading both captures would find each of them twice.
    if !chosen.is_empty() {
        let mut conn = fast.connect_admin()?;
        for (sql, doing) in [
            (
                "RESET MASTER".to_string(),
                "start the binlog at the restore point",
            ),
            (
                format!("SET GLOBAL gtid_binlog_state = '{got}'"),
                "set the binlog GTID state to the restore point",
            ),
        ] {
            conn.query_drop(sql).map_err(|source| MariaDbError::Query {
                socket: fast.socket(),
                doing: doing.to_string(),
                source,
            })?;
        }
    }
    let checked = check_all_tables(&fast, &spec.data_dir).and_then(|tables| {
        if let Some(app) = app {
            fast.create_app_database_unlogged(app.database, app.user, app.password)?;
        }
        Ok(tables)
    });
    let stopped = server.stop(Duration::from_secs(120));
    spec.write_config(&password)?;
    let checked = checked?;
    stopped?;
    Ok((got, checked))
}

/// Applies `records` (in seq order, one capture's) to the server of `spec`, which must not
/// be running: starts it with its own config (durable settings: a kill -9 loses nothing it
/// confirmed), skips what its binlog position already holds (so applying the same records
/// again after a crash changes nothing), replays the rest, checks the position reached and
/// stops it cleanly. What a warm standby does with the transactions it received. Returns the
/// server's position.
pub fn apply_transactions(spec: &ServerSpec, records: &[TransactionRecord]) -> Result<GtidPos> {
    // The config names the data dir: a copy restored elsewhere and moved here must be
    // started where it is now.
    spec.write_config(&spec.admin_password()?)?;
    let server = spec.start(Duration::from_secs(120))?;
    let applied = apply_on_running(spec, records);
    let stopped = server.stop(Duration::from_secs(120));
    let pos = applied?;
    stopped?;
    Ok(pos)
}

/// [`apply_transactions`] on a server of `spec` that is running (its admin connects over
/// the socket); it stays running.
pub fn apply_on_running(spec: &ServerSpec, records: &[TransactionRecord]) -> Result<GtidPos> {
    let start = spec.gtid_binlog_pos()?;
    let mut expected = start.clone();
    let mut chosen = Vec::new();
    for r in records {
        if expected.contains(r.gtid) {
            continue;
        }
        let next = expected.get(r.gtid.domain).map_or(1, |g| g.seq + 1);
        if r.gtid.seq != next {
            return Err(MariaDbError::CannotRestore {
                target: r.gtid.to_string(),
                why: format!(
                    "the server holds {expected} and the next transaction received is {}: transactions are missing",
                    r.gtid
                ),
            });
        }
        expected.advance(r.gtid);
        chosen.push(r);
    }
    pipe_in_runs(spec, &chosen, "apply.binlog")?;
    let got = spec.gtid_binlog_pos()?;
    if got != expected {
        return Err(MariaDbError::CannotRestore {
            target: expected.to_string(),
            why: format!(
                "after applying the received transactions the server holds {got}, not {expected}; this is a bug in lifeboat, please report it"
            ),
        });
    }
    Ok(got)
}

/// Feeds `records` to the server of `spec`: one binlog file (`file_name` in its run dir) per
/// run of records under the same format description, each through [`pipe_binlog_into_server`].
fn pipe_in_runs(spec: &ServerSpec, records: &[&TransactionRecord], file_name: &str) -> Result<()> {
    let file = spec.run_dir.join(file_name);
    for run in records.chunk_by(|a, b| a.format == b.format) {
        {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&file).map_err(io_err(&file, "create"))?,
            );
            write_binlog_file(
                &mut f,
                &run[0].format,
                run.iter().map(|r| r.events.as_slice()),
            )?;
            f.flush().map_err(io_err(&file, "write"))?;
        }
        let piped = pipe_binlog_into_server(spec, &file);
        let _ = std::fs::remove_file(&file);
        piped?;
    }
    Ok(())
}

/// `mariadb-binlog FILE | mariadb`: the binlog's events as SQL, executed by the admin.
fn pipe_binlog_into_server(spec: &ServerSpec, file: &Path) -> Result<()> {
    let mut dump = tools::command(&spec.binaries.binlog);
    dump.arg("--no-defaults")
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut dump = dump
        .spawn()
        .map_err(|e| tools::spawn_error(&spec.binaries.binlog, e))?;
    let mut client = tools::command(&spec.binaries.client);
    client
        .arg(spec.client_defaults())
        .arg("--binary-mode")
        .stdin(dump.stdout.take().expect("piped"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let client_out = client
        .output()
        .map_err(|e| tools::spawn_error(&spec.binaries.client, e))?;
    let dump_err = tools::read_all(dump.stderr.take().expect("piped"));
    let dump_status = dump
        .wait()
        .map_err(io_err(&spec.binaries.binlog, "wait for"))?;
    if !dump_status.success() {
        return Err(tools::failed(
            &spec.binaries.binlog,
            "turning captured transactions into SQL",
            &dump_status,
            &dump_err,
        ));
    }
    if !client_out.status.success() {
        return Err(tools::failed(
            &spec.binaries.client,
            "replaying captured transactions",
            &client_out.status,
            &client_out.stderr,
        ));
    }
    Ok(())
}

const SYSTEM_SCHEMAS: [&str; 4] = ["mysql", "information_schema", "performance_schema", "sys"];

/// Runs `CHECK TABLE` on every base table of every user database of a running server;
/// returns the tables checked, or the first one that failed.
pub fn check_all_tables(spec: &ServerSpec, data_dir_for_report: &Path) -> Result<Vec<String>> {
    let mut conn = spec.connect_admin()?;
    let q_err = |doing: String| {
        let socket = spec.socket();
        move |source| MariaDbError::Query {
            socket,
            doing,
            source,
        }
    };
    let tables: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .map_err(q_err("list the tables".into()))?;
    let mut checked = Vec::new();
    for (db, table) in tables {
        if SYSTEM_SCHEMAS.contains(&db.as_str()) {
            continue;
        }
        let name = format!("{db}.{table}");
        let rows: Vec<(String, String, String, String)> = conn
            .query(format!(
                "CHECK TABLE `{}`.`{}`",
                db.replace('`', "``"),
                table.replace('`', "``")
            ))
            .map_err(q_err(format!("check table {name}")))?;
        for (_, _op, msg_type, msg_text) in &rows {
            let bad = msg_type.eq_ignore_ascii_case("error")
                || (msg_type.eq_ignore_ascii_case("status")
                    && !msg_text.eq_ignore_ascii_case("OK"));
            if bad {
                return Err(MariaDbError::CheckFailed {
                    table: name,
                    message: format!("{msg_type}: {msg_text}"),
                    path: data_dir_for_report.to_path_buf(),
                });
            }
        }
        checked.push(name);
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use time::Duration as Span;

    use super::*;

    fn rec(seq: u64, received_ms: i64) -> TransactionRecord {
        TransactionRecord {
            epoch: 1,
            seq,
            gtid: Gtid {
                domain: 0,
                server_id: 1,
                seq,
            },
            server_time: 0,
            received_at: OffsetDateTime::UNIX_EPOCH + Span::milliseconds(received_ms),
            format: Arc::new(Vec::new()),
            events: Vec::new(),
        }
    }

    fn at(ms: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Span::milliseconds(ms)
    }

    fn seqs(v: Vec<&TransactionRecord>) -> Vec<u64> {
        v.into_iter().map(|r| r.gtid.seq).collect()
    }

    #[test]
    fn a_time_target_takes_the_prefix_received_by_t_after_the_base() {
        let history: Vec<_> = (1..=10).map(|s| rec(s, s as i64 * 10)).collect();
        let base: GtidPos = "0-1-3".parse().unwrap();
        let got = select_transactions(&base, at(35), &history, &RestoreTarget::Time(at(75)));
        assert_eq!(seqs(got.unwrap()), vec![4, 5, 6, 7]);
        // Exactly at T is included.
        let got = select_transactions(&base, at(35), &history, &RestoreTarget::Time(at(70)));
        assert_eq!(seqs(got.unwrap()), vec![4, 5, 6, 7]);
        // Before the base: refused.
        let e = select_transactions(&base, at(35), &history, &RestoreTarget::Time(at(20)));
        assert!(e.unwrap_err().to_string().contains("older base"));
        // The base holds a transaction received after T: refused too.
        let e = select_transactions(&base, at(5), &history, &RestoreTarget::Time(at(25)));
        assert!(e.unwrap_err().to_string().contains("older base"));
    }

    #[test]
    fn a_gtid_target_stops_at_it_and_a_hole_is_never_crossed() {
        let history: Vec<_> = (1..=10).map(|s| rec(s, s as i64)).collect();
        let base = GtidPos::new();
        let g = Gtid {
            domain: 0,
            server_id: 1,
            seq: 6,
        };
        let got = select_transactions(&base, at(0), &history, &RestoreTarget::Gtid(g));
        assert_eq!(seqs(got.unwrap()), (1..=6).collect::<Vec<_>>());
        let mut holed = history.clone();
        holed.remove(4);
        let e = select_transactions(&base, at(0), &holed, &RestoreTarget::Latest).unwrap_err();
        assert!(e.to_string().contains("transactions are missing"), "{e}");
        // Before the hole it is fine.
        let got = select_transactions(&base, at(0), &holed, &RestoreTarget::Time(at(4)));
        assert_eq!(seqs(got.unwrap()), vec![1, 2, 3, 4]);
    }
}
