//! One connection of a replica to its primary: the hello and the term check, then batches
//! in (reassembled, decoded, applied in groups on a blocking thread), acknowledgements and
//! heartbeat confirmations out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lifeboat_core::cluster::{FailsafeRequest, Term};
use tokio::io::{BufReader, BufWriter};

use crate::replication::sealed::{SealedReader, SealedWriter, initiate};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::super::batch::{self, DecodedBatch};
use super::super::error::StreamError;
use super::super::wire::{
    BatchAssembler, Confirmation, Frame, Hello, Message, Refusal, RefusalCode,
};
use super::apply::Outcome;
use super::{Ended, ReplicaState, Shared, SharedApplier, blocking};

type Reader = SealedReader<BufReader<tokio::net::tcp::OwnedReadHalf>>;
type Writer = SealedWriter<BufWriter<tokio::net::tcp::OwnedWriteHalf>>;

async fn send(w: &mut Writer, frame: Frame) -> std::io::Result<()> {
    w.write_frame(&frame).await?;
    w.flush().await
}

/// One connection to the primary: hello, then batches in, acks and confirmations out.
pub(super) async fn follow(
    shared: &Arc<Shared>,
    applier: &SharedApplier,
    addr: SocketAddr,
) -> Ended {
    let cfg = &shared.config;
    let opts = &cfg.options;
    let peer = addr.to_string();
    let retry = |why: String| Ended::Retry {
        why,
        streamed: false,
    };
    let stream = match tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return retry(format!("could not connect to the primary at {peer}: {e}")),
        Err(_) => return retry(format!("connecting to the primary at {peer} timed out")),
    };
    let _ = stream.set_nodelay(true);
    let mut stream = stream;
    let transport = match initiate(&mut stream, &cfg.key, opts.connect_timeout).await {
        Ok(t) => t,
        Err(e) => return retry(format!("the stream handshake with {peer} failed: {e}")),
    };
    let (rd, wr) = stream.into_split();
    let mut rd = SealedReader::new(BufReader::with_capacity(1 << 16, rd), transport.clone());
    let mut wr = SealedWriter::new(BufWriter::new(wr), transport);

    // The term this standby must not go below, made durable first.
    let known = shared.known_term.load(Ordering::SeqCst);
    let file = match blocking(applier, move |a| {
        a.note_term(known)?;
        Ok(a.file.clone())
    })
    .await
    {
        Ok(f) => f,
        Err(e) => return retry(e.to_string()),
    };
    let highest = file.highest_term;
    shared.status.lock().unwrap().highest_term = highest;
    let hello = Hello {
        site: cfg.site.clone(),
        node: cfg.node.clone(),
        zone: cfg.zone.clone(),
        applied: file.applied,
        sources: file.sources.clone(),
        max_batch_bytes: opts.max_batch_bytes,
    };
    if let Err(e) = send(
        &mut wr,
        Frame {
            term: highest,
            message: Message::Hello(hello),
        },
    )
    .await
    {
        return retry(format!("could not send hello to {peer}: {e}"));
    }
    let first = match tokio::time::timeout(opts.primary_timeout, rd.read_frame()).await {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return retry(format!("{peer} closed the connection")),
        Ok(Err(e)) => return retry(format!("reading from {peer} failed: {e}")),
        Err(_) => {
            return retry(format!(
                "{peer} did not answer hello in {:?}",
                opts.primary_timeout
            ));
        }
    };
    // Stale terms are refused before anything they say is acted on.
    if first.term < highest {
        let e = StreamError::StaleTerm {
            peer: peer.clone(),
            term: first.term,
            highest,
        };
        let refusal = Refusal {
            code: RefusalCode::StaleTerm,
            reason: e.to_string(),
        };
        let _ = send(
            &mut wr,
            Frame {
                term: highest,
                message: Message::Refuse(refusal),
            },
        )
        .await;
        return retry(e.to_string());
    }
    let conn_term = first.term;
    let welcome = match first.message {
        Message::Welcome(w) => w,
        Message::Resync(r) => return Ended::Resync(format!("{peer}: {}", r.reason)),
        Message::Refuse(r) => {
            return retry(
                StreamError::Refused {
                    peer,
                    code: r.code,
                    reason: r.reason,
                }
                .to_string(),
            );
        }
        other => {
            return retry(format!(
                "{peer} answered hello with a {} frame",
                other.kind().name()
            ));
        }
    };
    if welcome.site != cfg.site {
        return retry(format!(
            "{peer} serves site {:?}, not {:?}",
            welcome.site, cfg.site
        ));
    }
    // Durable before anything of this term is applied.
    if let Err(e) = blocking(applier, move |a| a.note_term(conn_term)).await {
        return retry(e.to_string());
    }
    {
        let mut s = shared.status.lock().unwrap();
        s.state = ReplicaState::Streaming { primary: addr };
        s.primary_node = Some(welcome.node.clone());
        s.highest_term = conn_term;
    }
    stream_batches(shared, applier, rd, wr, addr, conn_term).await
}

/// What the apply worker reports back to the connection.
enum ApplyEnd {
    Resync(String),
    Failed(String),
}

