//! Test helper (not installed for users): the capture process that
//! `capture::every_transaction_is_captured_once_across_kill_9` starts and kills. It captures
//! from a server and "ships" each batch as a file (written, fsynced, renamed), then confirms
//! it, until killed.
//!
//! Usage: `mariadb-capture-test-child SOCKET USER PASSWORD STATE_DIR OUT_DIR`
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use lifeboat_mariadb::{BinlogCapture, CaptureOptions, CaptureSource, GtidPos, encode_batch};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, user, password, state, out] = &args[..] else {
        eprintln!("usage: mariadb-capture-test-child SOCKET USER PASSWORD STATE_DIR OUT_DIR");
        std::process::exit(2);
    };
    let (state, out) = (PathBuf::from(state), PathBuf::from(out));
    let source = CaptureSource {
        socket: PathBuf::from(socket),
        user: user.clone(),
        password: password.clone(),
    };
    let mut cap = BinlogCapture::open(&state, source, &GtidPos::new(), CaptureOptions::default())
        .expect("open capture");
    loop {
        let records = cap
            .poll_wait(Duration::from_millis(100))
            .expect("capture poll");
        let Some(last) = records.last() else { continue };
        let name = format!("{:010}-{:020}", last.epoch, records[0].seq);
        let tmp = out.join(format!("{name}.tmp"));
        let mut f = std::fs::File::create(&tmp).expect("create batch file");
        f.write_all(&encode_batch(&records)).expect("write batch");
        f.sync_all().expect("fsync batch");
        std::fs::rename(&tmp, out.join(format!("{name}.batch"))).expect("rename batch");
        cap.confirm_durable(last.seq).expect("confirm");
    }
}
