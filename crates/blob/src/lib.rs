//! Encrypted session blobs and the stores that keep them.
//!
//! A session worker keeps each WhatsApp session's state (device identity, keys, Signal
//! sessions) as one **session blob**: sealed with AES-256-GCM under a per-session key
//! derived from a master key, and stored in S3 or on a filesystem with conditional writes.
//!
//! # Envelope (format version 1)
//!
//! ```text
//! "WFSB" | version 0x01 | key id (8) | epoch (u64 BE) | session id len (1) | session id
//!        | nonce (12) | AES-256-GCM ciphertext || tag (16)
//! ```
//!
//! - Data key: HKDF-SHA256(master key, info = `wafleet-blob data-key v1 || 0x00 || session
//!   id`), one per session.
//! - AAD: every header byte before the nonce (magic, version, key id, epoch, session id).
//! - Key id: HKDF-SHA256(master key, info = `wafleet-blob key-id v1`), 8 bytes; the
//!   [`Keyring`] holds one current key and retired keys, so master keys rotate (open with
//!   the blob's key, re-seal with the current one: [`envelope::rekey`]).
//! - Errors are typed ([`BlobError`]); no input panics. Key material and plaintext are
//!   never logged and are zeroized on drop.
//!
//! See [`envelope`] for offsets and `docs/BLOBS.md` for the fencing story.
//!
//! # Stores
//!
//! [`BlobStore`] loads an object with its [`Version`] token and saves only under a
//! [`SaveCondition`] (create-only, or if-version-matches), atomically:
//! [`FsBlobStore`] (one file per session, flock + temp file + fsync + rename) and
//! [`S3BlobStore`] (`If-None-Match: *` / `If-Match: <etag>`). [`SessionVault`] puts a
//! store and a keyring together.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use wafleet_blob::{FsBlobStore, Keyring, SaveCondition, SessionId, SessionVault};
//!
//! let vault = SessionVault::new(FsBlobStore::new("/var/tmp/wafleet/blobs")?, Arc::new(Keyring::from_env()?));
//! let session = SessionId::new("acct-1")?;
//! let lease_epoch = 7;
//! let version = match vault.load(&session, lease_epoch).await? {
//!     Some(loaded) => vault.save(&session, lease_epoch, b"new state", &SaveCondition::IfVersion(loaded.version)).await?,
//!     None => vault.save(&session, lease_epoch, b"first state", &SaveCondition::CreateOnly).await?,
//! };
//! # let _ = version; Ok(()) }
//! ```

pub mod atomic;
pub mod envelope;
pub mod keyring;
pub mod session_id;
pub mod store;
pub mod vault;

pub use envelope::{open, open_for_lease, rekey, seal, BlobError, OpenedBlob, SessionBlob};
pub use keyring::{KeyError, KeyId, Keyring, MasterKey};
pub use session_id::{InvalidSessionId, SessionId};
pub use store::{
    BlobStore, FsBlobStore, S3BlobStore, S3Config, SaveCondition, StoreError, StoredBlob, Version,
};
pub use vault::{LoadedSession, SessionVault, VaultError};
