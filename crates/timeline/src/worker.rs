//! [`TimelineWorker`]: the async face of continuous capture for one site. It owns the
//! captures (on blocking threads), ships a segment every `segment_interval`, checkpoints
//! periodically, and reports through [`TimelineStatus`] and [`TimelineEvent`]s. It never
//! prints.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_vault::Repository;
use time::OffsetDateTime;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::checkpoint;
use crate::error::{Result, TimelineError};
use crate::replication::feed::FeedInner;
use crate::replication::{ChangeFeed, Position};
use crate::shipper::Shipper;
use crate::types::{CheckpointInfo, SiteSources, TimelineEvent, TimelineStatus, WorkerOptions};

/// Continuous capture of one site into the vault.
pub struct TimelineWorker {
    shipper: Arc<Mutex<Shipper>>,
    status: Arc<Mutex<TimelineStatus>>,
    events: broadcast::Sender<TimelineEvent>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    /// The compaction running in the background, if any (shared with the loop).
    compaction: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// The change feed to standbys and the task serving its barriers, when streaming.
    feed: Option<(Arc<FeedInner>, JoinHandle<()>)>,
    /// The shipper's flag: set, nothing more goes to the vault ([`TimelineWorker::halt`]).
    halted: Arc<std::sync::atomic::AtomicBool>,
}

/// Records a failure in the status (repeats of the same failure are one event) and
/// announces it.
fn report_error(
    status: &Mutex<TimelineStatus>,
    events: &broadcast::Sender<TimelineEvent>,
    message: String,
) {
    {
        let mut s = status.lock().unwrap();
        if s.last_error.as_ref() != Some(&message) {
            if s.recent_events.len() >= crate::types::RECENT_EVENTS {
                s.recent_events.remove(0);
            }
            s.recent_events.push((
                OffsetDateTime::now_utc(),
                TimelineEvent::Error {
                    message: message.clone(),
                },
            ));
        }
        s.last_error = Some(message.clone());
    }
    let _ = events.send(TimelineEvent::Error { message });
}

/// Whether a segment besides the newest may still wait for compaction (a quiet site does
/// not even take the vault's lock).
fn compaction_may_help(s: &TimelineStatus) -> bool {
    let through = s
        .last_compaction
        .as_ref()
        .and_then(|r| r.compacted_through)
        .unwrap_or(0);
    s.last_segment_seq.is_some_and(|last| last > through + 1)
}

/// Starts a compaction in the background unless one still runs. Its failures are
/// reported as errors and retried at the next interval; they never stop the worker.
fn start_compaction(
    repo: &Arc<Repository>,
    options: &crate::types::WorkerOptions,
    running: &Mutex<Option<JoinHandle<()>>>,
    status: &Arc<Mutex<TimelineStatus>>,
    events: &broadcast::Sender<TimelineEvent>,
) {
    let mut running = running.lock().unwrap();
    if running.as_ref().is_some_and(|t| !t.is_finished()) {
        return;
    }
    let opts = crate::compact::CompactOptions {
        older_than: options.compact_older_than,
        ..Default::default()
    };
    let every = options.compact_interval;
    let (repo, st, ev) = (repo.clone(), status.clone(), events.clone());
    *running = Some(tokio::spawn(async move {
        match crate::compact::compact(&repo, &opts).await {
            Ok(report) => st.lock().unwrap().last_compaction = Some(report),
            Err(e) => report_error(
                &st,
                &ev,
                format!("compacting old segments failed (retried in {every:?}): {e}"),
            ),
        }
    }));
}

async fn blocking<T: Send + 'static>(
    shipper: &Arc<Mutex<Shipper>>,
    f: impl FnOnce(&mut Shipper) -> Result<T> + Send + 'static,
) -> Result<T> {
    let shipper = shipper.clone();
    tokio::task::spawn_blocking(move || f(&mut shipper.lock().unwrap()))
        .await
        .map_err(|_| TimelineError::Stopped)?
}

