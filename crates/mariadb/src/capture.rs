//! Continuous capture of every committed transaction from a MariaDB server's binary log,
//! through the replication protocol (the `mysql` crate's binlog stream, requested by GTID
//! like a MariaDB replica does: `@slave_connect_state`, capability 4).
//!
//! A reader thread holds the stream and hands whole transactions over, stamped with the time
//! they arrived; [`BinlogCapture::poll`] turns them into [`TransactionRecord`]s with
//! sequence numbers. The position only moves on [`BinlogCapture::confirm_durable`], so
//! after a kill -9 of the process running capture the next session hands out again (in a
//! new epoch) everything that was not confirmed: nothing is lost. After a disconnect (the
//! server restarted or was killed) the reader reconnects by itself from the last whole
//! transaction it received: nothing is received twice in one session either.
//!
//! Every transaction's GTID must follow the previous one of its domain by exactly one; a
//! jump is reported as [`MariaDbError::GtidGap`] (a step back, after `RESET MASTER`, as
//! [`MariaDbError::GtidWentBack`]) and capture hands out nothing more until
//! [`BinlogCapture::restart_from_base`]. It never skips silently.
//!
//! Capture never prints and never ships anything itself.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::binlog::{Assembler, Transaction, event_type};
use crate::error::{MariaDbError, Result, io_err};
use crate::gtid::{Gtid, GtidPos};
use crate::record::TransactionRecord;
use crate::server::{ServerSpec, connect_socket, quote};

/// Version of the position file.
pub const POSITION_FORMAT_VERSION: u32 = 1;

/// Where capture reads from.
#[derive(Debug, Clone)]
pub struct CaptureSource {
    /// The server's unix socket.
    pub socket: PathBuf,
    /// A user with the REPLICATION SLAVE privilege (Lifeboat uses the admin).
    pub user: String,
    /// Its password.
    pub password: String,
}

impl CaptureSource {
    /// Capture from a managed server, as its admin.
    pub fn from_spec(spec: &ServerSpec) -> Result<Self> {
        Ok(CaptureSource {
            socket: spec.socket(),
            user: "root".into(),
            password: spec.admin_password()?,
        })
    }
}

/// How capture behaves.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// `server_id` capture announces to the server (must differ from every server's and
    /// replica's; a second capture with the same id replaces the first's stream).
    pub replica_server_id: u32,
    /// The server sends a heartbeat this often when idle, so a dead connection is noticed.
    pub heartbeat: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Transactions received but not yet polled that the reader keeps before it waits.
    pub max_pending: usize,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            replica_server_id: 0x4C42_0001,
            heartbeat: Duration::from_secs(1),
            max_backoff: Duration::from_secs(2),
            max_pending: 10_000,
        }
    }
}

/// The durable position (`position.json` in the state dir).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPosition {
    /// Layout version ([`POSITION_FORMAT_VERSION`]).
    pub version: u32,
    /// Session that wrote it (a starting capture saves `epoch + 1` before handing out).
    pub epoch: u64,
    /// Last seq confirmed durable (0: none yet).
    pub seq: u64,
    /// GTID position just after that seq: where the stream resumes.
    pub gtid_pos: GtidPos,
}

/// What capture is doing, for `lifeboat status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureStatus {
    /// Whether the stream is connected now.
    pub connected: bool,
    /// The last problem with the stream (cleared when it reconnects).
    pub last_problem: Option<String>,
    /// Reconnections since the capture opened.
    pub reconnects: u64,
    /// Position after the last transaction handed out.
    pub handed_out: GtidPos,
    /// Position after the last transaction confirmed durable.
    pub confirmed: GtidPos,
    /// Last seq handed out.
    pub last_seq: u64,
    /// Session number.
    pub epoch: u64,
}

enum FromReader {
    Transaction(Transaction, OffsetDateTime, Arc<Vec<u8>>),
    Fatal(MariaDbError),
}

#[derive(Default)]
struct Shared {
    connected: bool,
    last_problem: Option<String>,
    reconnects: u64,
}

