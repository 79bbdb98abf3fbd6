//! What `lifeboat status` says about an instance: one word combining what the supervisor knows
//! (is the process running, restarting, crash-looping?) and what the front door knows (does it
//! answer its health check?). Also the parsing of `lifeboat scale PROC=N` arguments.

use serde::{Deserialize, Serialize};

/// The supervisor's view of an instance's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Starting,
    Running,
    Backoff,
    CrashLooping,
    Stopping,
    Exited,
}

/// The front door's view of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not checked yet (or not known to the front door).
    Unknown,
    Healthy,
    Unhealthy,
}

/// The state shown to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Spawned, not yet answering its health check.
    Starting,
    /// Running and getting traffic.
    Healthy,
    /// Running but failing its health check (or ejected): gets no traffic.
    Unhealthy,
    /// Waiting to be restarted after a crash.
    Backoff,
    /// Crashed again and again; restarts are spaced out.
    CrashLooping,
    /// Being stopped.
    Stopping,
    /// Not running and not going to be restarted.
    Stopped,
}

impl InstanceState {
    /// The word used in status output and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Healthy => "healthy",
            InstanceState::Unhealthy => "unhealthy",
            InstanceState::Backoff => "backoff",
            InstanceState::CrashLooping => "crash-looping",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
        }
    }
}

/// Combines the supervisor's and the front door's views. A process that is not running wins
/// over any health verdict (a crashed instance is never "healthy").
pub fn instance_state(run: RunState, health: Health, ejected: bool) -> InstanceState {
    match run {
        RunState::Starting => InstanceState::Starting,
        RunState::Backoff => InstanceState::Backoff,
        RunState::CrashLooping => InstanceState::CrashLooping,
        RunState::Stopping => InstanceState::Stopping,
        RunState::Exited => InstanceState::Stopped,
        RunState::Running => match (health, ejected) {
            (Health::Healthy, false) => InstanceState::Healthy,
            (Health::Unknown, false) => InstanceState::Starting,
            _ => InstanceState::Unhealthy,
        },
    }
}

/// `lifeboat scale` got an argument it can not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{arg:?} is not PROCESS=COUNT; write it like web=3 (COUNT from 1 to 1000)")]
pub struct ScaleArgError {
    pub arg: String,
}

/// Parses `web=5` into `("web", 5)`.
pub fn parse_scale_arg(arg: &str) -> Result<(String, u32), ScaleArgError> {
    let err = || ScaleArgError {
        arg: arg.to_string(),
    };
    let (process, count) = arg.split_once('=').ok_or_else(err)?;
    let count: u32 = count.trim().parse().map_err(|_| err())?;
    if process.trim().is_empty() || !(1..=1000).contains(&count) {
        return Err(err());
    }
    Ok((process.trim().to_string(), count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_instance_is_healthy_only_when_the_front_door_says_so() {
        assert_eq!(
            instance_state(RunState::Running, Health::Healthy, false),
            InstanceState::Healthy
        );
        assert_eq!(
            instance_state(RunState::Running, Health::Unknown, false),
            InstanceState::Starting
        );
        assert_eq!(
            instance_state(RunState::Running, Health::Unhealthy, false),
            InstanceState::Unhealthy
        );
        assert_eq!(
            instance_state(RunState::Running, Health::Healthy, true),
            InstanceState::Unhealthy
        );
    }

    #[test]
    fn a_crashing_instance_is_never_healthy() {
        let s = instance_state(RunState::CrashLooping, Health::Healthy, false);
        assert_eq!(s.as_str(), "crash-looping");
        assert_eq!(
            instance_state(RunState::Backoff, Health::Healthy, false).as_str(),
            "backoff"
        );
    }

    #[test]
    fn scale_arguments_name_a_process_and_a_count() {
        assert_eq!(parse_scale_arg("web=5"), Ok(("web".into(), 5)));
        assert!(parse_scale_arg("web").is_err());
        assert!(parse_scale_arg("web=0").is_err());
        assert!(parse_scale_arg("=2").is_err());
        assert_eq!(
            parse_scale_arg("web=x").unwrap_err().to_string(),
            "\"web=x\" is not PROCESS=COUNT; write it like web=3 (COUNT from 1 to 1000)"
        );
    }
}
