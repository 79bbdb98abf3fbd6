//! Real etcd for the tests: single members and clusters started on loopback with free ports,
//! data in temp dirs, killed on drop; and a gate that cuts one client's path to etcd.
#![allow(dead_code)]

pub mod gate;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_cluster::{EtcdClient, EtcdConfig};

/// The `etcd` binary: on PATH, in the workspace's `.tools/bin`, or Debian's `/usr/bin/etcd`.
pub fn etcd_binary() -> PathBuf {
    let ws_tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin");
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(ws_tools);
    dirs.push("/usr/bin".into());
    for dir in dirs {
        let p = dir.join("etcd");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "etcd is missing: run scripts/install-test-deps (it installs Debian's etcd-server \
         binary into .tools/bin)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An etcd cluster of `n` members on loopback. Killed (and its data removed) on drop.
pub struct EtcdCluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// One member.
    pub fn single() -> EtcdCluster {
        EtcdCluster::start(1)
    }

    /// `n` members, started together; returns once every member reports healthy.
    pub fn start(n: usize) -> EtcdCluster {
        let binary = etcd_binary();
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                Member {
                    data_dir: dir.path().join(&name),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    client_port: free_port(),
                    peer_port: free_port(),
                    child: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            _dir: dir,
        };
        for i in 0..n {
            cluster.spawn(i, &binary);
        }
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    fn spawn(&mut self, i: usize, binary: &Path) {
        let initial_cluster = self.initial_cluster.clone();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let child = Command::new(binary)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(m.url())
            .arg("--advertise-client-urls")
            .arg(m.url())
            .arg("--listen-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(format!("lifeboat-test-{}", std::process::id()))
            // Nothing listens for metrics; keep the logs short.
            .arg("--log-level")
            .arg("warn")
            .arg("--logger")
            .arg("zap")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        m.child = Some(child);
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::url).collect()
    }

    /// A client with the default timeouts for every member.
    pub fn client(&self) -> EtcdClient {
        EtcdClient::new(EtcdConfig::new(self.endpoints())).unwrap()
    }

    /// Kills member `i` (SIGKILL), as a crash would.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again on its data dir.
    pub fn restart(&mut self, i: usize) {
        let binary = etcd_binary();
        self.spawn(i, &binary);
    }

    /// Waits until every running member answers `/health` with true.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for m in self.members.iter().filter(|m| m.is_running()) {
            loop {
                if health(m.client_port) {
                    break;
                }
                if Instant::now() > deadline {
                    panic!(
                        "etcd member {} did not become healthy within {within:?}; its log:\n{}",
                        m.name,
                        std::fs::read_to_string(&m.log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The last lines of every member's log (for a failing test's message).
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let text = std::fs::read_to_string(&m.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {} ---\n{}", m.name, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

impl EtcdCluster {
    /// The index of the member that is etcd's raft leader, as the running members report it.
    pub fn raft_leader(&self) -> Option<usize> {
        let statuses: Vec<Option<(String, String)>> = self
            .members
            .iter()
            .map(|m| {
                if !m.is_running() {
                    return None;
                }
                let body = post(m.client_port, "/v3/maintenance/status", "{}")?;
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                let me = v["header"]["member_id"].as_str()?.to_string();
                let leader = v["leader"].as_str()?.to_string();
                Some((me, leader))
            })
            .collect();
        let leader = statuses.iter().flatten().map(|(_, l)| l.clone()).next()?;
        statuses
            .iter()
            .position(|s| s.as_ref().is_some_and(|(me, _)| *me == leader))
    }
}

/// A blocking HTTP/1.0 POST; the response body.
fn post(port: u16, path: &str, body: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// `GET /health` with a plain blocking socket: `{"health":"true"}` once the member has a leader.
fn health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains(r#""health":"true""#)
}

/// Waits until `f` holds, polling every 20 ms; panics with `what` after `within`.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A key prefix of its own for each test.
pub fn prefix(test: &str) -> String {
    format!("/lifeboat-test/{test}")
}
