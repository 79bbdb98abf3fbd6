//! Keys and sealing. A repository has two random 32-byte keys: the data key (XChaCha20-Poly1305)
//! and the id key (keyed BLAKE3, so chunk ids reveal nothing about content to someone without
//! the password). Both are wrapped by a key derived from the password with argon2id and stored
//! in `keys/<id>`. Nothing here is home-made: we only compose audited primitives.
use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Bytes of the random nonce in front of every sealed message.
pub const NONCE_LEN: usize = 24;
/// Bytes of authentication tag after every sealed message.
pub const TAG_LEN: usize = 16;

/// A 32-byte id: of a chunk/tree blob (keyed BLAKE3 of its plaintext) or of an object
/// (plain BLAKE3 of its stored bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Id> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| Error::Corrupt(format!("{s:?} is not a 64-character hex id")))?;
        Ok(Id(out))
    }
    /// The plain BLAKE3 hash of stored bytes: names packs, indexes and snapshots so every read
    /// can check what it got.
    pub fn of_object(bytes: &[u8]) -> Id {
        Id(*blake3::hash(bytes).as_bytes())
    }
}

impl std::fmt::Debug for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Id, D::Error> {
        let s = String::deserialize(d)?;
        Id::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// The secret keys of one repository.
#[derive(Clone)]
pub struct Keys {
    data: [u8; 32],
    ids: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<secret>)")
    }
}

/// How hard the password is stretched. Stored next to the wrapped key, so a reader needs no
/// configuration. New keys get [`KdfParams::strong`] unless a caller asks, by name, for
/// [`KdfParams::insecure_fast`] (tests, and `vault init --insecure-fast-kdf`); nothing in the
/// environment changes it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// Minimal stretching, for tests only: never use it for a real repository. A key wrapped
    /// with it [`is_weak`](KdfParams::is_weak), which `vault status` and `vault verify` report.
    pub fn insecure_fast() -> KdfParams {
        KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    /// The default: OWASP's first recommended argon2id configuration (46 MiB, 1 pass), costly
    /// to attack at scale, yet every command pays it only once (~0.1 s).
    pub fn strong() -> KdfParams {
        KdfParams {
            memory_kib: 46 * 1024,
            iterations: 1,
            parallelism: 1,
        }
    }

    /// Whether these parameters stretch a password less than every argon2id configuration
    /// OWASP recommends (the weakest of them: 7 MiB with 5 passes, i.e. at least 7 MiB and
    /// 35 MiB·passes): a copy of a key wrapped so lets guesses go fast.
    pub fn is_weak(&self) -> bool {
        const MIN_MEMORY_KIB: u64 = 7 * 1024;
        const MIN_MEMORY_PASSES_KIB: u64 = 35 * 1024;
        let memory = u64::from(self.memory_kib);
        memory < MIN_MEMORY_KIB || memory * u64::from(self.iterations) < MIN_MEMORY_PASSES_KIB
    }
}

impl Default for KdfParams {
    fn default() -> KdfParams {
        KdfParams::strong()
    }
}

/// A key file of a repository and how hard it stretches the password.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KeyInfo {
    /// Its object key, `keys/<hex>`.
    pub key: String,
    pub kdf: KdfParams,
    /// Stretched less than any recommended configuration ([`KdfParams::is_weak`]).
    pub weak: bool,
}

impl KeyInfo {
    pub(crate) fn new(key: String, kdf: KdfParams) -> KeyInfo {
        KeyInfo {
            key,
            kdf,
            weak: kdf.is_weak(),
        }
    }
}

/// The stored form of a password-wrapped key (`keys/<id>`), plain JSON.
#[derive(Serialize, Deserialize)]
pub struct KeyFile {
    pub kdf: String,
    pub params: KdfParams,
    pub salt: String,
    pub sealed_keys: String,
    pub created: String,
}

#[derive(Serialize, Deserialize)]
struct KeyMaterial {
    data: String,
    ids: String,
}

