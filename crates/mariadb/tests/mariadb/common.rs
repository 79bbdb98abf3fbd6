//! Real servers on temporary directories and free ports, and waiting on conditions with
//! deadlines (never fixed sleeps).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lifeboat_mariadb::{Binaries, Server, ServerSpec};

pub const ADMIN_PASSWORD: &str = "admin-test-password";
pub const START: Duration = Duration::from_secs(60);

/// The MariaDB programs: the tests do not skip; CI installs them with scripts/install-test-deps.
pub fn binaries() -> Binaries {
    Binaries::locate().unwrap_or_else(|e| {
        panic!(
            "MariaDB is required by these tests and is missing: {e}\nrun scripts/install-test-deps"
        )
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A managed server, initialised in `root/data` with its run dir in `root/run`.
pub struct TestServer {
    pub spec: ServerSpec,
    pub server: Option<Server>,
}

impl TestServer {
    pub fn spec_in(root: &Path) -> ServerSpec {
        let mut spec = ServerSpec::new(&root.join("data"), &root.join("run"), Some(free_port()))
            .unwrap_or_else(|e| panic!("{e}\nrun scripts/install-test-deps"));
        spec.binaries = binaries();
        spec.buffer_pool_mib = 32;
        spec.extra_options.push("innodb_log_file_size=16M".into());
        spec
    }

    pub fn new(root: &Path) -> TestServer {
        let mut spec = Self::spec_in(root);
        spec.initialize(ADMIN_PASSWORD).unwrap();
        // Another test may take the free port between its pick and the server's bind.
        let mut tries = 0;
        let server = loop {
            match spec.start(START) {
                Ok(server) => break server,
                Err(e) if tries < 3 => {
                    eprintln!("start failed ({e}); trying another port");
                    tries += 1;
                    spec.port = Some(free_port());
                    spec.write_config(ADMIN_PASSWORD).unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        };
        TestServer {
            spec,
            server: Some(server),
        }
    }

    pub fn conn(&self) -> mysql::Conn {
        self.spec.connect_admin().unwrap()
    }

    pub fn kill(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.server = Some(self.spec.start(START).unwrap());
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop(Duration::from_secs(60)).unwrap();
        }
    }
}

/// Waits until `cond` holds, polling every 20 ms, or panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects as `user` over TCP to 127.0.0.1:`port`.
pub fn tcp_conn(
    port: u16,
    user: &str,
    password: &str,
    db: Option<&str>,
) -> mysql::Result<mysql::Conn> {
    mysql::Conn::new(
        mysql::OptsBuilder::new()
            .ip_or_hostname(Some("127.0.0.1"))
            .tcp_port(port)
            .user(Some(user))
            .pass(Some(password))
            .db_name(db),
    )
}

pub fn tmpdir() -> tempfile::TempDir {
    // Short paths: a unix socket path is limited to 107 bytes.
    tempfile::Builder::new()
        .prefix("lbm")
        .tempdir_in("/tmp")
        .unwrap()
}

#[allow(dead_code)]
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}
