//! The change feed: every batch of changes capture reads on the primary, as soon as it reads
//! them, numbered by a [`Position`] `(term, seq)`, kept in a bounded in-memory window from
//! which the [`super::StreamServer`] sends each standby what it lacks.
//!
//! A batch holds what one poll read from every source (database commits with their pages,
//! base images, file changes with their contents). Its seq increases by one per batch; the
//! first seq of a feed is the wall-clock time in microseconds when it started, so the
//! positions of a worker restarted in the same term still increase (a feed never hands out
//! more than one batch per microsecond). The window forgets the oldest batches past its
//! bounds; a standby that needs one of them is told to resync from the vault.
//!
//! The feed never blocks capture: publishing only appends to the window, whatever the
//! standbys do. It never prints.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_capture::Record;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};

use super::Position;
use super::batch::{self, SourceSpan};
use super::wire::{RefusalCode, SourcePosition};
use crate::error::{Result, TimelineError};

/// How the worker's change feed is kept.
#[derive(Debug, Clone)]
pub struct FeedOptions {
    /// The term of this primary (the etcd fencing token): every batch carries it. Must be
    /// above zero, and a new primary's above every earlier one's.
    pub term: u64,
    /// The window keeps at most this many batches...
    pub window_batches: usize,
    /// ...and at most this many bytes of them (the newest batch is always kept).
    pub window_bytes: u64,
    /// A batch larger than this is not streamed: the window starts over after it, and
    /// standbys that need it resync from the vault.
    pub max_batch_bytes: u64,
    /// A promoted standby's last applied batches ([`crate::Replica::stop_keeping_history`]):
    /// the window starts with them, so a standby that lacks some of them is sent them
    /// instead of restoring from the vault.
    pub history: Option<std::sync::Arc<super::ReplicaHistory>>,
}

impl FeedOptions {
    /// The defaults for `term`: a window of 100 000 batches and 128 MiB, batches up to 256 MiB.
    pub fn new(term: u64) -> FeedOptions {
        FeedOptions {
            term,
            window_batches: 100_000,
            window_bytes: 128 << 20,
            max_batch_bytes: 256 << 20,
            history: None,
        }
    }
}

/// One batch in the window.
#[derive(Debug)]
pub(crate) struct FeedBatch {
    pub position: Position,
    pub bytes: Vec<u8>,
    pub hash: [u8; 32],
    pub spans: BTreeMap<String, SourceSpan>,
    pub published_at: Instant,
}

/// Where the feed stands, for `lifeboat status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStatus {
    /// This primary's term.
    pub term: u64,
    /// The last batch published (`seq` one below the first batch's while none was).
    pub last_position: Position,
    /// The oldest batch still in the window, if any.
    pub oldest_in_window: Option<Position>,
    /// Batches in the window.
    pub window_batches: usize,
    /// Their bytes.
    pub window_bytes: u64,
    /// Times the window started over after a batch too large to stream (standbys then
    /// resync from the vault).
    pub resets: u64,
}

#[derive(Debug, Clone, Copy)]
struct SourceState {
    /// Every record of the source with a seq up to this is outside the window: a standby
    /// must already hold it.
    base_seq: u64,
    /// The last record published.
    current: SourcePosition,
}

#[derive(Debug)]
struct FeedState {
    next_seq: u64,
    window: VecDeque<Arc<FeedBatch>>,
    window_bytes: u64,
    /// The seq of `window[0]` (of the next batch while the window is empty).
    window_start: u64,
    sources: BTreeMap<String, SourceState>,
    resets: u64,
    last_publish: OffsetDateTime,
}

/// What a barrier round reported: up to which request it served, and the position.
#[derive(Debug, Clone)]
pub(crate) struct BarrierDone {
    pub generation: u64,
    pub result: std::result::Result<Position, String>,
}

pub(crate) struct BarrierShared {
    pub requested: AtomicU64,
    pub wake: Notify,
    pub done: watch::Sender<BarrierDone>,
}