/// The key-encryption key; `Err` says why `p` or `salt` cannot be used.
fn derive(password: &[u8], salt: &[u8], p: KdfParams) -> std::result::Result<[u8; 32], String> {
    let params = Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
        .map_err(|e| format!("unusable argon2 parameters: {e}"))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password, salt, &mut out)
        .map_err(|e| format!("argon2id failed: {e}"))?;
    Ok(out)
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

impl Keys {
    /// A 32-byte key for another purpose, named by `context` (a fixed, unique string such as
    /// "lifeboat 2026-12 stream psk"), derived from the repository's data key with blake3's
    /// key derivation: whoever holds the repository's key gets the same one, and it reveals
    /// nothing of the data key.
    pub fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.data)
    }

    /// A public name of these keys (hex): equal for the same keys, and revealing nothing of
    /// them. The repository's config records it.
    pub fn fingerprint(&self) -> String {
        let mut both = [0u8; 64];
        both[..32].copy_from_slice(&self.data);
        both[32..].copy_from_slice(&self.ids);
        hex::encode(blake3::derive_key(
            "lifeboat 2026-12-05 vault key fingerprint v1",
            &both,
        ))
    }

    /// Fresh random keys for a new repository.
    pub fn generate() -> Keys {
        Keys {
            data: random_bytes(),
            ids: random_bytes(),
        }
    }

    /// Wraps these keys with `password`.
    pub fn wrap(&self, password: &[u8], params: KdfParams, created: String) -> Result<KeyFile> {
        let salt: [u8; 16] = random_bytes();
        let kek = derive(password, &salt, params).map_err(Error::InvalidInput)?;
        let material = serde_json::to_vec(&KeyMaterial {
            data: hex::encode(self.data),
            ids: hex::encode(self.ids),
        })
        .expect("key material serializes");
        let sealed = seal_with(&kek, &material, b"lifeboat-key");
        Ok(KeyFile {
            kdf: "argon2id".into(),
            params,
            salt: hex::encode(salt),
            sealed_keys: hex::encode(sealed),
            created,
        })
    }

    /// Unwraps a key file: `Ok(None)` when the password does not open it, `Err` saying what
    /// is wrong when the file itself cannot be used (a damaged file is not a wrong password).
    pub fn unwrap(file: &KeyFile, password: &[u8]) -> std::result::Result<Option<Keys>, String> {
        if file.kdf != "argon2id" {
            return Err(format!("unknown key derivation {:?}", file.kdf));
        }
        let salt = hex::decode(&file.salt).map_err(|_| "its salt is not hex".to_string())?;
        let sealed =
            hex::decode(&file.sealed_keys).map_err(|_| "its sealed key is not hex".to_string())?;
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err("its sealed key is too short".into());
        }
        let kek = derive(password, &salt, file.params)?;
        let Some(material) = open_with(&kek, &sealed, b"lifeboat-key") else {
            return Ok(None);
        };
        let m: KeyMaterial =
            serde_json::from_slice(&material).map_err(|e| format!("its key material: {e}"))?;
        let mut keys = Keys {
            data: [0; 32],
            ids: [0; 32],
        };
        hex::decode_to_slice(&m.data, &mut keys.data)
            .and_then(|_| hex::decode_to_slice(&m.ids, &mut keys.ids))
            .map_err(|_| "its key material is not hex".to_string())?;
        Ok(Some(keys))
    }

    /// The id of a blob's plaintext: keyed BLAKE3.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.ids, plaintext).as_bytes())
    }

    /// Encrypts `plaintext` (nonce || ciphertext || tag), binding it to `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        seal_with(&self.data, plaintext, aad)
    }

    /// Decrypts what [`Keys::seal`] produced; `None` if it was altered or `aad` differs.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.data, sealed, aad)
    }

    /// Compresses (zstd, when it helps) then seals. Layout of the plaintext: one flag byte
    /// (0 = stored, 1 = zstd) followed by the payload.
    pub fn pack_payload(&self, data: &[u8], aad: &[u8]) -> Vec<u8> {
        self.pack_payload_with(data, aad, &mut Packer::default())
    }

    /// Like [`Keys::pack_payload`], reusing the compression context and buffer of `packer`
    /// (the write pipeline's workers keep one each: no context set-up or large allocation per
    /// blob).
    pub fn pack_payload_with(&self, data: &[u8], aad: &[u8], packer: &mut Packer) -> Vec<u8> {
        let compressed = if looks_incompressible(data) {
            None
        } else {
            packer.compress(data)
        };
        let body = match compressed {
            Some(c) if c.len() + 64 < data.len() => c,
            _ => data,
        };
        let mut buf = Vec::with_capacity(NONCE_LEN + 1 + body.len() + TAG_LEN);
        buf.extend_from_slice(&random_bytes::<NONCE_LEN>());
        buf.push(if body.len() < data.len() { 1 } else { 0 });
        buf.extend_from_slice(body);
        seal_in_place(&self.data, buf, aad)
    }

    /// Reverses [`Keys::pack_payload`]. `max_len` bounds the decompressed size.
    pub fn unpack_payload(&self, sealed: &[u8], aad: &[u8], max_len: usize) -> Option<Vec<u8>> {
        let mut plain = self.open(sealed, aad)?;
        match plain.split_first()? {
            (0, _) => {
                plain.drain(..1);
                Some(plain)
            }
            (1, rest) => {
                // Size the buffer from the frame header when it says (our writers always do),
                // instead of reserving `max_len` for every blob.
                let cap = match zstd::zstd_safe::get_frame_content_size(rest) {
                    Ok(Some(n)) if n <= max_len as u64 => n as usize,
                    Ok(Some(_)) => return None,
                    _ => max_len,
                };
                zstd::bulk::decompress(rest, cap).ok()
            }
            _ => None,
        }
    }
}

