//! A small helper for the supervisor's own tests (it is not part of lifeboat):
//!
//! - `lifeboat-supervisor-helper shim [--bind FROM TO]... -- CMD...` does what `lifeboat
//!   __instance` does: makes the bind mounts in a private mount namespace, arms the
//!   parent-death signal and execs CMD.
//! - `lifeboat-supervisor-helper run-one [--no-shim] SITE SITE_DIR LOG_DIR COMMAND` runs a
//!   supervisor with one instance `web-1` (started through this helper as the shim unless
//!   `--no-shim`), prints `reaped PIDS` and `started PID` lines, and runs until killed. Tests
//!   kill it with SIGKILL to check that no instance outlives it.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lifeboat_supervisor::{
    BackoffPolicy, InstanceSpec, Shim, Supervisor, SupervisorConfig, SupervisorEvent,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("shim") => {
            let rest: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
            // Without options, everything after `shim` (or after `--`) is the command.
            let (sandbox, command) = if rest.first().is_some_and(|a| a != "--")
                && !rest
                    .first()
                    .is_some_and(|a| a.to_string_lossy().starts_with("--"))
            {
                (lifeboat_supervisor::shim::Sandbox::default(), &rest[..])
            } else {
                match lifeboat_supervisor::shim::Sandbox::from_args(&rest) {
                    Ok(parsed) => parsed,
                    Err(err) => {
                        eprintln!("lifeboat-supervisor-helper: cannot run the instance: {err}");
                        return ExitCode::from(127);
                    }
                }
            };
            let err = lifeboat_supervisor::shim::exec_instance(&sandbox, command);
            eprintln!("lifeboat-supervisor-helper: cannot run the instance: {err}");
            ExitCode::from(127)
        }
        Some("run-one") => run_one(&args[1..]),
        _ => {
            eprintln!(
                "usage: lifeboat-supervisor-helper shim -- CMD...\n       \
                 lifeboat-supervisor-helper run-one [--no-shim] SITE SITE_DIR LOG_DIR COMMAND"
            );
            ExitCode::from(2)
        }
    }
}

fn run_one(args: &[String]) -> ExitCode {
    let (use_shim, rest) = match args.first().map(String::as_str) {
        Some("--no-shim") => (false, &args[1..]),
        _ => (true, args),
    };
    let [site, site_dir, log_dir, command] = rest else {
        eprintln!("run-one needs SITE SITE_DIR LOG_DIR COMMAND");
        return ExitCode::from(2);
    };
    let shim = use_shim.then(|| Shim {
        program: std::env::current_exe().expect("the helper knows its own path"),
        args: vec!["shim".into()],
    });
    let runtime = tokio::runtime::Runtime::new().expect("start a tokio runtime");
    runtime.block_on(async move {
        let supervisor = Supervisor::new(SupervisorConfig {
            site: site.clone(),
            site_dir: PathBuf::from(site_dir),
            log_dir: PathBuf::from(log_dir),
            stop_timeout: Duration::from_secs(5),
            log_max_bytes: 1 << 20,
            log_keep: 2,
            backoff: BackoffPolicy::default(),
            shim,
            base_env: None,
        })
        .expect("create the supervisor");
        match supervisor.reap_leftovers() {
            Ok(pids) => println!("reaped {pids:?}"),
            Err(err) => {
                println!("reap failed: {err}");
                return ExitCode::FAILURE;
            }
        }
        let mut events = supervisor.subscribe();
        supervisor.start(InstanceSpec {
            id: "web-1".into(),
            process: "web".into(),
            command: command.clone(),
            port: 0,
            env: Vec::new(),
            ..Default::default()
        });
        while let Ok(event) = events.recv().await {
            if let SupervisorEvent::Started { pid, .. } = event {
                println!("started {pid}");
            }
        }
        ExitCode::SUCCESS
    })
}