struct Reader {
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<Shared>>,
    rx: Receiver<FromReader>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    fn start(source: CaptureSource, from: GtidPos, opts: CaptureOptions) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, rx) = sync_channel(opts.max_pending);
        let thread = {
            let stop = stop.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("mariadb-capture".into())
                .spawn(move || read_forever(source, from, opts, stop, shared, tx))
                .expect("spawn the capture reader thread")
        };
        Reader {
            stop,
            shared,
            rx,
            thread: Some(thread),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // The thread notices within one heartbeat (it blocks in a read between events), or
        // at once when it is waiting to reconnect; it is not joined so that a close never
        // waits for a server that hangs.
        self.stop.store(true, Ordering::SeqCst);
        drop(self.thread.take());
    }
}

/// Continuous capture of one server's committed transactions. See the module docs.
pub struct BinlogCapture {
    state_dir: PathBuf,
    source: CaptureSource,
    opts: CaptureOptions,
    epoch: u64,
    confirmed: SavedPosition,
    /// Position after the last transaction handed out.
    handed_out: GtidPos,
    last_seq: u64,
    /// (seq, position after it) of records handed out and not yet confirmed.
    unconfirmed: VecDeque<(u64, GtidPos)>,
    reader: Reader,
    /// A fatal problem: reported on every poll until `restart_from_base`.
    stuck: Option<MariaDbError>,
    /// A connection for reading the server's position ([`BinlogCapture::catch_up`],
    /// [`BinlogCapture::watch_server`]).
    position_conn: Option<mysql::Conn>,
    /// When [`BinlogCapture::watch_server`] looks next.
    next_look: Instant,
    /// Records a failed [`BinlogCapture::catch_up`] had taken: the next poll returns them.
    held_back: Vec<TransactionRecord>,
}

impl std::fmt::Debug for BinlogCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinlogCapture")
            .field("state_dir", &self.state_dir)
            .field("epoch", &self.epoch)
            .field("last_seq", &self.last_seq)
            .field("handed_out", &self.handed_out.to_string())
            .finish_non_exhaustive()
    }
}

fn position_path(state_dir: &Path) -> PathBuf {
    state_dir.join("position.json")
}

/// Loads capture's saved position, `None` before the first capture.
pub fn load_position(state_dir: &Path) -> Result<Option<SavedPosition>> {
    let path = position_path(state_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path, "read")(e)),
    };
    let pos: SavedPosition =
        serde_json::from_slice(&bytes).map_err(|e| MariaDbError::BadPositionFile {
            path: path.clone(),
            problem: e.to_string(),
        })?;
    if pos.version != POSITION_FORMAT_VERSION {
        return Err(MariaDbError::BadPositionFile {
            path,
            problem: format!("unknown version {}", pos.version),
        });
    }
    Ok(Some(pos))
}

/// Saves capture's position durably (a promoted standby seeds it: capture continues after
/// the last transaction its copy holds).
pub fn save_position(state_dir: &Path, pos: &SavedPosition) -> Result<()> {
    std::fs::create_dir_all(state_dir).map_err(io_err(state_dir, "create"))?;
    let bytes = serde_json::to_vec_pretty(pos).expect("position is plain data");
    crate::durable::write_atomically(&position_path(state_dir), &bytes)
}

