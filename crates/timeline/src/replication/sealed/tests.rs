use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::replication::wire::{Heartbeat, Message};

const WITHIN: Duration = Duration::from_secs(5);

fn key(b: u8) -> StreamKey {
    StreamKey::new([b; 32])
}

/// A heartbeat whose payload spans several records when `members_bytes` is large.
fn frame(id: u64, members_bytes: usize) -> Frame {
    Frame {
        term: 7,
        message: Message::Heartbeat(Heartbeat {
            id,
            leader: "a".into(),
            members: vec!["m".repeat(members_bytes)],
        }),
    }
}

async fn pair(
    standby_key: StreamKey,
    primary_key: StreamKey,
) -> (
    Result<Arc<StatelessTransportState>, HandshakeError>,
    Result<Arc<StatelessTransportState>, HandshakeError>,
    DuplexStream,
    DuplexStream,
) {
    let (mut a, mut b) = tokio::io::duplex(1 << 20);
    let (ia, rb) = tokio::join!(
        initiate(&mut a, &standby_key, WITHIN),
        respond(&mut b, &primary_key, WITHIN)
    );
    (ia, rb, a, b)
}

#[tokio::test]
async fn frames_of_any_size_cross_sealed_both_ways() {
    let (ia, rb, a, b) = pair(key(1), key(1)).await;
    let (a_rd, a_wr) = tokio::io::split(a);
    let (b_rd, b_wr) = tokio::io::split(b);
    let mut standby_out = SealedWriter::new(a_wr, ia.unwrap());
    let transport_b = rb.unwrap();
    let mut primary_in = SealedReader::new(b_rd, transport_b.clone());
    let mut primary_out = SealedWriter::new(b_wr, transport_b);
    let mut standby_in = SealedReader::new(a_rd, standby_out.transport.clone());
    let sent: Vec<Frame> = [0, 10, CHUNK, CHUNK + 1, 300_000]
        .iter()
        .enumerate()
        .map(|(i, n)| frame(i as u64, *n))
        .collect();
    for f in &sent {
        standby_out.write_frame(f).await.unwrap();
        primary_out.write_frame(f).await.unwrap();
    }
    standby_out.flush().await.unwrap();
    primary_out.flush().await.unwrap();
    for f in &sent {
        assert_eq!(primary_in.read_frame().await.unwrap().as_ref(), Some(f));
        assert_eq!(standby_in.read_frame().await.unwrap().as_ref(), Some(f));
    }
    standby_out.shutdown().await.unwrap();
    assert!(
        primary_in.read_frame().await.unwrap().is_none(),
        "a clean close"
    );
}

#[tokio::test]
async fn a_peer_without_the_vault_key_is_refused_on_both_sides() {
    let (ia, rb, _a, _b) = pair(key(1), key(2)).await;
    assert!(matches!(rb, Err(HandshakeError::Refused(_))), "{rb:?}");
    // The primary refused and sent nothing back: the standby times out or sees a close.
    assert!(ia.is_err());
    let msg = rb.unwrap_err().to_string();
    assert!(msg.contains("vault key"), "{msg}");
}

#[tokio::test]
async fn a_plaintext_peer_of_the_old_protocol_is_refused() {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let old = frame(1, 0).encode();
    a.write_all(&old).await.unwrap();
    drop(a);
    let r = respond(&mut b, &key(1), WITHIN).await;
    assert!(r.is_err(), "{r:?}");
}

#[tokio::test]
async fn an_altered_record_ends_the_connection() {
    let (ia, rb, mut a, b) = pair(key(1), key(1)).await;
    // Seal a frame by hand, flip one byte of its ciphertext, deliver it.
    let (sink, mut wire) = tokio::io::duplex(1 << 20);
    let mut w = SealedWriter::new(sink, ia.unwrap());
    w.write_frame(&frame(1, 100)).await.unwrap();
    w.flush().await.unwrap();
    drop(w);
    let mut bytes = Vec::new();
    wire.read_to_end(&mut bytes).await.unwrap();
    bytes[10] ^= 1;
    a.write_all(&bytes).await.unwrap();
    let mut r = SealedReader::new(b, rb.unwrap());
    let err = r.read_frame().await.unwrap_err();
    assert!(matches!(err, ReadError::Sealed(_)), "{err}");
}

#[tokio::test]
async fn a_read_dropped_mid_frame_loses_nothing() {
    let (ia, rb, mut a, b) = pair(key(1), key(1)).await;
    let (sink, mut wire) = tokio::io::duplex(1 << 20);
    let mut w = SealedWriter::new(sink, ia.unwrap());
    let big = frame(1, 200_000);
    w.write_frame(&big).await.unwrap();
    w.write_frame(&frame(2, 5)).await.unwrap();
    w.flush().await.unwrap();
    drop(w);
    let mut bytes = Vec::new();
    wire.read_to_end(&mut bytes).await.unwrap();
    let mut r = SealedReader::new(b, rb.unwrap());
    // Deliver the bytes in pieces; between pieces, a read that is given up on.
    for piece in bytes.chunks(40_000) {
        a.write_all(piece).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_millis(5), std::future::pending::<()>()).await;
        if r.plain.len() + r.raw.len() < bytes.len() / 2 {
            let gave_up = tokio::time::timeout(Duration::from_millis(20), r.read_frame()).await;
            assert!(gave_up.is_err(), "the first frame is not whole yet");
        }
    }
    assert_eq!(r.read_frame().await.unwrap(), Some(big));
    assert_eq!(r.read_frame().await.unwrap(), Some(frame(2, 5)));
}