/// One pass of the loop: poll, and ship / checkpoint when due.
fn tick(s: &mut Shipper) -> Result<()> {
    s.catch_up_if_due();
    s.poll()?;
    if s.checkpoint_due() {
        checkpoint::take(s)?;
        return s.checkpoint_wals();
    }
    if s.last_ship.elapsed() >= s.options.segment_interval {
        let shipped = s.ship()?;
        if shipped.is_some() {
            s.checkpoint_wals()?;
        }
    }
    Ok(())
}

/// Serves barriers: each round polls every capture once, under the shipper's lock, and
/// answers every barrier asked for before the round began. A barrier asked for during a
/// round waits for the next one (the round's poll may have read the log before its commit).
async fn serve_barriers(shipper: Arc<Mutex<Shipper>>, feed: Arc<FeedInner>) {
    loop {
        feed.barrier.wake.notified().await;
        let generation = feed
            .barrier
            .requested
            .load(std::sync::atomic::Ordering::SeqCst);
        if generation <= feed.barrier.done.borrow().generation {
            continue;
        }
        let result = blocking(&shipper, |s| {
            s.poll_for_barrier()?;
            Ok(s.feed
                .as_ref()
                .map(|f| f.feed.last_position())
                .unwrap_or_default())
        })
        .await
        .map_err(|e| e.to_string());
        feed.barrier
            .done
            .send_replace(crate::replication::feed::BarrierDone { generation, result });
    }
}