impl BinlogCapture {
    /// Opens capture with its state in `state_dir` (never inside the data dir). With a saved
    /// position it continues from there (a new epoch, saved before anything is handed
    /// out); without one it starts after `start_after` (the GTID position of the base backup
    /// the timeline begins with; empty: from the first transaction of the server's binlog).
    pub fn open(
        state_dir: &Path,
        source: CaptureSource,
        start_after: &GtidPos,
        opts: CaptureOptions,
    ) -> Result<BinlogCapture> {
        std::fs::create_dir_all(state_dir).map_err(io_err(state_dir, "create"))?;
        let saved = load_position(state_dir)?.unwrap_or(SavedPosition {
            version: POSITION_FORMAT_VERSION,
            epoch: 0,
            seq: 0,
            gtid_pos: start_after.clone(),
        });
        let confirmed = SavedPosition {
            epoch: saved.epoch + 1,
            ..saved
        };
        // The session number is durable before anything of this session is handed out, so
        // it is never reused.
        save_position(state_dir, &confirmed)?;
        let reader = Reader::start(source.clone(), confirmed.gtid_pos.clone(), opts.clone());
        Ok(BinlogCapture {
            state_dir: state_dir.to_path_buf(),
            source,
            opts,
            epoch: confirmed.epoch,
            handed_out: confirmed.gtid_pos.clone(),
            last_seq: confirmed.seq,
            confirmed,
            unconfirmed: VecDeque::new(),
            reader,
            stuck: None,
            position_conn: None,
            next_look: Instant::now(),
            held_back: Vec::new(),
        })
    }

    /// The transactions received since the last poll, in commit order (never blocks).
    pub fn poll(&mut self) -> Result<Vec<TransactionRecord>> {
        self.poll_wait(Duration::ZERO)
    }

