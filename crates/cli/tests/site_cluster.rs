//! Several nodes: virtual hosts in network namespaces on one machine (`lifeboat_sim::lan`,
//! the simulator's own), one etcd member and one lifeboat node per host. Needs root.

mod common;

use std::time::{Duration, Instant};

use lifeboat_sim::lan::Lan;

/// `GET http://ADDR/` from host `from`, with a short timeout: true when it answered.
fn reaches(lan: &Lan, from: usize, addr: &str) -> bool {
    lan.host(from)
        .command("python3")
        .args([
            "-c",
            &format!("import urllib.request; urllib.request.urlopen('http://{addr}/', timeout=1)"),
        ])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn virtual_hosts_reach_each_other_until_one_is_cut_off_or_dies() {
    let lan = Lan::new(2).expect("make the virtual hosts");
    let server_addr = format!("{}:8000", lan.host(0).ip);
    let mut server = lan
        .host(0)
        .command("python3")
        .args([
            "-m",
            "http.server",
            "8000",
            "--bind",
            &lan.host(0).ip.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + common::DEADLINE;
    while !reaches(&lan, 1, &server_addr) {
        assert!(Instant::now() < deadline, "host 2 never reached host 1");
        std::thread::sleep(Duration::from_millis(100));
    }
    lan.cut(0).expect("cut or heal a host");
    assert!(!reaches(&lan, 1, &server_addr), "a cut host is unreachable");
    lan.heal(0).expect("cut or heal a host");
    common::wait_until("host 1 to be reachable again", || {
        reaches(&lan, 1, &server_addr)
    });
    assert!(!lan.host(0).kill_everything().is_empty());
    let _ = server.wait();
    assert!(lan.host(0).pids().is_empty(), "nothing runs on a dead host");
}

/// The `etcd` binary: on PATH, in the workspace's `.tools/bin`, or Debian's `/usr/bin/etcd`.
fn etcd_binary() -> std::path::PathBuf {
    let tools = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/etcd");
    for candidate in [tools, "/usr/bin/etcd".into()] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "etcd is not installed; run scripts/install-test-deps (it unpacks Debian's etcd-server into .tools/bin)"
    )
}

/// Host `i`'s etcd member of the LAN's three (its data under `scratch/etcd-I`).
fn start_etcd(lan: &Lan, scratch: &std::path::Path, i: usize) -> std::process::Child {
    let peers: Vec<String> = lan
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| format!("h{}=http://{}:2380", i + 1, h.ip))
        .collect();
    let host = lan.host(i);
    let data = scratch.join(format!("etcd-{}", i + 1));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(scratch.join(format!("etcd-{}.log", i + 1)))
        .unwrap();
    // With certificates made (`make_tls`), clients speak TLS and must show one.
    let tls = scratch.join("tls");
    let scheme = if tls.exists() { "https" } else { "http" };
    let mut command = host.command(etcd_binary());
    if tls.exists() {
        command
            .arg(format!(
                "--cert-file={}",
                tls.join(format!("h{}.pem", i + 1)).display()
            ))
            .arg(format!(
                "--key-file={}",
                tls.join(format!("h{}-key.pem", i + 1)).display()
            ))
            .arg(format!(
                "--trusted-ca-file={}",
                tls.join("ca.pem").display()
            ))
            .arg("--client-cert-auth");
    }
    command
        .arg(format!("--name=h{}", i + 1))
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls={scheme}://{}:2379", host.ip))
        .arg(format!(
            "--advertise-client-urls={scheme}://{}:2379",
            host.ip
        ))
        .arg(format!("--listen-peer-urls=http://{}:2380", host.ip))
        .arg(format!(
            "--initial-advertise-peer-urls=http://{}:2380",
            host.ip
        ))
        .arg(format!("--initial-cluster={}", peers.join(",")))
        .arg("--initial-cluster-state=new")
        // A member that comes back from a partition must not force an election (etcd 3.4's
        // default; 3.5 turns it on): that stalls lease renewals for longer than a short TTL,
        // and the primary fences itself for nothing.
        .arg("--pre-vote")
        .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .expect("start etcd")
}

/// A CA, a server certificate for each host's etcd (its IP) and one client certificate,
/// made with `openssl` into `dir`.
fn make_tls(dir: &std::path::Path, lan: &Lan) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed (scripts/install-test-deps)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test etcd CA",
    ]);
    run(&ca);
    let mut certs: Vec<(String, String)> = lan
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            (
                format!("h{}", i + 1),
                format!(
                    "subjectAltName=IP:{}\nextendedKeyUsage=serverAuth,clientAuth\n",
                    h.ip
                ),
            )
        })
        .collect();
    certs.push((
        "client".into(),
        "subjectAltName=DNS:lifeboat-node\nextendedKeyUsage=clientAuth\n".into(),
    ));
    for (name, ext) in certs {
        let (key, csr, pem, extfile) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(dir.join(&extfile), ext).unwrap();
        let subj = format!("/CN={name}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        run(&req);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ]);
    }
}

/// A three-host cluster: an etcd member and a lifeboat node (the guestbook) per host, each
/// in its own zone, each node with its own copy of the site dir, as on three machines.
/// The site a test cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Site {
    /// The guestbook: SQLite and uploads.
    Guestbook,
    /// `fixtures/mariadb_app.py`: a MariaDB database Lifeboat runs, and uploads.
    MariaDb,
}

struct Cluster {
    lan: Lan,
    scratch: tempfile::TempDir,
    etcd: Vec<std::process::Child>,
    nodes: Vec<Option<std::process::Child>>,
}

impl Cluster {
    fn start(durability: &str) -> Cluster {
        Cluster::start_with(durability, false)
    }

    fn start_with(durability: &str, tls: bool) -> Cluster {
        Cluster::start_site(durability, tls, Site::Guestbook)
    }