async fn stream_batches(
    shared: &Arc<Shared>,
    applier: &SharedApplier,
    mut rd: Reader,
    wr: Writer,
    addr: SocketAddr,
    conn_term: u64,
) -> Ended {
    let opts = shared.config.options.clone();
    let peer = addr.to_string();
    let (out_tx, out_rx) = mpsc::channel::<Frame>(256);
    let writer = tokio::spawn(write_loop(wr, out_rx));
    // Bounded: a standby that applies slower than it receives stops reading, and TCP holds
    // the primary back (whose window never waits for it).
    let (batch_tx, batch_rx) = mpsc::channel::<DecodedBatch>(64);
    let closing = Arc::new(AtomicBool::new(false));
    let (end_tx, mut end_rx) = mpsc::channel::<ApplyEnd>(1);
    let worker = tokio::spawn(apply_loop(
        shared.clone(),
        applier.clone(),
        batch_rx,
        out_tx.clone(),
        end_tx,
        closing.clone(),
        conn_term,
    ));
    // While a long group is applied the reader may be held up (the queue is full) and not
    // answer heartbeats; an ack of what is applied, every second, tells the primary this
    // standby is alive (it ignores acks it already has).
    let keepalive = {
        let (shared, out) = (shared.clone(), out_tx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let applied = shared.status.lock().unwrap().applied;
                if applied.term == conn_term {
                    let _ = out.try_send(Frame {
                        term: conn_term,
                        message: Message::Ack(applied),
                    });
                }
            }
        })
    };
    let mut assembler = BatchAssembler::new(opts.max_batch_bytes);
    let mut primary_rx = shared.primary.subscribe();
    let mut stop_rx = shared.stop.subscribe();
    let ended = loop {
        let frame = tokio::select! {
            f = tokio::time::timeout(opts.primary_timeout, rd.read_frame()) => f,
            end = end_rx.recv() => break match end {
                Some(ApplyEnd::Resync(r)) => Ended::Resync(r),
                Some(ApplyEnd::Failed(why)) => Ended::Retry { why, streamed: true },
                None => Ended::Retry { why: "the apply worker ended".into(), streamed: true },
            },
            _ = primary_rx.changed() => {
                if *primary_rx.borrow() != Some(addr) {
                    break Ended::PrimaryChanged;
                }
                continue;
            }
            _ = super::super::until_true(&mut stop_rx) => break Ended::Stop,
        };
        let frame = match frame {
            Err(_) => {
                break Ended::Retry {
                    why: format!(
                        "nothing from the primary at {peer} for {:?}",
                        opts.primary_timeout
                    ),
                    streamed: true,
                };
            }
            Ok(Ok(None)) => {
                break Ended::Retry {
                    why: format!("the primary at {peer} closed the connection"),
                    streamed: true,
                };
            }
            Ok(Err(e)) => {
                break Ended::Retry {
                    why: format!("reading from the primary at {peer} failed: {e}"),
                    streamed: true,
                };
            }
            Ok(Ok(Some(f))) => f,
        };
        let known = shared.known_term.load(Ordering::SeqCst);
        if frame.term != conn_term || known > conn_term {
            let highest = known.max(frame.term).max(conn_term);
            let refusal = Refusal {
                code: RefusalCode::StaleTerm,
                reason: format!("this standby has seen term {highest}; term {conn_term} is stale"),
            };
            let _ = out_tx
                .send(Frame {
                    term: highest,
                    message: Message::Refuse(refusal),
                })
                .await;
            break Ended::Retry {
                why: StreamError::StaleTerm {
                    peer: peer.clone(),
                    term: conn_term,
                    highest,
                }
                .to_string(),
                streamed: true,
            };
        }
        match frame.message {
            Message::BatchPart(part) => match assembler.push(frame.term, part) {
                Ok(None) => {}
                Ok(Some(whole)) => match batch::decode(whole.position, &whole.bytes, &peer) {
                    Ok(b) => {
                        if batch_tx.send(b).await.is_err() {
                            break Ended::Retry {
                                why: "the apply worker ended".into(),
                                streamed: true,
                            };
                        }
                    }
                    Err(e) => {
                        break Ended::Retry {
                            why: e.to_string(),
                            streamed: true,
                        };
                    }
                },
                Err(super::super::wire::FrameError::BatchTooLarge { seq, total, max }) => {
                    break Ended::Resync(format!(
                        "batch {seq} of {total} bytes is larger than this standby accepts ({max})"
                    ));
                }
                Err(e) => {
                    break Ended::Retry {
                        why: StreamError::Frame {
                            peer: peer.clone(),
                            source: e,
                        }
                        .to_string(),
                        streamed: true,
                    };
                }
            },
            Message::Heartbeat(hb) => {
                let request = FailsafeRequest {
                    version: 1,
                    leader: hb.leader,
                    term: Term(conn_term),
                    members: hb.members,
                };
                let answer = match &opts.confirm {
                    Some(policy) => policy(&request),
                    None => Ok(()),
                };
                let confirmed = answer.is_ok();
                if confirmed {
                    let mut s = shared.status.lock().unwrap();
                    // The promise not to take over runs from the moment of answering.
                    s.last_confirmed_at = Some(Instant::now());
                    s.confirmed_term = Some(conn_term);
                }
                let c = Confirmation {
                    id: hb.id,
                    confirmed,
                    refused_because: answer.err(),
                };
                let _ = out_tx
                    .send(Frame {
                        term: conn_term,
                        message: Message::Confirm(c),
                    })
                    .await;
            }
            Message::Resync(r) => break Ended::Resync(format!("{peer}: {}", r.reason)),
            Message::Refuse(r) => {
                break Ended::Retry {
                    why: StreamError::Refused {
                        peer: peer.clone(),
                        code: r.code,
                        reason: r.reason,
                    }
                    .to_string(),
                    streamed: true,
                };
            }
            other => {
                break Ended::Retry {
                    why: format!(
                        "the primary sent a {} frame mid-stream",
                        other.kind().name()
                    ),
                    streamed: true,
                };
            }
        }
    };
    keepalive.abort();
    // The group being applied finishes; nothing after it starts.
    closing.store(true, Ordering::SeqCst);
    drop(batch_tx);
    let _ = worker.await;
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    ended
}

