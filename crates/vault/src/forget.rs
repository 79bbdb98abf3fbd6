//! Which snapshots a retention policy keeps. A pure function over snapshot times and tags, so
//! it is tested with plain values; `Repository::forget` applies it.
use std::collections::HashSet;

use time::OffsetDateTime;

use crate::crypto::Id;

/// Keep rules, like restic's `--keep-*` flags. A snapshot kept by any rule stays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
    pub yearly: usize,
    /// Snapshots with any of these tags are always kept.
    pub tags: Vec<String>,
}

impl KeepPolicy {
    /// True when no rule is set (forget would remove everything, so callers refuse).
    pub fn is_empty(&self) -> bool {
        self.last + self.hourly + self.daily + self.weekly + self.monthly + self.yearly == 0
            && self.tags.is_empty()
    }
}

/// One snapshot as the policy sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub id: Id,
    pub time: OffsetDateTime,
    pub tags: Vec<String>,
}

/// Returns the ids to keep. For each periodic rule, the newest snapshot of each of the N
/// most recent periods that have snapshots is kept.
pub fn apply_policy(snaps: &[Candidate], policy: &KeepPolicy) -> HashSet<Id> {
    let mut sorted: Vec<&Candidate> = snaps.iter().collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.time));
    let mut keep = HashSet::new();
    for s in sorted.iter().take(policy.last) {
        keep.insert(s.id);
    }
    for s in &sorted {
        if s.tags.iter().any(|t| policy.tags.contains(t)) {
            keep.insert(s.id);
        }
    }
    type Bucket = fn(&OffsetDateTime) -> (i32, u32, u32);
    let rules: [(usize, Bucket); 5] = [
        (policy.hourly, |t| {
            (t.year(), t.ordinal().into(), t.hour().into())
        }),
        (policy.daily, |t| (t.year(), t.ordinal().into(), 0)),
        (policy.weekly, |t| {
            let (y, w, _) = t.to_iso_week_date();
            (y, w.into(), 0)
        }),
        (policy.monthly, |t| {
            (t.year(), u8::from(t.month()).into(), 0)
        }),
        (policy.yearly, |t| (t.year(), 0, 0)),
    ];
    for (n, bucket) in rules {
        let mut last = None;
        let mut count = 0;
        for s in &sorted {
            if count >= n {
                break;
            }
            let b = bucket(&s.time);
            if last != Some(b) {
                keep.insert(s.id);
                last = Some(b);
                count += 1;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn c(n: u8, t: OffsetDateTime) -> Candidate {
        Candidate {
            id: Id([n; 32]),
            time: t,
            tags: Vec::new(),
        }
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let s = vec![
            c(1, datetime!(2026-01-01 10:00 UTC)),
            c(2, datetime!(2026-01-01 11:00 UTC)),
            c(3, datetime!(2026-01-01 12:00 UTC)),
        ];
        let keep = apply_policy(
            &s,
            &KeepPolicy {
                last: 2,
                ..Default::default()
            },
        );
        assert_eq!(keep, HashSet::from([Id([2; 32]), Id([3; 32])]));
    }

    #[test]
    fn keep_daily_keeps_the_last_snapshot_of_each_day() {
        let s = vec![
            c(1, datetime!(2026-01-01 10:00 UTC)),
            c(2, datetime!(2026-01-01 23:00 UTC)),
            c(3, datetime!(2026-01-02 08:00 UTC)),
            c(4, datetime!(2026-01-03 08:00 UTC)),
        ];
        let keep = apply_policy(
            &s,
            &KeepPolicy {
                daily: 2,
                ..Default::default()
            },
        );
        assert_eq!(keep, HashSet::from([Id([4; 32]), Id([3; 32])]));
        let keep = apply_policy(
            &s,
            &KeepPolicy {
                daily: 5,
                ..Default::default()
            },
        );
        assert_eq!(keep, HashSet::from([Id([4; 32]), Id([3; 32]), Id([2; 32])]));
    }

    #[test]
    fn tagged_snapshots_are_kept() {
        let mut s = vec![
            c(1, datetime!(2026-01-01 10:00 UTC)),
            c(2, datetime!(2026-01-02 10:00 UTC)),
        ];
        s[0].tags = vec!["before-upgrade".into()];
        let keep = apply_policy(
            &s,
            &KeepPolicy {
                last: 1,
                tags: vec!["before-upgrade".into()],
                ..Default::default()
            },
        );
        assert_eq!(keep.len(), 2);
    }
}
