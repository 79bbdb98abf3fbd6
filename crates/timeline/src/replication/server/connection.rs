//! The server's connections: accepting standbys, the hello and where each starts, then
//! batches and heartbeats out, acknowledgements and confirmations in.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{BufReader, BufWriter};

use crate::replication::sealed::{SealedReader, SealedWriter, respond};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use super::super::Position;
use super::super::feed::{Next, StartPlan};
use super::super::wire::{
    Confirmation, Frame, Heartbeat, Hello, Message, Refusal, RefusalCode, Resync, Welcome,
    batch_parts,
};
use super::{Shared, Standby, StandbyInfo};

pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                // A failed accept (out of descriptors) is retried after a pause.
                match accepted {
                    Ok((stream, peer)) => {
                        tokio::spawn(serve_connection(shared.clone(), stream, peer));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            _ = super::super::until_true(&mut shutdown) => return,
        }
    }
}

type Reader = SealedReader<BufReader<OwnedReadHalf>>;
type Writer = SealedWriter<BufWriter<OwnedWriteHalf>>;

async fn send(w: &mut Writer, term: u64, message: Message) -> std::io::Result<()> {
    w.write_frame(&Frame { term, message }).await?;
    w.flush().await
}

async fn refuse(w: &mut Writer, term: u64, code: RefusalCode, reason: String) {
    let _ = send(w, term, Message::Refuse(Refusal { code, reason })).await;
}

/// One standby's connection: hello, then batches and heartbeats out, acks and
/// confirmations in, until either side stops.
async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut stream = stream;
    let within = shared.config.options.hello_timeout;
    // A peer without the site's vault key learns nothing and is told nothing: the
    // connection just closes.
    let Ok(transport) = respond(&mut stream, &shared.config.key, within).await else {
        return;
    };
    let (rd, wr) = stream.into_split();
    let mut rd = SealedReader::new(BufReader::new(rd), transport.clone());
    let mut wr = SealedWriter::new(BufWriter::with_capacity(1 << 16, wr), transport);
    let term = shared.term;
    let hello = match tokio::time::timeout(within, rd.read_frame()).await {
        Ok(Ok(Some(frame))) => frame,
        // Silence, a close or bytes that are not a frame: nothing to answer.
        Ok(Err(e)) => {
            refuse(&mut wr, term, RefusalCode::Protocol, e.to_string()).await;
            return;
        }
        _ => return,
    };
    if hello.term > term {
        refuse(
            &mut wr,
            term,
            RefusalCode::StaleTerm,
            format!(
                "this primary's term {term} is older than term {} the standby has seen",
                hello.term
            ),
        )
        .await;
        shared.supersede(hello.term);
        return;
    }
    let Message::Hello(hello) = hello.message else {
        refuse(
            &mut wr,
            term,
            RefusalCode::Protocol,
            "the first frame must be a hello".into(),
        )
        .await;
        return;
    };
    if hello.site != shared.config.site {
        let reason = format!(
            "this primary serves site {:?}, not {:?}",
            shared.config.site, hello.site
        );
        refuse(&mut wr, term, RefusalCode::WrongSite, reason).await;
        return;
    }
    if shared.stopping() {
        refuse(
            &mut wr,
            term,
            RefusalCode::ShuttingDown,
            "the primary is stopping".into(),
        )
        .await;
        return;
    }
    let (next_seq, credited) = match shared.feed.plan_start(&hello.sources) {
        StartPlan::Serve { next_seq, credited } => (next_seq, credited),
        StartPlan::Resync(reason) => {
            note_resync(&shared, &hello, peer, &reason);
            let _ = send(&mut wr, term, Message::Resync(Resync { reason })).await;
            return;
        }
        StartPlan::Refuse(code, reason) => {
            refuse(&mut wr, term, code, reason).await;
            return;
        }
    };
    let (conn, kicked) = register(&shared, &hello, peer);
    shared.acked(&hello.node, conn, credited);
    let welcome = Welcome {
        site: shared.config.site.clone(),
        node: shared.config.node.clone(),
        zone: shared.config.zone.clone(),
        credited,
    };
    if send(&mut wr, term, Message::Welcome(welcome))
        .await
        .is_err()
    {
        disconnected(&shared, &hello.node, conn, None);
        return;
    }
    let (reader_done_tx, reader_done) = oneshot::channel();
    let reader = tokio::spawn(read_from_standby(
        shared.clone(),
        rd,
        hello.node.clone(),
        conn,
        reader_done_tx,
    ));
    let outcome = send_to_standby(
        &shared,
        &mut wr,
        &hello,
        conn,
        next_seq - 1,
        kicked,
        reader_done,
    )
    .await;
    reader.abort();
    disconnected(&shared, &hello.node, conn, outcome.err());
}

