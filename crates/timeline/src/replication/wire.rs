//! The stream's wire format (version 1, `docs/stream-format.md`): length-prefixed frames over
//! TCP, each carrying its sender's term.
//!
//! Everything read here comes from the network and is untrusted: every length is checked
//! against the bytes present and against a bound before it is used, a batch is reassembled
//! only in order and up to its announced size (never allocated up front), and its hash is
//! checked before anyone decodes it. Nothing here panics on any input; it returns a
//! [`FrameError`] that names what was wrong.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Position;

/// Magic bytes opening every frame.
pub const MAGIC: &[u8; 4] = b"LBSF";
/// The wire format version this build speaks.
pub const WIRE_VERSION: u8 = 1;
/// Bytes of a frame header: magic, version, kind, term, payload length.
pub const HEADER_LEN: usize = 18;
/// The largest payload a frame may carry. Batches larger than this travel in several parts.
pub const MAX_FRAME_PAYLOAD: u32 = 16 << 20;
/// Bytes before the data in a batch part: seq, total, offset, blake3 of the whole batch.
pub const BATCH_PART_HEADER: usize = 8 + 8 + 8 + 32;
/// The largest control message (everything but batch parts), in bytes.
pub const MAX_CONTROL_PAYLOAD: u32 = 1 << 20;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Standby → primary, first frame: who I am and what I hold.
    Hello = 1,
    /// Primary → standby: accepted; batches follow.
    Welcome = 2,
    /// Primary → standby: what you need is no longer in my window; restore from the vault.
    Resync = 3,
    /// Either way: the connection is refused (stale term, wrong site, protocol error).
    Refuse = 4,
    /// Primary → standby: one part of a batch of changes.
    BatchPart = 5,
    /// Standby → primary: every batch up to this position is applied and durable.
    Ack = 6,
    /// Primary → standby: I am alive and lead with this term; confirm it.
    Heartbeat = 7,
    /// Standby → primary: the answer to a heartbeat.
    Confirm = 8,
}

impl FrameKind {
    fn from_byte(b: u8) -> Option<FrameKind> {
        Some(match b {
            1 => FrameKind::Hello,
            2 => FrameKind::Welcome,
            3 => FrameKind::Resync,
            4 => FrameKind::Refuse,
            5 => FrameKind::BatchPart,
            6 => FrameKind::Ack,
            7 => FrameKind::Heartbeat,
            8 => FrameKind::Confirm,
            _ => return None,
        })
    }

    /// The frame kind's name in `docs/stream-format.md`.
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "hello",
            FrameKind::Welcome => "welcome",
            FrameKind::Resync => "resync",
            FrameKind::Refuse => "refuse",
            FrameKind::BatchPart => "batch part",
            FrameKind::Ack => "ack",
            FrameKind::Heartbeat => "heartbeat",
            FrameKind::Confirm => "confirm",
        }
    }

    fn max_payload(self) -> u32 {
        match self {
            FrameKind::BatchPart => MAX_FRAME_PAYLOAD,
            FrameKind::Ack => 16,
            _ => MAX_CONTROL_PAYLOAD,
        }
    }
}

/// Why bytes from a peer were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not a stream frame at all.
    #[error(
        "not a lifeboat stream frame (magic {found:02x?}); check that the peer port belongs to lifeboat"
    )]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A wire version this build does not speak.
    #[error(
        "stream wire version {0} is not supported (this lifeboat speaks {WIRE_VERSION}); run the same lifeboat version on every node"
    )]
    UnsupportedVersion(u8),
    /// A frame kind this build does not know.
    #[error("unknown stream frame kind {0}; run the same lifeboat version on every node")]
    UnknownKind(u8),
    /// A frame longer than its kind allows.
    #[error(
        "a {kind} frame of {len} bytes is over the limit of {max} bytes; the peer is misbehaving"
    )]
    TooLarge {
        /// The frame kind.
        kind: &'static str,
        /// The announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A payload that does not have the shape its kind requires.
    #[error("a {kind} frame is malformed: {why}")]
    BadPayload {
        /// The frame kind.
        kind: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A batch larger than this node accepts.
    #[error(
        "batch {seq} announces {total} bytes, over this standby's limit of {max}; it resyncs from the vault instead"
    )]
    BatchTooLarge {
        /// The batch's seq.
        seq: u64,
        /// Its announced size.
        total: u64,
        /// The limit.
        max: u64,
    },
    /// Parts of a batch that do not follow each other.
    #[error("batch parts out of order: {why}")]
    BatchOutOfOrder {
        /// What did not follow.
        why: String,
    },
    /// A reassembled batch whose bytes do not hash to what its parts announced.
    #[error("batch {seq} arrived damaged (its hash does not match); the standby reconnects")]
    BatchDamaged {
        /// The batch's seq.
        seq: u64,
    },
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the payload is.
    pub kind: FrameKind,
    /// The sender's term: the primary's own, or the highest a standby has seen.
    pub term: u64,
    /// Payload length in bytes.
    pub len: u32,
}

