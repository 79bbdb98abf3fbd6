//! The manifest, `lifeboat.toml`: its schema, and the validation that turns the file the user
//! wrote into a [`Manifest`] the rest of Lifeboat can trust.
//!
//! Every problem becomes a [`ManifestError`] naming the file, line and column, the key, and what
//! to write instead. Parsing does no I/O: the caller reads the file, and checks that need the
//! machine (is the listen port free?) live in the daemon, which reports them through
//! [`ManifestError::at`] so they read the same way.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::manifest_error::{Location, describe_toml_error};
pub use crate::manifest_error::{ManifestError, Problem};

mod cluster;
mod isolation;
mod mariadb;
pub use cluster::{ClusterSpec, DEFAULT_STANDBY_JOURNAL, Durability, EtcdTlsSpec};
pub use isolation::IsolationSpec;
pub use mariadb::{DEFAULT_MARIADB_DIR, MariaDbSpec};
mod limits;
mod simulate;
pub use limits::{DEFAULT_PIDS, ResourceLimits, format_size, parse_size};
pub use simulate::{LoginSpec, ProbeSpec, SimulateSpec, Targets, WeightedPath};

/// The manifest's usual file name, next to the site.
pub const MANIFEST_FILE: &str = "lifeboat.toml";

/// A validated manifest: every value is present, typed and in range.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The site's name (`[site] name`), used in ids, logs and `$LIFEBOAT_SITE`.
    pub site: String,
    /// The site's processes by name (`[processes.NAME]`).
    pub processes: BTreeMap<String, ProcessSpec>,
    /// What must never be lost (`[state]`).
    pub state: StateSpec,
    /// The front door (`[proxy]`).
    pub proxy: ProxySpec,
    /// What visitors see while the site is in maintenance (`[maintenance]`).
    pub maintenance: MaintenanceSpec,
    /// Where the site's timeline goes (`[vault]`); `None` when the section is absent (no capture).
    pub vault: Option<VaultSpec>,
    /// Secrets handling (`[credentials]`).
    pub credentials: CredentialsSpec,
    /// How the site's processes are kept apart (`[isolation]`).
    pub isolation: IsolationSpec,
    /// Several nodes with their state in etcd (`[cluster]`); `None`: one machine.
    pub cluster: Option<ClusterSpec>,
    /// What `lifeboat simulate` sends and checks (`[simulate]`); `None`: the defaults.
    pub simulate: Option<SimulateSpec>,
}

/// One kind of program of the site, run `replicas` times, each with its own `$PORT`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    /// Shell command run from the site dir.
    pub command: String,
    /// How many instances to run unless `lifeboat scale` says otherwise.
    pub replicas: u32,
    /// How the front door checks an instance is healthy.
    pub health: HealthSpec,
    /// Extra environment variables for every instance.
    pub env: BTreeMap<String, String>,
    /// How long a stopping instance gets between its stop signal and SIGKILL.
    pub stop_timeout: Duration,
    /// The signal that asks the instance's processes to finish and exit (`SIGTERM` unless
    /// `stop_signal` says otherwise, e.g. Apache's graceful `SIGWINCH`), one of
    /// [`STOP_SIGNALS`].
    pub stop_signal: String,
    /// Whether instances serve HTTP behind the front door (`http = false` for workers: they
    /// are supervised but get no traffic and no health checks).
    pub http: bool,
    /// What one instance may use of the machine (`memory`, `cpu`, `pids`).
    pub limits: ResourceLimits,
}

/// The signals `stop_signal` may name: those a server treats as "finish and exit" (SIGKILL and
/// SIGSTOP cannot be handled, so they are not among them).
pub const STOP_SIGNALS: &[&str] = &[
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH",
];

/// The active health check of a process.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    /// HTTP path, starting with `/`.
    pub path: String,
    /// `Host` header of the checks (`host[:port]`); `None` sends the instance's own
    /// `127.0.0.1:PORT`, which apps that check the Host (Django's `ALLOWED_HOSTS`, name-based
    /// virtual hosts) refuse with a 400.
    pub host: Option<String>,
    /// Time between two checks of one instance.
    pub interval: Duration,
    /// How long one check may take before it counts as failed.
    pub timeout: Duration,
    /// Consecutive passing checks before an instance gets traffic.
    pub healthy_threshold: u32,
    /// Consecutive failing checks before an instance stops getting traffic.
    pub unhealthy_threshold: u32,
}

/// The site's durable state. The paths are relative to the state dir, which instances get as
/// `$LIFEBOAT_STATE_DIR`: the site dir until the first rewind, a restored copy after it. None of
/// them is the site dir itself or inside `.lifeboat`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StateSpec {
    /// SQLite database files.
    pub sqlite: Vec<PathBuf>,
    /// Data directories (uploads).
    pub dirs: Vec<PathBuf>,
    /// A MariaDB database Lifeboat runs as part of the state (`mariadb`).
    pub mariadb: Option<MariaDbSpec>,
}