/// The zstd level of stored blobs. On the benchmark's text and logs, level 2 stores 1 % more
/// than level 3 (zstd's default) in about 20 % less time; level 1 stores 20 % more.
const ZSTD_LEVEL: i32 = 2;

/// Reuses a compression context and its output buffer across many
/// [`Keys::pack_payload_with`] calls.
#[derive(Default)]
pub struct Packer {
    compressor: Option<zstd::bulk::Compressor<'static>>,
    out: Vec<u8>,
}

impl Packer {
    /// `data` compressed at [`ZSTD_LEVEL`], or `None` if zstd failed (the data is then stored as
    /// is).
    fn compress(&mut self, data: &[u8]) -> Option<&[u8]> {
        let compressor = match &mut self.compressor {
            Some(c) => c,
            none => none.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()?),
        };
        self.out.clear();
        self.out
            .reserve(zstd::zstd_safe::compress_bound(data.len()));
        compressor.compress_to_buffer(data, &mut self.out).ok()?;
        Some(&self.out)
    }
}

/// Reuses buffers and a decompression context across many [`Keys::unpack_in_place`] calls.
#[derive(Default)]
pub struct Unpacker {
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    out: Vec<u8>,
}

impl Keys {
    /// Like [`Keys::unpack_payload`], but decrypts in place (the sealed bytes are overwritten)
    /// and decompresses into a buffer owned by `unpacker`, so opening a blob copies nothing
    /// and allocates nothing after the first blob. `raw_len` is the expected plaintext length
    /// (from the index); anything else is refused.
    pub fn unpack_in_place<'a>(
        &self,
        sealed: &'a mut [u8],
        aad: &[u8],
        raw_len: usize,
        unpacker: &'a mut Unpacker,
    ) -> Option<&'a [u8]> {
        if sealed.len() < NONCE_LEN + 1 + TAG_LEN || raw_len > crate::format::MAX_BLOB_LEN {
            return None;
        }
        let (nonce, rest) = sealed.split_at_mut(NONCE_LEN);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        XChaCha20Poly1305::new((&self.data).into())
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                aad,
                body,
                chacha20poly1305::Tag::from_slice(tag),
            )
            .ok()?;
        let (flag, payload) = body.split_first()?;
        let plain: &'a [u8] = match flag {
            0 => payload,
            1 => {
                let out = &mut unpacker.out;
                out.clear();
                out.reserve(raw_len);
                let dec = match &mut unpacker.decompressor {
                    Some(d) => d,
                    none => none.insert(zstd::bulk::Decompressor::new().ok()?),
                };
                dec.decompress_to_buffer(payload, out).ok()?;
                &out[..]
            }
            _ => return None,
        };
        (plain.len() == raw_len).then_some(plain)
    }
}