fn register(shared: &Shared, hello: &Hello, peer: SocketAddr) -> (u64, watch::Receiver<bool>) {
    let mut st = shared.state.lock().unwrap();
    st.next_id += 1;
    let conn = st.next_id;
    let (kick, kicked) = watch::channel(false);
    let now = Instant::now();
    let entry = st.standbys.entry(hello.node.clone());
    match entry {
        std::collections::btree_map::Entry::Occupied(mut e) => {
            let s = e.get_mut();
            // The node reconnected: its old connection goes.
            s.kick.send_replace(true);
            s.info.zone = hello.zone.clone();
            s.address = peer;
            s.conn = conn;
            s.connected = true;
            s.connected_since = now;
            s.last_heard = now;
            s.heartbeats.clear();
            s.resync_told = None;
            s.kick = kick;
        }
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(Standby {
                info: StandbyInfo {
                    node: hello.node.clone(),
                    zone: hello.zone.clone(),
                },
                address: peer,
                conn,
                connected: true,
                connected_since: now,
                acked: None,
                last_heard: now,
                heartbeats: VecDeque::new(),
                last_confirmed_request_sent: None,
                confirmation_refused: None,
                resync_told: None,
                last_error: None,
                kick,
            });
        }
    }
    (conn, kicked)
}

fn note_resync(shared: &Shared, hello: &Hello, peer: SocketAddr, reason: &str) {
    let (conn, _) = register(shared, hello, peer);
    shared.with_standby(&hello.node, conn, |s| {
        s.connected = false;
        s.resync_told = Some(reason.to_string());
    });
}

fn disconnected(shared: &Shared, node: &str, conn: u64, error: Option<String>) {
    shared.with_standby(node, conn, |s| {
        s.connected = false;
        if error.is_some() {
            s.last_error = error;
        }
    });
}

/// Reads acks and confirmations until the standby closes, breaks the protocol, shows a newer
/// term or stays silent for `standby_timeout`.
async fn read_from_standby(
    shared: Arc<Shared>,
    mut rd: Reader,
    node: String,
    conn: u64,
    done: oneshot::Sender<String>,
) {
    let timeout = shared.config.options.standby_timeout;
    let why = loop {
        let frame = match tokio::time::timeout(timeout, rd.read_frame()).await {
            Err(_) => break format!("silent for {timeout:?}"),
            Ok(Ok(None)) => break "the standby closed the connection".to_string(),
            Ok(Err(e)) => break e.to_string(),
            Ok(Ok(Some(frame))) => frame,
        };
        if frame.term > shared.term {
            shared.supersede(frame.term);
            break format!("the standby has seen a newer term {}", frame.term);
        }
        let now = Instant::now();
        match frame.message {
            Message::Ack(position) => {
                let last = shared.feed.last_position();
                if position.term != shared.term || position > last {
                    break format!("it acknowledged {position}, which this primary never sent");
                }
                shared.with_standby(&node, conn, |s| s.last_heard = now);
                shared.acked(&node, conn, position);
            }
            Message::Confirm(Confirmation {
                id,
                confirmed,
                refused_because,
            }) => shared.with_standby(&node, conn, |s| {
                s.last_heard = now;
                let sent = s.heartbeats.iter().find(|(i, _)| *i == id).map(|(_, t)| *t);
                if confirmed {
                    if let Some(sent) = sent {
                        s.last_confirmed_request_sent =
                            Some(s.last_confirmed_request_sent.map_or(sent, |t| t.max(sent)));
                    }
                    s.confirmation_refused = None;
                } else {
                    s.confirmation_refused =
                        Some(refused_because.unwrap_or_else(|| "no reason given".into()));
                }
            }),
            other => break format!("a standby may not send a {} frame", other.kind().name()),
        }
    };
    let _ = done.send(why);
}