/// Where the site's timeline (captured changes and checkpoints) is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct VaultSpec {
    /// Destinations as written: `s3://bucket[/prefix]` or a local path (relative paths are
    /// relative to the site dir; resolving is the daemon's job). At least one, no duplicates, no
    /// other URL schemes; a relative local path is never inside a [state] path nor holds one.
    pub destinations: Vec<String>,
    /// How many destinations must hold an object before it counts as stored; `None` means all.
    /// Always `1..=destinations.len()`.
    pub quorum: Option<usize>,
    /// How often captured changes are shipped (`segment_interval`, default 500ms, 100ms..=1h).
    pub segment_interval: Duration,
    /// How often a full checkpoint is taken (`checkpoint_interval`, default 10m, at least 1s).
    pub checkpoint_interval: Duration,
    /// How often each live database gets `PRAGMA quick_check` (`integrity_check_interval`,
    /// default 10m, at least 1s); a failure becomes an `integrity-failed` event.
    pub integrity_check_interval: Duration,
}

/// What Lifeboat does about the site's secrets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CredentialsSpec {
    /// Shell command run from the site dir against a restored copy before it goes live
    /// (`rotate`); it gets `$LIFEBOAT_STATE_DIR` (the restored copy) and `$LIFEBOAT_SITE`; what
    /// it prints goes to the owner once.
    pub rotate: Option<String>,
}

/// The front door's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySpec {
    /// Address the front door listens on.
    pub listen: SocketAddr,
    /// Where `listen` is written in the manifest, for errors found later (port in use).
    pub listen_location: Option<Location>,
    /// The `Retry-After` given to visitors during maintenance, when no instance is healthy and
    /// when too many connections are open.
    pub retry_after: Duration,
    /// How long a client may accept nothing of a response being sent to it before its
    /// connection is closed (`send_timeout`, nginx's `send_timeout`).
    pub send_timeout: Duration,
    /// How long a client may pause while sending a request body before the request is given
    /// up with a 408 (`body_timeout`, nginx's `client_body_timeout`).
    pub body_timeout: Duration,
    /// Most client connections open at once (`max_connections`, 1..=1000000); one more gets a
    /// 503 with `Retry-After`.
    pub max_connections: u32,
    /// Clients whose `X-Forwarded-For/-Proto/-Host` are believed (`trusted_proxies`): a TLS
    /// terminator or load balancer in front of the front door. Empty: nobody's.
    pub trusted_proxies: Vec<IpRange>,
    /// Requests refused as unauthorized (401/403) from one visitor within a minute that make
    /// an `AuthFailures` event (`auth_failure_alert`, default 20; 0: never).
    pub auth_failure_alert: u32,
}

/// A block of addresses written `IP` or `IP/PREFIX` (CIDR): `10.0.0.0/8`, `2001:db8::/32`; a
/// single address is `/32` (IPv4) or `/128` (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    /// An address of the block, as written.
    pub addr: IpAddr,
    /// Leading bits every address of the block shares: at most 32 (IPv4) or 128 (IPv6).
    pub prefix_len: u8,
}

/// The maintenance page.
#[derive(Debug, Clone, PartialEq)]
pub struct MaintenanceSpec {
    /// Message shown on the built-in page.
    pub message: String,
    /// An HTML file (relative to the site dir) served instead of the built-in page.
    pub page: Option<PathBuf>,
}

/// The front door address used when the manifest does not give one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MESSAGE: &str = "This site is down for maintenance. Please try again shortly.";
/// Lifeboat's own directory in the site dir (store, sockets, logs, restored copies).
pub const LIFEBOAT_DIR: &str = ".lifeboat";
const DEFAULT_SEGMENT_INTERVAL: Duration = Duration::from_millis(500);
const MIN_SEGMENT_INTERVAL: Duration = Duration::from_millis(100);
const MAX_SEGMENT_INTERVAL: Duration = Duration::from_secs(3600);
const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(600);
const MIN_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// nginx's `send_timeout` and `client_body_timeout` default to 60s too.
const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Refused requests (401/403) from one visitor within a minute that make an event.
pub const DEFAULT_AUTH_FAILURE_ALERT: u32 = 20;
/// About twice this many file descriptors are needed; a common hard limit is 1048576 or more,
/// and the front door lowers the cap itself (with a warning) when the hard limit is smaller.
const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
const MAX_MAX_CONNECTIONS: i64 = 1_000_000;

