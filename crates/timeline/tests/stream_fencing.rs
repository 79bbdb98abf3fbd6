//! Terms fence, and frames are untrusted: a standby that has seen a newer term never applies
//! a batch of an older primary (and that primary learns it is superseded and stops), and a
//! frame with a bad length or bad bytes is refused without a panic, on either side.

mod common;

use std::time::Duration;

use common::stream::*;
use lifeboat_timeline::replication::sealed::{SealedReader, SealedWriter, initiate, respond};
use lifeboat_timeline::replication::wire::{BatchPart, Frame, Message, RefusalCode, Welcome};
use lifeboat_timeline::{Position, ReplicaState, StreamError, StreamKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_saw_a_newer_term_refuses_an_older_primary_which_stops() {
    let p = Primary::start(feed_options(7)).await;
    let conn = p.site.db();
    p.site.insert(&conn, 0..5);
    p.worker.ship_now().await.unwrap();
    let dirs = StandbyDirs::new(p.site.tmp.path(), "standby");
    let repo = p.site.open_vault(&p.site.dest_a, "standby-spool").await;
    let replica =
        lifeboat_timeline::Replica::start(dirs.config(quick_replica_options(), &repo), repo, None)
            .await
            .unwrap();
    wait_until("the first restore", Duration::from_secs(60), || {
        replica.status().state == ReplicaState::WaitingForPrimary
    })
    .await;
    let restored = replica.status();
    // etcd said term 9 exists; then the term-7 primary's address comes.
    replica.note_term(9);
    p.site.insert(&conn, 5..10);
    replica.set_primary(Some(p.addr()));

    let newer = tokio::time::timeout(Duration::from_secs(30), p.server.superseded())
        .await
        .expect("the primary learns of term 9");
    assert_eq!(newer, 9);
    assert_eq!(p.server.status().superseded_by, Some(9));
    let position = p.worker.barrier().await.unwrap();
    let err = p
        .server
        .wait_acked(position, |_| true, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StreamError::Superseded { term: 7, newer: 9 }),
        "{err}"
    );

    // Nothing of term 7 was applied, and term 9 is on disk before anything else.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = replica.status();
    assert_eq!(s.highest_term, 9);
    assert_eq!(s.applied, restored.applied);
    assert_eq!(s.sources, restored.sources);
    assert_eq!(s.batches_applied, 0);
    let on_disk = lifeboat_timeline::replication::inspect_replica_state(&dirs.meta)
        .unwrap()
        .unwrap();
    assert!(on_disk.contains("\"highest_term\": 9"), "{on_disk}");
    replica.stop().await.unwrap();
    assert_eq!(rows(&dirs.db()).len(), 5);
}