    /// With `tls`, etcd serves TLS and asks every client for a certificate of the test CA;
    /// each node has the CA, a certificate and its key under `.lifeboat/etcd/`.
    fn start_site(durability: &str, tls: bool, app: Site) -> Cluster {
        let lan = Lan::new(3).expect("make the virtual hosts");
        let scratch = tempfile::tempdir().unwrap();
        common::open_to_the_site_user(scratch.path());
        if tls {
            make_tls(&scratch.path().join("tls"), &lan);
        }
        let scheme = if tls { "https" } else { "http" };
        let clients: Vec<String> = lan
            .hosts
            .iter()
            .map(|h| format!("\"{scheme}://{}:2379\"", h.ip))
            .collect();
        let tls_settings = if tls {
            "etcd_ca = \".lifeboat/etcd/ca.pem\"\netcd_cert = \".lifeboat/etcd/node.pem\"\netcd_key = \".lifeboat/etcd/node-key.pem\"\n"
        } else {
            ""
        };
        let etcd = (0..lan.hosts.len())
            .map(|i| start_etcd(&lan, scratch.path(), i))
            .collect();
        let site_part = match app {
            Site::Guestbook => format!(
                r#"[site]
name = "guestbook"

[processes.web]
command = "{guestbook}"
replicas = 2
env = {{ GUESTBOOK_ADMIN_PASSWORD = "initial-admin-pw" }}
health = {{ path = "/healthz", interval = "200ms", timeout = "1s" }}

[state]
sqlite = ["data/guestbook.db"]
dirs = ["data/uploads"]
"#,
                guestbook = common::guestbook_bin().display(),
            ),
            Site::MariaDb => r#"[site]
name = "blog"

[processes.web]
command = "python3 app.py"
replicas = 2
stop_timeout = "10s"
health = { path = "/healthz", interval = "200ms", timeout = "5s" }

[state]
mariadb = { database = "blog", user = "blogger" }
dirs = ["uploads"]
"#
            .to_string(),
        };
        let manifest = format!(
            r#"{site_part}
[proxy]
listen = "0.0.0.0:8080"

[vault]
destinations = ["{vault}"]
segment_interval = "250ms"

[cluster]
etcd = [{clients}]
durability = "{durability}"
{tls_settings}{cluster_extra}"#,
            // A small journal: standbys apply what they received several times under the
            // test's writes, in the background.
            cluster_extra = if app == Site::MariaDb {
                "standby_journal = \"4KiB\"\n"
            } else {
                ""
            },
            clients = clients.join(", "),
            vault = scratch.path().join("vault").display(),
        );
        for i in 1..=3 {
            let site = scratch.path().join(format!("node{i}"));
            std::fs::create_dir_all(&site).unwrap();
            std::fs::write(site.join("lifeboat.toml"), &manifest).unwrap();
            if app == Site::MariaDb {
                let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/mariadb_app.py");
                std::fs::copy(script, site.join("app.py")).unwrap();
            }
            if tls {
                let etcd = site.join(".lifeboat/etcd");
                std::fs::create_dir_all(&etcd).unwrap();
                let from = scratch.path().join("tls");
                for (f, to) in [
                    ("ca.pem", "ca.pem"),
                    ("client.pem", "node.pem"),
                    ("client-key.pem", "node-key.pem"),
                ] {
                    std::fs::copy(from.join(f), etcd.join(to)).unwrap();
                }
            }
        }
        let mut cluster = Cluster {
            lan,
            scratch,
            etcd,
            nodes: vec![None, None, None],
        };
        // The first node makes the site's vault key; the others get a copy, as an owner copies
        // it to each machine (`lifeboat vault key export`).
        cluster.start_node(0);
        let key = cluster.site(0).join(".lifeboat/vault.key");
        common::wait_until("the first node to make the vault key", || key.exists());
        for i in 1..3 {
            let dir = cluster.site(i).join(".lifeboat");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(&key, dir.join("vault.key")).unwrap();
            cluster.start_node(i);
        }
        cluster
    }

    fn scratch(&self) -> &std::path::Path {
        self.scratch.path()
    }

    fn site(&self, i: usize) -> std::path::PathBuf {
        self.scratch.path().join(format!("node{}", i + 1))
    }