    /// Like [`BinlogCapture::poll`], but waits up to `max_wait` for at least one
    /// transaction.
    pub fn poll_wait(&mut self, max_wait: Duration) -> Result<Vec<TransactionRecord>> {
        if !self.held_back.is_empty() {
            return Ok(std::mem::take(&mut self.held_back));
        }
        if let Some(e) = &self.stuck {
            return Err(e.repeat());
        }
        let mut out = Vec::new();
        let deadline = Instant::now() + max_wait;
        loop {
            let msg = if out.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.reader.rx.recv_timeout(left) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        // Nothing waiting: the moment to compare with the server's position.
                        if let Err(e) = self.watch_server() {
                            self.stuck = Some(e.repeat());
                            return Err(e);
                        }
                        return Ok(out);
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(self.reader_gone("the reader thread ended"));
                    }
                }
            } else {
                match self.reader.rx.try_recv() {
                    Ok(m) => m,
                    Err(_) => return Ok(out),
                }
            };
            match msg {
                FromReader::Transaction(tx, received_at, format) => {
                    self.last_seq += 1;
                    self.handed_out.advance(tx.gtid);
                    self.unconfirmed
                        .push_back((self.last_seq, self.handed_out.clone()));
                    out.push(TransactionRecord {
                        epoch: self.epoch,
                        seq: self.last_seq,
                        gtid: tx.gtid,
                        server_time: i64::from(tx.server_time),
                        received_at,
                        format,
                        events: tx.events,
                    });
                }
                FromReader::Fatal(e) => {
                    self.stuck = Some(e.repeat());
                    if out.is_empty() {
                        return Err(e);
                    }
                    // Hand out what came before the problem; the next poll reports it.
                    return Ok(out);
                }
            }
        }
    }

    /// About once a heartbeat, compares what capture handed out with the server's own
    /// `gtid_binlog_pos` over a connection of its own: a domain behind capture's position
    /// means the server's sequence went back (`RESET MASTER` while the stream read the first
    /// binlog file: the stream then waits on the removed file and says nothing). That is an
    /// error that needs a new base. A server that cannot be reached is left to the reader,
    /// which reports it.
    ///
    /// Its limit: when, before the next look, the reset server writes more transactions
    /// than capture had, their GTIDs are those capture expects next and the stream may read
    /// them on as if nothing happened. A stream past the first file is ended by the server
    /// instead (`BinlogPurged`), and Lifeboat rotates the binlog at every checkpoint, so a
    /// site's capture is past the first file after its first checkpoint.
    fn watch_server(&mut self) -> Result<()> {
        if Instant::now() < self.next_look {
            return Ok(());
        }
        self.next_look = Instant::now() + self.opts.heartbeat;
        let Ok(server) = self.server_position() else {
            return Ok(());
        };
        for g in self.handed_out.iter() {
            if server.get(g.domain).is_none_or(|s| s.seq < g.seq) {
                return Err(MariaDbError::GtidWentBack {
                    domain: g.domain,
                    after: g.to_string(),
                    now: format!("is at binlog position '{server}'"),
                });
            }
        }
        Ok(())
    }

    /// Hands out every transaction the server has committed by the time of the call (its
    /// `@@gtid_binlog_pos` then), waiting up to `timeout` for the stream to deliver them:
    /// what a `durability = "sync"` barrier needs, since the stream may lag the commit.
    pub fn catch_up(&mut self, timeout: Duration) -> Result<Vec<TransactionRecord>> {
        let target = self.server_position()?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let covered = target.iter().all(|g| self.handed_out.contains(g));
            if covered {
                return Ok(out);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let got = if left.is_zero() {
                Err(MariaDbError::CaptureBehind {
                    target: target.to_string(),
                    have: self.handed_out.to_string(),
                    waited_ms: timeout.as_millis(),
                })
            } else {
                self.poll_wait(left.min(Duration::from_millis(50)))
            };
            match got {
                Ok(records) => out.extend(records),
                Err(e) => {
                    // Handed out (numbered) already: the next poll hands them out again
                    // rather than losing them with the error.
                    self.held_back = out;
                    return Err(e);
                }
            }
        }
    }

    /// The server's `@@gtid_binlog_pos`, over a connection kept for the purpose.
    fn server_position(&mut self) -> Result<GtidPos> {
        if self.position_conn.is_none() {
            self.position_conn = Some(crate::server::connect_socket(
                &self.source.socket,
                &self.source.user,
                &self.source.password,
                Some(Duration::from_secs(5)),
            )?);
        }
        let conn = self.position_conn.as_mut().expect("just set");
        let pos =
            crate::server::query_gtid_pos(conn, &self.source.socket, "@@GLOBAL.gtid_binlog_pos");
        if pos.is_err() {
            // Reconnect next time (the server may have restarted).
            self.position_conn = None;
        }
        pos
    }

    fn reader_gone(&mut self, why: &str) -> MariaDbError {
        self.stuck = Some(MariaDbError::ReaderGone(why.to_string()));
        MariaDbError::ReaderGone(why.to_string())
    }

    /// Records that every record up to `seq` is durable: the saved position moves there, and
    /// a restarted capture continues after it.
    pub fn confirm_durable(&mut self, seq: u64) -> Result<()> {
        let mut pos = None;
        while let Some((s, _)) = self.unconfirmed.front() {
            if *s > seq {
                break;
            }
            pos = self.unconfirmed.pop_front().map(|(_, p)| p);
        }
        let Some(gtid_pos) = pos else {
            return Ok(());
        };
        let saved = SavedPosition {
            version: POSITION_FORMAT_VERSION,
            epoch: self.epoch,
            seq: seq.min(self.last_seq),
            gtid_pos,
        };
        save_position(&self.state_dir, &saved)?;
        self.confirmed = saved;
        Ok(())
    }

    /// After a gap or purged binlogs: continue from `base_pos`, the GTID position of a base
    /// backup taken after the problem. Records not confirmed yet are dropped (they are older
    /// than the base); seqs continue.
    pub fn restart_from_base(&mut self, base_pos: &GtidPos) -> Result<()> {
        let saved = SavedPosition {
            version: POSITION_FORMAT_VERSION,
            epoch: self.epoch,
            seq: self.last_seq,
            gtid_pos: base_pos.clone(),
        };
        save_position(&self.state_dir, &saved)?;
        self.confirmed = saved;
        self.unconfirmed.clear();
        self.handed_out = base_pos.clone();
        self.stuck = None;
        self.held_back.clear();
        self.next_look = Instant::now();
        self.reader = Reader::start(self.source.clone(), base_pos.clone(), self.opts.clone());
        Ok(())
    }

    /// What capture is doing.
    pub fn status(&self) -> CaptureStatus {
        let shared = self.reader.shared.lock().expect("status lock");
        CaptureStatus {
            connected: shared.connected,
            last_problem: self
                .stuck
                .as_ref()
                .map(|e| e.to_string())
                .or_else(|| shared.last_problem.clone()),
            reconnects: shared.reconnects,
            handed_out: self.handed_out.clone(),
            confirmed: self.confirmed.gtid_pos.clone(),
            last_seq: self.last_seq,
            epoch: self.epoch,
        }
    }
}

