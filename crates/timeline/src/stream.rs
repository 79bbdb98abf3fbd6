//! Reading the timeline as stored: original segments in the stream [`STREAM`] and bundles
//! (consecutive segments merged by compaction) in [`BUNDLE_STREAM`], each segment once and
//! in seq order.
//!
//! Compaction writes a bundle before it deletes the originals it holds, so after a crash
//! both can exist; a bundle covers every original up to its last part, and an original
//! already delivered by a bundle is skipped without being read.

use lifeboat_vault::Repository;

use crate::error::{Result, TimelineError};
use crate::segment::{STREAM, TimelineSegment, split_bundle};

/// The vault segment stream holding bundles, keyed by their first seq.
pub const BUNDLE_STREAM: &str = "timeline-bundles";

/// Keys of both streams, ascending.
#[derive(Debug, Clone, Default)]
pub(crate) struct Listing {
    pub originals: Vec<u64>,
    pub bundles: Vec<u64>,
}

pub(crate) async fn listing(repo: &Repository) -> Result<Listing> {
    Ok(Listing {
        originals: repo.list_segments(STREAM).await?,
        bundles: repo.list_segments(BUNDLE_STREAM).await?,
    })
}

/// The parts of the bundle stored under `key`: `(seq, bytes as stored)`.
pub(crate) async fn read_bundle(repo: &Repository, key: u64) -> Result<Vec<(u64, Vec<u8>)>> {
    split_bundle(key, &repo.get_segment(BUNDLE_STREAM, key).await?)
}

/// The highest seq stored in either stream.
pub(crate) async fn last_seq(repo: &Repository, listing: &Listing) -> Result<Option<u64>> {
    let mut last = listing.originals.last().copied();
    if let Some(&key) = listing.bundles.last() {
        let parts = read_bundle(repo, key).await?;
        last = last.max(parts.last().map(|p| p.0));
    }
    Ok(last)
}

/// Calls `f` with every stored segment whose seq is `from` or above, in seq order, each
/// seq once, until `f` returns false. Gaps are the caller's to notice (seqs jump).
pub(crate) async fn read_from(
    repo: &Repository,
    listing: &Listing,
    from: u64,
    mut f: impl FnMut(TimelineSegment) -> Result<bool>,
) -> Result<()> {
    // The bundle that may hold `from` (the last starting at or before it), and later ones.
    let start = listing
        .bundles
        .partition_point(|&k| k <= from)
        .saturating_sub(1);
    let bundles = listing.bundles.get(start..).unwrap_or_default();
    let originals = &listing.originals[listing.originals.partition_point(|&k| k < from)..];
    // Merged by key; a bundle comes before the original of the same key.
    let (mut b, mut o) = (0, 0);
    let mut next = from;
    loop {
        let take_bundle = match (bundles.get(b), originals.get(o)) {
            (None, None) => return Ok(()),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(kb), Some(ko)) => kb <= ko,
        };
        if take_bundle {
            let key = bundles[b];
            b += 1;
            for (seq, bytes) in read_bundle(repo, key).await? {
                if seq < next {
                    continue;
                }
                if !f(TimelineSegment::decode(seq, &bytes)?)? {
                    return Ok(());
                }
                next = seq + 1;
            }
        } else {
            let key = originals[o];
            o += 1;
            if key < next {
                continue;
            }
            let seg = TimelineSegment::decode(key, &repo.get_segment(STREAM, key).await?)?;
            if !f(seg)? {
                return Ok(());
            }
            next = key + 1;
        }
    }
}

/// Checks that every destination is reachable with nothing spooled (objects are on all of
/// them), as deleting objects needs.
pub(crate) async fn require_all(repo: &Repository, operation: &'static str) -> Result<()> {
    for d in repo.status().await {
        let detail = if !d.reachable {
            Some(d.last_error.unwrap_or_else(|| "unreachable".into()))
        } else if d.objects_behind > 0 {
            Some(format!(
                "{} objects still wait in the local spool",
                d.objects_behind
            ))
        } else {
            None
        };
        if let Some(detail) = detail {
            return Err(TimelineError::Vault(
                lifeboat_vault::Error::DestinationNeeded {
                    operation,
                    location: d.url,
                    detail,
                },
            ));
        }
    }
    Ok(())
}