impl FrameHeader {
    /// Checks and decodes a header: magic, version, kind, and the payload length against
    /// the kind's limit, before anything is read or allocated for the payload.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<FrameHeader, FrameError> {
        let magic: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
        if &magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        if bytes[4] != WIRE_VERSION {
            return Err(FrameError::UnsupportedVersion(bytes[4]));
        }
        let kind = FrameKind::from_byte(bytes[5]).ok_or(FrameError::UnknownKind(bytes[5]))?;
        let term = u64::from_be_bytes(bytes[6..14].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(bytes[14..18].try_into().expect("4 bytes"));
        if len > kind.max_payload() {
            return Err(FrameError::TooLarge {
                kind: kind.name(),
                len,
                max: kind.max_payload(),
            });
        }
        Ok(FrameHeader { kind, term, len })
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4] = WIRE_VERSION;
        out[5] = self.kind as u8;
        out[6..14].copy_from_slice(&self.term.to_be_bytes());
        out[14..18].copy_from_slice(&self.len.to_be_bytes());
        out
    }
}

/// Where one source of a standby stands: the capture epoch and seq of the last record
/// applied, and the term of the primary that sent it (0 when it came from the vault).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    /// Capture session of the last record applied.
    pub epoch: u64,
    /// Its seq in the source's capture sequence.
    pub seq: u64,
    /// The term of the primary it was streamed from; 0 when it came from a vault restore.
    #[serde(default)]
    pub term: u64,
}

/// Standby → primary: the first frame of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The site (`[site] name`); a primary of another site refuses.
    pub site: String,
    /// The standby's node name.
    pub node: String,
    /// The standby's zone.
    pub zone: String,
    /// The last batch position applied and durable (`{0, 0}` when none since a vault
    /// restore).
    pub applied: Position,
    /// Per source (database or data dir, relative to the site dir): the last record applied.
    pub sources: BTreeMap<String, SourcePosition>,
    /// The largest batch the standby accepts, in bytes.
    pub max_batch_bytes: u64,
}

/// Primary → standby: the connection is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The site.
    pub site: String,
    /// The primary's node name.
    pub node: String,
    /// The primary's zone.
    pub zone: String,
    /// The standby already holds every batch up to this position (counted as acknowledged);
    /// batches after it follow.
    pub credited: Position,
}

/// Primary → standby: restore from the vault, then reconnect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resync {
    /// Why, in words for the standby's status.
    pub reason: String,
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The other side's term is older than one this side has seen.
    StaleTerm,
    /// The other side serves another site.
    WrongSite,
    /// The two sides capture different databases or data dirs.
    SourcesDiffer,
    /// The other side broke the protocol.
    Protocol,
    /// The primary is shutting down.
    ShuttingDown,
    /// Anything else.
    #[serde(other)]
    Other,
}

/// Either way: the sender closes the connection after this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// What kind of refusal.
    pub code: RefusalCode,
    /// In words.
    pub reason: String,
}

/// Primary → standby: a liveness probe that doubles as the failsafe request ("I lead with
/// this term; confirm that you will not take over").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Increases with every heartbeat of the connection; the confirmation repeats it.
    pub id: u64,
    /// The primary's node name.
    pub leader: String,
    /// The members the primary counts on in failsafe mode (empty when it does not say).
    #[serde(default)]
    pub members: Vec<String>,
}

/// Standby → primary: the answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The heartbeat answered.
    pub id: u64,
    /// Whether the standby confirms the primary (and promises not to take over for a TTL).
    pub confirmed: bool,
    /// Why not, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_because: Option<String>,
}

/// One part of a batch: `data` is the batch's bytes from `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPart {
    /// The batch's seq (its term is the frame's).
    pub seq: u64,
    /// The whole batch's size in bytes.
    pub total: u64,
    /// Where `data` starts in the batch.
    pub offset: u64,
    /// blake3 of the whole batch.
    pub hash: [u8; 32],
    /// The bytes.
    pub data: Vec<u8>,
}

/// A frame's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Resync`].
    Resync(Resync),
    /// See [`Refusal`].
    Refuse(Refusal),
    /// See [`BatchPart`].
    BatchPart(BatchPart),
    /// Every batch up to this position is applied and durable on the standby.
    Ack(Position),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`Confirmation`].
    Confirm(Confirmation),
}

impl Message {
    /// The kind of frame carrying it.
    pub fn kind(&self) -> FrameKind {
        match self {
            Message::Hello(_) => FrameKind::Hello,
            Message::Welcome(_) => FrameKind::Welcome,
            Message::Resync(_) => FrameKind::Resync,
            Message::Refuse(_) => FrameKind::Refuse,
            Message::BatchPart(_) => FrameKind::BatchPart,
            Message::Ack(_) => FrameKind::Ack,
            Message::Heartbeat(_) => FrameKind::Heartbeat,
            Message::Confirm(_) => FrameKind::Confirm,
        }
    }
}

