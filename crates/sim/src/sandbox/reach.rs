//! What the sandbox can reach: its own network namespace (as root), its own S3 server as the
//! vault's second destination, and the cgroups the slow-disk fault makes; each recorded in
//! `run.json` before it exists, so a killed run's is undone by the next.

use std::path::Path;

use super::{S3_DATA, SECOND_DESTINATION, Sandbox, SecondDestination, free_port, write_run_file};
use crate::error::Result;
use crate::netns::{self, Dialer, Netns};
use crate::procs::processes_under;
use crate::s3_server::{self, S3Server};

impl Sandbox {
    /// Gives the sandbox a network namespace with only loopback: its processes (and the
    /// simulator's connections, through the dialer) go there; as root a named one, as an
    /// ordinary user one inside a user namespace of its own. Returns what it is, for the
    /// report, or why there is none. Never fails the run.
    pub(super) fn isolate_network(&mut self) -> Result<String, String> {
        if !nix::unistd::Uid::effective().is_root() {
            let (held, dialer) = netns::UserNetns::create(&self.lifeboat_bin, &self.work)?;
            self.dialer = dialer;
            let text = format!(
                "a network namespace with only loopback, in a user namespace of its own \
                 (held by process {})",
                held.pid()
            );
            self.user_netns = Some(held);
            return Ok(text);
        }
        let name = netns::name_for(std::process::id());
        // Recorded first: a kill -9 between the two leaves a name the next run deletes.
        self.run.netns = Some(name.clone());
        write_run_file(&self.work, &self.run).map_err(|e| e.to_string())?;
        let made = Netns::create(&name).and_then(|ns| {
            self.spawner
                .enter_netns(&ns.path())
                .map_err(|e| format!("cannot enter {}: {e}", ns.name))?;
            self.dialer = Dialer::inside(&ns.path())
                .map_err(|e| format!("cannot open sockets in {}: {e}", ns.name))?;
            Ok(ns)
        });
        match made {
            Ok(ns) => {
                self.netns = Some(ns);
                Ok(format!("network namespace {name} with only loopback"))
            }
            Err(why) => {
                if self.run.netns.take().is_some() {
                    let _ = write_run_file(&self.work, &self.run);
                }
                Err(why)
            }
        }
    }

    /// Starts the sandbox's own S3 server (in its network) as the vault's second destination;
    /// without `s3s-fs`, or if it does not start, a local folder (and why).
    pub(super) async fn start_s3_server(&mut self) -> SecondDestination {
        let Some(binary) = s3_server::find_binary(&self.lifeboat_bin) else {
            return SecondDestination::Folder {
                why_not_s3: format!(
                    "s3s-fs was not found (${}, PATH, .tools/bin): install it with \
                     scripts/install-test-deps",
                    s3_server::BINARY_ENV
                ),
            };
        };
        let port = match free_port() {
            Ok(p) => p,
            Err(e) => {
                return SecondDestination::Folder {
                    why_not_s3: e.to_string(),
                };
            }
        };
        let mut s3 = S3Server::new(
            binary,
            &self.lifeboat_bin,
            port,
            self.site.join(S3_DATA),
            self.work.join("s3s-fs.log"),
        );
        if let Some(ip) = self.services_ip {
            s3.ip = ip;
        }
        s3.join_netns = self.join_netns();
        match self.start_s3(&mut s3).await {
            Ok(_) => SecondDestination::S3(s3),
            Err(why) => SecondDestination::Folder { why_not_s3: why },
        }
    }

    async fn start_s3(&mut self, s3: &mut S3Server) -> Result<u32, String> {
        let pid = s3.start(&self.spawner, &self.dialer).await?;
        self.run.s3_pids.push(pid);
        write_run_file(&self.work, &self.run).map_err(|e| e.to_string())?;
        Ok(pid)
    }

    /// Kills the sandbox's S3 server; its pid (none without one, or when it was down).
    pub fn kill_s3_server(&mut self) -> Option<u32> {
        match &mut self.second {
            SecondDestination::S3(s3) => s3.kill(),
            SecondDestination::Folder { .. } => None,
        }
    }

    /// Starts the sandbox's S3 server again, on the same port with the same data; its pid.
    pub async fn restart_s3_server(&mut self) -> Result<u32, String> {
        let mut second = std::mem::replace(
            &mut self.second,
            SecondDestination::Folder {
                why_not_s3: String::new(),
            },
        );
        let started = match &mut second {
            SecondDestination::S3(s3) => self.start_s3(s3).await,
            SecondDestination::Folder { .. } => Err("the sandbox has no S3 server".into()),
        };
        self.second = second;
        started
    }

    /// `s3` or `local-folder`: what the vault's second destination is.
    pub fn second_destination_kind(&self) -> &'static str {
        match &self.second {
            SecondDestination::S3(_) => "s3",
            SecondDestination::Folder { .. } => "local-folder",
        }
    }

    /// How the sandbox was set up, for the report.
    pub fn report(&self) -> crate::report::SandboxReport {
        crate::report::SandboxReport {
            network_isolated: self.network.is_ok(),
            network: match &self.network {
                Ok(what) => what.clone(),
                Err(why) => format!("outbound traffic not cut off: {why}"),
            },
            second_destination: self.second_destination_kind().into(),
            why_not_s3: match &self.second {
                SecondDestination::S3(_) => None,
                SecondDestination::Folder { why_not_s3 } => Some(why_not_s3.clone()),
            },
            cluster: self.cluster_report(),
        }
    }

    /// Records a cgroup the slow-disk fault is about to make, so a killed run's is removed.
    pub fn record_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        if !self.run.cgroups.iter().any(|c| c == cgroup) {
            self.run.cgroups.push(cgroup.to_path_buf());
            write_run_file(&self.work, &self.run)?;
        }
        Ok(())
    }

    /// Every process of the sandbox now: its lifeboat and what runs inside it.
    pub fn processes(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.lifeboat_pid().into_iter().collect();
        pids.extend(processes_under(&self.root));
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Whether `url` (as Lifeboat reports it) is the vault's second destination.
    pub fn is_second_destination(&self, url: &str) -> bool {
        match &self.second {
            SecondDestination::S3(_) => url.starts_with(&format!("s3://{}/", s3_server::BUCKET)),
            SecondDestination::Folder { .. } => {
                url.trim_end_matches('/').ends_with(SECOND_DESTINATION)
            }
        }
    }
}