/// A primary of an older term that does not know it: it welcomes the standby and sends a
/// batch. The standby refuses it and applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_primary_that_welcomes_a_standby_is_refused_and_nothing_is_applied() {
    let p = Primary::start(feed_options(9)).await;
    let conn = p.site.db();
    p.site.insert(&conn, 0..3);
    let dirs = StandbyDirs::new(p.site.tmp.path(), "standby");
    let replica = start_replica(&p, &dirs, quick_replica_options()).await;
    p.sync(Duration::from_secs(60)).await;
    // The primary credits what a standby's hello says it holds, so the sync can return
    // before the standby has read the welcome that carries the term.
    wait_until(
        "the standby to know term 9",
        Duration::from_secs(10),
        || replica.status().highest_term == 9,
    )
    .await;
    let before = replica.status();

    let stale = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stale_addr = stale.local_addr().unwrap();
    // An old primary of the same site holds the vault key.
    let key = stream_key(&p.repo);
    let fake = tokio::spawn(async move {
        let (mut s, _) = stale.accept().await.unwrap();
        let transport = respond(&mut s, &key, Duration::from_secs(10))
            .await
            .unwrap();
        let (rd, wr) = s.into_split();
        let (mut rd, mut s) = (
            SealedReader::new(rd, transport.clone()),
            SealedWriter::new(wr, transport),
        );
        let hello = rd.read_frame().await.unwrap().unwrap();
        assert_eq!(hello.term, 9, "the hello carries the highest term seen");
        for message in [
            Message::Welcome(Welcome {
                site: "guestbook".into(),
                node: "old-primary".into(),
                zone: "zone-a".into(),
                credited: Position { term: 7, seq: 1 },
            }),
            Message::BatchPart(BatchPart {
                seq: 2,
                total: 4,
                offset: 0,
                hash: *blake3::hash(b"evil").as_bytes(),
                data: b"evil".to_vec(),
            }),
        ] {
            let _ = s.write_frame(&Frame { term: 7, message }).await;
        }
        let _ = s.flush().await;
        rd.read_frame().await
    });
    replica.set_primary(Some(stale_addr));
    let answer = tokio::time::timeout(Duration::from_secs(30), fake)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .expect("the standby answers");
    match answer.message {
        Message::Refuse(r) => assert_eq!(r.code, RefusalCode::StaleTerm),
        other => panic!("expected a refusal, got {other:?}"),
    }
    wait_until("the refusal in the status", Duration::from_secs(10), || {
        replica
            .status()
            .last_error
            .is_some_and(|e| e.contains("older than term 9"))
    })
    .await;
    let after = replica.status();
    assert_eq!(after.applied, before.applied);
    assert_eq!(after.highest_term, 9);
    replica.stop().await.unwrap();
    assert_eq!(rows(&dirs.db()).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_with_a_bad_length_or_bad_bytes_are_refused_without_a_panic() {
    let p = Primary::start(feed_options(7)).await;
    let key = stream_key(&p.repo);
    let within = Duration::from_secs(10);

    // To the primary, from a peer holding the key: a hello announcing 4 GiB.
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    let transport = initiate(&mut s, &key, within).await.unwrap();
    let (rd, wr) = s.into_split();
    let (mut rd, mut wr) = (
        SealedReader::new(rd, transport.clone()),
        SealedWriter::new(wr, transport),
    );
    let mut header = Vec::new();
    header.extend_from_slice(b"LBSF");
    header.push(1);
    header.push(1); // hello
    header.extend_from_slice(&7u64.to_be_bytes());
    header.extend_from_slice(&u32::MAX.to_be_bytes());
    wr.write_bytes(&header).await.unwrap();
    wr.flush().await.unwrap();
    let answer = tokio::time::timeout(within, rd.read_frame())
        .await
        .unwrap()
        .unwrap()
        .expect("a refusal before the close");
    match answer.message {
        Message::Refuse(r) => {
            assert_eq!(r.code, RefusalCode::Protocol);
            assert!(r.reason.contains("over the limit"), "{}", r.reason);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(rd.read_frame().await.unwrap().is_none(), "then it closes");
    // Bytes that are not the stream at all, from a peer without the key: the connection
    // closes and not one byte of the site comes back.
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut answer))
        .await
        .expect("the primary closes at once")
    {
        Ok(_) => {}
        // It closed with our bytes unread.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{e}"),
    }
    assert!(answer.is_empty(), "{answer:?}");
    // A peer with another key fails the handshake.
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    let err = initiate(&mut s, &StreamKey::new([9; 32]), within)
        .await
        .unwrap_err();
    eprintln!("a wrong key: {err}");

    // The primary still serves a real standby.
    let dirs = StandbyDirs::new(p.site.tmp.path(), "standby");
    let replica = start_replica(&p, &dirs, quick_replica_options()).await;
    p.site.insert(&p.site.db(), 0..3);
    p.sync(Duration::from_secs(60)).await;

    // To the standby: a "primary" without the key; then one with it answering hello with
    // garbage, then with a frame whose batch part claims more than it carries.
    let liar = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let liar_addr = liar.local_addr().unwrap();
    let server = tokio::spawn(async move {
        for round in 0..3 {
            let (mut s, _) = liar.accept().await.unwrap();
            if round == 0 {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                let mut sink = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
                continue;
            }
            let transport = respond(&mut s, &key, within).await.unwrap();
            let (rd, wr) = s.into_split();
            let (mut rd, mut wr) = (
                SealedReader::new(rd, transport.clone()),
                SealedWriter::new(wr, transport),
            );
            let _ = rd.read_frame().await;
            if round == 1 {
                let _ = wr.write_bytes(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            } else {
                let mut bytes = Frame {
                    term: 7,
                    message: Message::Welcome(Welcome {
                        site: "guestbook".into(),
                        node: "liar".into(),
                        zone: "z".into(),
                        credited: Position { term: 7, seq: 0 },
                    }),
                }
                .encode();
                bytes.extend_from_slice(b"LBSF\x01\x05");
                bytes.extend_from_slice(&7u64.to_be_bytes());
                bytes.extend_from_slice(&(u32::MAX - 3).to_be_bytes());
                let _ = wr.write_bytes(&bytes).await;
            }
            let _ = wr.flush().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_frame()).await;
        }
    });
    let applied = replica.status().applied;
    replica.set_primary(Some(liar_addr));
    for (what, words) in [
        ("the keyless primary to be reported", "vault key"),
        ("the garbage to be reported", "not a lifeboat stream frame"),
        ("the bad length to be reported", "over the limit"),
    ] {
        wait_until(what, Duration::from_secs(20), || {
            replica
                .status()
                .last_error
                .is_some_and(|e| e.contains(words))
        })
        .await;
    }
    server.await.unwrap();
    assert_eq!(replica.status().applied, applied);
    // Back to the real primary: it streams again.
    replica.set_primary(Some(p.addr()));
    p.site.insert(&p.site.db(), 3..6);
    p.sync(Duration::from_secs(60)).await;
    replica.stop().await.unwrap();
    assert_eq!(rows(&dirs.db()).len(), 6);
}

/// A fenced primary halts its worker: nothing more reaches the vault from it (not the
/// segment of a pass that comes after, not a checkpoint), so it cannot take a segment seq
/// the new primary uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_worker_writes_nothing_more_to_the_vault() {
    let p = Primary::start(feed_options(7)).await;
    let conn = p.site.db();
    p.site.insert(&conn, 0..5);
    p.worker.ship_now().await.unwrap();
    let repo = p.site.open_vault(&p.site.dest_a, "reader-spool").await;
    let before = repo.list_segments(lifeboat_timeline::STREAM).await.unwrap();
    assert!(!before.is_empty());
    p.worker.halt();
    p.site.insert(&conn, 5..50);
    let err = p.worker.ship_now().await.unwrap_err();
    assert!(err.to_string().contains("no longer the primary"), "{err}");
    assert!(p.worker.checkpoint_now().await.is_err());
    // Longer than the worker's poll interval: no background pass ships either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = repo.list_segments(lifeboat_timeline::STREAM).await.unwrap();
    assert_eq!(before, after, "no segment after the halt");
}
