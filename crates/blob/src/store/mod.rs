//! Where sealed blobs live: a [`BlobStore`] loads an object with its version token and
//! saves one only if a [`SaveCondition`] holds, atomically.
//!
//! Stores move opaque bytes; sealing and opening is [`crate::envelope`]'s job (and
//! [`crate::SessionVault`] puts both together). The condition is the second fencing
//! guard; the first is the linearizable commit keyed by the lease epoch (see
//! `docs/BLOBS.md`).

use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;

use crate::session_id::SessionId;

pub mod fs;
pub mod s3;

pub use fs::FsBlobStore;
pub use s3::{S3BlobStore, S3Config};

/// An opaque version token of a stored object: an S3 ETag, or the filesystem store's
/// content hash. Compare only for equality, and pass back to
/// [`SaveCondition::IfVersion`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// Wraps a token as a store returned it.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({})", self.0)
    }
}

/// When a save may happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveCondition {
    /// Only if no object exists for the session (`If-None-Match: *`).
    CreateOnly,
    /// Only if the object's current version is this one (`If-Match`).
    IfVersion(Version),
}

/// A stored object as loaded.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredBlob {
    /// The sealed envelope.
    pub bytes: Vec<u8>,
    /// Its version token, for the next conditional save.
    pub version: Version,
}

impl fmt::Debug for StoredBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredBlob")
            .field("len", &self.bytes.len())
            .field("version", &self.version)
            .finish()
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The save's condition did not hold: the object exists (create-only), is missing, or
    /// has another version. Nothing was written.
    #[error("conditional save of session {session} refused: the stored version changed")]
    ConditionFailed {
        /// The session.
        session: SessionId,
    },
    /// A filesystem operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An S3 request failed for a reason other than its condition.
    #[error("S3 {operation} of {key} failed{}: {message}", .status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    S3 {
        /// The S3 operation.
        operation: &'static str,
        /// The object key.
        key: String,
        /// The HTTP status, when a response came back.
        status: Option<u16>,
        /// The error, as text.
        message: String,
    },
    /// The S3 client could not be configured.
    #[error("S3 configuration: {0}")]
    Config(String),
    /// A blocking task panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
}

/// A place for sealed session blobs with conditional, atomic saves.
///
/// Implementations guarantee that of several concurrent saves with the same
/// [`SaveCondition::IfVersion`] (or several [`SaveCondition::CreateOnly`]) at most one
/// succeeds; the rest get [`StoreError::ConditionFailed`].
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Loads the session's object, or `None` if there is none.
    async fn load(&self, session: &SessionId) -> Result<Option<StoredBlob>, StoreError>;

    /// Writes the session's object if `condition` holds, and returns its new version.
    async fn save(
        &self,
        session: &SessionId,
        bytes: Vec<u8>,
        condition: &SaveCondition,
    ) -> Result<Version, StoreError>;

    /// Removes the session's object (the purge when a session is deleted). Idempotent:
    /// deleting a missing object is `Ok`. Unconditional, so only for a session nobody
    /// holds a lease on any more.
    async fn delete(&self, session: &SessionId) -> Result<(), StoreError>;
}

/// A shared store is a store: workers hold one `Arc<dyn BlobStore>` chosen at start
/// (filesystem or S3) for all their sessions.
#[async_trait]
impl<T: BlobStore + ?Sized> BlobStore for std::sync::Arc<T> {
    async fn load(&self, session: &SessionId) -> Result<Option<StoredBlob>, StoreError> {
        (**self).load(session).await
    }

    async fn save(
        &self,
        session: &SessionId,
        bytes: Vec<u8>,
        condition: &SaveCondition,
    ) -> Result<Version, StoreError> {
        (**self).save(session, bytes, condition).await
    }

    async fn delete(&self, session: &SessionId) -> Result<(), StoreError> {
        (**self).delete(session).await
    }
}