// ---- the file as written -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    site: Option<Spanned<RawSite>>,
    #[serde(default)]
    processes: BTreeMap<String, Spanned<RawProcess>>,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    maintenance: RawMaintenance,
    vault: Option<Spanned<RawVault>>,
    #[serde(default)]
    credentials: RawCredentials,
    #[serde(default)]
    isolation: isolation::RawIsolation,
    cluster: Option<Spanned<cluster::RawCluster>>,
    simulate: Option<simulate::RawSimulate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    name: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    command: Option<Spanned<String>>,
    replicas: Option<Spanned<i64>>,
    health: Option<Spanned<RawHealth>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    stop_timeout: Option<Spanned<String>>,
    stop_signal: Option<Spanned<String>>,
    http: Option<bool>,
    memory: Option<Spanned<String>>,
    cpu: Option<Spanned<limits::RawNumber>>,
    pids: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    healthy_threshold: Option<Spanned<i64>>,
    unhealthy_threshold: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    #[serde(default)]
    sqlite: Vec<Spanned<String>>,
    #[serde(default)]
    dirs: Vec<Spanned<String>>,
    mariadb: Option<Spanned<mariadb::RawMariaDb>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Option<Spanned<String>>,
    retry_after: Option<Spanned<String>>,
    send_timeout: Option<Spanned<String>>,
    body_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    auth_failure_alert: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMaintenance {
    message: Option<Spanned<String>>,
    page: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    destinations: Option<Spanned<Vec<Spanned<String>>>>,
    quorum: Option<Spanned<i64>>,
    segment_interval: Option<Spanned<String>>,
    checkpoint_interval: Option<Spanned<String>>,
    integrity_check_interval: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    rotate: Option<Spanned<String>>,
}

impl Manifest {
    /// Parses and validates manifest text. `file` is the name used in error messages
    /// (usually `lifeboat.toml` or the path the user gave).
    pub fn parse(file: &str, text: &str) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text)
            .map_err(|err| ManifestError::new(vec![describe_toml_error(file, text, &err)]))?;
        let mut v = Validator {
            file,
            text,
            problems: Vec::new(),
        };
        let manifest = v.manifest(raw);
        if v.problems.is_empty() {
            Ok(manifest)
        } else {
            Err(ManifestError::new(v.problems))
        }
    }

    /// The desired number of instances of each process, as the manifest says.
    pub fn replicas(&self) -> BTreeMap<String, u32> {
        self.processes
            .iter()
            .map(|(name, p)| (name.clone(), p.replicas))
            .collect()
    }
}