    fn start_node(&mut self, i: usize) {
        let host = self.lan.host(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.scratch.path().join(format!("node{}.log", i + 1)))
            .unwrap();
        let child = host
            .command(common::lifeboat_bin())
            .arg("up")
            .arg(self.site(i))
            .args(["--node", &format!("n{}", i + 1)])
            .args(["--zone", &format!("z{}", i + 1)])
            .args(["--advertise", &host.ip.to_string()])
            .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(log))
            .spawn()
            .expect("start lifeboat");
        self.nodes[i] = Some(child);
    }

    /// `lifeboat status --json` of node `i`, when it answers.
    fn status(&self, i: usize) -> Option<serde_json::Value> {
        let out = common::cli(&self.site(i), &["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// The node that says it is the primary, once exactly one does among `among`.
    fn wait_for_primary(&self, among: &[usize]) -> (usize, u64) {
        let deadline = Instant::now() + common::DEADLINE;
        loop {
            let primaries: Vec<(usize, u64)> = among
                .iter()
                .filter_map(|&i| {
                    let s = self.status(i)?;
                    (s["role"]["role"] == "primary")
                        .then(|| (i, s["role"]["term"].as_u64().unwrap()))
                })
                .collect();
            if let [one] = primaries[..] {
                return one;
            }
            assert!(
                Instant::now() < deadline,
                "no single primary among {among:?}: {primaries:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// GET or POST through node `i`'s front door, from host `from`, with a short timeout;
    /// the status code and body.
    fn request(
        &self,
        from: usize,
        i: usize,
        method: &str,
        path: &str,
        form: &str,
    ) -> Option<(u16, String)> {
        let url = format!("http://{}:8080{path}", self.lan.host(i).ip);
        let script = format!(
            "import urllib.request,sys\n\
             data = {data}\n\
             req = urllib.request.Request({url:?}, data=data, method={method:?})\n\
             try:\n  r = urllib.request.urlopen(req, timeout=2); print(r.status); sys.stdout.write(r.read().decode())\n\
             except urllib.error.HTTPError as e:\n  print(e.code); sys.stdout.write(e.read().decode())\n",
            data = if form.is_empty() {
                "None".to_string()
            } else {
                format!("{form:?}.encode()")
            },
        );
        let out = self
            .lan
            .host(from)
            .command("python3")
            .args(["-c", &script])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (code, body) = text.split_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_string()))
    }

    /// Waits until every node of `standbys` streams from the primary.
    fn wait_streaming(&self, standbys: &[usize]) {
        self.wait_or_explain("the standbys streaming", || {
            standbys.iter().all(|&i| {
                self.status(i)
                    .is_some_and(|s| s["replica"]["state"] == "streaming")
            })
        });
    }

    /// [`common::wait_until`], and on timeout every node's status and log.
    fn wait_or_explain(&self, what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + common::DEADLINE;
        while !cond() {
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}\n{}", self.explain());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every node's status, events and log.
    fn explain(&self) -> String {
        let mut out: String = (0..3)
            .map(|i| {
                let status = common::cli(&self.site(i), &["status"]);
                let events = common::cli(&self.site(i), &["events"]);
                format!(
                    "--- status of node{}:\n{}\n--- events:\n{}",
                    i + 1,
                    String::from_utf8_lossy(&status.stdout),
                    String::from_utf8_lossy(&events.stdout)
                )
            })
            .collect();
        out.push_str(&self.logs());
        out
    }

    fn logs(&self) -> String {
        (1..=3)
            .map(|i| {
                let log = std::fs::read_to_string(self.scratch.path().join(format!("node{i}.log")))
                    .unwrap_or_default();
                format!("--- node{i}:\n{log}")
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten().chain(self.etcd.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // LIFEBOAT_KEEP_FAILED=DIR keeps a failed test's sites, vault and logs for a look.
        if std::thread::panicking()
            && let Some(keep) = std::env::var_os("LIFEBOAT_KEEP_FAILED")
        {
            let to = std::path::Path::new(&keep).join(format!("cluster-{}", std::process::id()));
            let _ = std::process::Command::new("cp")
                .arg("-a")
                .arg(self.scratch.path())
                .arg(&to)
                .status();
            eprintln!("kept the cluster's files in {}", to.display());
        }
    }
}

/// Exactly one node leads (a term from etcd); it runs the instances, the standbys run none,
/// and a request to a standby's front door is answered by the primary's instances.
#[test]
fn one_node_leads_and_the_others_forward_to_it() {
    let cluster = Cluster::start("async");
    let (primary, term) = cluster.wait_for_primary(&[0, 1, 2]);
    assert!(term > 0);
    let standby = (primary + 1) % 3;
    common::wait_until("the standby to follow the primary", || {
        cluster.status(standby).is_some_and(|s| {
            s["role"]["role"] == "standby" && s["instances"].as_array().unwrap().is_empty()
        })
    });
    common::wait_until("a write through the standby's front door", || {
        cluster
            .request(
                standby,
                standby,
                "POST",
                "/entries",
                "text=through-a-standby",
            )
            .is_some_and(|(code, _)| code == 201)
    });
    let (code, body) = cluster
        .request(primary, primary, "GET", "/api/entries", "")
        .unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("through-a-standby"), "{body}");
    // Every node registered (each node reads the member list every poll interval).
    common::wait_until("the standby to list all three nodes", || {
        cluster
            .status(standby)
            .is_some_and(|s| s["nodes"].as_array().unwrap().len() == 3)
    });
    // `async`: the primary says how far behind each standby is and what losing it now
    // would lose; once the standbys caught up, nothing.
    common::wait_until("the primary to report its loss window as empty", || {
        cluster.status(primary).is_some_and(|s| {
            let behind_known = s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["name"] != format!("n{}", primary + 1))
                .all(|n| n["behind"]["connected"] == true);
            behind_known
                && s["loss_window"]["best_standby"].is_string()
                && s["loss_window"]["changes"] == 0
        })
    });
    let text = common::cli(&cluster.site(primary), &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("BEHIND") && text.contains("durability async"),
        "{text}"
    );
    // A standby reports no window of its own.
    assert!(cluster.status(standby).unwrap()["loss_window"].is_null());
}

/// The primary's whole host dies (its etcd member too): another node takes over in a new
/// term and serves.
#[test]
fn when_the_primarys_host_dies_another_node_takes_over() {
    let cluster = Cluster::start("async");
    let (primary, term) = cluster.wait_for_primary(&[0, 1, 2]);
    let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    common::wait_until("the primary to serve", || {
        cluster
            .request(others[0], primary, "GET", "/healthz", "")
            .is_some_and(|(code, _)| code == 200)
    });
    let killed_at = Instant::now();
    assert!(cluster.lan.host(primary).kill_everything().len() >= 2);
    let (next, next_term) = cluster.wait_for_primary(&others);
    assert!(next_term > term, "a new term: {term} -> {next_term}");
    common::wait_until("the new primary to serve", || {
        cluster
            .request(others[0], next, "GET", "/healthz", "")
            .is_some_and(|(code, _)| code == 200)
    });
    eprintln!("healed {:?} after the kill", killed_at.elapsed());
}

/// The primary is cut off the network: it stops writing (its instances killed) before its
/// lease can run out, another node takes over, and when the cut heals the old primary
/// follows the new one.
#[test]
fn a_primary_cut_off_fences_itself_and_follows_after_the_cut_heals() {
    let cluster = Cluster::start("async");
    let (primary, term) = cluster.wait_for_primary(&[0, 1, 2]);
    let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    common::wait_until("the primary to run its instances", || {
        cluster
            .status(primary)
            .is_some_and(|s| !s["instances"].as_array().unwrap().is_empty())
    });
    // A client on the primary's own host keeps writing to it through the cut: in `async`
    // mode the cut-off primary acknowledges writes no standby receives until it fences.
    let mut inside = writer(&cluster, primary, primary, "inside");
    let acked_inside = collect(&mut inside);
    cluster.wait_or_explain("writes acknowledged before the cut", || {
        acked_inside.lock().unwrap().len() >= 10
    });
    cluster.lan.cut(primary).expect("cut or heal a host");
    common::wait_until("the cut-off primary to fence itself", || {
        cluster.status(primary).is_some_and(|s| {
            s["role"]["role"] == "fenced" && s["instances"].as_array().unwrap().is_empty()
        })
    });
    let _ = inside.kill();
    let _ = inside.wait();
    let (next, next_term) = cluster.wait_for_primary(&others);
    assert!(next_term > term);
    cluster.lan.heal(primary).expect("cut or heal a host");
    common::wait_until("the old primary to follow the new one", || {
        cluster.status(primary).is_some_and(|s| {
            s["role"]["role"] == "standby" && s["role"]["leader"] == format!("n{}", next + 1)
        })
    });

    // What only the old primary had is a fork: listed by `lifeboat timeline` on every node
    // (it is in the shared vault), restorable with `restore-site --fork`, never lost.
    let old = format!("n{}", primary + 1);
    let fork_name = std::cell::RefCell::new(String::new());
    cluster.wait_or_explain("the old primary's fork listed on another node", || {
        let out = common::cli(&cluster.site(others[0]), &["timeline", "--json"]);
        let Ok(report) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        let forks = report["restore_points"]["forks"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match forks.iter().find(|f| f["node"] == old.as_str()) {
            Some(f) => {
                *fork_name.borrow_mut() = f["name"].as_str().unwrap().to_string();
                true
            }
            None => false,
        }
    });
    let fork_name = fork_name.into_inner();
    let text = common::cli(&cluster.site(others[0]), &["timeline"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(&fork_name),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    let into = cluster.scratch().join("restored-fork");
    let out = common::cli(
        &cluster.site(others[1]),
        &[
            "restore-site",
            "--fork",
            &fork_name,
            "--into",
            into.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = rusqlite::Connection::open(into.join("data/guestbook.db")).unwrap();
    let in_fork: std::collections::BTreeSet<String> = conn
        .prepare("SELECT text FROM entries")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let (code, body) = cluster
        .request(others[1], next, "GET", "/api/entries", "")
        .expect("the new primary answers");
    assert_eq!(code, 200, "{body}");
    let acked = acked_inside.lock().unwrap().clone();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|t| !body.contains(&format!("\"{t}\"")) && !in_fork.contains(*t))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes are neither on the new primary nor in the fork: {lost:?}",
        lost.len(),
        acked.len()
    );
    let only_in_fork = acked
        .iter()
        .filter(|t| !body.contains(&format!("\"{t}\"")))
        .count();
    eprintln!(
        "{only_in_fork} of {} writes acknowledged by the cut-off primary are only in its fork",
        acked.len()
    );
    assert!(
        only_in_fork > 0,
        "the cut-off primary acknowledged no write of its own, so the fork was not shown to keep one"
    );
}

/// A client on host `from` that POSTs entries `{tag}-N` to node `to`'s front door, one after
/// the other, and prints `acked {tag}-N` for each answered 201 (anything else is not an
/// acknowledgement), until it is killed.
fn writer(cluster: &Cluster, from: usize, to: usize, tag: &str) -> std::process::Child {
    let url = format!("http://{}:8080/entries", cluster.lan.host(to).ip);
    let script = format!(
        "import urllib.request,sys,time\n\
         n = 0\n\
         while True:\n\
         \x20 n += 1\n\
         \x20 text = '{tag}-%d' % n\n\
         \x20 try:\n\
         \x20   r = urllib.request.urlopen(urllib.request.Request({url:?}, data=('text=' + text).encode(), method='POST'), timeout=15)\n\
         \x20   if r.status == 201: print('acked', text, flush=True)\n\
         \x20 except Exception as e:\n\
         \x20   print('failed', text, e, (e.read()[:160] if hasattr(e, 'read') else b'').decode(errors='replace').replace(chr(10), ' '), flush=True); time.sleep(0.05)\n"
    );
    cluster
        .lan
        .host(from)
        .command("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the writer")
}

type Lines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Reads a writer's lines in the background; the acknowledged texts so far.
fn collect(child: &mut std::process::Child) -> Lines {
    collect_both(child).0
}

/// Reads a writer's lines in the background; the acknowledged texts and the failures so far.
fn collect_both(child: &mut std::process::Child) -> (Lines, Lines) {
    use std::io::BufRead;
    let (acked, failed): (Lines, Lines) = Default::default();
    let out = child.stdout.take().unwrap();
    let (sink, failures) = (acked.clone(), failed.clone());
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(text) = line.strip_prefix("acked ") {
                sink.lock().unwrap().push(text.to_string());
            } else {
                eprintln!("writer: {line}");
                failures.lock().unwrap().push(line);
            }
        }
    });
    (acked, failed)
}

/// `durability = "sync"`: writes go on through a standby's front door while the primary's
/// whole host dies; every write a client saw acknowledged (201) is on the new primary.
#[test]
fn with_sync_durability_no_acknowledged_write_is_lost_when_the_primarys_host_dies() {
    let mut cluster = Cluster::start("sync");
    let (primary, term) = cluster.wait_for_primary(&[0, 1, 2]);
    let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    let (client, door) = (others[1], others[0]);
    let mut child = writer(&cluster, client, door, "before-and-after");
    let acked = collect(&mut child);
    cluster.wait_or_explain("20 writes acknowledged before the kill", || {
        acked.lock().unwrap().len() >= 20
    });
    let killed_at = Instant::now();
    assert!(cluster.lan.host(primary).kill_everything().len() >= 2);
    let before = acked.lock().unwrap().len();
    // The one write in flight at the kill may still be answered (it was done before it):
    // healed is when the write after it is acknowledged.
    cluster.wait_or_explain("a write acknowledged after the kill", || {
        acked.lock().unwrap().len() > before + 1
    });
    eprintln!("writes healed {:?} after the kill", killed_at.elapsed());
    let (next, next_term) = cluster.wait_for_primary(&others);
    assert!(next_term > term);
    cluster.wait_or_explain("writes acknowledged by the new primary", || {
        acked.lock().unwrap().len() >= before + 20
    });
    for i in &others {
        let out = common::cli(&cluster.site(*i), &["events"]);
        eprintln!(
            "--- events of node{}:\n{}",
            i + 1,
            String::from_utf8_lossy(&out.stdout)
        );
        let out = common::cli(&cluster.site(*i), &["status"]);
        eprintln!(
            "--- status of node{}:\n{}",
            i + 1,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let acked = acked.lock().unwrap().clone();
    let (code, body) = cluster
        .request(client, next, "GET", "/api/entries", "")
        .expect("the new primary answers");
    assert_eq!(code, 200, "{body}");
    let lost: Vec<&String> = acked
        .iter()
        .filter(|t| !body.contains(&format!("\"{t}\"")))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}\n{}",
        lost.len(),
        acked.len(),
        cluster.logs()
    );

    // The old primary's host comes back: it rejoins as a standby of the new primary (its
    // own copy kept aside as a fork), and the new primary keeps its term.
    if let Some(mut node) = cluster.nodes[primary].take() {
        let _ = node.wait();
    }
    let _ = cluster.etcd[primary].wait();
    cluster.etcd[primary] = start_etcd(&cluster.lan, cluster.scratch(), primary);
    cluster.start_node(primary);
    cluster.wait_or_explain("the old primary to follow the new one", || {
        cluster.status(primary).is_some_and(|s| {
            s["role"]["role"] == "standby"
                && s["role"]["leader"] == format!("n{}", next + 1)
                && s["replica"]["ready"] == true
        })
    });
    assert_eq!(cluster.wait_for_primary(&[0, 1, 2]), (next, next_term));
}

/// `durability = "sync"` under a partition, not a kill: the primary is cut off while clients
/// on its own host and elsewhere keep writing. The cut-off primary acknowledges nothing it
/// cannot get to a standby; every write any client saw acknowledged is on the new primary,
/// before and after the old one rejoins.
#[test]
fn a_cut_off_primary_acknowledges_no_write_the_new_primary_lacks() {
    let cluster = Cluster::start("sync");
    let (primary, _) = cluster.wait_for_primary(&[0, 1, 2]);
    let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    let mut inside = writer(&cluster, primary, primary, "inside");
    let mut outside = writer(&cluster, others[1], others[0], "outside");
    let acked_inside = collect(&mut inside);
    let acked_outside = collect(&mut outside);
    cluster.wait_or_explain("writes acknowledged on both sides before the cut", || {
        acked_inside.lock().unwrap().len() >= 10 && acked_outside.lock().unwrap().len() >= 10
    });
    cluster.lan.cut(primary).expect("cut or heal a host");
    let (next, _) = cluster.wait_for_primary(&others);
    let outside_then = acked_outside.lock().unwrap().len();
    cluster.wait_or_explain("writes acknowledged by the new primary", || {
        acked_outside.lock().unwrap().len() >= outside_then + 10
    });
    cluster.lan.heal(primary).expect("cut or heal a host");
    cluster.wait_or_explain("the old primary to follow the new one", || {
        cluster.status(primary).is_some_and(|s| {
            s["role"]["role"] == "standby" && s["role"]["leader"] == format!("n{}", next + 1)
        })
    });
    for child in [&mut inside, &mut outside] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (code, body) = cluster
        .request(others[1], next, "GET", "/api/entries", "")
        .expect("the new primary answers");
    assert_eq!(code, 200, "{body}\n{}", cluster.explain());
    let acked: Vec<String> = acked_inside
        .lock()
        .unwrap()
        .iter()
        .chain(acked_outside.lock().unwrap().iter())
        .cloned()
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|t| !body.contains(&format!("\"{t}\"")))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes are not on the new primary: {lost:?}\n{}",
        lost.len(),
        acked.len(),
        cluster.logs()
    );
}

/// Losing one etcd member (of three) changes nothing: the same primary keeps its term and
/// writes go on being acknowledged.
#[test]
fn losing_one_etcd_member_changes_nothing() {
    let mut cluster = Cluster::start("sync");
    let (primary, term) = cluster.wait_for_primary(&[0, 1, 2]);
    let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    let mut child = writer(&cluster, others[1], others[0], "etcd-member-down");
    let acked = collect(&mut child);
    cluster.wait_or_explain("writes acknowledged", || acked.lock().unwrap().len() >= 10);
    // The etcd member on the primary's own host: the one its client may be talking to.
    let _ = cluster.etcd[primary].kill();
    let _ = cluster.etcd[primary].wait();
    let then = acked.lock().unwrap().len();
    cluster.wait_or_explain("writes acknowledged with one etcd member down", || {
        acked.lock().unwrap().len() >= then + 50
    });
    // Several lease TTLs later, still the same primary in the same term.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let s = cluster.status(primary).expect("the primary answers");
        assert_eq!(
            (s["role"]["role"].as_str(), s["role"]["term"].as_u64()),
            (Some("primary"), Some(term)),
            "{}",
            cluster.explain()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `lifeboat switchover --to NODE` moves the primary role with no failed request: writers
/// through a standby's front door and straight at the primary's keep going, every write is
/// acknowledged and on the new primary.
#[test]
fn switchover_moves_the_primary_without_a_failed_request() {
    let cluster = Cluster::start("sync");
    let (primary, term) = cluster.wait_for_primary(&[0, 1, 2]);
    let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    let to = others[0];
    cluster.wait_or_explain("the successor to stream from the primary", || {
        cluster
            .status(to)
            .is_some_and(|s| s["replica"]["state"] == "streaming" && s["replica"]["ready"] == true)
    });
    let mut at_primary = writer(&cluster, primary, primary, "at-primary");
    let mut via_standby = writer(&cluster, others[1], others[1], "via-standby");
    let (acked_a, failed_a) = collect_both(&mut at_primary);
    let (acked_b, failed_b) = collect_both(&mut via_standby);
    cluster.wait_or_explain("writes acknowledged before the switchover", || {
        acked_a.lock().unwrap().len() >= 10 && acked_b.lock().unwrap().len() >= 10
    });
    let out = common::cli(
        &cluster.site(primary),
        &["switchover", "--to", &format!("n{}", to + 1)],
    );
    assert!(
        out.status.success(),
        "switchover failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        cluster.explain()
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let (next, next_term) = cluster.wait_for_primary(&[0, 1, 2]);
    assert_eq!(next, to);
    assert!(next_term > term);
    let (a, b) = (acked_a.lock().unwrap().len(), acked_b.lock().unwrap().len());
    cluster.wait_or_explain("writes acknowledged after the switchover", || {
        acked_a.lock().unwrap().len() >= a + 10 && acked_b.lock().unwrap().len() >= b + 10
    });
    for child in [&mut at_primary, &mut via_standby] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let failed: Vec<String> = failed_a
        .lock()
        .unwrap()
        .iter()
        .chain(failed_b.lock().unwrap().iter())
        .cloned()
        .collect();
    assert!(
        failed.is_empty(),
        "requests failed: {failed:?}\n{}",
        cluster.explain()
    );
    let (code, body) = cluster
        .request(others[1], next, "GET", "/api/entries", "")
        .expect("the new primary answers");
    assert_eq!(code, 200, "{body}");
    let acked: Vec<String> = acked_a
        .lock()
        .unwrap()
        .iter()
        .chain(acked_b.lock().unwrap().iter())
        .cloned()
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|t| !body.contains(&format!("\"{t}\"")))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

/// etcd loses quorum (two of its three members stop) while every node is healthy: the
/// primary serves on in failsafe mode because every standby confirms it directly, writes go
/// on being acknowledged, and when etcd is back the lease decides again, same primary, same
/// term.
#[test]
fn losing_etcd_quorum_does_not_take_the_site_down() {
    let mut cluster = Cluster::start("sync");
    let (primary, term) = cluster.wait_for_primary(&[0, 1, 2]);
    let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    cluster.wait_streaming(&others);
    cluster.wait_or_explain("the primary to list every node", || {
        cluster
            .status(primary)
            .is_some_and(|s| s["nodes"].as_array().unwrap().len() == 3)
    });
    let mut child = writer(&cluster, others[1], others[0], "no-quorum");
    let (acked, failed) = collect_both(&mut child);
    cluster.wait_or_explain("writes acknowledged", || acked.lock().unwrap().len() >= 10);
    for &i in &others {
        let _ = cluster.etcd[i].kill();
        let _ = cluster.etcd[i].wait();
    }
    let events_say = |site: &std::path::Path, what: &str| {
        String::from_utf8_lossy(&common::cli(site, &["events"]).stdout).contains(what)
    };
    let primary_site = cluster.site(primary);
    cluster.wait_or_explain("the primary to say it serves on in failsafe mode", || {
        events_say(&primary_site, "failsafe mode")
    });
    // Several lease TTLs without etcd: still serving, same term.
    let then = acked.lock().unwrap().len();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(250));
    }
    let s = cluster.status(primary).expect("the primary answers");
    assert_eq!(
        (s["role"]["role"].as_str(), s["role"]["term"].as_u64()),
        (Some("primary"), Some(term)),
        "{}",
        cluster.explain()
    );
    assert!(
        acked.lock().unwrap().len() >= then + 20,
        "writes went on without etcd quorum\n{}",
        cluster.explain()
    );
    for &i in &others {
        cluster.etcd[i] = start_etcd(&cluster.lan, cluster.scratch.path(), i);
    }
    cluster.wait_or_explain("failsafe mode to end once etcd is back", || {
        events_say(&primary_site, "failsafe mode ended")
    });
    let s = cluster.status(primary).expect("the primary answers");
    assert_eq!(s["role"]["term"].as_u64(), Some(term));
    // Taken before the writer is killed: the kill may cut its last line short ("acked").
    let failures = failed.lock().unwrap().clone();
    let _ = child.kill();
    let _ = child.wait();
    assert!(failures.is_empty(), "requests failed: {failures:?}");
}

/// A standby's whole host dies while clients write (`sync`): the other standby, in another
/// zone, acknowledges, so no request fails and the primary keeps its term. The host comes
/// back (its etcd member and `lifeboat up` again): the node rejoins as a standby, catches up
/// without losing anything, and can take over holding every acknowledged write.
#[test]
fn a_killed_standby_changes_nothing_and_rejoins_when_it_comes_back() {
    let mut cluster = Cluster::start("sync");
    let (primary, term) = cluster.wait_for_primary(&[0, 1, 2]);
    let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    let (victim, survivor) = (others[0], others[1]);
    cluster.wait_streaming(&others);
    let mut child = writer(&cluster, survivor, primary, "standby-down");
    let (acked, failed) = collect_both(&mut child);
    cluster.wait_or_explain("writes acknowledged", || acked.lock().unwrap().len() >= 10);
    assert!(cluster.lan.host(victim).kill_everything().len() >= 2);
    let _ = cluster.etcd[victim].wait();
    if let Some(mut node) = cluster.nodes[victim].take() {
        let _ = node.wait();
    }
    let then = acked.lock().unwrap().len();
    cluster.wait_or_explain("writes acknowledged with the standby dead", || {
        acked.lock().unwrap().len() >= then + 30
    });
    assert_eq!(
        cluster.wait_for_primary(&[primary, survivor]),
        (primary, term)
    );

    // The host comes back.
    cluster.etcd[victim] = start_etcd(&cluster.lan, cluster.scratch(), victim);
    cluster.start_node(victim);
    cluster.wait_or_explain("the restarted node to stream as a standby", || {
        cluster.status(victim).is_some_and(|s| {
            s["role"]["role"] == "standby"
                && s["replica"]["state"] == "streaming"
                && s["replica"]["ready"] == true
        })
    });
    let then = acked.lock().unwrap().len();
    cluster.wait_or_explain("writes acknowledged after it is back", || {
        acked.lock().unwrap().len() >= then + 10
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        failed.lock().unwrap().is_empty(),
        "requests failed: {:?}\n{}",
        failed.lock().unwrap(),
        cluster.explain()
    );
    // What it holds is whole: it takes over and serves every acknowledged write.
    let out = common::cli(
        &cluster.site(primary),
        &["switchover", "--to", &format!("n{}", victim + 1)],
    );
    assert!(
        out.status.success(),
        "switchover failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        cluster.explain()
    );
    let (next, _) = cluster.wait_for_primary(&[0, 1, 2]);
    assert_eq!(next, victim);
    let (code, body) = cluster
        .request(survivor, next, "GET", "/api/entries", "")
        .expect("the restarted node answers as the primary");
    assert_eq!(code, 200, "{body}");
    let acked = acked.lock().unwrap().clone();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|t| !body.contains(&format!("\"{t}\"")))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes are not on the restarted node: {lost:?}",
        lost.len(),
        acked.len()
    );
}

/// etcd over TLS with client certificates (`https://` endpoints, `etcd_ca`, `etcd_cert`,
/// `etcd_key` under `.lifeboat/`): the nodes elect a primary through it and serve writes.
#[test]
fn the_nodes_reach_etcd_over_tls_with_client_certificates() {
    let cluster = Cluster::start_with("sync", true);
    let (primary, term) = cluster.wait_for_primary(&[0, 1, 2]);
    assert!(term > 0);
    let standby = (primary + 1) % 3;
    cluster.wait_or_explain("a write through a standby's front door", || {
        cluster
            .request(standby, standby, "POST", "/entries", "text=over-tls")
            .is_some_and(|(code, _)| code == 201)
    });
    // etcd answers a client with the certificate and refuses one without: the TLS is real.
    let tls = cluster.scratch().join("tls");
    let health = |with_cert: bool| {
        let mut curl = cluster.lan.host(standby).command("curl");
        curl.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(tls.join("ca.pem"));
        if with_cert {
            curl.arg("--cert")
                .arg(tls.join("client.pem"))
                .arg("--key")
                .arg(tls.join("client-key.pem"));
        }
        let out = curl
            .arg(format!(
                "https://{}:2379/health",
                cluster.lan.host(primary).ip
            ))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(health(true), "200");
    assert_ne!(
        health(false),
        "200",
        "etcd answered without a client certificate"
    );
}

/// A site whose state is a MariaDB database, `durability = "sync"`: the standbys keep a copy
/// of the database fed by the stream; rows are written through a standby's front door while
/// the primary's whole host dies; a standby takes over with its copy (no restore) and every
/// row a client saw acknowledged is there. The old primary's host comes back and follows.
#[test]
fn a_mariadb_site_fails_over_with_every_acknowledged_row() {
    let mut cluster = Cluster::start_site("sync", false, Site::MariaDb);
    let (primary, term) = cluster.wait_for_primary(&[0, 1, 2]);
    let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    cluster.wait_or_explain("both standbys to hold a copy of the database", || {
        others.iter().all(|&i| {
            cluster.status(i).is_some_and(|s| {
                s["replica"]["ready"] == true && s["replica"]["state"] == "streaming"
            })
        })
    });
    let (client, door) = (others[1], others[0]);
    let url = format!("http://{}:8080/rows", cluster.lan.host(door).ip);
    let script = format!(
        "import urllib.request,sys,time\n\
         n = 0\n\
         while True:\n\
         \x20 n += 1\n\
         \x20 try:\n\
         \x20   r = urllib.request.urlopen(urllib.request.Request('{url}/%d' % n, data=b'', method='POST'), timeout=15)\n\
         \x20   if r.status == 200: print('acked', n, flush=True)\n\
         \x20 except Exception as e:\n\
         \x20   print('failed', n, e, flush=True); time.sleep(0.05)\n"
    );
    let mut child = cluster
        .lan
        .host(client)
        .command("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the writer");
    let acked = collect(&mut child);
    let applied_at = |i: usize| {
        std::fs::read_to_string(cluster.site(i).join(".lifeboat/replica/mariadb-position"))
            .unwrap_or_default()
    };
    let restored_at: Vec<String> = others.iter().map(|&i| applied_at(i)).collect();
    cluster.wait_or_explain("20 rows acknowledged before the kill", || {
        acked.lock().unwrap().len() >= 20
    });
    // Past 4 KiB of received transactions a standby applies them to its copy (and the
    // test goes on writing while it does).
    cluster.wait_or_explain("the standbys to apply their journal to their copy", || {
        others
            .iter()
            .zip(&restored_at)
            .all(|(&i, at)| applied_at(i) != *at)
    });
    cluster.wait_or_explain("20 more rows acknowledged", || {
        acked.lock().unwrap().len() >= 40
    });
    let restores = |i: usize| cluster.status(i).map(|s| s["replica"]["resyncs"].clone());
    let restores_before: Vec<_> = others.iter().map(|&i| restores(i)).collect();
    let killed_at = Instant::now();
    assert!(cluster.lan.host(primary).kill_everything().len() >= 2);
    let before = acked.lock().unwrap().len();
    let (next, next_term) = cluster.wait_for_primary(&others);
    assert!(next_term > term);
    cluster.wait_or_explain("rows acknowledged by the new primary", || {
        acked.lock().unwrap().len() > before + 1
    });
    eprintln!("writes healed {:?} after the kill", killed_at.elapsed());
    cluster.wait_or_explain("more rows acknowledged by the new primary", || {
        acked.lock().unwrap().len() >= before + 10
    });
    // The other standby follows the new primary from its stream: no restore from the vault.
    let other = others.iter().position(|&i| i != next).unwrap();
    cluster.wait_or_explain("the other standby to stream from the new primary", || {
        cluster.status(others[other]).is_some_and(|s| {
            s["replica"]["state"] == "streaming" && s["role"]["leader"] == format!("n{}", next + 1)
        })
    });
    assert_eq!(
        restores(others[other]),
        restores_before[other],
        "the other standby restored from the vault\n{}",
        cluster.explain()
    );
    let _ = child.kill();
    let _ = child.wait();
    let acked = acked.lock().unwrap().clone();
    let (code, body) = cluster
        .request(client, next, "GET", "/rows", "")
        .expect("the new primary answers");
    assert_eq!(code, 200, "{body}");
    let held: std::collections::BTreeSet<&str> = body.trim().split(',').collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|n| !held.contains(n.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged rows lost: {lost:?}\n{}",
        lost.len(),
        acked.len(),
        cluster.explain()
    );
    // Taken over from the copy, not restored from the vault.
    let status = cluster.status(next).unwrap();
    assert_eq!(status["role"]["role"], "primary", "{status}");

    // The old primary's host comes back: it follows the new primary, its own database kept
    // aside as a fork, and the other standby follows too, with the rows written since.
    if let Some(mut node) = cluster.nodes[primary].take() {
        let _ = node.wait();
    }
    let _ = cluster.etcd[primary].wait();
    cluster.etcd[primary] = start_etcd(&cluster.lan, cluster.scratch(), primary);
    cluster.start_node(primary);
    cluster.wait_or_explain("the old primary to follow the new one", || {
        cluster.status(primary).is_some_and(|s| {
            s["role"]["role"] == "standby"
                && s["role"]["leader"] == format!("n{}", next + 1)
                && s["replica"]["ready"] == true
        })
    });
    assert_eq!(cluster.wait_for_primary(&[0, 1, 2]), (next, next_term));

    // A switchover hands the role back: the old primary's copy (from the vault and the
    // stream) serves every row.
    cluster.wait_or_explain("the old primary to stream from the new one", || {
        cluster
            .status(primary)
            .is_some_and(|s| s["replica"]["state"] == "streaming")
    });
    let out = common::cli(
        &cluster.site(next),
        &["switchover", "--to", &format!("n{}", primary + 1)],
    );
    assert!(
        out.status.success(),
        "switchover: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.explain()
    );
    assert_eq!(cluster.wait_for_primary(&[0, 1, 2]).0, primary);
    let (code, body) = cluster
        .request(client, primary, "GET", "/rows", "")
        .expect("the primary answers");
    assert_eq!(code, 200, "{body}");
    let held: std::collections::BTreeSet<&str> = body.trim().split(',').collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|n| !held.contains(n.as_str()))
        .collect();
    assert!(lost.is_empty(), "lost after the switchover: {lost:?}");
}

/// `lifeboat simulate` on a node of a running cluster: the copy gets the live cluster's nodes
/// and zones (from the node's own status), runs on a LAN of its own, and the live cluster is
/// left alone: the same primary leads, in the same term, and the sandbox is gone after.
#[test]
fn simulate_copies_a_running_cluster_with_its_nodes_and_zones_and_leaves_it_alone() {
    let cluster = Cluster::start("sync");
    let (primary, term) = cluster.wait_for_primary(&[0, 1, 2]);
    let other = (primary + 1) % 3;
    for n in 0..3 {
        let answer = cluster.request(
            other,
            primary,
            "POST",
            "/entries",
            &format!("text=live+{n}"),
        );
        assert_eq!(answer.map(|a| a.0), Some(201), "{}", cluster.explain());
    }
    cluster.wait_or_explain("a segment shipped to the vault", || {
        cluster
            .status(primary)
            .is_some_and(|s| s["capture"]["last_segment_seq"].as_u64().is_some())
    });
    // The primary lists the members as it last read them from etcd: the copy is made of
    // what it shows, so wait until it shows all three.
    cluster.wait_or_explain("the primary to list every node", || {
        cluster
            .status(primary)
            .is_some_and(|s| s["nodes"].as_array().is_some_and(|n| n.len() == 3))
    });
    let report = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::lifeboat_bin())
        .arg("simulate")
        .args(["--quick", "--only", "kill-instance", "--report"])
        .arg(report.path())
        .arg("-C")
        .arg(cluster.site(primary))
        .output()
        .unwrap();
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.path().join("report.json")).unwrap()).unwrap();
    let copy = &r["sandbox"]["cluster"];
    assert_eq!(
        copy["topology"], "the live site's nodes and zones",
        "{said}"
    );
    let nodes: Vec<(&str, &str)> = copy["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["zone"].as_str().unwrap()))
        .collect();
    assert_eq!(nodes, [("n1", "z1"), ("n2", "z2"), ("n3", "z3")]);
    assert_eq!(r["faults"][0]["name"], "kill-instance");
    assert_eq!(r["faults"][0]["skipped"], serde_json::Value::Null, "{said}");
    // The live cluster did not notice.
    assert_eq!(cluster.wait_for_primary(&[0, 1, 2]), (primary, term));
    let sandbox = cluster
        .scratch()
        .join(format!(".node{}.simulate", primary + 1));
    assert!(!sandbox.exists(), "{} left", sandbox.display());
}

/// A rewind run on the primary of a sync cluster: the site serves the rewound state, the
/// standbys follow it, and after the primary's host dies the new primary holds the rewound
/// state and every write acknowledged after the rewind, and nothing the rewind undid.
#[test]
fn a_rewind_on_the_primary_reaches_the_standbys_and_survives_a_failover() {
    let cluster = Cluster::start("sync");
    let (primary, _) = cluster.wait_for_primary(&[0, 1, 2]);
    let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
    cluster.wait_streaming(&others);
    let write = |text: &str| {
        let (code, body) = cluster
            .request(
                others[0],
                primary,
                "POST",
                "/entries",
                &format!("text={text}"),
            )
            .expect("the primary answers");
        assert_eq!(code, 201, "{text}: {body}");
    };
    for n in 0..5 {
        write(&format!("before-{n}"));
    }
    let t = time::OffsetDateTime::now_utc();
    // Acknowledged (sync), so capture has read them; a lag of 0 means they are in the vault.
    // (Not "shipped after T": they may all have shipped before it, and nothing ships after.)
    cluster.wait_or_explain("the writes before T shipped", || {
        cluster.status(primary).is_some_and(|s| {
            s["capture"]["lag_ms"] == 0 && !s["capture"]["last_shipped_at"].is_null()
        })
    });
    for n in 0..5 {
        write(&format!("after-{n}"));
    }
    let at = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    // Only the primary rewinds: a standby refuses, names the primary and changes nothing.
    let out = common::cli(
        &cluster.site(others[0]),
        &["rewind", "--to", &at, "--yes", "--json"],
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a standby rewound");
    assert!(
        said.contains("only the primary rewinds")
            && said.contains(&format!("on n{}", primary + 1))
            && said.contains("nothing was changed"),
        "{said}"
    );
    let body = entries_via(&cluster, others[0], primary);
    assert!(body.contains("after-4"), "{body}");
    let out = common::cli(
        &cluster.site(primary),
        &["rewind", "--to", &at, "--yes", "--json"],
    );
    eprintln!(
        "rewind: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{}", cluster.explain());
    let entries = |from: usize, node: usize| {
        cluster
            .request(from, node, "GET", "/api/entries", "")
            .filter(|(code, _)| *code == 200)
            .map(|(_, body)| body)
    };
    let body = entries(others[0], primary).expect("the primary serves");
    assert!(
        body.contains("before-4") && !body.contains("after-0"),
        "{body}"
    );
    for n in 0..5 {
        write(&format!("since-{n}"));
    }
    assert!(cluster.lan.host(primary).kill_everything().len() >= 2);
    let (next, _) = cluster.wait_for_primary(&others);
    cluster.wait_or_explain("the new primary to serve", || {
        entries(others[0], next).is_some()
    });
    let body = entries(others[0], next).unwrap();
    for n in 0..5 {
        assert!(
            body.contains(&format!("\"before-{n}\"")),
            "before-{n}: {body}"
        );
        assert!(
            body.contains(&format!("\"since-{n}\"")),
            "since-{n}: {body}"
        );
        assert!(
            !body.contains(&format!("\"after-{n}\"")),
            "after-{n}: {body}"
        );
    }
}

/// The entries the guestbook on `node` lists, asked from host `from`.
fn entries_via(cluster: &Cluster, from: usize, node: usize) -> String {
    let (code, body) = cluster
        .request(from, node, "GET", "/api/entries", "")
        .expect("the node answers");
    assert_eq!(code, 200, "{body}");
    body
}