/// MariaDB's "the binlog the replica asks for is gone" (ER_MASTER_FATAL_ERROR_READING_BINLOG).
const ER_MASTER_FATAL_ERROR_READING_BINLOG: u16 = 1236;

fn read_forever(
    source: CaptureSource,
    mut pos: GtidPos,
    opts: CaptureOptions,
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<Shared>>,
    tx: SyncSender<FromReader>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    while !stop.load(Ordering::SeqCst) {
        if !first {
            shared.lock().expect("status lock").reconnects += 1;
        }
        first = false;
        match stream_once(&source, &mut pos, &opts, &stop, &shared, &tx) {
            Ok(()) => return, // stopped or the receiver is gone
            Err(StreamEnd::Fatal(e)) => {
                let _ = tx.send(FromReader::Fatal(e));
                return;
            }
            Err(StreamEnd::Broken(why, received_any)) => {
                let mut s = shared.lock().expect("status lock");
                s.connected = false;
                s.last_problem = Some(
                    MariaDbError::StreamBroken {
                        socket: source.socket.clone(),
                        why,
                        resume_from: pos.to_string(),
                    }
                    .to_string(),
                );
                drop(s);
                if received_any {
                    backoff = Duration::from_millis(50);
                }
            }
        }
        // Wait before reconnecting, waking early to stop.
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        backoff = (backoff * 2).min(opts.max_backoff);
    }
}

enum StreamEnd {
    Fatal(MariaDbError),
    /// Why, and whether anything was received before it broke.
    Broken(String, bool),
}

fn raw_event(ev: &mysql::binlog::events::Event) -> Vec<u8> {
    let h = ev.header();
    let mut v = Vec::with_capacity(h.event_size() as usize);
    v.extend_from_slice(&h.timestamp().to_le_bytes());
    v.push(h.event_type_raw());
    v.extend_from_slice(&h.server_id().to_le_bytes());
    v.extend_from_slice(&h.event_size().to_le_bytes());
    v.extend_from_slice(&h.log_pos().to_le_bytes());
    v.extend_from_slice(&h.flags_raw().to_le_bytes());
    v.extend_from_slice(ev.data());
    if h.event_type_raw() == event_type::FORMAT_DESCRIPTION
        && let Ok(Some(alg)) = ev.footer().get_checksum_alg()
    {
        v.push(alg as u8);
    }
    if let Some(sum) = ev.checksum() {
        v.extend_from_slice(&sum);
    }
    v
}

