//! Checking a repository, per destination: every indexed pack is present with the right size,
//! every snapshot's trees and blobs are indexed, and (with `read_data`) every pack's bytes hash
//! to its name and every blob inside decrypts to its id. Problems name the damaged object and
//! the snapshots that depend on it. It also lists the key files and how strongly each wraps
//! the key (a weakly wrapped key is a warning, not damage).
use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::crypto::{Id, KeyFile, KeyInfo};
use crate::error::Result;
use crate::format::{MAX_BLOB_LEN, NodeKind, decode_pack_trailer};
use crate::repo::{Repository, SnapshotEntry, pack_key};

/// What to check.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Download and check every pack (slow); otherwise only presence and sizes.
    pub read_data: bool,
    /// Check only this destination (default: all).
    pub destination: Option<String>,
}

/// One problem found.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The damaged or missing object (e.g. `data/ab/ab12…`).
    pub object: String,
    pub what: String,
    /// Ids of the snapshots that need it.
    pub snapshots: Vec<String>,
}

/// Result for one destination.
#[derive(Clone, Debug, Serialize)]
pub struct DestinationReport {
    pub url: String,
    pub reachable: bool,
    pub packs_checked: u64,
    pub unindexed_packs: u64,
    pub problems: Vec<Problem>,
}

/// Result of a verify run.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub snapshots: u64,
    /// Problems with the repository as a whole (independent of destination).
    pub problems: Vec<Problem>,
    pub destinations: Vec<DestinationReport>,
    /// Every intact key file found on a checked destination, and whether it is weakly wrapped.
    pub keys: Vec<KeyInfo>,
}

impl VerifyReport {
    /// True when nothing is wrong anywhere.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
            && self
                .destinations
                .iter()
                .all(|d| d.reachable && d.problems.is_empty())
    }
}

