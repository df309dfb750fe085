//! Filesystem store: one file per session, `<root>/<session id>.blob`.
//!
//! - Version token: the first 16 bytes of the SHA-256 of the file's contents, in hex.
//!   Every seal uses a fresh random nonce, so two saves never produce the same contents.
//! - Saves take an exclusive `flock` on `<root>/<session id>.lock` (a separate open file
//!   description per save, so it excludes other threads and other processes alike), check
//!   the condition against the file as it is, then replace the blob with
//!   [`crate::atomic::write_file`] (temporary file, fsync, rename, directory fsync).
//! - Loads read without the lock: a rename is atomic, so a reader sees the old or the new
//!   file, never a mix.
//! - Deletes take the same lock, remove the blob and then the lock file, and fsync the
//!   directory. A missing blob is fine (deletes are idempotent). Removing the lock file is
//!   safe only because a purged session has no lease holder left to save it.
//!
//! The lock is advisory and local: the root must not be shared over NFS.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use rustix::fs::{flock, FlockOperation};
use sha2::{Digest, Sha256};

use super::{BlobStore, SaveCondition, StoreError, StoredBlob, Version};
use crate::session_id::SessionId;

/// Session blobs as files under one directory.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    /// A store rooted at `root`, created (with its parents) if missing.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| StoreError::Io {
            operation: "create directory",
            path: root.clone(),
            source,
        })?;
        Ok(Self { root })
    }

    /// The directory holding the blobs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding a session's blob.
    pub fn blob_path(&self, session: &SessionId) -> PathBuf {
        self.root.join(blob_name(session))
    }

    fn lock_path(&self, session: &SessionId) -> PathBuf {
        self.root.join(format!("{session}.lock"))
    }

    fn load_blocking(&self, session: &SessionId) -> Result<Option<StoredBlob>, StoreError> {
        let path = self.blob_path(session);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let version = content_version(&bytes);
                Ok(Some(StoredBlob { bytes, version }))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io("read", &path, source)),
        }
    }

    fn save_blocking(
        &self,
        session: &SessionId,
        bytes: &[u8],
        condition: &SaveCondition,
    ) -> Result<Version, StoreError> {
        let lock_path = self.lock_path(session);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| io("open lock file", &lock_path, source))?;
        flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| io("lock", &lock_path, e.into()))?;

        let current = self.load_blocking(session)?.map(|blob| blob.version);
        let holds = match (condition, &current) {
            (SaveCondition::CreateOnly, None) => true,
            (SaveCondition::IfVersion(expected), Some(actual)) => expected == actual,
            _ => false,
        };
        if !holds {
            tracing::debug!(%session, ?condition, "filesystem blob save refused");
            return Err(StoreError::ConditionFailed {
                session: session.clone(),
            });
        }

        crate::atomic::write_file(&self.root, &blob_name(session), bytes).map_err(|e| {
            StoreError::Io {
                operation: e.operation,
                path: e.path,
                source: e.source,
            }
        })?;
        // The lock is released when `lock` is dropped, after the rename is durable.
        drop(lock);
        Ok(content_version(bytes))
    }

    fn delete_blocking(&self, session: &SessionId) -> Result<(), StoreError> {
        let lock_path = self.lock_path(session);
        let lock = match OpenOptions::new()
            .create(false)
            .write(true)
            .open(&lock_path)
        {
            Ok(lock) => Some(lock),
            // Never saved through this store (or purged already): no lock to take.
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(source) => return Err(io("open lock file", &lock_path, source)),
        };
        if let Some(lock) = &lock {
            flock(lock, FlockOperation::LockExclusive)
                .map_err(|e| io("lock", &lock_path, e.into()))?;
        }
        let blob_path = self.blob_path(session);
        let mut removed = remove_if_present(&blob_path)?;
        if lock.is_some() {
            removed |= remove_if_present(&lock_path)?;
        }
        if removed {
            std::fs::File::open(&self.root)
                .and_then(|dir| dir.sync_all())
                .map_err(|source| io("fsync directory", &self.root, source))?;
        }
        drop(lock);
        Ok(())
    }
}

/// Removes a file; `Ok(false)` if it was not there.
fn remove_if_present(path: &Path) -> Result<bool, StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(source) => Err(io("remove", path, source)),
    }
}

fn blob_name(session: &SessionId) -> String {
    format!("{session}.blob")
}

fn io(operation: &'static str, path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        operation,
        path: path.to_path_buf(),
        source,
    }
}

/// The filesystem store's version token of some contents.
pub fn content_version(bytes: &[u8]) -> Version {
    let digest = Sha256::digest(bytes);
    Version::new(hex::encode(&digest[..16]))
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn load(&self, session: &SessionId) -> Result<Option<StoredBlob>, StoreError> {
        let store = self.clone();
        let session = session.clone();
        tokio::task::spawn_blocking(move || store.load_blocking(&session))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn save(
        &self,
        session: &SessionId,
        bytes: Vec<u8>,
        condition: &SaveCondition,
    ) -> Result<Version, StoreError> {
        let store = self.clone();
        let session = session.clone();
        let condition = condition.clone();
        tokio::task::spawn_blocking(move || store.save_blocking(&session, &bytes, &condition))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn delete(&self, session: &SessionId) -> Result<(), StoreError> {
        let store = self.clone();
        let session = session.clone();
        tokio::task::spawn_blocking(move || store.delete_blocking(&session))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}