/// A whole frame: the sender's term and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The sender's term.
    pub term: u64,
    /// What it says.
    pub message: Message,
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("plain data serialises")
}

fn from_json<'a, T: Deserialize<'a>>(kind: FrameKind, payload: &'a [u8]) -> Result<T, FrameError> {
    serde_json::from_slice(payload).map_err(|e| FrameError::BadPayload {
        kind: kind.name(),
        why: e.to_string(),
    })
}

impl Frame {
    /// The frame's bytes. Panics only on a caller's bug: a batch part larger than
    /// [`MAX_FRAME_PAYLOAD`] (the feed splits batches before).
    pub fn encode(&self) -> Vec<u8> {
        let payload = match &self.message {
            Message::Hello(m) => json(m),
            Message::Welcome(m) => json(m),
            Message::Resync(m) => json(m),
            Message::Refuse(m) => json(m),
            Message::Heartbeat(m) => json(m),
            Message::Confirm(m) => json(m),
            Message::Ack(p) => {
                let mut out = Vec::with_capacity(16);
                out.extend_from_slice(&p.term.to_be_bytes());
                out.extend_from_slice(&p.seq.to_be_bytes());
                out
            }
            Message::BatchPart(p) => {
                let mut out = Vec::with_capacity(BATCH_PART_HEADER + p.data.len());
                out.extend_from_slice(&p.seq.to_be_bytes());
                out.extend_from_slice(&p.total.to_be_bytes());
                out.extend_from_slice(&p.offset.to_be_bytes());
                out.extend_from_slice(&p.hash);
                out.extend_from_slice(&p.data);
                out
            }
        };
        let kind = self.message.kind();
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l <= kind.max_payload())
            .expect("frames are built within their kind's limit");
        let header = FrameHeader {
            kind,
            term: self.term,
            len,
        };
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(&payload);
        out
    }

    /// Decodes a payload of `header.len` bytes.
    pub fn decode(header: &FrameHeader, payload: &[u8]) -> Result<Frame, FrameError> {
        let kind = header.kind;
        if payload.len() != header.len as usize {
            return Err(FrameError::BadPayload {
                kind: kind.name(),
                why: format!(
                    "{} bytes where the header says {}",
                    payload.len(),
                    header.len
                ),
            });
        }
        let message = match kind {
            FrameKind::Hello => Message::Hello(from_json(kind, payload)?),
            FrameKind::Welcome => Message::Welcome(from_json(kind, payload)?),
            FrameKind::Resync => Message::Resync(from_json(kind, payload)?),
            FrameKind::Refuse => Message::Refuse(from_json(kind, payload)?),
            FrameKind::Heartbeat => Message::Heartbeat(from_json(kind, payload)?),
            FrameKind::Confirm => Message::Confirm(from_json(kind, payload)?),
            FrameKind::Ack => {
                let bytes: [u8; 16] = payload.try_into().map_err(|_| FrameError::BadPayload {
                    kind: kind.name(),
                    why: format!("{} bytes where 16 are expected", payload.len()),
                })?;
                Message::Ack(Position {
                    term: u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
                    seq: u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes")),
                })
            }
            FrameKind::BatchPart => {
                if payload.len() < BATCH_PART_HEADER {
                    return Err(FrameError::BadPayload {
                        kind: kind.name(),
                        why: format!(
                            "{} bytes, shorter than the {BATCH_PART_HEADER}-byte part header",
                            payload.len()
                        ),
                    });
                }
                let u64_at = |at: usize| {
                    u64::from_be_bytes(payload[at..at + 8].try_into().expect("8 bytes"))
                };
                Message::BatchPart(BatchPart {
                    seq: u64_at(0),
                    total: u64_at(8),
                    offset: u64_at(16),
                    hash: payload[24..56].try_into().expect("32 bytes"),
                    data: payload[BATCH_PART_HEADER..].to_vec(),
                })
            }
        };
        Ok(Frame {
            term: header.term,
            message,
        })
    }
}

/// Why reading a frame from a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection failed or closed in the middle of a frame.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The bytes were not a valid frame.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// A sealed record did not open (`sealed`): altered, replayed, or from a peer without
    /// the site's vault key.
    #[error("{0}")]
    Sealed(String),
}

/// Reads one frame. `Ok(None)` when the peer closed the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, ReadError> {
    let mut header = [0u8; HEADER_LEN];
    // A clean close is only one that happens before the first byte of a frame.
    let n = r.read(&mut header).await?;
    if n == 0 {
        return Ok(None);
    }
    r.read_exact(&mut header[n..]).await?;
    let header = FrameHeader::parse(&header)?;
    // The length was checked against the kind's bound above: this allocation is bounded.
    let mut payload = vec![0u8; header.len as usize];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame::decode(&header, &payload)?))
}

/// Writes one frame (not flushed: the caller flushes when it has nothing more to send).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    w.write_all(&frame.encode()).await
}

mod parts;
pub use parts::{AssembledBatch, BatchAssembler, batch_parts};

#[cfg(test)]
mod tests;
