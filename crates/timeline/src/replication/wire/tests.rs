use super::*;
use proptest::prelude::*;

fn hello() -> Message {
    Message::Hello(Hello {
        site: "guestbook".into(),
        node: "b".into(),
        zone: "z2".into(),
        applied: Position { term: 7, seq: 42 },
        sources: BTreeMap::from([(
            "data/app.db".to_string(),
            SourcePosition {
                epoch: 3,
                seq: 9,
                term: 7,
            },
        )]),
        max_batch_bytes: 1 << 20,
    })
}

fn decode_all(bytes: &[u8]) -> Result<Frame, FrameError> {
    let header: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
    let header = FrameHeader::parse(&header)?;
    Frame::decode(&header, &bytes[HEADER_LEN..])
}

#[test]
fn every_kind_of_frame_reads_back_exactly() {
    let messages = vec![
        hello(),
        Message::Welcome(Welcome {
            site: "guestbook".into(),
            node: "a".into(),
            zone: "z1".into(),
            credited: Position { term: 7, seq: 40 },
        }),
        Message::Resync(Resync {
            reason: "out of the window".into(),
        }),
        Message::Refuse(Refusal {
            code: RefusalCode::StaleTerm,
            reason: "term 7 is older than 9".into(),
        }),
        Message::BatchPart(BatchPart {
            seq: 43,
            total: 5,
            offset: 0,
            hash: *blake3::hash(b"hello").as_bytes(),
            data: b"hello".to_vec(),
        }),
        Message::Ack(Position { term: 7, seq: 43 }),
        Message::Heartbeat(Heartbeat {
            id: 3,
            leader: "a".into(),
            members: vec!["b".into(), "c".into()],
        }),
        Message::Confirm(Confirmation {
            id: 3,
            confirmed: false,
            refused_because: Some("etcd shows c as leader".into()),
        }),
    ];
    for message in messages {
        let frame = Frame { term: 7, message };
        let bytes = frame.encode();
        assert_eq!(decode_all(&bytes).unwrap(), frame);
    }
}

#[test]
fn a_length_over_the_kinds_limit_is_refused_before_anything_is_read() {
    let mut bytes = Frame {
        term: 1,
        message: Message::Ack(Position { term: 1, seq: 1 }),
    }
    .encode();
    bytes[14..18].copy_from_slice(&17u32.to_be_bytes());
    let header: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
    assert!(matches!(
        FrameHeader::parse(&header),
        Err(FrameError::TooLarge { len: 17, .. })
    ));
    bytes[5] = FrameKind::BatchPart as u8;
    bytes[14..18].copy_from_slice(&u32::MAX.to_be_bytes());
    let header: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
    let err = FrameHeader::parse(&header).unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
}

#[test]
fn an_unknown_version_or_kind_is_named() {
    let mut bytes = Frame {
        term: 1,
        message: hello(),
    }
    .encode();
    bytes[4] = 2;
    let err = decode_all(&bytes).unwrap_err();
    assert_eq!(err, FrameError::UnsupportedVersion(2));
    assert!(err.to_string().contains("same lifeboat version"));
    bytes[4] = WIRE_VERSION;
    bytes[5] = 99;
    assert_eq!(decode_all(&bytes).unwrap_err(), FrameError::UnknownKind(99));
}

fn assemble(parts: Vec<BatchPart>, max: u64) -> Result<Vec<AssembledBatch>, FrameError> {
    let mut a = BatchAssembler::new(max);
    let mut out = Vec::new();
    for p in parts {
        if let Some(b) = a.push(7, p)? {
            out.push(b);
        }
    }
    Ok(out)
}

