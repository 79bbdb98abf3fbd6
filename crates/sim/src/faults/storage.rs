//! The faults of the site's storage: a vault destination down (the sandbox's S3 server
//! killed and started again, or a local folder replaced by a file) and the state's disk slow.
//! Their evidence comes from Lifeboat's own status (the destination's lag) and from timing
//! writes on the disk.

use std::time::Duration;

use super::{Ctx, Injected, Undone};
use crate::error::Result;
use crate::fault_tools::{bring_back, destination_state};
use crate::sandbox::SecondDestination;
use crate::slow_disk::Throttle;

/// How long an fsync'd 4 KiB write on the state's disk took (the slow-disk fault).
#[derive(Debug, Clone, Copy, Default)]
pub struct FsyncTimes {
    pub before: Option<Duration>,
    pub during: Option<Duration>,
    pub after: Option<Duration>,
}

/// A vault destination's catching up once it is back.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchUp {
    /// Objects (and their bytes) it was behind when it came back, as Lifeboat reported.
    pub backlog_objects: u64,
    pub backlog_bytes: u64,
    /// From the moment it was back until nothing was behind (none: not within the RTO).
    pub after: Option<Duration>,
}

/// Throttles the state's disk for every process of the sandbox.
pub(super) async fn slow_down(f: &mut Injected, ctx: &mut Ctx<'_>) -> Result<()> {
    let dir = match &ctx.sandbox.state_disk {
        Ok(dir) => dir.clone(),
        Err(why) => {
            f.skipped = Some(why.clone());
            return Ok(());
        }
    };
    if ctx.sandbox.status().await?.state != lifeboat_control::SITE_STATE {
        f.skipped = Some("a rewind moved the live state off the small disk".into());
        return Ok(());
    }
    let Some(device) = crate::state_disk::block_device(&dir) else {
        f.skipped = Some(
            "the state's small disk is a tmpfs (no loop device could be set up), which has no \
             device to slow"
                .into(),
        );
        return Ok(());
    };
    let cgroup = match crate::slow_disk::cgroup_for(std::process::id()) {
        Ok(c) => c,
        Err(why) => {
            f.skipped = Some(why);
            return Ok(());
        }
    };
    ctx.sandbox.record_cgroup(&cgroup)?;
    let before = fsync_time(&dir, None).await;
    let pids = ctx.sandbox.processes();
    f.at = ctx.recorder.now();
    let throttle = match Throttle::start(&cgroup, device, &pids) {
        Ok(t) => t,
        Err(why) => {
            f.skipped = Some(why);
            return Ok(());
        }
    };
    let during = fsync_time(&dir, Some(&cgroup)).await;
    let (major, minor) = device;
    f.evidence = format!(
        "the state's disk (device {major}:{minor} under {}) throttled to {} writes and {} reads a \
         second for the sandbox's {} processes (blkio cgroup {}); an fsync'd 4 KiB write took \
         {} (before: {})",
        dir.display(),
        crate::slow_disk::WRITE_IOPS,
        crate::slow_disk::READ_IOPS,
        throttle.pids.len(),
        cgroup.display(),
        ms(during.as_ref()),
        ms(before.as_ref()),
    );
    let times = FsyncTimes {
        before: before.ok(),
        during: during.ok(),
        after: None,
    };
    f.throttle = Some((throttle, dir, times));
    Ok(())
}

async fn fsync_time(
    dir: &std::path::Path,
    cgroup: Option<&std::path::Path>,
) -> Result<Duration, String> {
    let (dir, cgroup) = (dir.to_path_buf(), cgroup.map(std::path::Path::to_path_buf));
    tokio::task::spawn_blocking(move || crate::slow_disk::fsync_time(&dir, cgroup.as_deref()))
        .await
        .map_err(|e| e.to_string())?
}

