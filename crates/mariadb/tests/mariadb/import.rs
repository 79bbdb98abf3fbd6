//! Bringing an existing database in: from a dump file and from a running server.

use lifeboat_mariadb::{RemoteSource, import_dump, import_from_server};
use mysql::prelude::Queryable;

use crate::common::*;

fn checksum(conn: &mut mysql::Conn, table: &str) -> u64 {
    let row: Option<(String, u64)> = conn.query_first(format!("CHECKSUM TABLE {table}")).unwrap();
    row.unwrap().1
}

#[test]
fn a_dump_file_and_a_running_server_import_into_a_managed_server() {
    let t = tmpdir();
    // The blogger's existing server, with an app user of its own.
    let old = TestServer::new(&t.path().join("old"));
    old.spec
        .create_app_database("blog", "blogger", "blog-pass")
        .unwrap();
    let mut c = old.conn();
    c.query_drop(
        "USE blog; \
         CREATE TABLE posts (id INT PRIMARY KEY AUTO_INCREMENT, title VARCHAR(200), body MEDIUMBLOB) \
         CHARACTER SET utf8mb4; \
         CREATE TABLE counts (n INT); INSERT INTO counts VALUES (0); \
         CREATE TRIGGER bump AFTER INSERT ON posts FOR EACH ROW UPDATE counts SET n = n + 1",
    )
    .unwrap();
    for i in 0..200 {
        c.exec_drop(
            "INSERT INTO posts (title, body) VALUES (?, RANDOM_BYTES(?))",
            (format!("post {i} — ünïcödé ✓"), 100 + i),
        )
        .unwrap();
    }
    let posts = checksum(&mut c, "blog.posts");

    // mariadb-dump --single-transaction, as the README tells the blogger to run.
    let dump = t.path().join("blog.sql");
    let out = std::process::Command::new(&old.spec.binaries.dump)
        .arg(format!(
            "--defaults-file={}",
            old.spec.config_path().display()
        ))
        .args(["--single-transaction", "--triggers", "--hex-blob", "blog"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&dump, &out.stdout).unwrap();

    let new = TestServer::new(&t.path().join("new"));
    let report = import_dump(&new.spec, "wordpress", &dump).unwrap();
    assert_eq!(report.tables, 2);
    let mut n = new.conn();
    assert_eq!(checksum(&mut n, "wordpress.posts"), posts);

    let report = import_from_server(
        &new.spec,
        &RemoteSource {
            host: "127.0.0.1".into(),
            port: old.spec.port.unwrap(),
            socket: None,
            user: "blogger".into(),
            password: "blog-pass".into(),
            database: "blog".into(),
        },
        "wordpress2",
    )
    .unwrap();
    assert_eq!(report.tables, 2);
    assert_eq!(checksum(&mut n, "wordpress2.posts"), posts);
    // The trigger came along and works.
    n.query_drop("INSERT INTO wordpress2.posts (title) VALUES ('new')")
        .unwrap();
    let count: Option<u64> = n.query_first("SELECT n FROM wordpress2.counts").unwrap();
    assert_eq!(count, Some(201));
    // No source password was left behind.
    assert!(!new.spec.run_dir.join("import-source.cnf").exists());

    // A wrong password: a typed error naming the dump step, without the password in it.
    let e = import_from_server(
        &new.spec,
        &RemoteSource {
            host: "127.0.0.1".into(),
            port: old.spec.port.unwrap(),
            socket: None,
            user: "blogger".into(),
            password: "not-the-password".into(),
            database: "blog".into(),
        },
        "wordpress3",
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("mariadb-dump") && text.contains("Access denied"),
        "{text}"
    );
    assert!(!text.contains("not-the-password"), "{text}");
}
