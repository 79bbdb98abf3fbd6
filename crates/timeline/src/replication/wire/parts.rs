//! Batches on the wire: split into parts that fit a frame, and put back together on the
//! other side, in order, up to the announced size, checked against the announced hash.

use super::super::Position;
use super::{BATCH_PART_HEADER, BatchPart, FrameError, FrameKind, MAX_FRAME_PAYLOAD};

/// Splits an encoded batch into parts of at most [`MAX_FRAME_PAYLOAD`] bytes.
pub fn batch_parts(seq: u64, bytes: &[u8], hash: [u8; 32]) -> impl Iterator<Item = BatchPart> + '_ {
    let chunk = MAX_FRAME_PAYLOAD as usize - BATCH_PART_HEADER;
    let total = bytes.len() as u64;
    bytes
        .chunks(chunk)
        .enumerate()
        .map(move |(i, data)| BatchPart {
            seq,
            total,
            offset: (i * chunk) as u64,
            hash,
            data: data.to_vec(),
        })
}

/// A batch reassembled from its parts, its hash checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssembledBatch {
    /// Its position (the frames' term and the parts' seq).
    pub position: Position,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

struct Partial {
    term: u64,
    seq: u64,
    total: u64,
    hash: [u8; 32],
    bytes: Vec<u8>,
}

/// Reassembles batches from parts that must arrive in order, one batch at a time.
pub struct BatchAssembler {
    max_batch: u64,
    partial: Option<Partial>,
}

impl BatchAssembler {
    /// An assembler refusing batches above `max_batch` bytes.
    pub fn new(max_batch: u64) -> BatchAssembler {
        BatchAssembler {
            max_batch,
            partial: None,
        }
    }

    /// Takes the next part (of a frame with `term`); returns the batch once it is whole.
    pub fn push(
        &mut self,
        term: u64,
        part: BatchPart,
    ) -> Result<Option<AssembledBatch>, FrameError> {
        if part.total == 0 {
            return Err(FrameError::BadPayload {
                kind: FrameKind::BatchPart.name(),
                why: "a batch of 0 bytes".into(),
            });
        }
        if part.total > self.max_batch {
            return Err(FrameError::BatchTooLarge {
                seq: part.seq,
                total: part.total,
                max: self.max_batch,
            });
        }
        let partial = match self.partial.take() {
            None if part.offset == 0 => Partial {
                term,
                seq: part.seq,
                total: part.total,
                hash: part.hash,
                // Grown as parts arrive, never sized from the untrusted total up front.
                bytes: Vec::new(),
            },
            None => {
                return Err(FrameError::BatchOutOfOrder {
                    why: format!(
                        "batch {} starts at byte {} instead of 0",
                        part.seq, part.offset
                    ),
                });
            }
            Some(p) => {
                if (p.term, p.seq, p.total, p.hash) != (term, part.seq, part.total, part.hash) {
                    return Err(FrameError::BatchOutOfOrder {
                        why: format!(
                            "a part of batch {}/{} arrived while batch {}/{} was incomplete",
                            term, part.seq, p.term, p.seq
                        ),
                    });
                }
                p
            }
        };
        let received = partial.bytes.len() as u64;
        if part.offset != received {
            return Err(FrameError::BatchOutOfOrder {
                why: format!(
                    "batch {} part at byte {} where byte {received} was expected",
                    part.seq, part.offset
                ),
            });
        }
        let end = received
            .checked_add(part.data.len() as u64)
            .filter(|&e| e <= partial.total)
            .ok_or_else(|| FrameError::BatchOutOfOrder {
                why: format!(
                    "batch {} part runs past its announced {} bytes",
                    part.seq, partial.total
                ),
            })?;
        let mut partial = partial;
        partial.bytes.extend_from_slice(&part.data);
        if end < partial.total {
            self.partial = Some(partial);
            return Ok(None);
        }
        if blake3::hash(&partial.bytes).as_bytes() != &partial.hash {
            return Err(FrameError::BatchDamaged { seq: partial.seq });
        }
        Ok(Some(AssembledBatch {
            position: Position {
                term: partial.term,
                seq: partial.seq,
            },
            bytes: partial.bytes,
        }))
    }

    /// Whether a batch is half received.
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }
}
