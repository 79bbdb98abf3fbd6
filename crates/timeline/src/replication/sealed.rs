//! The stream's transport: every connection between a primary and a standby is authenticated
//! and encrypted with the Noise protocol (`Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`, through
//! the `snow` crate) keyed by a pre-shared key every node derives from the site's vault key
//! ([`StreamKey`]). A peer without the vault key can neither read the site's changes off the
//! network nor connect as a standby (and so never acknowledges a write it does not hold), nor
//! pose as a primary. Frames (`wire`) travel inside records: `u16` length (big-endian), then
//! one Noise transport message of at most 65535 bytes (a frame is split across as many as it
//! needs). Nonces count records per direction, so a replayed, dropped or reordered record
//! fails authentication and ends the connection. Layout: `docs/stream-format.md`.
//!
//! Reading is cancel-safe: everything read is kept in the reader between calls, and the only
//! await is one `read_buf`, so a `read_frame` dropped in a `select!` loses nothing.

use std::sync::Arc;
use std::time::Duration;

pub use snow::StatelessTransportState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::wire::{Frame, FrameHeader, HEADER_LEN, ReadError};

const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Binds the handshake to this protocol and its version.
const PROLOGUE: &[u8] = b"lifeboat stream 2";
/// The largest Noise message.
const MAX_RECORD: usize = 65535;
/// The AEAD tag of each record.
const TAG_LEN: usize = 16;
/// Plaintext bytes per record.
const CHUNK: usize = MAX_RECORD - TAG_LEN;

/// The key a site's nodes authenticate and encrypt their stream with. Derive it from the
/// vault: `StreamKey::new(repo.derive_key(StreamKey::CONTEXT))`.
#[derive(Clone)]
pub struct StreamKey([u8; 32]);

impl StreamKey {
    /// The key-derivation context of the stream's key.
    pub const CONTEXT: &'static str = "lifeboat 2026-12-05 stream pre-shared key v1";

    /// A key from 32 secret bytes.
    pub fn new(bytes: [u8; 32]) -> StreamKey {
        StreamKey(bytes)
    }
}

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamKey(<secret>)")
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The connection failed or closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer's handshake did not authenticate: it holds another vault key, or speaks
    /// another protocol version.
    #[error(
        "the peer could not prove it holds this site's vault key (or runs another lifeboat version): {0}; give every node the same .lifeboat/vault.key and the same lifeboat"
    )]
    Refused(String),
    /// The peer did not finish the handshake in time.
    #[error("the peer did not finish the handshake in {0:?}")]
    Timeout(Duration),
}

fn builder(key: &StreamKey) -> snow::Builder<'_> {
    snow::Builder::new(PATTERN.parse().expect("a valid Noise pattern"))
        .prologue(PROLOGUE)
        .expect("prologue set once")
        .psk(0, &key.0)
        .expect("psk set once")
}

async fn send_handshake<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    w.write_all(&out).await?;
    w.flush().await
}

/// Each handshake message of this pattern is an ephemeral key and an empty payload's tag.
const HANDSHAKE_LEN: usize = 32 + TAG_LEN;

async fn read_handshake<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, HandshakeError> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let len = u16::from_be_bytes(len) as usize;
    // Anything else (an HTTP request, the plaintext protocol of an older lifeboat) is not
    // waited for.
    if len != HANDSHAKE_LEN {
        return Err(HandshakeError::Refused(format!(
            "a handshake message of {len} bytes, not {HANDSHAKE_LEN}: not a lifeboat stream handshake"
        )));
    }
    let mut msg = vec![0u8; len];
    r.read_exact(&mut msg).await?;
    Ok(msg)
}

/// The standby's side of the handshake (it connects).
pub async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &StreamKey,
    within: Duration,
) -> Result<Arc<StatelessTransportState>, HandshakeError> {
    let refused = |e: snow::Error| HandshakeError::Refused(e.to_string());
    let run = async {
        let mut hs = builder(key).build_initiator().map_err(refused)?;
        let mut buf = vec![0u8; MAX_RECORD];
        let n = hs.write_message(&[], &mut buf).map_err(refused)?;
        send_handshake(stream, &buf[..n]).await?;
        let reply = read_handshake(stream).await?;
        hs.read_message(&reply, &mut buf).map_err(refused)?;
        Ok(Arc::new(
            hs.into_stateless_transport_mode().map_err(refused)?,
        ))
    };
    tokio::time::timeout(within, run)
        .await
        .map_err(|_| HandshakeError::Timeout(within))?
}