struct Validator<'a> {
    file: &'a str,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem(&mut self, span: Option<Range<usize>>, key: &str, problem: String, fix: String) {
        let location = span.map(|s| Location::of(self.text, s.start));
        self.problems.push(Problem {
            file: self.file.to_string(),
            location,
            key: key.to_string(),
            problem,
            fix,
        });
    }

    fn manifest(&mut self, raw: RawManifest) -> Manifest {
        let site = self.site(raw.site);
        if raw.processes.is_empty() {
            self.problem(
                None,
                "processes",
                "the manifest has no process to run".into(),
                "add one, e.g.\n    [processes.web]\n    command = \"./server\"\n    replicas = 2"
                    .into(),
            );
        }
        let processes = raw
            .processes
            .into_iter()
            .map(|(name, p)| {
                let spec = self.process(&name, p);
                (name, spec)
            })
            .collect();
        let state = self.state(raw.state);
        let proxy = self.proxy(raw.proxy);
        let maintenance = self.maintenance(raw.maintenance);
        let vault = raw.vault.map(|v| self.vault(v, &state));
        let credentials = self.credentials(raw.credentials);
        let isolation = self.isolation(raw.isolation);
        let cluster = raw.cluster.map(|c| self.cluster(c));
        let simulate = raw.simulate.map(|s| self.simulate(s));
        Manifest {
            site,
            processes,
            state,
            proxy,
            maintenance,
            vault,
            credentials,
            isolation,
            cluster,
            simulate,
        }
    }

    fn site(&mut self, raw: Option<Spanned<RawSite>>) -> String {
        let fix = "add\n    [site]\n    name = \"my-site\"".to_string();
        let Some(raw) = raw else {
            self.problem(None, "site.name", "the site has no name".into(), fix);
            return String::new();
        };
        let span = raw.span();
        let Some(name) = raw.into_inner().name else {
            self.problem(Some(span), "site.name", "the site has no name".into(), fix);
            return String::new();
        };
        if !is_simple_name(name.get_ref()) {
            self.problem(
                Some(name.span()),
                "site.name",
                format!("{:?} is not a usable site name", name.get_ref()),
                "use lowercase letters, digits and '-', starting with a letter, e.g. name = \"guestbook\"".into(),
            );
        }
        name.into_inner()
    }

    fn process(&mut self, name: &str, raw: Spanned<RawProcess>) -> ProcessSpec {
        let span = raw.span();
        let raw = raw.into_inner();
        let key = format!("processes.{name}");
        if !is_simple_name(name) {
            self.problem(
                Some(span.clone()),
                &key,
                format!("{name:?} is not a usable process name"),
                "use lowercase letters, digits and '-', starting with a letter, e.g. [processes.web]".into(),
            );
        }
        let command = match raw.command {
            Some(c) if !c.get_ref().trim().is_empty() => c.into_inner(),
            Some(c) => {
                self.problem(
                    Some(c.span()),
                    &format!("{key}.command"),
                    "the command is empty".into(),
                    "write the shell command that starts the process, e.g. command = \"./server --port $PORT\"".into(),
                );
                String::new()
            }
            None => {
                self.problem(
                    Some(span.clone()),
                    &format!("{key}.command"),
                    format!("process `{name}` has no command"),
                    format!(
                        "add the shell command that starts it under [processes.{name}], e.g. command = \"./server --port $PORT\""
                    ),
                );
                String::new()
            }
        };
        let replicas = match raw.replicas {
            None => 1,
            Some(r) if *r.get_ref() >= 1 && *r.get_ref() <= 1000 => *r.get_ref() as u32,
            Some(r) => {
                self.problem(
                    Some(r.span()),
                    &format!("{key}.replicas"),
                    format!("replicas must be between 1 and 1000, found {}", r.get_ref()),
                    "write replicas = 1 or more (to stop a process, remove its section)".into(),
                );
                1
            }
        };
        let health = self.health(&key, raw.health);
        let stop_timeout = self.duration(
            &format!("{key}.stop_timeout"),
            raw.stop_timeout,
            Duration::from_secs(10),
        );
        let stop_signal = self.stop_signal(&key, raw.stop_signal);
        let limits = self.limits(
            &key,
            limits::RawLimits {
                memory: raw.memory,
                cpu: raw.cpu,
                pids: raw.pids,
            },
        );
        ProcessSpec {
            command,
            replicas,
            health,
            env: raw.env,
            stop_timeout,
            stop_signal,
            http: raw.http.unwrap_or(true),
            limits,
        }
    }

    fn health(&mut self, process_key: &str, raw: Option<Spanned<RawHealth>>) -> HealthSpec {
        let key = format!("{process_key}.health");
        let raw = raw.map(Spanned::into_inner).unwrap_or_default();
        let path = match raw.path {
            None => "/".to_string(),
            Some(p) if p.get_ref().starts_with('/') => p.into_inner(),
            Some(p) => {
                self.problem(
                    Some(p.span()),
                    &format!("{key}.path"),
                    format!("the health path {:?} does not start with '/'", p.get_ref()),
                    format!("write path = \"/{}\"", p.get_ref()),
                );
                p.into_inner()
            }
        };
        let host = raw.host.map(|host| {
            if let Err(why) = check_host(host.get_ref()) {
                self.problem(
                    Some(host.span()),
                    &format!("{key}.host"),
                    format!("{:?} is not a host name with an optional port: {why}", host.get_ref()),
                    "write the host name the app answers to, e.g. host = \"example.com\" or \"example.com:8000\" (no scheme, no path)".into(),
                );
            }
            host.into_inner()
        });
        let interval = self.duration(
            &format!("{key}.interval"),
            raw.interval,
            Duration::from_secs(1),
        );
        let timeout = self.duration(
            &format!("{key}.timeout"),
            raw.timeout,
            Duration::from_millis(500),
        );
        let healthy_threshold = self.threshold(
            &format!("{key}.healthy_threshold"),
            raw.healthy_threshold,
            1,
        );
        let unhealthy_threshold = self.threshold(
            &format!("{key}.unhealthy_threshold"),
            raw.unhealthy_threshold,
            2,
        );
        HealthSpec {
            path,
            host,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
        }
    }

    fn threshold(&mut self, key: &str, raw: Option<Spanned<i64>>, default: u32) -> u32 {
        match raw {
            None => default,
            Some(t) if (1..=100).contains(t.get_ref()) => *t.get_ref() as u32,
            Some(t) => {
                self.problem(
                    Some(t.span()),
                    key,
                    format!(
                        "the threshold must be between 1 and 100, found {}",
                        t.get_ref()
                    ),
                    format!(
                        "write {} = {default}",
                        key.rsplit('.').next().unwrap_or(key)
                    ),
                );
                default
            }
        }
    }

    /// `stop_signal`, as `SIGNAME` (`"WINCH"` and `"sigwinch"` are accepted too).
    fn stop_signal(&mut self, process_key: &str, raw: Option<Spanned<String>>) -> String {
        let Some(raw) = raw else {
            return "SIGTERM".to_string();
        };
        let upper = raw.get_ref().trim().to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        if STOP_SIGNALS.contains(&name.as_str()) {
            return name;
        }
        self.problem(
            Some(raw.span()),
            &format!("{process_key}.stop_signal"),
            format!("{:?} is not a signal a process can be asked to stop with", raw.get_ref()),
            format!(
                "write one of {} (e.g. stop_signal = \"SIGWINCH\" for Apache's graceful stop), or leave it out for SIGTERM",
                STOP_SIGNALS.join(", ")
            ),
        );
        "SIGTERM".to_string()
    }

    fn duration(&mut self, key: &str, raw: Option<Spanned<String>>, default: Duration) -> Duration {
        let Some(raw) = raw else { return default };
        match humantime::parse_duration(raw.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) | Err(_) => {
                let short = key.rsplit('.').next().unwrap_or(key);
                self.problem(
                    Some(raw.span()),
                    key,
                    format!("{:?} is not a duration longer than zero", raw.get_ref()),
                    format!(
                        "write a duration with a unit, e.g. {short} = \"1s\", \"500ms\" or \"2m\""
                    ),
                );
                default
            }
        }
    }

    fn state(&mut self, raw: RawState) -> StateSpec {
        let sqlite: Vec<PathBuf> = raw
            .sqlite
            .into_iter()
            .map(|p| self.state_path("state.sqlite", p))
            .collect();
        let dirs: Vec<PathBuf> = raw
            .dirs
            .into_iter()
            .map(|p| self.state_path("state.dirs", p))
            .collect();
        let declared: Vec<PathBuf> = sqlite.iter().chain(&dirs).cloned().collect();
        let mariadb = raw.mariadb.map(|m| self.mariadb(m, &declared));
        StateSpec {
            sqlite,
            dirs,
            mariadb,
        }
    }

    /// A [state] path: inside the site dir, and neither the site dir itself nor inside
    /// `.lifeboat`, because a rewind replaces the state with a restored copy kept under
    /// `.lifeboat/states/`, and Lifeboat's own files must never be part of what is restored.
    fn state_path(&mut self, key: &str, raw: Spanned<String>) -> PathBuf {
        let span = raw.span();
        let path = self.relative_path(key, raw);
        let Some(normal) = site_relative(&path).filter(|_| !path.as_os_str().is_empty()) else {
            return path; // already reported by relative_path
        };
        if normal.as_os_str().is_empty() {
            self.problem(
                Some(span),
                key,
                format!(
                    "{:?} is the site dir itself, which also holds Lifeboat's own files ({LIFEBOAT_DIR})",
                    path.display().to_string()
                ),
                "name the site's data inside the site dir, e.g. \"data/site.db\" or \"data/uploads\""
                    .into(),
            );
        } else if normal.starts_with(LIFEBOAT_DIR) {
            self.problem(
                Some(span),
                key,
                format!(
                    "{:?} is inside {LIFEBOAT_DIR}, Lifeboat's own directory (its store and the restored copies of rewinds)",
                    path.display().to_string()
                ),
                format!(
                    "keep the site's data outside {LIFEBOAT_DIR}, e.g. \"data/site.db\" or \"data/uploads\""
                ),
            );
        }
        path
    }

    fn vault(&mut self, raw: Spanned<RawVault>, state: &StateSpec) -> VaultSpec {
        let span = raw.span();
        let raw = raw.into_inner();
        let no_destination_fix = "add at least one, e.g. destinations = [\".lifeboat/vault\", \"s3://my-bucket/site\"] \
             (better: places in other zones, such as another disk or an S3 bucket)";
        let mut destinations = Vec::new();
        match raw.destinations {
            None => self.problem(
                Some(span),
                "vault.destinations",
                "the vault has no destinations".into(),
                no_destination_fix.into(),
            ),
            Some(list) if list.get_ref().is_empty() => self.problem(
                Some(list.span()),
                "vault.destinations",
                "the list of destinations is empty".into(),
                no_destination_fix.into(),
            ),
            Some(list) => {
                let mut seen: Vec<(Destination, String)> = Vec::new();
                for d in list.into_inner() {
                    if let Some(dest) = self.destination(&d, state) {
                        if let Some((_, first)) = seen.iter().find(|(s, _)| *s == dest) {
                            self.problem(
                                Some(d.span()),
                                "vault.destinations",
                                format!("{:?} is listed twice (the same place as {first:?})", d.get_ref()),
                                "remove one of them; another copy belongs in another place (another disk, another zone)".into(),
                            );
                        } else {
                            seen.push((dest, d.get_ref().clone()));
                        }
                    }
                    destinations.push(d.into_inner());
                }
            }
        }
        let quorum = raw.quorum.and_then(|q| self.quorum(q, destinations.len()));
        let segment_interval = self.bounded_duration(
            "vault.segment_interval",
            raw.segment_interval,
            DEFAULT_SEGMENT_INTERVAL,
            MIN_SEGMENT_INTERVAL,
            Some(MAX_SEGMENT_INTERVAL),
        );
        let checkpoint_interval = self.bounded_duration(
            "vault.checkpoint_interval",
            raw.checkpoint_interval,
            DEFAULT_CHECKPOINT_INTERVAL,
            MIN_CHECKPOINT_INTERVAL,
            None,
        );
        let integrity_check_interval = self.bounded_duration(
            "vault.integrity_check_interval",
            raw.integrity_check_interval,
            DEFAULT_CHECKPOINT_INTERVAL,
            MIN_CHECKPOINT_INTERVAL,
            None,
        );
        VaultSpec {
            destinations,
            quorum,
            segment_interval,
            checkpoint_interval,
            integrity_check_interval,
        }
    }

    /// Checks one destination as written; `None` when it was refused (and reported).
    fn destination(&mut self, raw: &Spanned<String>, state: &StateSpec) -> Option<Destination> {
        let key = "vault.destinations";
        let written = raw.get_ref();
        let supported = "write s3://BUCKET[/prefix] for S3-compatible storage (add \
             ?endpoint=https://...&region=... for providers other than AWS) or a local directory, \
             e.g. \"/mnt/other-disk/site\" or \".lifeboat/vault\"";
        if written.trim().is_empty() {
            self.problem(
                Some(raw.span()),
                key,
                "a destination is empty".into(),
                supported.into(),
            );
            return None;
        }
        if let Some(rest) = written.strip_prefix("s3://") {
            let bucket = rest.split(['/', '?']).next().unwrap_or("");
            if bucket.is_empty() {
                self.problem(
                    Some(raw.span()),
                    key,
                    format!("{written:?} names no bucket"),
                    "write s3://BUCKET[/prefix], e.g. \"s3://my-bucket/site\"".into(),
                );
                return None;
            }
            return Some(Destination::S3(written.trim_end_matches('/').to_string()));
        }
        if let Some(scheme) = url_scheme(written) {
            let fix = if scheme.eq_ignore_ascii_case("file") {
                format!(
                    "write the directory itself, e.g. {:?}",
                    &written[scheme.len() + 3..]
                )
            } else {
                supported.into()
            };
            self.problem(
                Some(raw.span()),
                key,
                format!(
                    "{scheme}:// destinations are not supported (only s3:// and local directories)"
                ),
                fix,
            );
            return None;
        }
        let path = lexical(Path::new(written));
        let Some(inside) = site_relative(&path) else {
            // Absolute, or outside the site dir: what it holds is the daemon's to check.
            return Some(Destination::Local(path));
        };
        let fix = "put the vault outside the [state] paths, e.g. destinations = [\".lifeboat/vault\"], \
             or better on another disk: \"/mnt/other-disk/site\"";
        if inside.as_os_str().is_empty() {
            self.problem(
                Some(raw.span()),
                key,
                format!("{written:?} is the site dir itself; a vault needs a directory of its own"),
                "name a directory of its own, e.g. destinations = [\".lifeboat/vault\"], \
                 or better one on another disk: \"/mnt/other-disk/site\""
                    .into(),
            );
            return None;
        }
        let state_paths = state.sqlite.iter().chain(&state.dirs);
        for state_path in state_paths.filter_map(|p| site_relative(p)) {
            if state_path.as_os_str().is_empty() {
                continue; // refused already
            }
            let problem = if inside == state_path {
                format!(
                    "{written:?} is the state path {:?} itself",
                    state_path.display().to_string()
                )
            } else if inside.starts_with(&state_path) {
                format!(
                    "{written:?} is inside the state path {:?}: the timeline would capture the vault itself",
                    state_path.display().to_string()
                )
            } else if state_path.starts_with(&inside) {
                format!(
                    "{written:?} holds the state path {:?}; a vault needs a directory of its own",
                    state_path.display().to_string()
                )
            } else {
                continue;
            };
            self.problem(Some(raw.span()), key, problem, fix.into());
            return None;
        }
        Some(Destination::Local(path))
    }

    fn quorum(&mut self, raw: Spanned<i64>, destinations: usize) -> Option<usize> {
        let q = *raw.get_ref();
        if q >= 1 && (destinations == 0 || q as u64 <= destinations as u64) {
            return Some(q as usize);
        }
        let (problem, fix) = if destinations == 1 {
            (
                format!("quorum must be 1 with a single destination, found {q}"),
                "leave quorum out, or add destinations in other places (another disk, another zone)"
                    .to_string(),
            )
        } else if destinations == 0 {
            (
                format!("quorum must be at least 1, found {q}"),
                "write quorum = 1, or leave quorum out so every destination must hold each object"
                    .to_string(),
            )
        } else {
            (
                format!(
                    "quorum must be between 1 and {destinations} (the number of destinations), found {q}"
                ),
                format!(
                    "write quorum = 1 to count an object as stored once one destination has it (the \
                     others catch up later), or leave quorum out so all {destinations} must have it"
                ),
            )
        };
        self.problem(Some(raw.span()), "vault.quorum", problem, fix);
        None
    }

    fn bounded_duration(
        &mut self,
        key: &str,
        raw: Option<Spanned<String>>,
        default: Duration,
        min: Duration,
        max: Option<Duration>,
    ) -> Duration {
        let Some(raw) = raw else { return default };
        let span = raw.span();
        let written = raw.get_ref().clone();
        let reported = self.problems.len();
        let value = self.duration(key, Some(raw), default);
        if self.problems.len() > reported {
            return default;
        }
        if value >= min && max.is_none_or(|max| value <= max) {
            return value;
        }
        let short = key.rsplit('.').next().unwrap_or(key);
        let range = match max {
            Some(max) => format!(
                "between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
            None => format!("at least {}", humantime::format_duration(min)),
        };
        let another = if max.is_some() {
            format!("another duration {range}")
        } else {
            format!("another duration of {range}")
        };
        self.problem(
            Some(span),
            key,
            format!("{short} must be {range}, found {written:?}"),
            format!(
                "write {short} = \"{}\" (the default) or {another}",
                humantime::format_duration(default)
            ),
        );
        default
    }

    fn credentials(&mut self, raw: RawCredentials) -> CredentialsSpec {
        let rotate = match raw.rotate {
            None => None,
            Some(r) if !r.get_ref().trim().is_empty() => Some(r.into_inner()),
            Some(r) => {
                self.problem(
                    Some(r.span()),
                    "credentials.rotate",
                    "the rotate command is empty".into(),
                    "write the shell command that gives a restored copy fresh secrets, \
                     e.g. rotate = \"./rotate-credentials.sh\", or remove `rotate`"
                        .into(),
                );
                None
            }
        };
        CredentialsSpec { rotate }
    }

    fn relative_path(&mut self, key: &str, raw: Spanned<String>) -> PathBuf {
        let path = Path::new(raw.get_ref());
        let inside = !raw.get_ref().is_empty()
            && path
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !inside {
            self.problem(
                Some(raw.span()),
                key,
                format!("{:?} is not a path inside the site dir", raw.get_ref()),
                "write a path relative to the site dir without '..', e.g. \"data/site.db\"".into(),
            );
        }
        path.to_path_buf()
    }

    fn proxy(&mut self, raw: RawProxy) -> ProxySpec {
        let (listen, listen_location) = match raw.listen {
            None => (
                DEFAULT_LISTEN
                    .parse()
                    .expect("default listen address parses"),
                None,
            ),
            Some(l) => {
                let location = Some(Location::of(self.text, l.span().start));
                match l.get_ref().parse::<SocketAddr>() {
                    Ok(addr) => (addr, location),
                    Err(_) => {
                        self.problem(
                            Some(l.span()),
                            "proxy.listen",
                            format!("{:?} is not an address with a port", l.get_ref()),
                            "write an IP address and port, e.g. listen = \"127.0.0.1:8080\" or \"0.0.0.0:80\"".into(),
                        );
                        (
                            DEFAULT_LISTEN
                                .parse()
                                .expect("default listen address parses"),
                            location,
                        )
                    }
                }
            }
        };
        let retry_after = self.duration(
            "proxy.retry_after",
            raw.retry_after,
            Duration::from_secs(30),
        );
        let send_timeout = self.duration(
            "proxy.send_timeout",
            raw.send_timeout,
            DEFAULT_CLIENT_TIMEOUT,
        );
        let body_timeout = self.duration(
            "proxy.body_timeout",
            raw.body_timeout,
            DEFAULT_CLIENT_TIMEOUT,
        );
        let max_connections = match raw.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(m) if (1..=MAX_MAX_CONNECTIONS).contains(m.get_ref()) => *m.get_ref() as u32,
            Some(m) => {
                self.problem(
                    Some(m.span()),
                    "proxy.max_connections",
                    format!(
                        "max_connections must be between 1 and {MAX_MAX_CONNECTIONS}, found {}",
                        m.get_ref()
                    ),
                    format!(
                        "write max_connections = {DEFAULT_MAX_CONNECTIONS} (the default) or another number of \
                         client connections to serve at once; each needs about two open files"
                    ),
                );
                DEFAULT_MAX_CONNECTIONS
            }
        };
        let trusted_proxies = raw
            .trusted_proxies
            .into_iter()
            .filter_map(|written| match parse_ip_range(written.get_ref()) {
                Ok(range) => Some(range),
                Err(why) => {
                    self.problem(
                        Some(written.span()),
                        "proxy.trusted_proxies",
                        format!("{:?} {why}", written.get_ref()),
                        "write the addresses of the proxies in front of the front door, as IPs or \
                         CIDR blocks, e.g. trusted_proxies = [\"10.0.0.5\", \"192.168.0.0/16\", \"2001:db8::/32\"]"
                            .into(),
                    );
                    None
                }
            })
            .collect();
        let auth_failure_alert = match raw.auth_failure_alert {
            None => DEFAULT_AUTH_FAILURE_ALERT,
            Some(n) => match u32::try_from(*n.get_ref()) {
                Ok(n) => n,
                Err(_) => {
                    self.problem(
                        Some(n.span()),
                        "proxy.auth_failure_alert",
                        format!("{} is not a number of requests", n.get_ref()),
                        format!(
                            "write auth_failure_alert = {DEFAULT_AUTH_FAILURE_ALERT} (refused requests from one visitor within a minute that make an event), or 0 for never"
                        ),
                    );
                    DEFAULT_AUTH_FAILURE_ALERT
                }
            },
        };
        ProxySpec {
            listen,
            listen_location,
            retry_after,
            send_timeout,
            body_timeout,
            max_connections,
            trusted_proxies,
            auth_failure_alert,
        }
    }

    fn maintenance(&mut self, raw: RawMaintenance) -> MaintenanceSpec {
        let message = raw
            .message
            .map(Spanned::into_inner)
            .unwrap_or_else(|| DEFAULT_MESSAGE.into());
        let page = raw.page.map(|p| self.relative_path("maintenance.page", p));
        MaintenanceSpec { message, page }
    }
}

