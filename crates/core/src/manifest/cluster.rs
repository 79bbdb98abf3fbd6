//! `[cluster]`: the site runs on several nodes (machines in zones), with its cluster state in
//! etcd. Without this section a site runs on one machine and needs no etcd at all.
//!
//! The manifest is the same on every node, so what differs per node (its name, zone and
//! address) comes from `lifeboat up --node NAME --zone ZONE --advertise IP`, never from here.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Validator;

/// When a visitor is told a write succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The front door holds the response to a request that may write until every commit made
    /// before its head arrived is stored on a standby in another zone: an acknowledged write
    /// survives the loss of the primary's whole zone.
    Sync,
    /// Responses are not held; what the primary committed but had not streamed yet is lost with
    /// it (the window is reported).
    Async,
}

/// The `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// etcd's client URLs (`etcd`, at least one; all members of the etcd cluster).
    pub etcd: Vec<String>,
    /// `durability`, default `sync`.
    pub durability: Durability,
    /// How long the primary's lease in etcd lives without renewal (`lease_ttl`, default 2s,
    /// 2s..=60s): after it, another node may take over; a primary that can not renew stops
    /// writing before it runs out.
    pub lease_ttl: Duration,
    /// How long a held write response waits for a standby's acknowledgement before it is
    /// answered 503 ("not confirmed durable") (`sync_timeout`, default 5s).
    pub sync_timeout: Duration,
    /// The TCP port each node listens on for the other nodes (the stream of changes,
    /// confirmations), on its advertised address (`peer_port`, default 7440).
    pub peer_port: u16,
    /// TLS to etcd (`https://` endpoints): the CA that signed etcd's certificate
    /// (`etcd_ca`; the system's roots when absent) and this node's client certificate and key
    /// (`etcd_cert`, `etcd_key`, for etcd's `--client-cert-auth`). Paths as written (relative
    /// to the site dir; resolving is the daemon's job).
    pub etcd_tls: Option<EtcdTlsSpec>,
    /// A MariaDB site: how many bytes of the primary's transactions a standby keeps in its
    /// journal before it applies them to its copy (`standby_journal`, default 64MiB). More
    /// means fewer server starts on the standby and more to apply when it takes over.
    pub standby_journal: u64,
}