/// The primary's side of the handshake (it accepts).
pub async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &StreamKey,
    within: Duration,
) -> Result<Arc<StatelessTransportState>, HandshakeError> {
    let refused = |e: snow::Error| HandshakeError::Refused(e.to_string());
    let run = async {
        let mut hs = builder(key).build_responder().map_err(refused)?;
        let mut buf = vec![0u8; MAX_RECORD];
        let first = read_handshake(stream).await?;
        hs.read_message(&first, &mut buf).map_err(refused)?;
        let n = hs.write_message(&[], &mut buf).map_err(refused)?;
        send_handshake(stream, &buf[..n]).await?;
        Ok(Arc::new(
            hs.into_stateless_transport_mode().map_err(refused)?,
        ))
    };
    tokio::time::timeout(within, run)
        .await
        .map_err(|_| HandshakeError::Timeout(within))?
}

/// Reads frames out of sealed records.
pub struct SealedReader<R> {
    inner: R,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    /// Bytes read and not yet opened (at most a record and a read's worth).
    raw: Vec<u8>,
    /// Opened bytes not yet returned as frames (at most a frame and a record).
    plain: Vec<u8>,
}

impl<R: AsyncRead + Unpin> SealedReader<R> {
    pub fn new(inner: R, transport: Arc<StatelessTransportState>) -> Self {
        SealedReader {
            inner,
            transport,
            nonce: 0,
            raw: Vec::with_capacity(2 * MAX_RECORD),
            plain: Vec::new(),
        }
    }

    /// Reads one frame. `Ok(None)` when the peer closed the connection between frames. The
    /// frame's header is checked (kind, length bound) as soon as it is opened, before the
    /// payload is gathered.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if self.plain.len() >= HEADER_LEN {
                let header: [u8; HEADER_LEN] = self.plain[..HEADER_LEN]
                    .try_into()
                    .expect("HEADER_LEN bytes");
                let header = FrameHeader::parse(&header)?;
                let end = HEADER_LEN + header.len as usize;
                if self.plain.len() >= end {
                    let frame = Frame::decode(&header, &self.plain[HEADER_LEN..end])?;
                    self.plain.drain(..end);
                    return Ok(Some(frame));
                }
            }
            if self.raw.len() >= 2 {
                let n = u16::from_be_bytes([self.raw[0], self.raw[1]]) as usize;
                if n < TAG_LEN {
                    return Err(sealing_failed("a record shorter than its tag"));
                }
                if self.raw.len() >= 2 + n {
                    let start = self.plain.len();
                    self.plain.resize(start + n - TAG_LEN, 0);
                    let opened = self.transport.read_message(
                        self.nonce,
                        &self.raw[2..2 + n],
                        &mut self.plain[start..],
                    );
                    match opened {
                        Ok(len) => self.plain.truncate(start + len),
                        Err(_) => {
                            return Err(sealing_failed(
                                "a record failed authentication (altered on the way, or sent by a peer without this site's vault key)",
                            ));
                        }
                    }
                    self.nonce += 1;
                    self.raw.drain(..2 + n);
                    continue;
                }
            }
            if self.raw.capacity() - self.raw.len() < MAX_RECORD {
                self.raw.reserve(MAX_RECORD);
            }
            let read = self.inner.read_buf(&mut self.raw).await?;
            if read == 0 {
                if self.raw.is_empty() && self.plain.is_empty() {
                    return Ok(None);
                }
                return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

fn sealing_failed(why: &str) -> ReadError {
    ReadError::Sealed(why.to_string())
}

/// Writes frames as sealed records (buffered: [`SealedWriter::flush`] sends them).
pub struct SealedWriter<W> {
    inner: W,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    sealed: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> SealedWriter<W> {
    pub fn new(inner: W, transport: Arc<StatelessTransportState>) -> Self {
        SealedWriter {
            inner,
            transport,
            nonce: 0,
            sealed: Vec::with_capacity(2 + MAX_RECORD),
        }
    }

    /// Writes one frame (not flushed: the caller flushes when it has nothing more to send).
    pub async fn write_frame(&mut self, frame: &Frame) -> std::io::Result<()> {
        self.write_bytes(&frame.encode()).await
    }

    /// Seals any bytes (a frame's, or a test's deliberately broken ones).
    pub async fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        for chunk in bytes.chunks(CHUNK) {
            self.sealed.clear();
            self.sealed.resize(2 + chunk.len() + TAG_LEN, 0);
            let n = self
                .transport
                .write_message(self.nonce, chunk, &mut self.sealed[2..])
                .map_err(|e| std::io::Error::other(format!("sealing a record: {e}")))?;
            self.nonce += 1;
            self.sealed[..2].copy_from_slice(&(n as u16).to_be_bytes());
            self.inner.write_all(&self.sealed[..2 + n]).await?;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().await
    }

    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.inner.shutdown().await
    }
}

#[cfg(test)]
mod tests;