fn stream_once(
    source: &CaptureSource,
    pos: &mut GtidPos,
    opts: &CaptureOptions,
    stop: &AtomicBool,
    shared: &Mutex<Shared>,
    tx: &SyncSender<FromReader>,
) -> Result<(), StreamEnd> {
    let broken = |e: &dyn std::fmt::Display, any: bool| StreamEnd::Broken(e.to_string(), any);
    let read_timeout = opts.heartbeat * 5;
    let mut conn = connect_socket(
        &source.socket,
        &source.user,
        &source.password,
        Some(read_timeout),
    )
    .map_err(|e| broken(&e, false))?;
    let setup = [
        // Ask by GTID, like a MariaDB replica (capability 4 = MARIA_SLAVE_CAPABILITY_GTID).
        "SET @mariadb_slave_capability = 4".to_string(),
        format!("SET @slave_connect_state = {}", quote(&pos.to_string())),
        "SET @slave_gtid_strict_mode = 1".to_string(),
        "SET @slave_gtid_ignore_duplicates = 0".to_string(),
        format!(
            "SET @master_heartbeat_period = {}",
            opts.heartbeat.as_nanos()
        ),
    ];
    for sql in setup {
        conn.query_drop(&sql).map_err(|e| broken(&e, false))?;
    }
    let request = mysql::BinlogRequest::new(opts.replica_server_id);
    let stream = conn
        .get_binlog_stream(request)
        .map_err(|e| broken(&e, false))?;
    let mut asm = Assembler::new();
    let mut format: Option<Arc<Vec<u8>>> = None;
    let mut received_any = false;
    let mut marked_connected = false;
    for ev in stream {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let ev = match ev {
            Ok(ev) => ev,
            Err(mysql::Error::MySqlError(e)) if e.code == ER_MASTER_FATAL_ERROR_READING_BINLOG => {
                return Err(StreamEnd::Fatal(MariaDbError::BinlogPurged {
                    position: pos.to_string(),
                    server_says: e.message,
                }));
            }
            Err(e) => return Err(broken(&e, received_any)),
        };
        if !marked_connected {
            let mut s = shared.lock().expect("status lock");
            s.connected = true;
            s.last_problem = None;
            marked_connected = true;
        }
        let raw = raw_event(&ev);
        let done = match asm.push(&raw) {
            Ok(d) => d,
            Err(e) => return Err(StreamEnd::Fatal(e)),
        };
        if raw[4] == event_type::FORMAT_DESCRIPTION {
            let f = asm.format_description().expect("just set").to_vec();
            if format.as_deref() != Some(&f) {
                format = Some(Arc::new(f));
            }
        }
        let Some(t) = done else { continue };
        let received_at = OffsetDateTime::now_utc();
        if let Err(e) = check_follows(pos, t.gtid) {
            return Err(StreamEnd::Fatal(e));
        }
        pos.advance(t.gtid);
        received_any = true;
        let f = format
            .clone()
            .expect("a transaction comes after a format description");
        let mut msg = FromReader::Transaction(t, received_at, f);
        // Wait for room, but keep noticing a stop.
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) => {
                    if stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Disconnected(_)) => return Ok(()),
            }
        }
    }
    Err(broken(&"the server closed the stream", received_any))
}

/// A transaction must be the next one of its domain (the domain's first is seq 1 when the
/// position does not know the domain).
///
/// A GTID the position already contains is an error too, never skipped: resuming by GTID,
/// the server sends only what follows the position, so it means the server's sequence went
/// back (`RESET MASTER`), and what it sends now is new history under old numbers.
fn check_follows(pos: &GtidPos, gtid: Gtid) -> Result<()> {
    let expected = pos.get(gtid.domain).map_or(1, |g| g.seq + 1);
    if gtid.seq == expected {
        return Ok(());
    }
    if let Some(last) = pos.get(gtid.domain).filter(|_| pos.contains(gtid)) {
        return Err(MariaDbError::GtidWentBack {
            domain: gtid.domain,
            after: last.to_string(),
            now: format!("sends {gtid}"),
        });
    }
    Err(MariaDbError::GtidGap {
        domain: gtid.domain,
        after: pos
            .get(gtid.domain)
            .map_or_else(|| "the start of the domain".to_string(), |g| g.to_string()),
        got: gtid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_next_gtid_of_a_domain_follows() {
        let pos: GtidPos = "0-1-5".parse().unwrap();
        assert!(check_follows(&pos, "0-1-6".parse().unwrap()).is_ok());
        assert!(check_follows(&pos, "0-2-6".parse().unwrap()).is_ok());
        assert!(matches!(
            check_follows(&pos, "0-1-8".parse().unwrap()),
            Err(MariaDbError::GtidGap { .. })
        ));
        assert!(matches!(
            check_follows(&pos, "0-1-1".parse().unwrap()),
            Err(MariaDbError::GtidWentBack { .. })
        ));
        assert!(check_follows(&pos, "1-1-1".parse().unwrap()).is_ok());
        assert!(check_follows(&pos, "1-1-2".parse().unwrap()).is_err());
    }
}