/// Files for TLS to etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTlsSpec {
    /// PEM of the CA that signed etcd's server certificates.
    pub ca: Option<PathBuf>,
    /// PEM certificate and PEM private key of this node, when etcd asks for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(2);
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_PEER_PORT: u16 = 7440;
/// How many bytes of received MariaDB transactions a standby journals before it applies them.
pub const DEFAULT_STANDBY_JOURNAL: u64 = 64 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    #[serde(default)]
    etcd: Vec<Spanned<String>>,
    durability: Option<Spanned<String>>,
    lease_ttl: Option<Spanned<String>>,
    sync_timeout: Option<Spanned<String>>,
    peer_port: Option<Spanned<i64>>,
    etcd_ca: Option<Spanned<String>>,
    etcd_cert: Option<Spanned<String>>,
    etcd_key: Option<Spanned<String>>,
    standby_journal: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn cluster(&mut self, raw: Spanned<RawCluster>) -> ClusterSpec {
        let span = raw.span();
        let raw = raw.into_inner();
        let mut etcd = Vec::new();
        if raw.etcd.is_empty() {
            self.problem(
                Some(span.clone()),
                "cluster.etcd",
                "a cluster needs etcd, and no etcd endpoint is given".into(),
                "list etcd's client URLs, e.g. etcd = [\"http://10.0.1.5:2379\", \"http://10.0.2.5:2379\", \"http://10.0.3.5:2379\"], or remove [cluster] to run on one machine"
                    .into(),
            );
        }
        for url in raw.etcd {
            let text = url.get_ref().trim().trim_end_matches('/').to_string();
            let rest = text
                .strip_prefix("http://")
                .or_else(|| text.strip_prefix("https://"));
            match rest {
                Some(host) if !host.is_empty() && !host.contains('/') => {
                    if etcd.contains(&text) {
                        self.problem(
                            Some(url.span()),
                            "cluster.etcd",
                            format!("{text} is listed twice"),
                            "list each etcd member once".into(),
                        );
                    } else {
                        etcd.push(text);
                    }
                }
                _ => self.problem(
                    Some(url.span()),
                    "cluster.etcd",
                    format!("{:?} is not an etcd client URL", url.get_ref()),
                    "write http://HOST:PORT (etcd's client port, 2379 by default)".into(),
                ),
            }
        }
        let durability = match raw.durability {
            None => Durability::Sync,
            Some(d) => match d.get_ref().as_str() {
                "sync" => Durability::Sync,
                "async" => Durability::Async,
                other => {
                    self.problem(
                        Some(d.span()),
                        "cluster.durability",
                        format!("{other:?} is not a durability"),
                        "write durability = \"sync\" (a write is acknowledged once a standby in another zone has it) or \"async\""
                            .into(),
                    );
                    Durability::Sync
                }
            },
        };
        let ttl_span = raw.lease_ttl.as_ref().map(|t| t.span());
        let lease_ttl = self.duration("cluster.lease_ttl", raw.lease_ttl, DEFAULT_LEASE_TTL);
        if !(Duration::from_secs(2)..=Duration::from_secs(60)).contains(&lease_ttl) {
            self.problem(
                ttl_span,
                "cluster.lease_ttl",
                format!(
                    "{} is outside 2s..=60s (etcd refuses shorter leases; longer ones make failover slow)",
                    humantime::format_duration(lease_ttl)
                ),
                "write lease_ttl = \"2s\" (the default) or up to \"60s\"".into(),
            );
        }
        let sync_timeout = self.duration(
            "cluster.sync_timeout",
            raw.sync_timeout,
            DEFAULT_SYNC_TIMEOUT,
        );
        let peer_port = match raw.peer_port {
            None => DEFAULT_PEER_PORT,
            Some(p) => match u16::try_from(*p.get_ref()) {
                Ok(port) if port >= 1 => port,
                _ => {
                    self.problem(
                        Some(p.span()),
                        "cluster.peer_port",
                        format!("{} is not a TCP port", p.get_ref()),
                        format!(
                            "write a port from 1 to 65535, e.g. peer_port = {DEFAULT_PEER_PORT}"
                        ),
                    );
                    DEFAULT_PEER_PORT
                }
            },
        };
        let etcd_tls = self.etcd_tls(span, &etcd, raw.etcd_ca, raw.etcd_cert, raw.etcd_key);
        let standby_journal = match raw.standby_journal {
            None => DEFAULT_STANDBY_JOURNAL,
            Some(j) => match super::parse_size(j.get_ref()) {
                Ok(n) => n,
                Err(why) => {
                    self.problem(
                        Some(j.span()),
                        "cluster.standby_journal",
                        format!("{:?} is not a size: {why}", j.get_ref()),
                        "write a size with a unit, e.g. standby_journal = \"64MiB\" (the default)"
                            .into(),
                    );
                    DEFAULT_STANDBY_JOURNAL
                }
            },
        };
        ClusterSpec {
            etcd,
            durability,
            lease_ttl,
            sync_timeout,
            peer_port,
            etcd_tls,
            standby_journal,
        }
    }

    fn etcd_tls(
        &mut self,
        span: std::ops::Range<usize>,
        etcd: &[String],
        ca: Option<Spanned<String>>,
        cert: Option<Spanned<String>>,
        key: Option<Spanned<String>>,
    ) -> Option<EtcdTlsSpec> {
        let https = etcd.iter().filter(|u| u.starts_with("https://")).count();
        if https > 0 && https < etcd.len() {
            self.problem(
                Some(span.clone()),
                "cluster.etcd",
                "some etcd endpoints are https:// and some http://".into(),
                "give every member's URL with the same scheme (https:// when etcd serves TLS)"
                    .into(),
            );
        }
        let client = match (cert, key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                Some((PathBuf::from(c.into_inner()), PathBuf::from(k.into_inner())))
            }
            (Some(one), None) | (None, Some(one)) => {
                self.problem(
                    Some(one.span()),
                    "cluster.etcd_cert",
                    "etcd_cert and etcd_key go together, and only one is given".into(),
                    "give both: etcd_cert = \".lifeboat/etcd/node.pem\" and etcd_key = \".lifeboat/etcd/node-key.pem\"".into(),
                );
                None
            }
        };
        let ca = ca.map(|c| PathBuf::from(c.into_inner()));
        if ca.is_none() && client.is_none() {
            return (https > 0).then_some(EtcdTlsSpec {
                ca: None,
                client: None,
            });
        }
        if https == 0 {
            self.problem(
                Some(span),
                "cluster.etcd_ca",
                "etcd_ca, etcd_cert or etcd_key is set, but the etcd URLs are http://, so no TLS is used".into(),
                "write the etcd URLs as https://HOST:2379, or remove the TLS settings".into(),
            );
        }
        Some(EtcdTlsSpec { ca, client })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Manifest;

    fn parse(cluster: &str) -> Result<Manifest, String> {
        Manifest::parse(
            "lifeboat.toml",
            &format!(
                "[site]\nname = \"blog\"\n[processes.web]\ncommand = \"x\"\n[cluster]\n{cluster}"
            ),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_cluster_needs_only_etcd_and_gets_safe_defaults() {
        let m = parse("etcd = [\"http://10.0.1.5:2379\", \"http://10.0.2.5:2379/\"]\n").unwrap();
        let c = m.cluster.unwrap();
        assert_eq!(c.etcd, ["http://10.0.1.5:2379", "http://10.0.2.5:2379"]);
        assert_eq!(c.durability, Durability::Sync);
        assert_eq!(c.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(c.peer_port, DEFAULT_PEER_PORT);
    }

    #[test]
    fn mistakes_in_the_cluster_section_are_named_with_the_fix() {
        for (text, key, fix) in [
            ("etcd = []\n", "cluster.etcd", "list etcd's client URLs"),
            (
                "etcd = [\"10.0.1.5:2379\"]\n",
                "cluster.etcd",
                "http://HOST:PORT",
            ),
            (
                "etcd = [\"http://a:2379\"]\ndurability = \"strong\"\n",
                "cluster.durability",
                "\"sync\"",
            ),
            (
                "etcd = [\"http://a:2379\"]\nlease_ttl = \"500ms\"\n",
                "cluster.lease_ttl",
                "2s",
            ),
            (
                "etcd = [\"http://a:2379\"]\npeer_port = 70000\n",
                "cluster.peer_port",
                "65535",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key) && err.contains(fix), "{text}: {err}");
        }
    }

    #[test]
    fn tls_to_etcd_takes_a_ca_and_a_client_certificate_with_https_endpoints() {
        let m = parse(
            "etcd = [\"https://a:2379\", \"https://b:2379\"]\netcd_ca = \".lifeboat/etcd/ca.pem\"\n\
             etcd_cert = \".lifeboat/etcd/n.pem\"\netcd_key = \".lifeboat/etcd/n-key.pem\"\n",
        )
        .unwrap();
        let tls = m.cluster.unwrap().etcd_tls.unwrap();
        assert_eq!(tls.ca, Some(PathBuf::from(".lifeboat/etcd/ca.pem")));
        assert_eq!(
            tls.client,
            Some((
                ".lifeboat/etcd/n.pem".into(),
                ".lifeboat/etcd/n-key.pem".into()
            ))
        );
        // https with the system's roots and no client certificate.
        let m = parse("etcd = [\"https://a:2379\"]\n").unwrap();
        assert_eq!(
            m.cluster.unwrap().etcd_tls,
            Some(EtcdTlsSpec {
                ca: None,
                client: None
            })
        );
        assert_eq!(
            parse("etcd = [\"http://a:2379\"]\n")
                .unwrap()
                .cluster
                .unwrap()
                .etcd_tls,
            None
        );
        for (text, key, fix) in [
            (
                "etcd = [\"https://a:2379\"]\netcd_cert = \"n.pem\"\n",
                "cluster.etcd_cert",
                "give both",
            ),
            (
                "etcd = [\"http://a:2379\"]\netcd_ca = \"ca.pem\"\n",
                "cluster.etcd_ca",
                "https://HOST:2379",
            ),
            (
                "etcd = [\"http://a:2379\", \"https://b:2379\"]\n",
                "cluster.etcd",
                "same scheme",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key) && err.contains(fix), "{text}: {err}");
        }
    }

    #[test]
    fn a_mariadb_site_may_run_on_several_nodes() {
        let m = Manifest::parse(
            "lifeboat.toml",
            "[site]\nname = \"blog\"\n[processes.web]\ncommand = \"x\"\n\
             [state]\nmariadb = { database = \"wordpress\" }\n\
             [cluster]\netcd = [\"http://10.0.1.5:2379\"]\n",
        )
        .unwrap();
        assert!(m.cluster.is_some() && m.state.mariadb.is_some());
    }
}
