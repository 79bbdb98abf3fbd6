//! Planning: compares what the site should run (desired) with what runs (observed) and says
//! which instances to start and which to stop. Pure: no I/O, no clock, so it is tested with
//! plain values and the daemon just carries the actions out.

use std::collections::{BTreeMap, BTreeSet};

/// An instance that exists on this node, whatever its state (running, restarting, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedInstance {
    pub id: String,
    pub process: String,
}

/// What to do to bring the observed instances to the desired scale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a new instance with this id.
    Start { id: String, process: String },
    /// Take this instance out of the front door, let its requests finish, then stop it.
    Stop { id: String },
}

/// The id of the `n`th instance of a process: `web-1`, `web-2`, ...
pub fn instance_id(process: &str, n: u32) -> String {
    format!("{process}-{n}")
}

/// The process and number in an instance id made by [`instance_id`].
pub fn parse_instance_id(id: &str) -> Option<(&str, u32)> {
    let (process, n) = id.rsplit_once('-')?;
    let n: u32 = n.parse().ok()?;
    (n >= 1 && !process.is_empty()).then_some((process, n))
}

/// The actions that make `observed` match `desired` (process name -> number of instances).
///
/// Scaling up fills the lowest free numbers (`web-4` after `web-3`); scaling down stops the
/// highest numbers first, so ids stay small and stable. Instances of processes that are not
/// desired any more are stopped. Stops come before starts.
pub fn plan(desired: &BTreeMap<String, u32>, observed: &[ObservedInstance]) -> Vec<Action> {
    let mut by_process: BTreeMap<&str, BTreeSet<(u32, &str)>> = BTreeMap::new();
    let mut stops = Vec::new();
    for inst in observed {
        match parse_instance_id(&inst.id) {
            Some((_, n)) if desired.contains_key(&inst.process) => {
                by_process
                    .entry(&inst.process)
                    .or_default()
                    .insert((n, &inst.id));
            }
            _ => stops.push(Action::Stop {
                id: inst.id.clone(),
            }),
        }
    }
    let mut starts = Vec::new();
    for (process, &want) in desired {
        let have = by_process.remove(process.as_str()).unwrap_or_default();
        let count = have.len() as u32;
        if count > want {
            let extra = (count - want) as usize;
            for (_, id) in have.iter().rev().take(extra) {
                stops.push(Action::Stop { id: id.to_string() });
            }
        } else {
            let used: BTreeSet<u32> = have.iter().map(|(n, _)| *n).collect();
            let free = (1..).filter(|n| !used.contains(n));
            for n in free.take((want - count) as usize) {
                starts.push(Action::Start {
                    id: instance_id(process, n),
                    process: process.clone(),
                });
            }
        }
    }
    stops.extend(starts);
    stops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(ids: &[&str]) -> Vec<ObservedInstance> {
        ids.iter()
            .map(|id| ObservedInstance {
                id: id.to_string(),
                process: parse_instance_id(id).unwrap().0.to_string(),
            })
            .collect()
    }

    fn desired(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(p, n)| (p.to_string(), *n)).collect()
    }

    fn start(id: &str) -> Action {
        Action::Start {
            id: id.into(),
            process: parse_instance_id(id).unwrap().0.into(),
        }
    }

    fn stop(id: &str) -> Action {
        Action::Stop { id: id.into() }
    }

    #[test]
    fn a_fresh_site_starts_every_replica() {
        let actions = plan(&desired(&[("web", 3), ("worker", 1)]), &[]);
        assert_eq!(
            actions,
            vec![
                start("web-1"),
                start("web-2"),
                start("web-3"),
                start("worker-1")
            ]
        );
    }

    #[test]
    fn a_site_at_its_desired_scale_needs_nothing() {
        assert!(plan(&desired(&[("web", 2)]), &observed(&["web-1", "web-2"])).is_empty());
    }

    #[test]
    fn scaling_up_fills_the_lowest_free_numbers() {
        let actions = plan(&desired(&[("web", 4)]), &observed(&["web-1", "web-3"]));
        assert_eq!(actions, vec![start("web-2"), start("web-4")]);
    }

    #[test]
    fn scaling_down_stops_the_highest_numbers_first() {
        let actions = plan(
            &desired(&[("web", 2)]),
            &observed(&["web-1", "web-2", "web-3", "web-5"]),
        );
        assert_eq!(actions, vec![stop("web-5"), stop("web-3")]);
    }

    #[test]
    fn instances_of_a_process_no_longer_in_the_manifest_are_stopped() {
        let actions = plan(&desired(&[("web", 1)]), &observed(&["web-1", "old-1"]));
        assert_eq!(actions, vec![stop("old-1")]);
    }

    #[test]
    fn stops_come_before_starts() {
        let actions = plan(
            &desired(&[("a", 1), ("web", 1)]),
            &observed(&["web-1", "web-2"]),
        );
        assert_eq!(actions, vec![stop("web-2"), start("a-1")]);
    }

    #[test]
    fn process_names_with_dashes_keep_their_numbers() {
        assert_eq!(parse_instance_id("api-v2-10"), Some(("api-v2", 10)));
        assert_eq!(parse_instance_id("web"), None);
        assert_eq!(parse_instance_id("web-0"), None);
    }
}
