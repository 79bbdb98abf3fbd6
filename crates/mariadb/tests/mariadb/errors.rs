//! Bad input gets a typed error that names the problem and the fix.

use std::time::Duration;

use lifeboat_mariadb::{
    Binaries, BinlogCapture, CaptureOptions, CaptureSource, GtidPos, MariaDbError, RestoreTarget,
    ServerSpec, decode_batch, encode_batch, open_base_backup, restore, take_base_backup,
};
use mysql::prelude::Queryable;

use crate::common::*;

#[test]
fn a_missing_program_is_named_with_the_way_to_install_it() {
    let t = tmpdir();
    let empty = t.path().join("no-mariadb-here");
    std::fs::create_dir_all(&empty).unwrap();
    let e = Binaries::in_dir(&empty).check().unwrap_err();
    assert!(
        matches!(
            e,
            MariaDbError::MissingBinary {
                program: "mariadbd",
                ..
            }
        ),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("mariadb-server") && text.contains("scripts/install-test-deps"),
        "{text}"
    );

    let mut spec = TestServer::spec_in(t.path());
    spec.binaries = Binaries::in_dir(&empty);
    let e = spec.initialize(ADMIN_PASSWORD).unwrap_err();
    assert!(
        matches!(
            e,
            MariaDbError::MissingBinary {
                program: "mariadb-install-db",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn a_directory_that_is_not_a_data_dir_is_refused_and_left_alone() {
    let t = tmpdir();
    let spec = ServerSpec {
        data_dir: t.path().join("photos"),
        ..TestServer::spec_in(t.path())
    };
    std::fs::create_dir_all(&spec.data_dir).unwrap();
    std::fs::write(spec.data_dir.join("cat.jpg"), b"not a database").unwrap();
    let e = spec.start(START).unwrap_err();
    assert!(matches!(e, MariaDbError::NotADataDir { .. }), "{e}");
    assert!(e.to_string().contains("initialise a new one"), "{e}");
    let e = spec.initialize(ADMIN_PASSWORD).unwrap_err();
    assert!(matches!(e, MariaDbError::DataDirNotEmpty { .. }), "{e}");
    assert_eq!(
        std::fs::read(spec.data_dir.join("cat.jpg")).unwrap(),
        b"not a database"
    );
    let e = open_base_backup(&spec.data_dir).unwrap_err();
    assert!(matches!(e, MariaDbError::BadBaseBackup { .. }), "{e}");
}

#[test]
fn a_corrupt_binlog_is_refused_by_capture_by_the_batch_reader_and_by_restore() {
    let t = tmpdir();
    let mut s = TestServer::new(t.path());
    s.conn()
        .query_drop("CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY, v TEXT)")
        .unwrap();
    let base = take_base_backup(&s.spec, &t.path().join("base")).unwrap();
    let mut c = s.conn();
    for i in 0..20 {
        c.exec_drop("INSERT INTO app.t VALUES (?, REPEAT('lifeboat', 50))", (i,))
            .unwrap();
    }
    drop(c);
    let mut cap = BinlogCapture::open(
        &t.path().join("cap"),
        CaptureSource::from_spec(&s.spec).unwrap(),
        &base.info.gtid_pos,
        CaptureOptions::default(),
    )
    .unwrap();
    let mut history = Vec::new();
    wait_for("20 transactions", Duration::from_secs(30), || {
        history.extend(cap.poll_wait(Duration::from_millis(100)).unwrap());
        history.len() >= 20
    });
    drop(cap);

    // A damaged stored batch is refused as a whole.
    let mut batch = encode_batch(&history);
    let mid = batch.len() / 2;
    batch[mid] ^= 0x40;
    let e = decode_batch(&batch).unwrap_err();
    assert!(matches!(e, MariaDbError::BadBatch(_)), "{e}");
    assert!(e.to_string().contains("another destination"), "{e}");

    // A damaged event inside a record: restore refuses it before writing anything.
    let mut bad = history.clone();
    let n = bad[10].events.len();
    bad[10].events[n - 10] ^= 0x01;
    let e = decode_batch(&encode_batch(&bad)).unwrap_err();
    assert!(matches!(e, MariaDbError::CorruptBinlog { .. }), "{e}");
    let r = t.path().join("restored");
    let e = restore(
        &TestServer::spec_in(&r),
        ADMIN_PASSWORD,
        &base,
        &bad,
        &RestoreTarget::Latest,
    )
    .unwrap_err();
    assert!(matches!(e, MariaDbError::CorruptBinlog { .. }), "{e}");
    assert!(!r.join("data").exists(), "nothing was written");

    // The server's own binlog file damaged (a byte flipped in an event): capture reports it.
    s.stop();
    let binlog = s.spec.data_dir.join("binlog.000001");
    let mut bytes = std::fs::read(&binlog).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x01;
    std::fs::write(&binlog, &bytes).unwrap();
    s.restart();
    let mut cap = BinlogCapture::open(
        &t.path().join("cap2"),
        CaptureSource::from_spec(&s.spec).unwrap(),
        &GtidPos::new(),
        CaptureOptions::default(),
    )
    .unwrap();
    let mut got = Ok(Vec::new());
    wait_for(
        "capture to report the damage",
        Duration::from_secs(30),
        || {
            got = cap.poll_wait(Duration::from_millis(100));
            got.is_err()
        },
    );
    let e = got.unwrap_err();
    eprintln!("capture of a damaged binlog: {e}");
    assert!(matches!(e, MariaDbError::CorruptBinlog { .. }), "{e}");
    assert!(e.to_string().contains("take a new base backup"), "{e}");
}
