//! The manifest, `lifeboat.toml`: its schema, and the validation that turns the file the user
//! wrote into a [`Manifest`] the rest of Lifeboat can trust.
//!
//! Every problem becomes a [`ManifestError`] naming the file, line and column, the key, and what
//! to write instead. Parsing does no I/O: the caller reads the file, and checks that need the
//! machine (is the listen port free?) live in the daemon, which reports them through
//! [`ManifestError::at`] so they read the same way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::manifest_error::{Location, describe_toml_error};
pub use crate::manifest_error::{ManifestError, Problem};

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
    /// How long a stopping instance gets between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// Whether instances serve HTTP behind the front door (`http = false` for workers: they
    /// are supervised but get no traffic and no health checks).
    pub http: bool,
}

/// The active health check of a process.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    /// HTTP path, starting with `/`.
    pub path: String,
    /// Time between two checks of one instance.
    pub interval: Duration,
    /// How long one check may take before it counts as failed.
    pub timeout: Duration,
    /// Consecutive passing checks before an instance gets traffic.
    pub healthy_threshold: u32,
    /// Consecutive failing checks before an instance stops getting traffic.
    pub unhealthy_threshold: u32,
}

/// The site's durable state, relative to the site dir.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StateSpec {
    /// SQLite database files.
    pub sqlite: Vec<PathBuf>,
    /// Data directories (uploads).
    pub dirs: Vec<PathBuf>,
}

/// The front door's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySpec {
    /// Address the front door listens on.
    pub listen: SocketAddr,
    /// Where `listen` is written in the manifest, for errors found later (port in use).
    pub listen_location: Option<Location>,
    /// The `Retry-After` given to visitors during maintenance.
    pub retry_after: Duration,
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
    http: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<Spanned<String>>,
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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Option<Spanned<String>>,
    retry_after: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMaintenance {
    message: Option<Spanned<String>>,
    page: Option<Spanned<String>>,
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
        Manifest {
            site,
            processes,
            state: self.state(raw.state),
            proxy: self.proxy(raw.proxy),
            maintenance: self.maintenance(raw.maintenance),
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
        ProcessSpec {
            command,
            replicas,
            health,
            env: raw.env,
            stop_timeout,
            http: raw.http.unwrap_or(true),
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
        let sqlite = raw
            .sqlite
            .into_iter()
            .map(|p| self.relative_path("state.sqlite", p))
            .collect();
        let dirs = raw
            .dirs
            .into_iter()
            .map(|p| self.relative_path("state.dirs", p))
            .collect();
        StateSpec { sqlite, dirs }
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
        ProxySpec {
            listen,
            listen_location,
            retry_after,
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

/// Site and process names end up in instance ids (`web-1`), file names and env vars.
fn is_simple_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 40
}
