//! `report.json`: what a simulation found, in the shape `docs/simulate-report.md` specifies
//! (version [`REPORT_VERSION`]). Plain data; the figures are computed in `checker.rs`.

use serde::Serialize;

/// The version of `report.json`'s format.
pub const REPORT_VERSION: u32 = 1;

/// Everything a simulation found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub version: u32,
    pub site: String,
    /// Every target held and no acknowledged write was lost.
    pub passed: bool,
    /// RFC 3339.
    pub started_at: String,
    pub duration_s: f64,
    pub quick: bool,
    /// The moment of the site the sandbox was restored to (RFC 3339).
    pub restored_time: String,
    pub targets: TargetsReport,
    /// Share of the visitors' requests (reads and writes, over the whole run) answered 2xx/3xx
    /// within the response-time target.
    pub availability: f64,
    pub requests: u64,
    pub errors: u64,
    /// Writes the site acknowledged (2xx) that a later read-back did not find, outside the
    /// windows a rewind discarded on purpose.
    pub lost_acknowledged_writes: u64,
    pub writes: WritesReport,
    /// Good answers per second the site gave at the highest arrival rate it kept up with.
    pub capacity_rps: f64,
    /// The site kept up with the whole spike: the real capacity is higher.
    pub capacity_is_lower_bound: bool,
    /// How the sandbox was set up: what it could reach, and its vault's destinations.
    pub sandbox: SandboxReport,
    pub baseline: PhaseReport,
    pub faults: Vec<FaultReport>,
    /// The scorecard, worst first.
    pub scorecard: Vec<ScoreLine>,
    pub timeseries: TimeSeries,
    /// What the sandbox's Lifeboat recorded (`lifeboat events`).
    pub events: Vec<EventLine>,
}

/// How the sandbox was set up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SandboxReport {
    /// The sandbox ran in a network namespace with only loopback: it could reach nothing
    /// outside itself.
    pub network_isolated: bool,
    /// What the namespace is, or why outbound traffic was not cut off.
    pub network: String,
    /// The vault's second destination (the one taken down): `s3` or `local-folder`.
    pub second_destination: String,
    /// Why it is a local folder (null when it is the sandbox's S3 server).
    pub why_not_s3: Option<String>,
    /// On a site with `[cluster]`: the copy's nodes.
    pub cluster: Option<ClusterReport>,
}

/// A cluster sandbox: its nodes, and where their names and zones came from.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterReport {
    pub nodes: Vec<NodeLine>,
    /// The LAN's bridge, and the services host (the S3 server and the simulator's clients).
    pub bridge: String,
    pub services_host: String,
    /// "the live site's nodes and zones", or the default and why.
    pub topology: String,
    /// `sync` or `async`, as the site's manifest says.
    pub durability: String,
    /// A cluster of two nodes: the third etcd member runs on the services host (a witness),
    /// so losing either node keeps etcd's quorum.
    pub etcd_on_services_host: bool,
}

/// One node of the copy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeLine {
    pub name: String,
    pub zone: String,
    /// Its host (a network namespace) and the host's address on the sandbox's LAN.
    pub host: String,
    pub address: String,
    /// Whether an etcd member runs on its host.
    pub etcd_member: bool,
    /// Its role when the baseline started and once the last fault was undone
    /// (`primary (term T)`, `standby of NODE`, `fenced`, `joining`, `not answering`).
    pub role_at_start: String,
    pub role_at_end: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetsReport {
    pub availability: f64,
    pub response_time_ms: f64,
    pub p99_ms: f64,
    pub lost_writes: u64,
    pub rto_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WritesReport {
    /// Write probes sent.
    pub sent: u64,
    /// Answered 2xx.
    pub acknowledged: u64,
    /// Acknowledged, then found by the read-back.
    pub found: u64,
    /// Acknowledged after a rewind's restore point and before the rewind: given up on purpose.
    pub discarded_by_rewind: u64,
    /// No answer or an error: the write may or may not have happened.
    pub indeterminate: u64,
    /// Probe numbers of the lost writes (at most 100).
    pub lost_ids: Vec<u64>,
}

/// Figures of one window of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseReport {
    pub start_s: f64,
    pub end_s: f64,
    pub requests: u64,
    pub errors: u64,
    pub availability: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Good answers per second.
    pub throughput_rps: f64,
    /// From the first failed request's send time to the end of the last one, in seconds
    /// (0: none failed).
    pub outage_s: f64,
    /// Acknowledged writes of this run found missing by this phase's read-back.
    pub lost_acknowledged_writes: u64,
}

