//! When to restart an instance that exited: at once after a crash that ended a long run, then
//! with exponentially growing delays while it keeps crashing soon after each start.
//!
//! Pure policy over plain durations: no clocks, no processes, so it is unit-tested directly.

use std::time::Duration;

/// The restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// A run shorter than this counts as a quick failure.
    pub quick_failure: Duration,
    /// The delay before the second restart in a row of quick failures (the first is immediate).
    pub first_delay: Duration,
    /// Delays double up to this.
    pub max_delay: Duration,
    /// After this many quick failures in a row, the instance is reported as crash-looping.
    pub crash_loop_after: u32,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            quick_failure: Duration::from_secs(10),
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            crash_loop_after: 3,
        }
    }
}

/// What to do after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartDecision {
    /// Wait this long before starting again.
    pub delay: Duration,
    /// Consecutive quick failures including this exit (1 after a long run).
    pub attempt: u32,
    /// The instance keeps crashing soon after starting.
    pub crash_looping: bool,
}

/// Remembers consecutive quick failures of one instance and decides each restart delay.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: BackoffPolicy,
    quick_failures: u32,
}

impl RestartTracker {
    pub fn new(policy: BackoffPolicy) -> RestartTracker {
        RestartTracker {
            policy,
            quick_failures: 0,
        }
    }

    /// Decides the restart after a run that lasted `ran_for`.
    pub fn after_exit(&mut self, ran_for: Duration) -> RestartDecision {
        if ran_for >= self.policy.quick_failure {
            // It stayed up long enough: whatever went wrong before is forgiven.
            self.quick_failures = 0;
            return RestartDecision {
                delay: Duration::ZERO,
                attempt: 1,
                crash_looping: false,
            };
        }
        self.quick_failures = self.quick_failures.saturating_add(1);
        RestartDecision {
            delay: self.delay_for(self.quick_failures),
            attempt: self.quick_failures,
            crash_looping: self.quick_failures >= self.policy.crash_loop_after,
        }
    }

    /// 0 for the first quick failure, then first_delay, 2x, 4x, ... capped at max_delay.
    fn delay_for(&self, quick_failures: u32) -> Duration {
        if quick_failures <= 1 {
            return Duration::ZERO;
        }
        let doublings = (quick_failures - 2).min(31);
        self.policy
            .first_delay
            .saturating_mul(1u32 << doublings)
            .min(self.policy.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_secs(1);
    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn a_crash_after_a_long_run_restarts_at_once() {
        let mut tracker = RestartTracker::new(BackoffPolicy::default());
        let decision = tracker.after_exit(LONG);
        assert_eq!(decision.delay, Duration::ZERO);
        assert!(!decision.crash_looping);
    }

    #[test]
    fn quick_failures_back_off_exponentially_up_to_the_cap() {
        let mut tracker = RestartTracker::new(BackoffPolicy::default());
        let delays: Vec<u64> = (0..10)
            .map(|_| tracker.after_exit(QUICK).delay.as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [0, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn the_third_quick_failure_in_a_row_is_a_crash_loop() {
        let mut tracker = RestartTracker::new(BackoffPolicy::default());
        assert!(!tracker.after_exit(QUICK).crash_looping);
        assert!(!tracker.after_exit(QUICK).crash_looping);
        let third = tracker.after_exit(QUICK);
        assert!(third.crash_looping);
        assert_eq!(third.attempt, 3);
    }

    #[test]
    fn a_long_run_resets_the_backoff() {
        let mut tracker = RestartTracker::new(BackoffPolicy::default());
        for _ in 0..5 {
            tracker.after_exit(QUICK);
        }
        assert_eq!(tracker.after_exit(LONG).delay, Duration::ZERO);
        let next = tracker.after_exit(QUICK);
        assert_eq!(next.delay, Duration::ZERO);
        assert_eq!(next.attempt, 1);
        assert!(!next.crash_looping);
    }

    #[test]
    fn the_delay_never_overflows_after_very_many_failures() {
        let mut tracker = RestartTracker::new(BackoffPolicy::default());
        for _ in 0..1000 {
            assert!(tracker.after_exit(QUICK).delay <= Duration::from_secs(30));
        }
    }
}