pub(crate) struct FeedInner {
    pub term: u64,
    pub first_seq: u64,
    pub options: FeedOptions,
    state: Mutex<FeedState>,
    /// The last published seq; changes wake the senders.
    published: watch::Sender<u64>,
    pub barrier: BarrierShared,
}

/// The worker's change feed (a cheap handle: clone it freely).
#[derive(Clone)]
pub struct ChangeFeed {
    pub(crate) inner: Arc<FeedInner>,
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeFeed")
            .field("term", &self.inner.term)
            .finish()
    }
}

/// Where a standby starts, decided from its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartPlan {
    /// Send batches from `next_seq`; the standby already holds everything up to `credited`.
    Serve { next_seq: u64, credited: Position },
    /// The window lacks what the standby needs.
    Resync(String),
    /// The standby cannot follow this primary at all.
    Refuse(RefusalCode, String),
}

/// The next batches a sender should send after `cursor`.
pub(crate) enum Next {
    Batches(Vec<Arc<FeedBatch>>),
    Wait,
    /// Evicted from the window (or skipped as too large).
    Gone,
}

fn micros_now() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.as_micros())
        .unwrap_or(u64::MAX / 2)
        .max(1)
}

impl FeedInner {
    pub(crate) fn new(options: FeedOptions) -> Result<Arc<FeedInner>> {
        if options.term == 0 {
            return Err(TimelineError::Invalid(
                "the change feed needs a term above zero (the primary's fencing token)".into(),
            ));
        }
        if options.window_batches == 0 || options.max_batch_bytes == 0 {
            return Err(TimelineError::Invalid(
                "the change feed's window and batch limits must be above zero".into(),
            ));
        }
        let first_seq = micros_now();
        let origin = Position {
            term: options.term,
            seq: first_seq - 1,
        };
        let (published, _) = watch::channel(first_seq - 1);
        let (done, _) = watch::channel(BarrierDone {
            generation: 0,
            result: Ok(origin),
        });
        Ok(Arc::new(FeedInner {
            term: options.term,
            first_seq,
            state: Mutex::new(FeedState {
                next_seq: first_seq,
                window: VecDeque::new(),
                window_bytes: 0,
                window_start: first_seq,
                sources: BTreeMap::new(),
                resets: 0,
                last_publish: OffsetDateTime::now_utc(),
            }),
            options,
            published,
            barrier: BarrierShared {
                requested: AtomicU64::new(0),
                wake: Notify::new(),
                done,
            },
        }))
    }

    /// Declares a source and the last seq of it that needs no streaming (what capture had
    /// confirmed durable when it opened).
    pub(crate) fn add_source(&self, name: &str, confirmed_seq: u64) {
        self.state.lock().unwrap().sources.insert(
            name.to_string(),
            SourceState {
                base_seq: confirmed_seq,
                current: SourcePosition {
                    epoch: 0,
                    seq: confirmed_seq,
                    term: self.term,
                },
            },
        );
    }

    /// Publishes [`FeedOptions::history`] first, once every source is added, when it ends
    /// exactly where each source's capture starts (else nothing: the history is not what
    /// this capture continues). Every source it holds records of then counts as streamable
    /// from its first record there. Returns how many batches were published.
    pub(crate) fn seed_history(&self) -> usize {
        let Some(history) = self.options.history.clone() else {
            return 0;
        };
        if history.is_empty() {
            return 0;
        }
        let (last, first) = (history.last_seqs(), history.first_seqs());
        {
            let s = self.state.lock().unwrap();
            let continues = last
                .iter()
                .all(|(name, seq)| s.sources.get(name).is_some_and(|src| src.base_seq == *seq));
            if !continues || s.next_seq != self.first_seq {
                return 0;
            }
        }
        for b in &history.batches {
            self.publish(
                b.sources.clone(),
                b.mariadb.clone(),
                b.contents.clone(),
                None,
            );
        }
        let mut s = self.state.lock().unwrap();
        if s.window.len() != history.len() {
            // A batch did not fit in the window: keep what publishing decided.
            return 0;
        }
        for (name, seq) in first {
            if let Some(src) = s.sources.get_mut(&name) {
                src.base_seq = src.base_seq.min(seq.saturating_sub(1));
            }
        }
        history.len()
    }