/// One fault's phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultReport {
    pub name: String,
    pub title: String,
    pub passed: bool,
    /// Why the fault was not injected (then `passed` says nothing about the site).
    pub skipped: Option<String>,
    pub injected_at_s: f64,
    pub undone_at_s: f64,
    /// What shows it really happened.
    pub evidence: String,
    /// Whether it was undone, and what shows it.
    pub undone: bool,
    pub undo_evidence: String,
    #[serde(flatten)]
    pub figures: PhaseReport,
    /// From the injection until the site served again (faults that take it all down).
    pub recovered_after_s: Option<f64>,
    /// Rewind faults: how much time of the site's history the rewind gave up.
    pub rpo_s: Option<f64>,
    /// Rewind faults: how long the rewind took until the restored site served.
    pub rto_s: Option<f64>,
    /// When Lifeboat (an event) or the site (failing answers) showed the damage.
    pub detected_after_s: Option<f64>,
    pub detected_by: Option<String>,
    /// Virus: the vault held the site after the files were planted.
    pub on_timeline: Option<bool>,
    /// Virus: the planted files were gone after the rewind.
    pub removed_by_rewind: Option<bool>,
    /// Disk full: the share of reads answered in time (writes may be refused while it is full).
    pub read_availability: Option<f64>,
    /// Corruption: the upload truncated with the database was back byte for byte after the
    /// rewind.
    pub upload_restored: Option<bool>,
    /// Vault destination down: what was taken down, `s3` (the sandbox's S3 server) or
    /// `local-folder` (no S3 server: a folder stood in).
    pub destination: Option<String>,
    /// Vault destination down: objects (and bytes) the destination was behind when it came back.
    pub vault_backlog_objects: Option<u64>,
    pub vault_backlog_bytes: Option<u64>,
    /// Vault destination down: from the moment it was back until nothing was behind.
    pub vault_catch_up_s: Option<f64>,
    /// Slow disk: the median time of an fsync'd 4 KiB write on the state's disk before the
    /// fault, while it was slow, and after it was undone.
    pub fsync_ms_before: Option<f64>,
    pub fsync_ms_during: Option<f64>,
    pub fsync_ms_after: Option<f64>,
    /// Cluster faults: the node that led when it was injected (the one hit or cut off) and
    /// its zone.
    pub node: Option<String>,
    pub zone: Option<String>,
    /// The node that led and served after it.
    pub new_primary: Option<String>,
    /// node-loss, zone-loss, partition: the hosts brought back followed the primary as
    /// standbys again (with a streaming copy), and how long after they were back.
    pub rejoined_as_standby: Option<bool>,
    pub rejoined_after_s: Option<f64>,
    /// partition: the cut-off primary stopped leading while it was cut off.
    pub old_primary_fenced: Option<bool>,
    /// etcd-member-loss: the same node still led, in the same term, once the member was back;
    /// standby-loss: once the standby was back; slow-link: once the link was set back.
    pub primary_unchanged: Option<bool>,
    /// standby-loss, slow-link: the write probes sent while the fault was in place, those
    /// acknowledged, and the longest any of them waited for its answer (a sync write waits
    /// for a standby in another zone).
    pub writes_during: Option<u64>,
    pub writes_acknowledged_during: Option<u64>,
    pub longest_write_s: Option<f64>,
    /// slow-link: packets the drop rules dropped, and packets the rate limit held back over
    /// its rate, while the link was slow.
    pub link_dropped_packets: Option<u64>,
    pub link_overlimits: Option<u64>,
    /// `node-loss`, `zone-loss`, `partition` with `durability = "async"`: the changes the
    /// primary had acknowledged that no standby in another zone had yet, as its status showed
    /// just before the fault (what a takeover then may lose).
    pub unconfirmed_changes: Option<u64>,
    /// `node-loss`, `zone-loss`, `partition`, `standby-loss`: the hosts hit held etcd's leader
    /// (asked of the members just before), so etcd had to elect another while the nodes
    /// renewed their leases (a new etcd leader also extends every lease by its TTL).
    pub etcd_leader_lost: Option<bool>,
}

/// One line of the scorecard.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreLine {
    /// `true` pass, `false` fail, `None`: for information.
    pub passed: Option<bool>,
    pub text: String,
    /// What to change when it failed.
    pub advice: Option<String>,
}

/// Per-bucket figures for the plots.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TimeSeries {
    pub bucket_s: f64,
    /// Start of each bucket, seconds since the run started.
    pub t: Vec<f64>,
    /// Good answers per second.
    pub ok_rps: Vec<f64>,
    /// Failed or too slow answers per second.
    pub error_rps: Vec<f64>,
    /// p99 latency of the bucket (0 when empty).
    pub p99_ms: Vec<f64>,
    /// Arrival rate sent (visitors).
    pub sent_rps: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventLine {
    /// On a cluster, the node that recorded it (each keeps its own events); null otherwise.
    pub node: Option<String>,
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    /// Seconds since the run started (negative: before it).
    pub t_s: f64,
    pub text: String,
    pub alert: bool,
}