fn ms(d: Result<&Duration, &String>) -> String {
    match d {
        Ok(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
        Err(e) => format!("not measured ({e})"),
    }
}

/// Kills the sandbox's S3 server while the site writes.
pub(super) async fn s3_down(f: &mut Injected, ctx: &mut Ctx<'_>) {
    let SecondDestination::S3(s3) = &ctx.sandbox.second else {
        return;
    };
    let addr = std::net::SocketAddr::from((s3.ip, s3.port));
    f.at = ctx.recorder.now();
    let Some(pid) = ctx.sandbox.kill_s3_server() else {
        f.skipped = Some("the sandbox's S3 server was not running".into());
        return;
    };
    f.s3_killed = true;
    let refused = ctx.sandbox.dialer.connect(addr).await.is_err();
    // Lifeboat's S3 client retries a failed write (with backoff) before it gives up and
    // reports the destination down, so this may take a while, or longer than we wait.
    let seen = destination_state(ctx.sandbox, ctx.notice_within, |d| {
        !d.reachable && d.objects_behind > 0
    })
    .await;
    if let Some(d) = &seen {
        f.noticed = Some((
            ctx.recorder.now().saturating_sub(f.at),
            format!(
                "Lifeboat's status: unreachable, {} objects behind",
                d.objects_behind
            ),
        ));
    }
    f.evidence = format!(
        "the sandbox's S3 server (s3s-fs, pid {pid}, {addr}) killed with SIGKILL; its port {}; {}",
        if refused {
            "refuses connections"
        } else {
            "still accepts connections"
        },
        match seen {
            Some(_) => seen_by_lifeboat(seen),
            None => format!(
                "Lifeboat did not report it down within {:.0} s (its S3 client was still \
                 retrying the write)",
                ctx.notice_within.as_secs_f64()
            ),
        }
    );
    if !refused {
        f.skipped = Some(format!("{addr} still accepted connections after the kill"));
    }
}

/// Replaces the local second destination by a file (no S3 server in the sandbox).
pub(super) async fn folder_down(f: &mut Injected, ctx: &mut Ctx<'_>) {
    let SecondDestination::Folder { why_not_s3 } = &ctx.sandbox.second else {
        return;
    };
    let why_not_s3 = why_not_s3.clone();
    let dir = ctx.sandbox.site.join(crate::sandbox::SECOND_DESTINATION);
    let aside = dir.with_extension("down");
    f.at = ctx.recorder.now();
    // A file where the directory was: every write to it fails (not even root can create a
    // path beneath a file), as a destination that is down would.
    let taken = std::fs::rename(&dir, &aside)
        .and_then(|()| std::fs::write(&dir, b"down: lifeboat simulate\n"));
    if let Err(e) = taken {
        let _ = bring_back(&dir, &aside);
        f.skipped = Some(format!("could not take {} down: {e}", dir.display()));
        return;
    }
    f.moved_destination = Some((dir.clone(), aside));
    let seen = destination_state(ctx.sandbox, ctx.notice_within, |d| {
        !d.reachable || d.objects_behind > 0
    })
    .await;
    if let Some(d) = &seen {
        f.noticed = Some((
            ctx.recorder.now().saturating_sub(f.at),
            format!(
                "Lifeboat's status: {}, {} objects behind",
                if d.reachable {
                    "reachable"
                } else {
                    "unreachable"
                },
                d.objects_behind
            ),
        ));
    }
    f.evidence = format!(
        "no S3 server in the sandbox ({why_not_s3}), so a local folder stood in: {} replaced \
         by a file; {}",
        dir.display(),
        seen_by_lifeboat(seen)
    );
}

fn seen_by_lifeboat(seen: Option<lifeboat_control::capture::DestinationReport>) -> String {
    match seen {
        Some(d) => format!(
            "Lifeboat reports it {}, {} objects behind",
            if d.reachable {
                "reachable"
            } else {
                "unreachable"
            },
            d.objects_behind
        ),
        None => "Lifeboat did not notice".into(),
    }
}

/// Lifts the slow disk's limits and times an fsync'd write again.
pub(super) async fn speed_up(f: &mut Injected, u: &mut Undone) {
    if let Some((mut throttle, dir, mut times)) = f.throttle.take() {
        let pids = throttle.pids.len();
        match throttle.undo() {
            Ok(()) => {
                let after = fsync_time(&dir, None).await;
                u.ok = true;
                u.evidence = format!(
                    "limits lifted, {pids} processes moved back, the cgroup removed; an fsync'd \
                     4 KiB write takes {} again",
                    ms(after.as_ref())
                );
                times.after = after.ok();
            }
            Err(e) => u.evidence = format!("the slow disk was not undone: {e}"),
        }
        u.fsync = Some(times);
    }
}

/// Starts the sandbox's S3 server again on its port and data, and waits for the vault to
/// catch up there.
pub(super) async fn s3_back(f: &Injected, ctx: &mut Ctx<'_>, rto: Duration, u: &mut Undone) {
    match ctx.sandbox.restart_s3_server().await {
        Ok(pid) => {
            let addr = match &ctx.sandbox.second {
                SecondDestination::S3(s3) => std::net::SocketAddr::from((s3.ip, s3.port)),
                SecondDestination::Folder { .. } => std::net::SocketAddr::from(([0; 4], 0)),
            };
            let what = format!("s3s-fs started again (pid {pid}) on {addr} with the same data");
            catch_up(f, ctx, rto, u, what).await;
        }
        Err(e) => u.evidence = format!("the sandbox's S3 server did not start again: {e}"),
    }
}

/// The destination is back (`what` says how): how much it was behind, and how long the vault
/// took to ship that backlog (no object behind any more).
pub(super) async fn catch_up(
    f: &Injected,
    ctx: &mut Ctx<'_>,
    rto: Duration,
    u: &mut Undone,
    what: String,
) {
    let back = ctx.recorder.now();
    let backlog = destination_state(ctx.sandbox, Duration::from_secs(1), |_| true).await;
    let caught_up = destination_state(ctx.sandbox, rto, |d| {
        d.reachable && d.objects_behind == 0 && d.bytes_behind == 0
    })
    .await;
    let after = caught_up
        .is_some()
        .then(|| ctx.recorder.now().saturating_sub(back));
    u.ok = caught_up.is_some();
    u.recovered_after = after.map(|a| (back + a).saturating_sub(f.at));
    u.catch_up = Some(CatchUp {
        backlog_objects: backlog.as_ref().map_or(0, |d| d.objects_behind),
        backlog_bytes: backlog.as_ref().map_or(0, |d| d.bytes_behind),
        after,
    });
    let backlog = backlog.map_or("its backlog unknown".into(), |d| {
        format!(
            "{} objects ({} bytes) behind",
            d.objects_behind, d.bytes_behind
        )
    });
    u.evidence = match after {
        Some(a) => format!(
            "{what}; {backlog} when it came back; caught up {:.1} s later",
            a.as_secs_f64()
        ),
        None => format!("{what}; {backlog} when it came back; not caught up within {rto:?}"),
    };
}
