//! lifeboat-sim: the simulator behind `lifeboat simulate`. It copies the whole site from its
//! vault into a sandbox run by a Lifeboat of its own (`sandbox`), drives open-model load with
//! write probes (`load`), injects faults one phase at a time and undoes each (`faults`),
//! judges what happened (`checker`) and writes the report (`report`, `html`).
//!
//! Never does: touch the live site (it only reads the site dir and its vault), send traffic
//! anywhere but the sandbox's front door on 127.0.0.1 (on a cluster, its nodes' front doors on
//! the sandbox's own LAN, `lan`), leave a fault or a process behind when
//! the run ends however it ends, or print (the CLI owns the terminal; progress comes through
//! the [`Progress`] trait).
#![forbid(unsafe_code)]

pub mod checker;
pub mod error;
mod fault_tools;
pub mod faults;
pub mod html;
pub mod lan;
pub mod load;
pub mod netns;
mod procs;
pub mod report;
mod rewind_check;
mod run;
pub mod s3_server;
pub mod sandbox;
mod scorecard;
pub mod slow_disk;
pub mod state_disk;

pub use error::SimError;
pub use faults::FaultKind;
pub use report::{REPORT_VERSION, Report};
pub use run::{Options, Outcome, Progress, simulate};

/// Writes `report.json` and `report.html` into `dir` (made if missing).
pub fn write_report(report: &Report, dir: &std::path::Path) -> Result<(), SimError> {
    std::fs::create_dir_all(dir).map_err(SimError::io("create the report dir", dir))?;
    let json = dir.join("report.json");
    let text = serde_json::to_string_pretty(report).expect("a report serializes");
    std::fs::write(&json, text).map_err(SimError::io("write", &json))?;
    let html = dir.join("report.html");
    std::fs::write(&html, html::render(report)).map_err(SimError::io("write", &html))?;
    Ok(())
}
