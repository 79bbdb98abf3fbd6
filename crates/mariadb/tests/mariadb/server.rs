//! The managed server: initialise, start, ready, the app's user, rotation, stop.

use std::time::Duration;

use mysql::prelude::Queryable;

use crate::common::*;

#[test]
fn a_new_server_serves_its_app_user_with_binlog_gtid_and_durable_commits() {
    let t = tmpdir();
    let mut s = TestServer::new(t.path());
    let cmd = s.spec.command();
    assert!(
        cmd.args[0]
            .to_string_lossy()
            .starts_with("--defaults-file=")
    );
    if nix::unistd::geteuid().is_root() {
        assert!(cmd.args.iter().any(|a| a == "--user=root"));
    }
    let mut conn = s.conn();
    let vars: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', \
             'gtid_strict_mode', 'sync_binlog', 'innodb_flush_log_at_trx_commit', 'server_id', \
             'bind_address', 'socket', 'pid_file', 'tmpdir')",
        )
        .unwrap();
    let get = |n: &str| {
        vars.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("log_bin"), "ON");
    assert_eq!(get("binlog_format"), "ROW");
    assert_eq!(get("gtid_strict_mode"), "ON");
    assert_eq!(get("sync_binlog"), "1");
    assert_eq!(get("innodb_flush_log_at_trx_commit"), "1");
    assert_eq!(get("bind_address"), "127.0.0.1");
    assert!(get("pid_file").starts_with(&s.spec.run_dir.display().to_string()));
    assert!(get("tmpdir").starts_with(&s.spec.run_dir.display().to_string()));

    // Nobody gets in as root without the password, over TCP or the socket.
    assert!(tcp_conn(s.spec.port.unwrap(), "root", "", None).is_err());

    s.spec
        .create_app_database("wordpress", "wp", "first-pass")
        .unwrap();
    let port = s.spec.port.unwrap();
    let mut app = tcp_conn(port, "wp", "first-pass", Some("wordpress")).unwrap();
    app.query_drop("CREATE TABLE posts (id INT PRIMARY KEY, title TEXT)")
        .unwrap();
    app.query_drop("INSERT INTO posts VALUES (1, 'hello')")
        .unwrap();
    // The app's user sees its own database only.
    assert!(app.query_drop("SELECT * FROM mysql.user").is_err());

    s.spec.rotate_app_password("wp", "second-pass").unwrap();
    assert!(tcp_conn(port, "wp", "first-pass", Some("wordpress")).is_err());
    let mut app = tcp_conn(port, "wp", "second-pass", Some("wordpress")).unwrap();
    let n: Option<u64> = app.query_first("SELECT COUNT(*) FROM posts").unwrap();
    assert_eq!(n, Some(1));
    let pos = s.spec.gtid_binlog_pos().unwrap();
    assert!(
        pos.get(0).is_some_and(|g| g.server_id == 1 && g.seq >= 4),
        "{pos}"
    );

    // A clean stop, and the same data dir starts again.
    s.stop();
    assert!(s.spec.wait_ready(Duration::from_millis(200)).is_err());
    s.restart();
    s.spec.wait_ready(Duration::from_secs(5)).unwrap();
    let mut app = tcp_conn(port, "wp", "second-pass", Some("wordpress")).unwrap();
    let n: Option<u64> = app.query_first("SELECT COUNT(*) FROM posts").unwrap();
    assert_eq!(n, Some(1));
}

/// The bytes of the server's binlog files.
fn binlog_bytes(conn: &mut mysql::Conn) -> u64 {
    let logs: Vec<(String, u64)> = conn.query("SHOW BINARY LOGS").unwrap();
    logs.iter().map(|(_, size)| size).sum()
}

#[test]
fn a_large_statement_takes_the_size_of_its_rows_in_the_binlog() {
    let t = tmpdir();
    let s = TestServer::new(t.path());
    let mut conn = s.conn();
    conn.query_drop("CREATE DATABASE app; CREATE TABLE app.b (id INT PRIMARY KEY, v LONGBLOB)")
        .unwrap();
    let before = binlog_bytes(&mut conn);
    // 1 MiB written as a 2 MiB hex literal: with a copy of each statement next to its rows
    // (MariaDB's annotate rows events, on by default) the binlog, which the server keeps until
    // it is purged, would grow by 3 MiB.
    let hex: String = (0..1 << 20)
        .map(|i| format!("{:02x}", (i * 7 % 251) as u8))
        .collect();
    conn.query_drop(format!("INSERT INTO app.b VALUES (1, 0x{hex})"))
        .unwrap();
    let grew = binlog_bytes(&mut conn) - before;
    assert!(
        grew < (1 << 20) + (64 << 10),
        "a 1 MiB row took {grew} bytes of binlog"
    );
}
