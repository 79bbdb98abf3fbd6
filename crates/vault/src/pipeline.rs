//! The write pipeline behind a snapshot: new blobs are sealed (zstd + XChaCha20-Poly1305) on
//! worker threads, gathered into pack files of a few MiB by a packer thread, and uploaded to
//! every destination concurrently. Channels are bounded, so memory stays bounded however much
//! is written. Nothing is indexed until its pack is durably stored on a quorum.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded};

use crate::crypto::{Id, Keys, Packer};
use crate::destinations::Destinations;
use crate::error::{Error, Result};
use crate::format::{BlobKind, IndexedPack, PackedBlob, encode_pack_trailer};
use crate::repo::pack_key;

/// Target size of a pack file.
pub const PACK_TARGET: usize = 8 << 20;
/// Room past [`PACK_TARGET`] for the blob that fills a pack: the largest chunk (8 MiB) sealed.
const PACK_HEADROOM: usize = (8 << 20) + 4096;
/// Uploads in flight at once.
const UPLOADS_IN_FLIGHT: usize = 4;

struct Job {
    id: Id,
    kind: BlobKind,
    data: Vec<u8>,
}

struct Sealed {
    id: Id,
    kind: BlobKind,
    raw_length: u32,
    bytes: Vec<u8>,
}

/// Counters shared with the snapshot summary.
#[derive(Default)]
pub struct PipelineStats {
    pub new_blobs: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub packs: AtomicU64,
}

/// A running pipeline. Send blobs with [`Pipeline::store`], then [`Pipeline::finish`].
pub struct Pipeline {
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    packer: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    pub stats: Arc<PipelineStats>,
}

