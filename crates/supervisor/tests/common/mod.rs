//! Helpers shared by the supervisor's integration tests: a supervisor on temporary dirs that
//! starts instances through the real shim, and waits with generous deadlines.
#![allow(dead_code)]

pub mod workers;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use lifeboat_supervisor::{
    BackoffPolicy, InstanceSpec, Shim, Supervisor, SupervisorConfig, SupervisorEvent,
};
use tokio::sync::broadcast;

/// Long enough for a loaded 2-core machine; tests never assert on timing.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub const HELPER: &str = env!("CARGO_BIN_EXE_lifeboat-supervisor-helper");

pub struct TestSite {
    pub dir: tempfile::TempDir,
    pub supervisor: Supervisor,
}

impl TestSite {
    pub fn site_dir(&self) -> PathBuf {
        self.dir.path().join("site")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join(".lifeboat/logs")
    }
}

pub fn config(root: &std::path::Path) -> SupervisorConfig {
    SupervisorConfig {
        site: "testsite".into(),
        site_dir: root.join("site"),
        log_dir: root.join(".lifeboat/logs"),
        stop_timeout: Duration::from_secs(20),
        log_max_bytes: 1 << 20,
        log_keep: 2,
        backoff: BackoffPolicy::default(),
        shim: Some(Shim {
            program: HELPER.into(),
            args: vec!["shim".into()],
        }),
        base_env: None,
    }
}

pub fn site_with(change: impl FnOnce(&mut SupervisorConfig)) -> TestSite {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("site")).unwrap();
    let mut config = config(dir.path());
    change(&mut config);
    let supervisor = Supervisor::new(config).unwrap();
    TestSite { dir, supervisor }
}

pub fn site() -> TestSite {
    site_with(|_| {})
}

pub fn spec(id: &str, command: &str) -> InstanceSpec {
    InstanceSpec {
        id: id.into(),
        process: "web".into(),
        command: command.into(),
        port: 4321,
        env: vec![("GREETING".into(), "hello".into())],
        ..Default::default()
    }
}

/// Waits for the first event matching `wanted`, failing after [`DEADLINE`].
pub async fn next_event(
    events: &mut broadcast::Receiver<SupervisorEvent>,
    what: &str,
    wanted: impl Fn(&SupervisorEvent) -> bool,
) -> SupervisorEvent {
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            match events.recv().await {
                Ok(event) if wanted(&event) => return event,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event stream closed"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no event within the deadline: {what}"))
}

/// Polls `check` until it returns `Some`, failing after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not true within the deadline: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether process `pid` is running (a zombie counts as gone).
pub fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// The process group of `pid`.
pub fn pgid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

pub fn read_log(site: &TestSite, id: &str) -> String {
    std::fs::read_to_string(site.supervisor.log_path(id)).unwrap_or_default()
}