async fn write_loop(mut wr: Writer, mut rx: mpsc::Receiver<Frame>) {
    while let Some(frame) = rx.recv().await {
        if wr.write_frame(&frame).await.is_err() {
            return;
        }
        // Send at once unless more is queued (acks are what a held response waits for).
        if rx.is_empty() && wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}

/// Applies batches as they arrive, in groups of what arrived back to back, and acknowledges
/// each group once it is durable.
async fn apply_loop(
    shared: Arc<Shared>,
    applier: SharedApplier,
    mut rx: mpsc::Receiver<DecodedBatch>,
    out: mpsc::Sender<Frame>,
    end: mpsc::Sender<ApplyEnd>,
    closing: Arc<AtomicBool>,
    conn_term: u64,
) {
    let opts = shared.config.options.clone();
    let mut group: Vec<DecodedBatch> = Vec::new();
    let mut waiting_since: Option<Instant> = None;
    loop {
        if closing.load(Ordering::SeqCst) {
            return;
        }
        if group.is_empty() || waiting_since.is_some() {
            let next = match waiting_since {
                Some(since) => {
                    let left = opts.intent_wait.saturating_sub(since.elapsed());
                    match tokio::time::timeout(left, rx.recv()).await {
                        Ok(b) => b,
                        Err(_) => {
                            let _ = end
                                .send(ApplyEnd::Resync(
                                    "the batches that complete the group interrupted by the last crash did not come"
                                        .into(),
                                ))
                                .await;
                            return;
                        }
                    }
                }
                None => rx.recv().await,
            };
            let Some(b) = next else { return };
            if closing.load(Ordering::SeqCst) {
                return;
            }
            group.push(b);
        }
        let mut bytes: u64 = group.iter().map(|b| b.bytes).sum();
        while bytes < opts.max_group_bytes {
            match rx.try_recv() {
                Ok(b) => {
                    bytes += b.bytes;
                    group.push(b);
                }
                Err(_) => break,
            }
        }
        let batches = std::mem::take(&mut group);
        let count = batches.len() as u64;
        let result = {
            let applier = applier.clone();
            tokio::task::spawn_blocking(move || {
                let r = applier.lock().unwrap().apply(&batches);
                (batches, r)
            })
            .await
        };
        let (batches, result) = match result {
            Ok(r) => r,
            Err(_) => {
                let _ = end
                    .send(ApplyEnd::Failed("applying a batch panicked".into()))
                    .await;
                return;
            }
        };
        match result {
            Ok(Outcome::Applied(position)) => {
                waiting_since = None;
                shared
                    .history
                    .lock()
                    .unwrap()
                    .push(&batches, opts.history_bytes);
                {
                    let a = applier.lock().unwrap();
                    let mut s = shared.status.lock().unwrap();
                    s.applied = position;
                    s.sources = a.file.sources.clone();
                    s.batches_applied += count;
                    s.bytes_applied += bytes;
                    s.last_applied_at = Some(Instant::now());
                    s.last_error = None;
                }
                let ack = Frame {
                    term: conn_term,
                    message: Message::Ack(position),
                };
                if out.send(ack).await.is_err() {
                    return;
                }
            }
            Ok(Outcome::Wait) => {
                group = batches;
                waiting_since.get_or_insert_with(Instant::now);
                if bytes > opts.max_batch_bytes.saturating_mul(4) {
                    let _ = end
                        .send(ApplyEnd::Resync(
                            "too much arrived before the group interrupted by the last crash was complete"
                                .into(),
                        ))
                        .await;
                    return;
                }
            }
            Ok(Outcome::Resync(reason)) => {
                let _ = end.send(ApplyEnd::Resync(reason)).await;
                return;
            }
            Err(e) => {
                let _ = end.send(ApplyEnd::Failed(e.to_string())).await;
                return;
            }
        }
    }
}