    /// The position covering everything published so far.
    pub(crate) fn last_position(&self) -> Position {
        Position {
            term: self.term,
            seq: self.state.lock().unwrap().next_seq - 1,
        }
    }

    /// Publishes one batch (or, when `too_large` says why it cannot be streamed, starts the
    /// window over after it). Called by the worker's shipper only, one batch at a time.
    pub(crate) fn publish(
        &self,
        sources: BTreeMap<String, Vec<Record>>,
        mariadb: batch::MariaDbRecords,
        contents: BTreeMap<String, Vec<u8>>,
        too_large: Option<String>,
    ) {
        if sources.is_empty() && mariadb.is_empty() {
            return;
        }
        let spans = batch::spans(&sources, &mariadb);
        let (seq, after) = {
            let s = self.state.lock().unwrap();
            (s.next_seq, s.last_publish)
        };
        let now = OffsetDateTime::now_utc();
        // Encoded outside the lock (a batch can be large); only this thread publishes.
        let bytes = match too_large {
            Some(_) => None,
            None => Some(batch::encode(seq, after, now, sources, mariadb, contents)),
        };
        let bytes = bytes.filter(|b| b.len() as u64 <= self.options.max_batch_bytes);
        let mut s = self.state.lock().unwrap();
        s.next_seq = seq + 1;
        s.last_publish = now;
        for (name, span) in &spans {
            if let Some(src) = s.sources.get_mut(name) {
                src.current = SourcePosition {
                    epoch: span.last_epoch,
                    seq: span.last_seq,
                    term: self.term,
                };
            }
        }
        match bytes {
            None => {
                // Nobody can be sent this batch: whoever needs it restores from the vault.
                s.window.clear();
                s.window_bytes = 0;
                s.window_start = seq + 1;
                s.resets += 1;
                for src in s.sources.values_mut() {
                    src.base_seq = src.base_seq.max(src.current.seq);
                }
            }
            Some(bytes) => {
                let hash = *blake3::hash(&bytes).as_bytes();
                s.window_bytes += bytes.len() as u64;
                s.window.push_back(Arc::new(FeedBatch {
                    position: Position {
                        term: self.term,
                        seq,
                    },
                    bytes,
                    hash,
                    spans,
                    published_at: Instant::now(),
                }));
                while s.window.len() > 1
                    && (s.window.len() > self.options.window_batches
                        || s.window_bytes > self.options.window_bytes)
                {
                    let old = s.window.pop_front().expect("non-empty");
                    s.window_bytes -= old.bytes.len() as u64;
                    s.window_start += 1;
                    for (name, span) in &old.spans {
                        if let Some(src) = s.sources.get_mut(name) {
                            src.base_seq = src.base_seq.max(span.last_seq);
                        }
                    }
                }
            }
        }
        drop(s);
        self.published.send_replace(seq);
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Where a standby holding `held` starts.
    pub(crate) fn plan_start(&self, held: &BTreeMap<String, SourcePosition>) -> StartPlan {
        let s = self.state.lock().unwrap();
        plan_start(&s, self.term, held)
    }

    /// The batches after `cursor` a sender should send next (at most `max`).
    pub(crate) fn next_after(&self, cursor: u64, max: usize) -> Next {
        let s = self.state.lock().unwrap();
        let want = cursor + 1;
        if want < s.window_start {
            return Next::Gone;
        }
        let from = (want - s.window_start) as usize;
        if from >= s.window.len() {
            return Next::Wait;
        }
        Next::Batches(s.window.iter().skip(from).take(max).cloned().collect())
    }

    /// Bytes and age of what follows `acked` in the window: `(batches, bytes, age of the
    /// oldest)`.
    pub(crate) fn lag_after(&self, acked: u64) -> (u64, u64, Duration) {
        let s = self.state.lock().unwrap();
        let batches = (s.next_seq - 1).saturating_sub(acked);
        let skip = (acked + 1).saturating_sub(s.window_start) as usize;
        let mut bytes = 0;
        let mut oldest = None;
        for b in s.window.iter().skip(skip) {
            bytes += b.bytes.len() as u64;
            oldest.get_or_insert(b.published_at);
        }
        (
            batches,
            bytes,
            oldest.map_or(Duration::ZERO, |t| t.elapsed()),
        )
    }

    /// The sources and their names, for checking a standby's.
    pub(crate) fn status(&self) -> FeedStatus {
        let s = self.state.lock().unwrap();
        FeedStatus {
            term: self.term,
            last_position: Position {
                term: self.term,
                seq: s.next_seq - 1,
            },
            oldest_in_window: s.window.front().map(|b| b.position),
            window_batches: s.window.len(),
            window_bytes: s.window_bytes,
            resets: s.resets,
        }
    }

    /// Ends every barrier waiting now or later with "stopped".
    pub(crate) fn barrier_stopped(&self) {
        self.barrier.done.send_replace(BarrierDone {
            generation: u64::MAX,
            result: Err("the timeline worker stopped".into()),
        });
    }
}

/// The decision of [`FeedInner::plan_start`], on plain values.
fn plan_start(s: &FeedState, term: u64, held: &BTreeMap<String, SourcePosition>) -> StartPlan {
    let mine: Vec<&String> = s.sources.keys().collect();
    let theirs: Vec<&String> = held.keys().collect();
    if mine != theirs {
        return StartPlan::Refuse(
            RefusalCode::SourcesDiffer,
            format!(
                "this primary captures {mine:?} and the standby holds {theirs:?}; give both the same [state] in lifeboat.toml"
            ),
        );
    }
    for (name, src) in &s.sources {
        let p = held[name];
        if p.seq < src.base_seq {
            return StartPlan::Resync(format!(
                "{name}: the standby holds changes up to seq {} and the primary's window starts after seq {}",
                p.seq, src.base_seq
            ));
        }
        if src.current.epoch != 0 && p.epoch > src.current.epoch {
            return StartPlan::Refuse(
                RefusalCode::Other,
                format!(
                    "{name}: the standby holds changes of capture session {} made after this primary's session {}; this primary may be stale",
                    p.epoch, src.current.epoch
                ),
            );
        }
    }
    // The first batch holding anything the standby lacks: a record past what it holds, or
    // one of a later capture session than what it holds (a re-issued history it must see).
    let start = s
        .window
        .iter()
        .position(|b| {
            b.spans.iter().any(|(name, span)| {
                let p = held[name];
                span.last_seq > p.seq || span.max_epoch > p.epoch
            })
        })
        .unwrap_or(s.window.len());
    let next_seq = s.window_start + start as u64;
    StartPlan::Serve {
        next_seq,
        credited: Position {
            term,
            seq: next_seq - 1,
        },
    }
}

impl ChangeFeed {
    /// This primary's term.
    pub fn term(&self) -> u64 {
        self.inner.term
    }

    /// The position covering every batch published so far.
    pub fn last_position(&self) -> Position {
        self.inner.last_position()
    }

    /// Where the feed stands.
    pub fn status(&self) -> FeedStatus {
        self.inner.status()
    }

    /// Makes capture read everything committed so far (an immediate poll of every
    /// database; for data dirs, the file events already delivered) and returns the
    /// position that covers it. Barriers asked for while a poll runs share the next one.
    pub async fn barrier(&self) -> Result<Position> {
        let b = &self.inner.barrier;
        let mut done = b.done.subscribe();
        // A poll that starts after this increment covers every commit made before the call.
        let generation = b.requested.fetch_add(1, Ordering::SeqCst) + 1;
        b.wake.notify_one();
        loop {
            {
                let d = done.borrow_and_update();
                if d.generation >= generation {
                    return d
                        .result
                        .clone()
                        .map_err(|message| TimelineError::Barrier { message });
                }
            }
            done.changed().await.map_err(|_| TimelineError::Stopped)?;
        }
    }
}

#[cfg(test)]
mod tests;
