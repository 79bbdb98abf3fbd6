//! The sandbox's own S3 server: `s3s-fs` (a small real S3-compatible server) on a free port of
//! 127.0.0.1 in the sandbox's network, with its data in the sandbox, as the sandbox vault's
//! second destination. The vault-destination-down fault kills it and starts it again on the
//! same port and data dir.
//!
//! Never does: listen anywhere but 127.0.0.1 (or the cluster sandbox's own LAN), keep data outside the sandbox, or outlive the
//! simulation (it is started through the instance shim, so it dies with `simulate`; its pids
//! are in `run.json` for the next run).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Dialer;
use crate::procs::Spawner;

/// The bucket the sandbox's vault uses.
pub const BUCKET: &str = "lbsim";
/// The sandbox's S3 keys (the server is reachable from inside the sandbox only).
pub const ACCESS_KEY: &str = "lifeboat-simulate";
pub const SECRET_KEY: &str = "lifeboat-simulate-secret";
/// The environment variable that names the `s3s-fs` binary to use.
pub const BINARY_ENV: &str = "LIFEBOAT_S3S_FS";

/// Where `s3s-fs` is: `$LIFEBOAT_S3S_FS`, on PATH, or in a `.tools/bin` beside the `lifeboat`
/// binary or one of its parent dirs (where `scripts/install-test-deps` puts it in a checkout).
pub fn find_binary(lifeboat_bin: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(BINARY_ENV).map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("s3s-fs"));
    let beside = lifeboat_bin
        .ancestors()
        .skip(1)
        .map(|dir| dir.join(".tools/bin/s3s-fs"));
    on_path.chain(beside).find(|p| p.is_file())
}

/// A running (or stopped) `s3s-fs` of the sandbox.
pub struct S3Server {
    binary: PathBuf,
    lifeboat_bin: PathBuf,
    pub port: u16,
    /// The address it listens on: 127.0.0.1, or on a cluster sandbox the LAN address of the
    /// sandbox's services host (so every node reaches it).
    pub ip: std::net::Ipv4Addr,
    /// Its data (each subdir is a bucket).
    pub root: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// The process whose network it starts in (an ordinary user's sandbox), if any.
    pub join_netns: Option<u32>,
}

impl S3Server {
    /// A server of `binary` on `port` with its data in `root` (not started yet).
    pub fn new(
        binary: PathBuf,
        lifeboat_bin: &Path,
        port: u16,
        root: PathBuf,
        log: PathBuf,
    ) -> S3Server {
        S3Server {
            binary,
            lifeboat_bin: lifeboat_bin.to_path_buf(),
            port,
            ip: std::net::Ipv4Addr::LOCALHOST,
            root,
            log,
            child: None,
            join_netns: None,
        }
    }

    /// The destination URL of the sandbox's vault on this server.
    pub fn url(&self, prefix: &str) -> String {
        format!(
            "s3://{BUCKET}/{prefix}?endpoint=http://{}:{}&region=us-east-1",
            self.ip, self.port
        )
    }

    /// The pid of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts it (again, on the same port and data) from `spawner`'s thread, and waits until
    /// it accepts connections (through `dialer`, from the sandbox's network); returns its pid.
    pub(crate) async fn start(
        &mut self,
        spawner: &Spawner,
        dialer: &Dialer,
    ) -> Result<u32, String> {
        std::fs::create_dir_all(self.root.join(BUCKET))
            .map_err(|e| format!("cannot create {}: {e}", self.root.display()))?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("cannot open {}: {e}", self.log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", self.log.display()))?;
        // Through the instance shim, like the sandbox's lifeboat: it dies with the simulation.
        let mut cmd = Command::new(&self.lifeboat_bin);
        cmd.arg("__instance")
            .args(crate::sandbox::shim_options(self.join_netns))
            .arg(&self.binary)
            .arg("--host")
            .arg(self.ip.to_string())
            .args(["--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .env("LIFEBOAT_SUPERVISOR_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut child = spawner
            .spawn(cmd)
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let pid = child.id();
        let addr = std::net::SocketAddr::from((self.ip, self.port));
        let started = Instant::now();
        loop {
            if dialer.connect(addr).await.is_ok() {
                self.child = Some(child);
                return Ok(pid);
            }
            if let Ok(Some(exit)) = child.try_wait() {
                return Err(format!(
                    "{} exited ({exit}) before listening on port {}; its output is in {}",
                    self.binary.display(),
                    self.port,
                    self.log.display()
                ));
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not listen on port {} within 20 s",
                    self.binary.display(),
                    self.port
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it (SIGKILL, a server that goes away without a word) and reaps it; its pid.
    pub fn kill(&mut self) -> Option<u32> {
        let mut child = self.child.take()?;
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        Some(pid)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