/// Sends batches from `cursor` on, and a heartbeat every interval, until something ends the
/// connection. `Err` carries why, for the standby's status.
async fn send_to_standby(
    shared: &Shared,
    wr: &mut Writer,
    hello: &Hello,
    conn: u64,
    mut cursor: u64,
    mut kicked: watch::Receiver<bool>,
    mut reader_done: oneshot::Receiver<String>,
) -> Result<(), String> {
    let term = shared.term;
    let interval = shared.config.options.heartbeat_interval;
    let mut published = shared.feed.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let mut heartbeat_id = 0u64;
    let mut last_heartbeat: Option<Instant> = None;
    loop {
        if shared.stopping() {
            let reason = match *shared.superseded.borrow() {
                Some(t) => format!("a newer term {t} exists"),
                None => "the primary is stopping".into(),
            };
            refuse(wr, term, RefusalCode::ShuttingDown, reason).await;
            return Ok(());
        }
        if *kicked.borrow() {
            return Err("replaced by a newer connection of the same node".into());
        }
        let message = if last_heartbeat.is_none_or(|t| t.elapsed() >= interval) {
            heartbeat_id += 1;
            let sent = Instant::now();
            last_heartbeat = Some(sent);
            shared.with_standby(&hello.node, conn, |s| {
                if s.heartbeats.len() >= 64 {
                    s.heartbeats.pop_front();
                }
                s.heartbeats.push_back((heartbeat_id, sent));
            });
            Some(Message::Heartbeat(Heartbeat {
                id: heartbeat_id,
                leader: shared.config.node.clone(),
                members: shared.members.lock().unwrap().clone(),
            }))
        } else {
            None
        };
        let sending = async {
            if let Some(m) = message {
                wr.write_frame(&Frame { term, message: m }).await?;
            }
            let batches = match shared.feed.next_after(cursor, 64) {
                Next::Gone => {
                    wr.flush().await?;
                    return Ok(Sent::Gone);
                }
                Next::Wait => Vec::new(),
                Next::Batches(b) => b,
            };
            for b in &batches {
                if b.bytes.len() as u64 > hello.max_batch_bytes {
                    wr.flush().await?;
                    return Ok(Sent::TooLarge(b.position, b.bytes.len() as u64));
                }
                for part in batch_parts(b.position.seq, &b.bytes, b.hash) {
                    let frame = Frame {
                        term,
                        message: Message::BatchPart(part),
                    };
                    wr.write_frame(&frame).await?;
                }
                cursor = b.position.seq;
            }
            wr.flush().await?;
            Ok::<_, std::io::Error>(if batches.is_empty() {
                Sent::Nothing
            } else {
                Sent::Batches
            })
        };
        // A standby that stops reading blocks the write; its silence ends the reader, which
        // ends this write too.
        let sent = tokio::select! {
            r = sending => r,
            why = &mut reader_done => return Err(why.unwrap_or_default()),
            _ = kicked.changed() => return Err("replaced by a newer connection of the same node".into()),
            _ = super::super::until_true(&mut shutdown) => continue,
        };
        let reason = match sent {
            Err(e) => return Err(format!("sending failed: {e}")),
            Ok(Sent::Batches) => continue,
            Ok(Sent::Nothing) => None,
            Ok(Sent::Gone) => Some(format!(
                "the batches after {} left the primary's window before the standby received them",
                Position { term, seq: cursor }
            )),
            Ok(Sent::TooLarge(position, bytes)) => Some(format!(
                "batch {position} holds {bytes} bytes, more than the standby accepts ({})",
                hello.max_batch_bytes
            )),
        };
        if let Some(reason) = reason {
            shared.with_standby(&hello.node, conn, |s| s.resync_told = Some(reason.clone()));
            let _ = send(wr, term, Message::Resync(Resync { reason })).await;
            return Ok(());
        }
        let next_heartbeat = last_heartbeat.map_or(Instant::now(), |t| t + interval);
        tokio::select! {
            _ = published.changed() => {}
            _ = tokio::time::sleep_until(next_heartbeat.into()) => {}
            why = &mut reader_done => return Err(why.unwrap_or_default()),
            _ = kicked.changed() => {}
            _ = super::super::until_true(&mut shutdown) => {}
        }
    }
}

/// What one round of sending did.
enum Sent {
    Batches,
    Nothing,
    Gone,
    TooLarge(Position, u64),
}
