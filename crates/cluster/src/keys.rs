//! The cluster's keys in etcd and the JSON values stored under them (`docs/cluster-format.md`).
//!
//! ```text
//! <prefix>/leader          the leader key: LeaderValue, under the leader's election lease;
//!                          its create_revision is the term
//! <prefix>/members/<node>  one per live node: MemberValue, under that node's member lease
//! ```
//!
//! This module never talks to etcd: it names keys and encodes and decodes values, refusing a
//! value of a format version it does not know rather than guessing.

use lifeboat_core::cluster::{Candidate, Health, Position};
use serde::{Deserialize, Serialize};

/// The version written in every value. A reader refuses a value with a higher version.
pub const FORMAT_VERSION: u32 = 1;

/// A name (node, zone) that is refused, with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} {name:?} is not usable: {reason}; use 1 to 63 characters out of a-z, 0-9, '-', '_' \
     and '.', starting with a letter or digit"
)]
pub struct NameError {
    pub what: &'static str,
    pub name: String,
    pub reason: &'static str,
}

/// Checks a node or zone name: it becomes part of a key, so no '/' and nothing surprising.
pub fn check_name(what: &'static str, name: &str) -> Result<(), NameError> {
    let err = |reason| {
        Err(NameError {
            what,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 63 {
        return err("it must be 1 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
    {
        return err("it has a character outside a-z, 0-9, '-', '_', '.'");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return err("it must start with a letter or digit");
    }
    Ok(())
}

/// The keys of one site's cluster, all under one prefix (e.g. `/lifeboat/guestbook`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterKeys {
    prefix: String,
}

impl ClusterKeys {
    /// Keys under `/lifeboat/<site>`: the layout the daemon uses.
    pub fn for_site(site: &str) -> Result<ClusterKeys, NameError> {
        check_name("the site name", site)?;
        Ok(ClusterKeys {
            prefix: format!("/lifeboat/{site}"),
        })
    }

    /// Keys under any prefix (tests use one per test). A trailing '/' is dropped.
    pub fn with_prefix(prefix: &str) -> ClusterKeys {
        ClusterKeys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The leader key.
    pub fn leader(&self) -> Vec<u8> {
        format!("{}/leader", self.prefix).into_bytes()
    }

    /// Where every member key starts (with the trailing '/').
    pub fn members_prefix(&self) -> Vec<u8> {
        format!("{}/members/", self.prefix).into_bytes()
    }

    /// One node's member key.
    pub fn member(&self, node: &str) -> Vec<u8> {
        format!("{}/members/{node}", self.prefix).into_bytes()
    }

    /// The node name in a member key, if `key` is one.
    pub fn member_name<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        let rest = key.strip_prefix(self.members_prefix().as_slice())?;
        std::str::from_utf8(rest).ok().filter(|n| !n.is_empty())
    }
}

/// Where other nodes reach a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddresses {
    /// The node-to-node stream (changes, failsafe confirmations): `IP:PORT`.
    pub peer: String,
    /// The node's front door, to which other front doors forward requests: `IP:PORT`.
    pub front_door: String,
}

/// Who a node is: its name, zone and addresses. Fixed for a node's run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    pub zone: String,
    pub addresses: NodeAddresses,
}

impl NodeInfo {
    /// Checks the node and zone names.
    pub fn check(&self) -> Result<(), NameError> {
        check_name("the node name", &self.node)?;
        check_name("the zone name", &self.zone)
    }
}

/// The leader key's value. The term is not in it: it is the key's create revision, which only
/// etcd assigns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderValue {
    pub version: u32,
    #[serde(flatten)]
    pub info: NodeInfo,
}

/// What a node is doing, as it tells the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Holds the leader key and serves writes.
    Leader,
    /// Applies the leader's stream; may take over.
    Standby,
    /// Starting, catching up, or fenced: not a candidate yet.
    Joining,
}

/// A member key's value: the node, its role, how far it has applied and its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberValue {
    pub version: u32,
    #[serde(flatten)]
    pub info: NodeInfo,
    pub role: MemberRole,
    pub applied: Position,
    pub health: Health,
    /// A primary handing over on purpose names its successor here (`lifeboat switchover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hands_over_to: Option<String>,
}

impl MemberValue {
    pub fn new(info: NodeInfo, role: MemberRole) -> MemberValue {
        MemberValue {
            version: FORMAT_VERSION,
            info,
            role,
            applied: Position::default(),
            health: Health::Healthy,
            hands_over_to: None,
        }
    }