struct Shared {
    error: Mutex<Option<Error>>,
    done: Mutex<Vec<IndexedPack>>,
    uploads: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Pipeline {
    /// Starts sealing workers and the packer. `handle` runs the uploads.
    pub fn start(keys: Keys, dests: Arc<Destinations>, handle: tokio::runtime::Handle) -> Pipeline {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let (job_tx, job_rx) = bounded::<Job>(threads * 2);
        let (sealed_tx, sealed_rx) = bounded::<Sealed>(threads * 2);
        let stats = Arc::new(PipelineStats::default());
        let shared = Arc::new(Shared {
            error: Mutex::new(None),
            done: Mutex::new(Vec::new()),
            uploads: Mutex::new(Vec::new()),
        });
        let workers = (0..threads)
            .map(|_| {
                let rx = job_rx.clone();
                let tx = sealed_tx.clone();
                let keys = keys.clone();
                std::thread::spawn(move || {
                    let mut packer = Packer::default();
                    for job in rx {
                        let bytes = keys.pack_payload_with(&job.data, b"", &mut packer);
                        let raw_length = job.data.len() as u32;
                        if tx
                            .send(Sealed {
                                id: job.id,
                                kind: job.kind,
                                raw_length,
                                bytes,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                })
            })
            .collect();
        drop(sealed_tx);
        let packer = {
            let shared = shared.clone();
            let stats = stats.clone();
            std::thread::spawn(move || run_packer(sealed_rx, keys, dests, handle, shared, stats))
        };
        Pipeline {
            jobs: Some(job_tx),
            workers,
            packer: Some(packer),
            shared,
            stats,
        }
    }

    /// Queues a new blob (blocks while the pipeline is full). Fails fast if an upload failed.
    pub fn store(&self, id: Id, kind: BlobKind, data: Vec<u8>) -> Result<()> {
        self.check()?;
        self.stats.new_blobs.fetch_add(1, Ordering::Relaxed);
        self.jobs
            .as_ref()
            .expect("pipeline running")
            .send(Job { id, kind, data })
            .map_err(|_| {
                self.take_error()
                    .unwrap_or_else(|| Error::Corrupt("the write pipeline stopped".into()))
            })
    }

    fn take_error(&self) -> Option<Error> {
        self.shared.error.lock().unwrap().take()
    }

    fn check(&self) -> Result<()> {
        match self.take_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Packs durably stored so far, if at least `min` are waiting to be indexed.
    pub fn take_stored(&self, min: usize) -> Option<Vec<IndexedPack>> {
        let mut done = self.shared.done.lock().unwrap();
        (done.len() >= min).then(|| std::mem::take(&mut *done))
    }

    /// Flushes partial packs, waits for every upload, and returns the packs now durably
    /// stored (to be indexed by the caller).
    pub fn finish(mut self, handle: &tokio::runtime::Handle) -> Result<Vec<IndexedPack>> {
        drop(self.jobs.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(p) = self.packer.take() {
            let _ = p.join();
        }
        let uploads: Vec<_> = self.shared.uploads.lock().unwrap().drain(..).collect();
        for u in uploads {
            let _ = handle.block_on(u);
        }
        self.check()?;
        Ok(std::mem::take(&mut *self.shared.done.lock().unwrap()))
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        drop(self.jobs.take());
    }
}

/// Past this many bytes a pack is a backup's and gets room for a whole pack at once.
const SMALL_PACK: usize = 1 << 20;

/// A pack being filled. Empty until its first blob: most packs of a live site's timeline
/// hold a few KiB, and a buffer sized for a whole pack (16 MiB) per pack kind and per shipped
/// pack made every content snapshot (changed files, a checkpoint) allocate up to 64 MiB; with
/// transparent huge pages each touched 2 MiB of them became resident, and the allocator kept
/// them long after. Idle `lifeboat up` (bench/idle-rss.sh, release without LTO): 73.6 MiB RSS
/// before, 61.3 MiB with packs sized like this.
#[derive(Default)]
struct PackBuilder {
    buf: Vec<u8>,
    blobs: Vec<PackedBlob>,
}

impl PackBuilder {
    fn push(&mut self, bytes: &[u8]) {
        let needed = self.buf.len() + bytes.len();
        if needed > self.buf.capacity() {
            // A small pack grows as it fills. A large one gets room for a full pack in one
            // step: growing an 8 MiB buffer by doubling copied it several times per pack; now
            // at most the first MiB is copied once.
            let room = if needed > SMALL_PACK {
                PACK_TARGET + PACK_HEADROOM
            } else {
                needed.next_power_of_two().max(64 << 10)
            };
            self.buf.reserve_exact(room.max(needed) - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }
}

fn run_packer(
    rx: Receiver<Sealed>,
    keys: Keys,
    dests: Arc<Destinations>,
    handle: tokio::runtime::Handle,
    shared: Arc<Shared>,
    stats: Arc<PipelineStats>,
) {
    // Data and trees go to separate packs, so reading trees (listing, restore planning,
    // incremental backups) does not drag file data along.
    let mut data = PackBuilder::default();
    let mut trees = PackBuilder::default();
    let sem = Arc::new(tokio::sync::Semaphore::new(UPLOADS_IN_FLIGHT));
    let ship = |b: &mut PackBuilder| {
        if b.blobs.is_empty() {
            return;
        }
        let mut pack = std::mem::take(b);
        pack.buf
            .extend_from_slice(&encode_pack_trailer(&keys, &pack.blobs));
        let id = Id::of_object(&pack.buf);
        let size = pack.buf.len() as u64;
        stats.packs.fetch_add(1, Ordering::Relaxed);
        stats.stored_bytes.fetch_add(size, Ordering::Relaxed);
        let permit = handle
            .block_on(sem.clone().acquire_owned())
            .expect("semaphore open");
        let dests = dests.clone();
        let shared2 = shared.clone();
        let blobs = pack.blobs;
        let bytes = Bytes::from(pack.buf);
        let task = handle.spawn(async move {
            let r = dests.put(&pack_key(&id), bytes).await;
            drop(permit);
            match r {
                Ok(()) => shared2
                    .done
                    .lock()
                    .unwrap()
                    .push(IndexedPack { id, size, blobs }),
                Err(e) => {
                    shared2.error.lock().unwrap().get_or_insert(e);
                }
            }
        });
        shared.uploads.lock().unwrap().push(task);
    };
    for s in rx {
        let b = match s.kind {
            BlobKind::Data => &mut data,
            BlobKind::Tree => &mut trees,
        };
        b.blobs.push(PackedBlob {
            id: s.id,
            kind: s.kind,
            offset: b.buf.len() as u64,
            length: s.bytes.len() as u32,
            raw_length: s.raw_length,
        });
        b.push(&s.bytes);
        if b.buf.len() >= PACK_TARGET {
            ship(b);
        }
    }
    ship(&mut data);
    ship(&mut trees);
}
