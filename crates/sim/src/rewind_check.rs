//! The rewind faults' procedure: a restore point taken just before the damage, a watch for
//! the damage to be noticed, the rewind, and what it gave back (planted files gone, a damaged
//! upload back byte for byte, RPO and RTO).

use std::time::Duration;

use lifeboat_control::api::EventsQuery;
use lifeboat_control::rewind::RewindRequest;
use lifeboat_control::timespec::TimeSpec;
use time::OffsetDateTime;

use crate::error::Result;
use crate::faults::{self, FaultKind};
use crate::load::{Kind, Recorder};
use crate::sandbox::Sandbox;

/// Before a destructive fault: everything captured so far is shipped, and the moment after
/// that is the restore point. Returns when writes may start to be given up (run time) and
/// the restore point (wall clock).
pub(crate) async fn restore_point(
    sandbox: &Sandbox,
    recorder: &Recorder,
) -> Result<(Duration, OffsetDateTime)> {
    // Writes acknowledged before t0 were committed before it; `ship` returns once the vault
    // holds everything committed until it was called, so they are all before the restore
    // point. Writes acknowledged after t0 may be on either side of it.
    let t0 = recorder.now();
    sandbox.client()?.ship().await?;
    Ok((t0, OffsetDateTime::now_utc()))
}

#[derive(Default)]
pub(crate) struct Extra {
    pub rpo_s: Option<f64>,
    pub rto_s: Option<f64>,
    pub detected_after_s: Option<f64>,
    pub detected_by: Option<String>,
    pub on_timeline: Option<bool>,
    pub removed_by_rewind: Option<bool>,
    pub upload_restored: Option<bool>,
    pub rewind_error: Option<String>,
}

/// After a virus or a corruption: watch for it to be noticed for `watch`, then rewind the
/// sandbox to the restore point taken just before and check what the rewind gave back.
pub(crate) async fn destroy_and_rewind(
    kind: FaultKind,
    f: &faults::Injected,
    sandbox: &mut Sandbox,
    recorder: &Recorder,
    watch: Duration,
    restore_to: OffsetDateTime,
    upload: Option<&[u8]>,
) -> Result<Extra> {
    let mut extra = Extra::default();
    let client = sandbox.client()?;
    let watch_until = recorder.now() + watch;
    while recorder.now() < watch_until && extra.detected_by.is_none() {
        if kind == FaultKind::Corruption {
            let events = client
                .events(&EventsQuery {
                    after: None,
                    last: Some(200),
                    wait_ms: None,
                })
                .await
                .unwrap_or_default();
            if let Some(e) = events.iter().find(|e| {
                e.at >= f.wall
                    && matches!(
                        e.what,
                        lifeboat_core::events::EventKind::IntegrityFailed { .. }
                    )
            }) {
                extra.detected_after_s = Some((e.at - f.wall).as_seconds_f64().max(0.0));
                extra.detected_by = Some(format!("Lifeboat event: {}", e.what.describe()));
            } else if let Some(o) = recorder
                .outcomes()
                .iter()
                .filter(|o| o.intended >= f.at && o.kind != Kind::Attack && o.status >= 500)
                .min_by_key(|o| o.intended)
            {
                extra.detected_after_s = Some((o.intended - f.at).as_secs_f64());
                extra.detected_by = Some(format!("the site answered {}", o.status));
            }
        }
        if kind == FaultKind::Virus && extra.on_timeline.is_none() {
            // On the timeline: once shipped, the vault covers a moment after the planting.
            let _ = client.ship().await;
            if let Ok(tl) = client.timeline().await {
                let covered = tl.restore_points.segments.iter().any(|s| s.to >= f.wall);
                extra.on_timeline = Some(covered);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rewind_started = recorder.now();
    let req = RewindRequest {
        to: TimeSpec::At { time: restore_to },
        rotate_credentials: false,
    };
    match client.rewind(&req).await {
        Ok(r) => {
            extra.rto_s = Some((recorder.now() - rewind_started).as_secs_f64());
            let restored = r.restored_time.unwrap_or(restore_to);
            extra.rpo_s = Some((f.wall - restored).as_seconds_f64().max(0.0));
            if kind == FaultKind::Virus {
                let dir = sandbox.live_state_dir().await?;
                let names: Vec<_> = f.files.iter().filter_map(|p| p.file_name()).collect();
                let left = names
                    .iter()
                    .filter(|n| {
                        sandbox
                            .manifest
                            .state
                            .dirs
                            .iter()
                            .any(|d| dir.join(d).join(n).exists())
                    })
                    .count();
                extra.removed_by_rewind = Some(left == 0);
            }
            if let (Some(bytes), Some(dir)) = (upload, sandbox.manifest.state.dirs.first()) {
                let path = sandbox
                    .live_state_dir()
                    .await?
                    .join(dir)
                    .join(faults::UPLOAD_NAME);
                extra.upload_restored = Some(std::fs::read(&path).is_ok_and(|b| b == bytes));
            }
        }
        Err(e) => extra.rewind_error = Some(format!("the rewind failed: {e}")),
    }
    Ok(extra)
}