    /// This member as a failover candidate. A joining node is reported unhealthy: it is not
    /// ready to take over.
    pub fn candidate(&self) -> Candidate {
        Candidate {
            node: self.info.node.clone(),
            zone: self.info.zone.clone(),
            applied: self.applied,
            health: match (self.role, &self.health) {
                (MemberRole::Joining, Health::Healthy) => Health::Unhealthy("still joining".into()),
                (_, h) => h.clone(),
            },
            hands_over_to: self.hands_over_to.clone(),
        }
    }
}

/// A stored value that can not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(
        "{key} holds format version {version}, newer than this lifeboat knows ({FORMAT_VERSION}); \
         upgrade lifeboat on this node to the version the other nodes run"
    )]
    TooNew { key: String, version: u32 },
    #[error(
        "{key} does not hold a Lifeboat value ({detail}); something other than Lifeboat wrote \
         it: delete it (`etcdctl del {key}`) or choose another prefix"
    )]
    Unreadable { key: String, detail: String },
}

/// Decodes a value written under `key`, checking its format version first.
pub fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, ValueError> {
    let key = String::from_utf8_lossy(key).into_owned();
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned = serde_json::from_slice(bytes).map_err(|e| ValueError::Unreadable {
        key: key.clone(),
        detail: e.to_string(),
    })?;
    if v.version > FORMAT_VERSION {
        return Err(ValueError::TooNew {
            key,
            version: v.version,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| ValueError::Unreadable {
        key,
        detail: e.to_string(),
    })
}

/// Encodes a value (always at [`FORMAT_VERSION`]).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("cluster values serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> NodeInfo {
        NodeInfo {
            node: "a".into(),
            zone: "z1".into(),
            addresses: NodeAddresses {
                peer: "10.0.1.5:7440".into(),
                front_door: "10.0.1.5:8080".into(),
            },
        }
    }

    #[test]
    fn the_layout_puts_everything_of_a_site_under_its_prefix() {
        let k = ClusterKeys::for_site("guestbook").unwrap();
        assert_eq!(k.leader(), b"/lifeboat/guestbook/leader");
        assert_eq!(k.member("a"), b"/lifeboat/guestbook/members/a");
        assert_eq!(k.member_name(b"/lifeboat/guestbook/members/a"), Some("a"));
        assert_eq!(k.member_name(b"/lifeboat/guestbook/leader"), None);
        assert!(ClusterKeys::for_site("a/b").is_err());
    }

    #[test]
    fn values_are_versioned_json() {
        let leader = LeaderValue {
            version: FORMAT_VERSION,
            info: info(),
        };
        assert_eq!(
            String::from_utf8(encode(&leader)).unwrap(),
            r#"{"version":1,"node":"a","zone":"z1","addresses":{"peer":"10.0.1.5:7440","front_door":"10.0.1.5:8080"}}"#
        );
        let mut member = MemberValue::new(info(), MemberRole::Standby);
        member.applied = Position { term: 7, seq: 42 };
        member.health = Health::Unhealthy("disk full".into());
        let json = String::from_utf8(encode(&member)).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"node":"a","zone":"z1","addresses":{"peer":"10.0.1.5:7440","front_door":"10.0.1.5:8080"},"role":"standby","applied":{"term":7,"seq":42},"health":{"state":"unhealthy","reason":"disk full"}}"#
        );
        assert_eq!(
            decode::<MemberValue>(b"k", json.as_bytes()).unwrap(),
            member
        );
    }

    #[test]
    fn a_value_from_a_newer_lifeboat_is_refused_with_the_fix() {
        let e = decode::<LeaderValue>(b"/p/leader", br#"{"version":2,"node":"a"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/p/leader holds format version 2, newer than this lifeboat knows (1); upgrade \
             lifeboat on this node to the version the other nodes run"
        );
        let e = decode::<LeaderValue>(b"/p/leader", b"hello").unwrap_err();
        assert!(matches!(e, ValueError::Unreadable { .. }), "{e}");
    }

    #[test]
    fn names_that_would_break_a_key_are_refused() {
        assert!(check_name("the node name", "node-1.z").is_ok());
        for bad in ["", "a/b", "A", "-a", &"x".repeat(64)] {
            assert!(check_name("the node name", bad).is_err(), "{bad:?}");
        }
    }
}