impl Repository {
    /// Which packs each snapshot needs; also reports blobs no index names.
    async fn packs_of_snapshots(
        &self,
        snaps: &[SnapshotEntry],
        problems: &mut Vec<Problem>,
    ) -> Result<HashMap<Id, BTreeSet<String>>> {
        let mut out: HashMap<Id, BTreeSet<String>> = HashMap::new();
        for s in snaps {
            let sid = s.id.to_hex()[..8].to_string();
            let mut seen_trees = HashSet::new();
            let mut todo = vec![s.snapshot.tree];
            while let Some(t) = todo.pop() {
                if !seen_trees.insert(t) {
                    continue;
                }
                let mut blobs = vec![t];
                match self.read_tree(&t).await {
                    Ok(tree) => {
                        for n in tree.nodes {
                            blobs.extend(n.content.iter().copied());
                            if let (NodeKind::Dir, Some(sub)) = (n.kind, n.subtree) {
                                todo.push(sub);
                            }
                        }
                    }
                    Err(e) => problems.push(Problem {
                        object: format!("tree {t:?}"),
                        what: e.to_string(),
                        snapshots: vec![sid.clone()],
                    }),
                }
                let index = self.index.read().unwrap();
                for b in blobs {
                    match index.blobs.get(&b) {
                        Some(loc) => {
                            out.entry(loc.pack).or_default().insert(sid.clone());
                        }
                        None => problems.push(Problem {
                            object: format!("blob {b:?}"),
                            what: "referenced but not in any index".into(),
                            snapshots: vec![sid.clone()],
                        }),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Checks the repository. Never changes anything.
    pub async fn verify(&self, opts: &VerifyOptions) -> Result<VerifyReport> {
        self.reload_index().await?;
        let snaps = self.snapshots().await?;
        let mut problems = Vec::new();
        let needed = self.packs_of_snapshots(&snaps, &mut problems).await?;
        let indexed: HashMap<Id, u64> = self.index.read().unwrap().packs.clone();
        let mut reports = Vec::new();
        let mut keys = std::collections::BTreeMap::new();
        for url in self.dests.urls() {
            if opts.destination.as_ref().is_some_and(|d| *d != url) {
                continue;
            }
            let mut report = DestinationReport {
                url: url.clone(),
                reachable: true,
                packs_checked: 0,
                unindexed_packs: 0,
                problems: Vec::new(),
            };
            let listed = match self.dests.list_on(&url, "data").await {
                Ok(l) => l,
                Err(e) => {
                    report.reachable = false;
                    report.problems.push(Problem {
                        object: "data/".into(),
                        what: format!("cannot list: {e}"),
                        snapshots: Vec::new(),
                    });
                    reports.push(report);
                    continue;
                }
            };
            let sizes: HashMap<String, u64> = listed.into_iter().map(|o| (o.key, o.size)).collect();
            let who = |pack: &Id| {
                needed
                    .get(pack)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default()
            };
            for (pack, size) in &indexed {
                let key = pack_key(pack);
                match sizes.get(&key) {
                    None => report.problems.push(Problem {
                        object: key.clone(),
                        what: "missing".into(),
                        snapshots: who(pack),
                    }),
                    Some(s) if s != size => report.problems.push(Problem {
                        object: key.clone(),
                        what: format!("has {s} bytes, the index says {size}"),
                        snapshots: who(pack),
                    }),
                    Some(_) => {}
                }
            }
            report.unindexed_packs = sizes
                .keys()
                .filter(|k| {
                    Id::from_hex(k.rsplit('/').next().unwrap_or(""))
                        .map(|id| !indexed.contains_key(&id))
                        .unwrap_or(true)
                })
                .count() as u64;
            if opts.read_data {
                for pack in indexed.keys() {
                    let key = pack_key(pack);
                    if !sizes.contains_key(&key) {
                        continue;
                    }
                    report.packs_checked += 1;
                    let what = match self.dests.get_from(&url, &key).await {
                        Err(e) => Some(format!("cannot read: {e}")),
                        Ok(bytes) => self.check_pack(pack, &bytes),
                    };
                    if let Some(what) = what {
                        report.problems.push(Problem {
                            object: key,
                            what,
                            snapshots: who(pack),
                        });
                    }
                }
            }
            for dir in ["keys", "index", "snapshots"] {
                let Ok(objs) = self.dests.list_on(&url, dir).await else {
                    continue;
                };
                for o in objs {
                    let Ok(id) = Id::from_hex(o.key.rsplit('/').next().unwrap_or("")) else {
                        continue;
                    };
                    match self.dests.get_from(&url, &o.key).await {
                        Ok(b) if Id::of_object(&b) == id => {
                            if dir == "keys"
                                && let Ok(file) = serde_json::from_slice::<KeyFile>(&b)
                            {
                                keys.insert(o.key.clone(), KeyInfo::new(o.key, file.params));
                            }
                        }
                        Ok(_) => report.problems.push(Problem {
                            object: o.key.clone(),
                            what: "content does not match its name (damaged)".into(),
                            snapshots: if dir == "snapshots" {
                                vec![id.to_hex()[..8].to_string()]
                            } else {
                                Vec::new()
                            },
                        }),
                        Err(e) => report.problems.push(Problem {
                            object: o.key.clone(),
                            what: format!("cannot read: {e}"),
                            snapshots: Vec::new(),
                        }),
                    }
                }
            }
            reports.push(report);
        }
        Ok(VerifyReport {
            snapshots: snaps.len() as u64,
            problems,
            destinations: reports,
            keys: keys.into_values().collect(),
        })
    }

    /// Checks one pack's bytes; returns what is wrong, if anything.
    fn check_pack(&self, pack: &Id, bytes: &[u8]) -> Option<String> {
        if Id::of_object(bytes) != *pack {
            return Some("content does not match its name (damaged)".into());
        }
        let blobs = match decode_pack_trailer(&self.keys, bytes) {
            Ok(b) => b,
            Err(e) => return Some(e.to_string()),
        };
        for b in blobs {
            let s = b.offset as usize;
            let e = s + b.length as usize;
            let ok = self
                .keys
                .unpack_payload(&bytes[s..e], b"", MAX_BLOB_LEN)
                .is_some_and(|d| self.keys.blob_id(&d) == b.id && d.len() == b.raw_length as usize);
            if !ok {
                return Some(format!("blob {:?} does not decrypt to its id", b.id));
            }
        }
        None
    }
}