impl TimelineWorker {
    /// Opens every capture, takes a first checkpoint (so the timeline starts with a full
    /// cut; while destinations refuse it, the background loop retries it and the status
    /// carries the error; with [`WorkerOptions::first_checkpoint_later`] the loop takes it
    /// first thing), and starts shipping in the background.
    pub async fn start(
        sources: SiteSources,
        options: WorkerOptions,
        repo: Arc<Repository>,
    ) -> Result<TimelineWorker> {
        if options.segment_interval.is_zero() || options.poll_interval.is_zero() {
            return Err(TimelineError::Invalid(
                "segment_interval and poll_interval must be above zero".into(),
            ));
        }
        let status = Arc::new(Mutex::new(TimelineStatus::default()));
        let (events, _) = broadcast::channel(256);
        let handle = tokio::runtime::Handle::current();
        let (st, ev) = (status.clone(), events.clone());
        let feed = options.feed.clone().map(FeedInner::new).transpose()?;
        let feed_for_shipper = feed.clone();
        let shipper = tokio::task::spawn_blocking(move || -> Result<Shipper> {
            let later = options.first_checkpoint_later;
            let mut s = Shipper::open(&sources, options, repo, handle, st, ev, feed_for_shipper)?;
            // The loop's first pass takes it (`checkpoint_needed` is set), before any shipping.
            if later {
                return Ok(s);
            }
            // A failure here (destinations down) is retried by the loop; capture runs.
            if let Err(e) = checkpoint::take(&mut s) {
                let message = format!("the first checkpoint failed, retrying: {e}");
                s.status.lock().unwrap().last_error = Some(message.clone());
                s.emit(TimelineEvent::Error { message });
            }
            Ok(s)
        })
        .await
        .map_err(|_| TimelineError::Stopped)??;
        let poll_interval = shipper.options.poll_interval;
        let options = shipper.options.clone();
        let repo = shipper.repo.clone();
        let halted = shipper.halted.clone();
        let shipper = Arc::new(Mutex::new(shipper));
        let (stop, mut stopped) = watch::channel(false);
        let compaction: Arc<Mutex<Option<JoinHandle<()>>>> = Arc::default();
        let (sh, st, ev, co) = (
            shipper.clone(),
            status.clone(),
            events.clone(),
            compaction.clone(),
        );
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(poll_interval);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_compaction = Instant::now();
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = stopped.changed() => break,
                }
                if let Err(e) = blocking(&sh, tick).await {
                    report_error(&st, &ev, e.to_string());
                }
                if !options.compact_interval.is_zero()
                    && last_compaction.elapsed() >= options.compact_interval
                    && compaction_may_help(&st.lock().unwrap())
                {
                    last_compaction = Instant::now();
                    start_compaction(&repo, &options, &co, &st, &ev);
                }
            }
        });
        let feed = feed.map(|f| {
            let runner = tokio::spawn(serve_barriers(shipper.clone(), f.clone()));
            (f, runner)
        });
        Ok(TimelineWorker {
            shipper,
            status,
            events,
            stop,
            task: Some(task),
            compaction,
            feed,
            halted,
        })
    }

    /// The change feed to standbys, when [`WorkerOptions::feed`] was given.
    pub fn feed(&self) -> Option<ChangeFeed> {
        self.feed.as_ref().map(|(inner, _)| ChangeFeed {
            inner: inner.clone(),
        })
    }

    /// Makes capture read everything committed so far (an immediate poll of every database;
    /// for data dirs, the file events already delivered) and returns the position of the
    /// change feed that covers it. Concurrent barriers share one poll. Needs a feed.
    pub async fn barrier(&self) -> Result<Position> {
        match self.feed() {
            Some(feed) => feed.barrier().await,
            None => Err(TimelineError::Invalid(
                "barrier needs the change feed (WorkerOptions::feed)".into(),
            )),
        }
    }

    /// Where the worker stands now.
    pub fn status(&self) -> TimelineStatus {
        let mut s = self.status.lock().unwrap().clone();
        s.lag = s.oldest_unshipped.map_or(Duration::ZERO, |t| {
            (OffsetDateTime::now_utc() - t)
                .try_into()
                .unwrap_or_default()
        });
        s
    }

    /// Events from now on (continuity lost, checkpoints, segments, errors).
    pub fn subscribe(&self) -> broadcast::Receiver<TimelineEvent> {
        self.events.subscribe()
    }

    /// Polls every capture and ships what is new right away. Returns the seq of the segment
    /// stored, or `None` when nothing had changed. When it returns, every change made
    /// before the call is durable.
    pub async fn ship_now(&self) -> Result<Option<u64>> {
        blocking(&self.shipper, |s| {
            s.poll()?;
            let seq = s.ship()?;
            if seq.is_some() {
                s.checkpoint_wals()?;
            }
            Ok(seq)
        })
        .await
    }

    /// Takes a checkpoint now.
    pub async fn checkpoint_now(&self) -> Result<CheckpointInfo> {
        blocking(&self.shipper, checkpoint::take).await
    }

    /// Stops the background loop without writing anything more to the vault, not even the
    /// segment of a pass under way (only a write already sent when this is called may still
    /// land): for a primary that was fenced, whose timeline a newer term now writes.
    /// Whoever holds the worker drops it afterwards.
    pub fn halt(&self) {
        self.halted.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.stop.send(true);
    }

    /// Stops the background loop after shipping what is pending (retrying for up to
    /// `deadline` while destinations refuse it).
    pub async fn stop(mut self, deadline: Duration) -> Result<()> {
        let _ = self.stop.send(true);
        if let Some((feed, runner)) = self.feed.take() {
            runner.abort();
            let _ = runner.await;
            feed.barrier_stopped();
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        // A compaction under way finishes (it holds the vault's lock until it does).
        let running = self.compaction.lock().unwrap().take();
        if let Some(task) = running {
            let _ = task.await;
        }
        let until = Instant::now() + deadline;
        loop {
            match self.ship_now().await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= until => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

impl Drop for TimelineWorker {
    /// Stops the loop at once; a compaction under way is left to finish on its own (it
    /// holds the vault's lock until it does).
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some((feed, runner)) = self.feed.take() {
            runner.abort();
            feed.barrier_stopped();
        }
    }
}
