//! The session blob envelope: an AES-256-GCM ciphertext with a small authenticated header.
//!
//! Layout (format version 1), all integers big-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `WFSB` |
//! | 4 | 1 | format version, `1` |
//! | 5 | 8 | key id of the master key ([`KeyId`]) |
//! | 13 | 8 | epoch: the lease epoch of the worker that wrote it |
//! | 21 | 1 | session id length `n` (1..=129) |
//! | 22 | n | session id (ASCII, see [`SessionId`]) |
//! | 22+n | 12 | nonce (random per seal) |
//! | 34+n | rest | AES-256-GCM ciphertext followed by its 16-byte tag |
//!
//! The data key is HKDF-SHA256 of the master key with info `wafleet-blob data-key v1 ||
//! 0x00 || session id` (see [`MasterKey`]), so each session has its own key. The AAD is the
//! whole header before the nonce (magic, version, key id, epoch, session id): changing any
//! header byte, the nonce, the ciphertext or the tag fails authentication.
//!
//! Opening checks, in order: length, magic, version, session id (against the expected one),
//! key id (known to the keyring), then authentication. Each failure is its own
//! [`BlobError`]; nothing panics on any input.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::keyring::{KeyId, Keyring, MasterKey, KEY_ID_LEN};
use crate::session_id::SessionId;

/// First four bytes of every envelope.
pub const MAGIC: [u8; 4] = *b"WFSB";
/// The envelope format this code writes.
pub const FORMAT_VERSION: u8 = 1;
/// Nonce length (AES-GCM's 96 bits).
pub const NONCE_LEN: usize = 12;
/// Authentication tag length.
pub const TAG_LEN: usize = 16;
/// Bytes before the session id: magic, version, key id, epoch, session id length.
const FIXED_HEADER_LEN: usize = 4 + 1 + KEY_ID_LEN + 8 + 1;

/// Why an envelope could not be opened (or sealed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// Fewer bytes than the header and tag need.
    #[error("session blob truncated: {got} bytes, at least {needed} needed")]
    Truncated {
        /// Bytes needed to go on.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The first four bytes are not `WFSB`.
    #[error("not a wafleet session blob (bad magic)")]
    BadMagic,
    /// A format version this code does not read.
    #[error("unsupported session blob format version {0}")]
    UnsupportedVersion(u8),
    /// The header's session id is not a valid session id.
    #[error("session blob header holds an invalid session id")]
    BadSessionId,
    /// The blob belongs to another session.
    #[error("session blob is for session {found:?}, expected {expected:?}")]
    SessionMismatch {
        /// The session the caller asked for.
        expected: String,
        /// The session in the header.
        found: String,
    },
    /// The blob was sealed under a master key this keyring does not hold.
    #[error("session blob sealed under unknown master key {0}")]
    UnknownKeyId(KeyId),
    /// The blob was written at a higher epoch than the caller's lease: a newer owner
    /// exists, and the caller is stale.
    #[error("session blob written at epoch {blob_epoch}, after this lease's epoch {lease_epoch}")]
    EpochAhead {
        /// Epoch in the blob.
        blob_epoch: u64,
        /// The caller's lease epoch.
        lease_epoch: u64,
    },
    /// Authentication failed: the blob was altered, or the master key is wrong.
    #[error("session blob failed authentication (tampered, or wrong master key)")]
    AuthenticationFailed,
    /// AES-GCM refused to encrypt (plaintext beyond its length limit).
    #[error("session blob encryption failed")]
    EncryptionFailed,
}

/// A parsed, not yet decrypted envelope borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub struct SessionBlob<'a> {
    key_id: KeyId,
    epoch: u64,
    session_id: &'a str,
    header: &'a [u8],
    nonce: &'a [u8],
    ciphertext: &'a [u8],
}

/// A decrypted blob.
#[derive(Debug)]
pub struct OpenedBlob {
    /// The epoch the blob was written at.
    pub epoch: u64,
    /// The master key that sealed it.
    pub key_id: KeyId,
    /// The session state, zeroized on drop.
    pub plaintext: Zeroizing<Vec<u8>>,
}

