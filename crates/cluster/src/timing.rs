//! The cluster's timing: the lease TTL and what follows from it. Every other period is a
//! fraction of the TTL, so one knob (`[cluster] lease_ttl`) scales them together.
//!
//! This module never sleeps or reads a clock; it only holds and checks durations.

use std::time::Duration;

/// How long leases live and how often they are renewed, checked, published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterTiming {
    /// The lease TTL asked of etcd. etcd raises a TTL below its minimum (1.5 × its election
    /// timeout, rounded up to whole seconds: 2 s with the default 1 s), and the TTL it
    /// really granted is what the fence deadline is computed from.
    pub ttl: Duration,
    /// How often a lease is renewed, and the most one renewal may take (all endpoints
    /// together): a renewal that answers later than the next one is due is worth nothing.
    /// TTL/4: a lease survives two or three failed renewals in a row before its fence
    /// deadline, so one slow or dead etcd member never fences a leader.
    pub renew_interval: Duration,
    /// How long before the lease could expire in etcd the leader must have stopped writing
    /// (see `lifeboat_core::cluster::fence_deadline`): the time the daemon needs to notice the
    /// deadline and stop writes, plus any drift between the machines' clock rates. TTL/4.
    pub fence_margin: Duration,
    /// How often a node re-reads the leader key beside its watch, in case the watch went
    /// silent without an error (a member cut off mid-stream). TTL/2.
    pub poll_interval: Duration,
    /// The shortest time between two writes of a node's member value: its applied position
    /// moves with every commit, and etcd needs only its latest. TTL/8.
    pub publish_interval: Duration,
}

/// A timing that can not keep the fencing promise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster timing: {problem}; {advice}")]
pub struct TimingError {
    pub problem: String,
    pub advice: &'static str,
}

impl ClusterTiming {
    /// The default timing for a lease of `ttl`.
    pub fn from_ttl(ttl: Duration) -> ClusterTiming {
        ClusterTiming {
            ttl,
            renew_interval: ttl / 4,
            fence_margin: ttl / 4,
            poll_interval: ttl / 2,
            publish_interval: ttl / 8,
        }
    }

    /// Checks that renewals fit in the lease: at least two renewals are due before the fence
    /// deadline, and the margin is neither zero nor the whole TTL.
    pub fn check(&self) -> Result<(), TimingError> {
        let err = |problem: String, advice| Err(TimingError { problem, advice });
        if self.ttl < Duration::from_secs(1) {
            return err(
                format!("a lease TTL of {:?} is below etcd's unit (1 s)", self.ttl),
                "use a TTL of 2 s or more",
            );
        }
        if self.fence_margin.is_zero() || self.fence_margin >= self.ttl {
            return err(
                format!(
                    "the fence margin {:?} must be above zero and below the TTL {:?}",
                    self.fence_margin, self.ttl
                ),
                "use ClusterTiming::from_ttl, which takes TTL/4",
            );
        }
        if self.renew_interval.is_zero() || self.renew_interval * 2 + self.fence_margin > self.ttl {
            return err(
                format!(
                    "renewing every {:?} with a margin of {:?} leaves fewer than two renewals \
                     before the fence deadline of a {:?} lease",
                    self.renew_interval, self.fence_margin, self.ttl
                ),
                "renew at most every (TTL - margin) / 2; ClusterTiming::from_ttl takes TTL/4",
            );
        }
        if self.poll_interval.is_zero() || self.publish_interval.is_zero() {
            return err(
                "the poll and publish intervals must be above zero".into(),
                "use ClusterTiming::from_ttl",
            );
        }
        Ok(())
    }
}

impl Default for ClusterTiming {
    /// A 2 s lease: etcd's minimum with its default election timeout.
    fn default() -> Self {
        ClusterTiming::from_ttl(Duration::from_secs(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_timing_fits_two_renewals_before_the_fence() {
        let t = ClusterTiming::default();
        assert_eq!(t.renew_interval, Duration::from_millis(500));
        assert_eq!(t.fence_margin, Duration::from_millis(500));
        t.check().unwrap();
    }

    #[test]
    fn a_renewal_interval_too_long_for_the_ttl_is_refused() {
        let t = ClusterTiming {
            renew_interval: Duration::from_secs(1),
            ..ClusterTiming::default()
        };
        let e = t.check().unwrap_err();
        assert!(e.to_string().contains("fewer than two renewals"), "{e}");
    }
}
