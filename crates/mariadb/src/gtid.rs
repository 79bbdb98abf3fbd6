//! MariaDB global transaction ids: `domain-server-seq`, and positions (one GTID per domain).
//!
//! Within a replication domain, sequence numbers of a server in `gtid_strict_mode` increase
//! by exactly one per transaction; capture and restore rely on that to tell a gap from the
//! next transaction.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One global transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Gtid {
    /// Replication domain.
    pub domain: u32,
    /// Server that first wrote the transaction.
    pub server_id: u32,
    /// Sequence number within the domain.
    pub seq: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server_id, self.seq)
    }
}

/// A GTID that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MariaDB GTID (expected domain-server-seq, e.g. 0-1-42)")]
pub struct BadGtid(pub String);

impl FromStr for Gtid {
    type Err = BadGtid;
    fn from_str(s: &str) -> Result<Self, BadGtid> {
        let bad = || BadGtid(s.to_string());
        let mut parts = s.trim().split('-');
        let (Some(d), Some(sv), Some(sq), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(Gtid {
            domain: d.parse().map_err(|_| bad())?,
            server_id: sv.parse().map_err(|_| bad())?,
            seq: sq.parse().map_err(|_| bad())?,
        })
    }
}

/// A replication position: the last GTID applied in each domain (MariaDB's
/// `gtid_binlog_pos` / `gtid_slave_pos` text form, `0-1-42,1-2-7`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct GtidPos(BTreeMap<u32, Gtid>);

impl GtidPos {
    /// The empty position (before any transaction).
    pub fn new() -> Self {
        Self::default()
    }

    /// The last GTID of `domain`, if any.
    pub fn get(&self, domain: u32) -> Option<Gtid> {
        self.0.get(&domain).copied()
    }

    /// Records `gtid` as the last of its domain.
    pub fn advance(&mut self, gtid: Gtid) {
        self.0.insert(gtid.domain, gtid);
    }

    /// Whether the transaction `gtid` is already contained in this position (its domain's
    /// last seq is at or beyond it).
    pub fn contains(&self, gtid: Gtid) -> bool {
        self.0.get(&gtid.domain).is_some_and(|g| g.seq >= gtid.seq)
    }

    /// The position both `self` and `other` contain: per domain the lower of the two, and
    /// no domain that only one of them knows.
    pub fn common(&self, other: &GtidPos) -> GtidPos {
        GtidPos(
            self.0
                .iter()
                .filter_map(|(d, a)| {
                    let b = other.0.get(d)?;
                    Some((*d, if a.seq <= b.seq { *a } else { *b }))
                })
                .collect(),
        )
    }

    /// Whether this position holds nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every domain's last GTID, by domain.
    pub fn iter(&self) -> impl Iterator<Item = Gtid> + '_ {
        self.0.values().copied()
    }
}

impl fmt::Display for GtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for g in self.0.values() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

impl FromStr for GtidPos {
    type Err = BadGtid;
    fn from_str(s: &str) -> Result<Self, BadGtid> {
        let mut pos = GtidPos::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let g: Gtid = part.parse()?;
            if pos.0.insert(g.domain, g).is_some() {
                return Err(BadGtid(s.to_string()));
            }
        }
        Ok(pos)
    }
}

impl From<GtidPos> for String {
    fn from(p: GtidPos) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for GtidPos {
    type Error = BadGtid;
    fn try_from(s: String) -> Result<Self, BadGtid> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_contain_their_past() {
        let p: GtidPos = "0-1-42, 1-2-7".parse().unwrap();
        assert_eq!(p.to_string(), "0-1-42,1-2-7");
        assert!(p.contains("0-3-41".parse().unwrap()));
        assert!(!p.contains("0-1-43".parse().unwrap()));
        assert!(!p.contains("2-1-1".parse().unwrap()));
        assert!("0-1".parse::<Gtid>().is_err());
        assert!("0-1-2,0-1-3".parse::<GtidPos>().is_err());
        assert!("".parse::<GtidPos>().unwrap().is_empty());
    }

    #[test]
    fn the_common_position_is_the_lower_of_each_shared_domain() {
        let a: GtidPos = "0-1-42,1-2-7".parse().unwrap();
        let b: GtidPos = "0-1-40,2-1-3".parse().unwrap();
        assert_eq!(a.common(&b).to_string(), "0-1-40");
        assert_eq!(b.common(&a).to_string(), "0-1-40");
    }
}