/// Whether compressing is pointless (media, archives, encrypted data): a quick level-1 probe of
/// a 64 KiB sample saves less than 3%. Small blobs are always tried.
fn looks_incompressible(data: &[u8]) -> bool {
    const SAMPLE: usize = 64 * 1024;
    if data.len() < 4 * SAMPLE {
        return false;
    }
    let mid = data.len() / 2;
    let sample = &data[mid - SAMPLE / 2..mid + SAMPLE / 2];
    match zstd::bulk::compress(sample, 1) {
        Ok(c) => c.len() * 100 > sample.len() * 97,
        Err(_) => false,
    }
}

fn seal_with(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(NONCE_LEN + 1 + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&random_bytes::<NONCE_LEN>());
    out.extend_from_slice(plaintext);
    seal_in_place(key, out, aad)
}

/// Encrypts `buf[NONCE_LEN..]` in place (the nonce is `buf[..NONCE_LEN]`) and appends the tag:
/// one buffer from plaintext to sealed bytes, no copies.
fn seal_in_place(key: &[u8; 32], mut buf: Vec<u8>, aad: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let (nonce, body) = buf.split_at_mut(NONCE_LEN);
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(nonce), aad, body)
        .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
    buf.extend_from_slice(&tag);
    buf
}

fn open_with(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(key.into());
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_keys_open_only_with_the_right_password() {
        let keys = Keys::generate();
        let file = keys
            .wrap(
                b"right",
                KdfParams {
                    memory_kib: 64,
                    iterations: 1,
                    parallelism: 1,
                },
                "t".into(),
            )
            .unwrap();
        let opened = Keys::unwrap(&file, b"right")
            .unwrap()
            .expect("right password opens");
        assert_eq!(opened.blob_id(b"x"), keys.blob_id(b"x"));
        assert!(Keys::unwrap(&file, b"wrong").unwrap().is_none());
    }

    #[test]
    fn only_stretching_below_every_recommended_configuration_is_weak() {
        assert!(!KdfParams::strong().is_weak());
        assert!(KdfParams::insecure_fast().is_weak());
        let p = |memory_kib, iterations| KdfParams {
            memory_kib,
            iterations,
            parallelism: 1,
        };
        // OWASP's argon2id configurations are all strong enough.
        for (m, t) in [(47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5)] {
            assert!(!p(m, t).is_weak(), "{m} KiB, {t} passes");
        }
        assert!(p(19456, 1).is_weak());
        assert!(p(4096, 100).is_weak());
    }

    #[test]
    fn text_is_compressed_and_random_bytes_are_stored_as_is() {
        let keys = Keys::generate();
        let text = b"GET /index.html 200\n".repeat(50_000);
        assert!(keys.pack_payload(&text, b"").len() < text.len() / 10);
        let mut noise = vec![0u8; 1 << 20];
        rand::rng().fill_bytes(&mut noise);
        let sealed = keys.pack_payload(&noise, b"");
        assert_eq!(sealed.len(), noise.len() + 1 + NONCE_LEN + TAG_LEN);
        assert_eq!(keys.unpack_payload(&sealed, b"", 2 << 20).unwrap(), noise);
    }

    #[test]
    fn a_flipped_byte_is_detected() {
        let keys = Keys::generate();
        let mut sealed = keys.pack_payload(&vec![7u8; 10_000], b"");
        assert_eq!(
            keys.unpack_payload(&sealed, b"", 20_000).unwrap(),
            vec![7u8; 10_000]
        );
        let n = sealed.len() / 2;
        sealed[n] ^= 1;
        assert!(keys.unpack_payload(&sealed, b"", 20_000).is_none());
    }
}