#[test]
fn a_batch_split_in_parts_is_reassembled_and_checked() {
    let bytes: Vec<u8> = (0..(MAX_FRAME_PAYLOAD as usize * 2 + 17))
        .map(|i| (i % 251) as u8)
        .collect();
    let hash = *blake3::hash(&bytes).as_bytes();
    let parts: Vec<_> = batch_parts(5, &bytes, hash).collect();
    assert_eq!(parts.len(), 3);
    for p in &parts {
        // Every part fits a frame.
        let f = Frame {
            term: 7,
            message: Message::BatchPart(p.clone()),
        };
        assert!(f.encode().len() <= HEADER_LEN + MAX_FRAME_PAYLOAD as usize);
    }
    let got = assemble(parts.clone(), u64::MAX).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].bytes, bytes);
    assert_eq!(got[0].position, Position { term: 7, seq: 5 });

    // Out of order, too large, damaged: refused.
    let mut swapped = parts.clone();
    swapped.swap(0, 1);
    assert!(matches!(
        assemble(swapped, u64::MAX),
        Err(FrameError::BatchOutOfOrder { .. })
    ));
    assert!(matches!(
        assemble(parts.clone(), 1000),
        Err(FrameError::BatchTooLarge { .. })
    ));
    let mut damaged = parts;
    damaged[2].data[0] ^= 1;
    assert!(matches!(
        assemble(damaged, u64::MAX),
        Err(FrameError::BatchDamaged { seq: 5 })
    ));
}

#[test]
fn a_part_claiming_more_than_its_batch_is_refused() {
    let part = BatchPart {
        seq: 1,
        total: 3,
        offset: 0,
        hash: [0; 32],
        data: vec![1, 2, 3, 4],
    };
    assert!(matches!(
        assemble(vec![part], 100),
        Err(FrameError::BatchOutOfOrder { .. })
    ));
}

#[tokio::test]
async fn frames_read_from_a_stream_and_a_clean_close_is_none() {
    let frame = Frame {
        term: 3,
        message: hello(),
    };
    let mut bytes = frame.encode();
    bytes.extend(frame.encode());
    let mut reader = &bytes[..];
    assert_eq!(read_frame(&mut reader).await.unwrap(), Some(frame.clone()));
    assert_eq!(read_frame(&mut reader).await.unwrap(), Some(frame));
    assert_eq!(read_frame(&mut reader).await.unwrap(), None);
    // A close in the middle of a frame is an error, not a clean end.
    let cut = Frame {
        term: 3,
        message: hello(),
    }
    .encode();
    let mut reader = &cut[..cut.len() - 1];
    assert!(read_frame(&mut reader).await.is_err());
}

proptest! {
    #[test]
    fn any_bytes_decode_to_a_frame_or_an_error_never_a_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..256)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut reader = &bytes[..];
        let _ = rt.block_on(read_frame(&mut reader));
    }

    #[test]
    fn any_header_after_a_valid_prefix_is_checked(
        kind in 0u8..12, term in any::<u64>(), len in any::<u32>(),
        payload in proptest::collection::vec(any::<u8>(), 0..128)
    ) {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.push(WIRE_VERSION);
        bytes.push(kind);
        bytes.extend_from_slice(&term.to_be_bytes());
        bytes.extend_from_slice(&len.to_be_bytes());
        let header: [u8; HEADER_LEN] = bytes[..].try_into().unwrap();
        match FrameHeader::parse(&header) {
            Ok(h) => {
                prop_assert!(h.len <= MAX_FRAME_PAYLOAD);
                prop_assert_eq!(h.term, term);
                // Whatever the payload, decoding never panics.
                let _ = Frame::decode(&h, &payload);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn parts_of_any_batch_reassemble_to_it(
        data in proptest::collection::vec(any::<u8>(), 1..4096),
        seq in any::<u64>(),
    ) {
        let hash = *blake3::hash(&data).as_bytes();
        let got = assemble(batch_parts(seq, &data, hash).collect(), 1 << 20).unwrap();
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(&got[0].bytes, &data);
    }

    #[test]
    fn arbitrary_parts_never_panic_the_assembler(
        parts in proptest::collection::vec(
            (any::<u64>(), 0u64..64, 0u64..64, proptest::collection::vec(any::<u8>(), 0..64)),
            0..8,
        )
    ) {
        let mut a = BatchAssembler::new(48);
        for (seq, total, offset, data) in parts {
            let _ = a.push(1, BatchPart { seq, total, offset, hash: [0; 32], data });
        }
    }
}