impl<'a> SessionBlob<'a> {
    /// Parses the header. Never panics; every malformed input is a [`BlobError`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BlobError> {
        let need = |needed: usize| {
            if bytes.len() < needed {
                Err(BlobError::Truncated {
                    needed,
                    got: bytes.len(),
                })
            } else {
                Ok(())
            }
        };
        need(MAGIC.len())?;
        if bytes[..4] != MAGIC {
            return Err(BlobError::BadMagic);
        }
        need(5)?;
        if bytes[4] != FORMAT_VERSION {
            return Err(BlobError::UnsupportedVersion(bytes[4]));
        }
        need(FIXED_HEADER_LEN)?;
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&bytes[5..5 + KEY_ID_LEN]);
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&bytes[5 + KEY_ID_LEN..13 + KEY_ID_LEN]);
        let id_len = usize::from(bytes[FIXED_HEADER_LEN - 1]);
        let header_len = FIXED_HEADER_LEN + id_len;
        need(header_len + NONCE_LEN + TAG_LEN)?;
        let id_bytes = &bytes[FIXED_HEADER_LEN..header_len];
        SessionId::check(id_bytes).map_err(|_| BlobError::BadSessionId)?;
        let session_id = std::str::from_utf8(id_bytes).map_err(|_| BlobError::BadSessionId)?;
        Ok(Self {
            key_id: KeyId(key_id),
            epoch: u64::from_be_bytes(epoch),
            session_id,
            header: &bytes[..header_len],
            nonce: &bytes[header_len..header_len + NONCE_LEN],
            ciphertext: &bytes[header_len + NONCE_LEN..],
        })
    }

    /// The id of the master key that sealed this blob.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The epoch the blob was written at (authenticated only once decrypted).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The session id in the header (authenticated only once decrypted).
    pub fn session_id(&self) -> &'a str {
        self.session_id
    }

    /// Checks the session id and key id, then decrypts and authenticates.
    pub fn decrypt(&self, keyring: &Keyring, session: &SessionId) -> Result<OpenedBlob, BlobError> {
        if self.session_id != session.as_str() {
            return Err(BlobError::SessionMismatch {
                expected: session.to_string(),
                found: self.session_id.to_string(),
            });
        }
        let key = keyring
            .get(self.key_id)
            .ok_or(BlobError::UnknownKeyId(self.key_id))?;
        let data_key = key.data_key(session.as_str().as_bytes());
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(data_key.as_ref()));
        let plaintext = cipher
            .decrypt(
                Nonce::from_slice(self.nonce),
                Payload {
                    msg: self.ciphertext,
                    aad: self.header,
                },
            )
            .map_err(|_| BlobError::AuthenticationFailed)?;
        Ok(OpenedBlob {
            epoch: self.epoch,
            key_id: self.key_id,
            plaintext: Zeroizing::new(plaintext),
        })
    }
}

/// Seals `plaintext` for `session` at `epoch` under the keyring's current key, with a fresh
/// random nonce.
pub fn seal(
    keyring: &Keyring,
    session: &SessionId,
    epoch: u64,
    plaintext: &[u8],
) -> Result<Vec<u8>, BlobError> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    seal_with_nonce(keyring.current(), session, epoch, plaintext, nonce)
}

fn seal_with_nonce(
    key: &MasterKey,
    session: &SessionId,
    epoch: u64,
    plaintext: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>, BlobError> {
    let id = session.as_str().as_bytes();
    let id_len = u8::try_from(id.len()).map_err(|_| BlobError::BadSessionId)?;
    let mut out =
        Vec::with_capacity(FIXED_HEADER_LEN + id.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&key.id().0);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.push(id_len);
    out.extend_from_slice(id);
    let header_len = out.len();
    let data_key = key.data_key(id);
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(data_key.as_ref()));
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &out[..header_len],
            },
        )
        .map_err(|_| BlobError::EncryptionFailed)?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Parses and decrypts an envelope for `session`.
pub fn open(keyring: &Keyring, session: &SessionId, bytes: &[u8]) -> Result<OpenedBlob, BlobError> {
    SessionBlob::parse(bytes)?.decrypt(keyring, session)
}

/// Like [`open`], and refuses a blob written at an epoch above `lease_epoch`
/// ([`BlobError::EpochAhead`]): a worker holding an older lease must not run on a newer
/// owner's state. The epoch is checked after authentication, so it cannot be forged.
pub fn open_for_lease(
    keyring: &Keyring,
    session: &SessionId,
    lease_epoch: u64,
    bytes: &[u8],
) -> Result<OpenedBlob, BlobError> {
    let opened = open(keyring, session, bytes)?;
    if opened.epoch > lease_epoch {
        return Err(BlobError::EpochAhead {
            blob_epoch: opened.epoch,
            lease_epoch,
        });
    }
    Ok(opened)
}

/// Key rotation: if `bytes` was sealed under a key other than the keyring's current one,
/// opens it with its own key and re-seals it (same session, same epoch) under the current
/// key. Returns `None` when it already uses the current key.
pub fn rekey(
    keyring: &Keyring,
    session: &SessionId,
    bytes: &[u8],
) -> Result<Option<Vec<u8>>, BlobError> {
    let opened = open(keyring, session, bytes)?;
    if opened.key_id == keyring.current().id() {
        return Ok(None);
    }
    seal(keyring, session, opened.epoch, &opened.plaintext).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_documented_offsets() {
        let key = MasterKey::from_bytes([3; 32]);
        let session = SessionId::new("abc").unwrap_or_else(|e| panic!("{e}"));
        let sealed = seal_with_nonce(&key, &session, 0x0102, b"hi", [0xEE; NONCE_LEN])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&sealed[0..4], b"WFSB");
        assert_eq!(sealed[4], 1);
        assert_eq!(&sealed[5..13], &key.id().0);
        assert_eq!(&sealed[13..21], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(sealed[21], 3);
        assert_eq!(&sealed[22..25], b"abc");
        assert_eq!(&sealed[25..37], &[0xEE; 12]);
        assert_eq!(sealed.len(), 37 + 2 + TAG_LEN);
    }
}