/// Reads `IP` or `IP/PREFIX`; the error completes "\"TEXT\" ...".
fn parse_ip_range(written: &str) -> Result<IpRange, String> {
    let (addr, prefix) = match written.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (written, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| "is not an IP address or a CIDR block".to_string())?;
    let bits = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix {
        None => bits,
        Some(prefix) => match prefix.trim().parse::<u8>() {
            Ok(len) if len <= bits => len,
            _ => {
                return Err(format!(
                    "has a prefix length other than 0 to {bits} (the bits of an IPv{} address)",
                    if addr.is_ipv4() { 4 } else { 6 }
                ));
            }
        },
    };
    Ok(IpRange { addr, prefix_len })
}

/// Checks a `host[:port]` as a Host header: a DNS name (letters, digits, `-`, `_`, labels of 1
/// to 63 characters, 253 at most, a final dot allowed), an IPv4 address or a bracketed IPv6
/// address, then optionally `:` and a port from 1 to 65535. The error says what is wrong.
fn check_host(written: &str) -> Result<(), &'static str> {
    if written.contains("://") {
        return Err("it is a URL");
    }
    let check_port = |port: &str| match port.parse::<u16>() {
        Ok(1..) => Ok(()),
        _ => Err("the port is not a number from 1 to 65535"),
    };
    if let Some(rest) = written.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or("the IPv6 address has no closing ']'")?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| "the part in [...] is not an IPv6 address")?;
        return match after {
            "" => Ok(()),
            _ => check_port(after.strip_prefix(':').ok_or("only :PORT may follow ']'")?),
        };
    }
    let (host, port) = match written.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (written, None),
    };
    if host.contains(':') {
        return Err("an IPv6 address must be written in brackets, e.g. [2001:db8::1]");
    }
    if let Some(port) = port {
        check_port(port)?;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err("the host name is empty");
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err("a host name is letters, digits, '-' and '_' in dot-separated labels");
    }
    Ok(())
}

/// Site and process names end up in instance ids (`web-1`), file names and env vars.
fn is_simple_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 40
}

/// A vault destination reduced to what makes two of them the same place.
#[derive(PartialEq)]
enum Destination {
    S3(String),
    Local(PathBuf),
}

/// The scheme of a URL-looking destination (`gs` for `gs://b`), `None` for a path.
fn url_scheme(written: &str) -> Option<&str> {
    let (scheme, _) = written.split_once("://")?;
    let mut chars = scheme.chars();
    let looks_like_scheme = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    looks_like_scheme.then_some(scheme)
}

/// `path` with `.` dropped and `dir/..` folded, without looking at the disk.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The path relative to the site dir, normalized (empty for the site dir itself), or `None`
/// when it is absolute or leads out of the site dir.
pub(crate) fn site_relative(path: &Path) -> Option<PathBuf> {
    let normal = lexical(path);
    let inside = normal
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    inside.then_some(normal)
}
