//! A store and a keyring together: load and open, seal and save.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::envelope::{self, BlobError};
use crate::keyring::{KeyId, Keyring};
use crate::session_id::SessionId;
use crate::store::{BlobStore, SaveCondition, StoreError, Version};

/// Why a vault operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The stored envelope could not be opened (or sealing failed).
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The store failed, or refused a conditional save.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl VaultError {
    /// True when a conditional save was refused (another writer got there first).
    pub fn is_condition_failed(&self) -> bool {
        matches!(self, VaultError::Store(StoreError::ConditionFailed { .. }))
    }
}

/// A session's state as loaded from the vault.
#[derive(Debug)]
pub struct LoadedSession {
    /// The decrypted session state, zeroized on drop.
    pub state: Zeroizing<Vec<u8>>,
    /// The epoch the blob was written at.
    pub epoch: u64,
    /// The stored object's version, for the next [`SaveCondition::IfVersion`].
    pub version: Version,
    /// The master key that sealed it; differs from the keyring's current key until the
    /// next save re-seals it (rotation happens on save).
    pub key_id: KeyId,
}

/// Session blobs in a [`BlobStore`], sealed with a [`Keyring`].
#[derive(Debug, Clone)]
pub struct SessionVault<S> {
    store: S,
    keyring: Arc<Keyring>,
}

impl<S: BlobStore> SessionVault<S> {
    /// A vault over `store`, sealing with `keyring`'s current key.
    pub fn new(store: S, keyring: Arc<Keyring>) -> Self {
        Self { store, keyring }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The keyring.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Loads and opens a session's blob for a worker holding `lease_epoch`; `None` if the
    /// session has no blob yet. A blob written at a higher epoch is refused
    /// ([`BlobError::EpochAhead`]).
    pub async fn load(
        &self,
        session: &SessionId,
        lease_epoch: u64,
    ) -> Result<Option<LoadedSession>, VaultError> {
        let Some(stored) = self.store.load(session).await? else {
            return Ok(None);
        };
        let opened = envelope::open_for_lease(&self.keyring, session, lease_epoch, &stored.bytes)?;
        Ok(Some(LoadedSession {
            state: opened.plaintext,
            epoch: opened.epoch,
            version: stored.version,
            key_id: opened.key_id,
        }))
    }

    /// Seals `state` at `epoch` under the current key and saves it if `condition` holds.
    pub async fn save(
        &self,
        session: &SessionId,
        epoch: u64,
        state: &[u8],
        condition: &SaveCondition,
    ) -> Result<Version, VaultError> {
        let sealed = envelope::seal(&self.keyring, session, epoch, state)?;
        Ok(self.store.save(session, sealed, condition).await?)
    }
}
