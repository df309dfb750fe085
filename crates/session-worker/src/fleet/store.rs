//! A leased session's state as an encrypted blob: the [`SessionStore`] the driver writes
//! through, backed by a [`SessionVault`] (S3 or filesystem) and fenced by the lease epoch.
//!
//! Every save is two steps, in this order:
//! 1. **Commit** the new blob version at the coordinator ([`BlobFence`]): it succeeds only
//!    while this worker holds the session at this epoch (one PostgreSQL transaction, the
//!    linearizable step). Versions are `(epoch << 32) | n`, `n` counting saves within the
//!    epoch, so a newer epoch's versions are always higher.
//! 2. **Write** the sealed blob with the store's condition (`If-Match` on the version we
//!    loaded or wrote last, `If-None-Match: *` for the first): a second guard.
//!
//! A worker that has lost its lease is refused at step 1 and never writes; a refusal at
//! step 2 means another writer got there, and the store refuses every later save too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::warn;
use wafleet_blob::{BlobStore, SaveCondition, SessionId as BlobId, SessionVault, Version};
use wafleet_bus_schema::SessionAddress;
use zeroize::Zeroizing;

use super::bus::retry_pause;
use super::lease::LeaseClock;
use super::metrics as m;
use crate::store::{SessionStore, StoreError, StoredSession};

/// The vault every session of a worker uses.
pub type Vault = SessionVault<Arc<dyn BlobStore>>;

/// The format of the blob's plaintext.
pub const BLOB_FORMAT: u32 = 1;

/// How long one fenced commit request may wait for the coordinator.
const COMMIT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// How many commit requests one write makes before it gives up. A request goes unanswered
/// while no coordinator leads (NATS says "no responders" at once) or when the leader dies
/// holding it; a later one reaches the new leader. Each attempt uses a fresh version number
/// (an unanswered one may have been taken), after a [`retry_pause`]. The lease bounds it
/// too: once it runs out locally the write is fenced off.
const COMMIT_ATTEMPTS: u32 = 6;

/// The plaintext inside a session blob.
#[derive(Serialize, Deserialize)]
struct BlobState {
    format: u32,
    /// `None` after a logout: the next start links afresh.
    session: Option<StoredSession>,
}

/// The blob id of a session (the coordinator purges the same id on delete).
pub fn blob_id(address: &SessionAddress) -> Result<BlobId, wafleet_blob::InvalidSessionId> {
    BlobId::for_tenant_session(address.tenant.as_str(), address.session.as_str())
}

/// The step that makes a blob version durable-to-be: the coordinator's fenced commit.
#[async_trait]
pub trait BlobFence: Send + Sync {
    /// Accepts `version` for the session at `epoch`, or says why not.
    async fn commit(&self, epoch: u64, version: u64) -> Result<(), FenceError>;
}

/// Why a commit was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FenceError {
    /// The lease is not ours any more (stale epoch, not leased).
    #[error("fenced: {0}")]
    Fenced(String),
    /// The coordinator did not answer.
    #[error("commit unavailable: {0}")]
    Unavailable(String),
}

/// Why a leased session's blob could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The blob exists but does not open (tampered, wrong master key, newer epoch, bad
    /// plaintext): the session is FAILED with `BLOB_REJECTED` and the blob stays as it is.
    #[error("session blob rejected: {0}")]
    Rejected(String),
    /// The store could not be reached: retry later.
    #[error("session blob store unavailable: {0}")]
    Unavailable(String),
}

struct Saved {
    /// The version to condition the next write on (`None`: no blob yet).
    version: Option<Version>,
    /// Saves made at this epoch.
    saves: u32,
    /// What `load` hands the driver.
    initial: Option<StoredSession>,
    /// The last write was the logged-out tombstone.
    logged_out: bool,
}

/// The [`SessionStore`] of one leased session.
pub struct FleetStore {
    runtime: tokio::runtime::Handle,
    vault: Arc<Vault>,
    id: BlobId,
    epoch: u64,
    fence: Arc<dyn BlobFence>,
    clock: LeaseClock,
    saved: Mutex<Saved>,
    fenced: AtomicBool,
    store_unreachable: AtomicBool,
}

/// Why a write was not made although it was not fenced off.
enum Failure {
    /// The coordinator answered none of the commit requests.
    CommitUnanswered(String),
    /// The commit was accepted; the blob store did not take the write.
    StoreUnreachable(String),
    /// The blob could not be sealed.
    Other(String),
}

impl std::fmt::Debug for FleetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetStore")
            .field("id", &self.id)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl FleetStore {
    /// Loads and opens the session's blob for the lease at `epoch`. Nothing is written.
    pub async fn open(
        vault: Arc<Vault>,
        id: BlobId,
        epoch: u64,
        fence: Arc<dyn BlobFence>,
        clock: LeaseClock,
    ) -> Result<FleetStore, OpenError> {
        let started = Instant::now();
        let loaded = vault.load(&id, epoch).await;
        metrics::histogram!(m::BLOB_LOAD).record(started.elapsed());
        let (initial, version) = match loaded {
            Ok(None) => (None, None),
            Ok(Some(loaded)) => {
                let state: BlobState = serde_json::from_slice(&loaded.state)
                    .map_err(|e| OpenError::Rejected(format!("plaintext does not parse: {e}")))?;
                if state.format != BLOB_FORMAT {
                    return Err(OpenError::Rejected(format!(
                        "plaintext format {} (this build reads {BLOB_FORMAT})",
                        state.format
                    )));
                }
                (state.session, Some(loaded.version))
            }
            Err(wafleet_blob::VaultError::Blob(e)) => {
                return Err(OpenError::Rejected(e.to_string()))
            }
            Err(wafleet_blob::VaultError::Store(e)) => {
                return Err(OpenError::Unavailable(e.to_string()))
            }
        };
        Ok(FleetStore {
            runtime: tokio::runtime::Handle::current(),
            vault,
            id,
            epoch,
            fence,
            clock,
            saved: Mutex::new(Saved {
                version,
                saves: 0,
                initial,
                logged_out: false,
            }),
            fenced: AtomicBool::new(false),
            store_unreachable: AtomicBool::new(false),
        })
    }

    /// Whether a save failed because the blob store did not answer (not fenced: the commit
    /// was accepted, the write was not made).
    pub fn store_unreachable(&self) -> bool {
        self.store_unreachable.load(Ordering::SeqCst)
    }

    /// Whether a save was refused because the lease or the blob is not ours any more.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Saved> {
        self.saved
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fence_off(&self, why: String) -> StoreError {
        self.fenced.store(true, Ordering::SeqCst);
        warn!(blob = %self.id, epoch = self.epoch, %why, "blob write fenced off");
        StoreError::Fenced(why)
    }

    /// Commits and writes `state` (blocking: the driver calls it on a blocking thread).
    fn write(&self, state: Option<&StoredSession>) -> Result<(), StoreError> {
        if self.is_fenced() {
            return Err(StoreError::Fenced("an earlier write was fenced off".into()));
        }
        if !self.clock.is_live() {
            return Err(self.fence_off("the lease ran out before the write".into()));
        }
        let plaintext = Zeroizing::new(
            serde_json::to_vec(&BlobState {
                format: BLOB_FORMAT,
                session: state.cloned(),
            })
            .map_err(StoreError::Serialize)?,
        );
        let mut saved = self.lock();
        let condition = match &saved.version {
            Some(v) => SaveCondition::IfVersion(v.clone()),
            None => SaveCondition::CreateOnly,
        };
        let started = Instant::now();
        let result = self.runtime.block_on(async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                // Never reuse a number: an unanswered commit may have been taken.
                let n = saved.saves.saturating_add(1);
                saved.saves = n;
                let version = (self.epoch << 32) | u64::from(n);
                tracing::debug!(blob = %self.id, epoch = self.epoch, n, attempt, "committing a blob version");
                let why = match tokio::time::timeout(
                    COMMIT_ATTEMPT_TIMEOUT,
                    self.fence.commit(self.epoch, version),
                )
                .await
                {
                    Ok(Ok(())) => break,
                    Ok(Err(FenceError::Fenced(why))) => return Err(Err(why)),
                    Ok(Err(FenceError::Unavailable(why))) => why,
                    Err(_) => "the commit timed out".to_string(),
                };
                if attempt >= COMMIT_ATTEMPTS {
                    return Err(Ok(Failure::CommitUnanswered(why)));
                }
                tracing::debug!(blob = %self.id, epoch = self.epoch, attempt, %why, "blob commit unanswered; trying again");
                tokio::time::sleep(retry_pause(attempt)).await;
                if !self.clock.is_live() {
                    return Err(Err(format!(
                        "the lease ran out while the commit went unanswered: {why}"
                    )));
                }
            }
            // The commit may have been answered after the lease ran out here (a slow
            // coordinator): nothing is written past the local deadline.
            if !self.clock.is_live() {
                return Err(Err(
                    "the lease ran out while the commit was answered".to_string()
                ));
            }
            self.vault
                .save(&self.id, self.epoch, &plaintext, &condition)
                .await
                .map_err(|e| match e {
                    e if e.is_condition_failed() => {
                        Err(format!("another writer changed the blob: {e}"))
                    }
                    wafleet_blob::VaultError::Store(e) => {
                        Ok(Failure::StoreUnreachable(e.to_string()))
                    }
                    e => Ok(Failure::Other(e.to_string())),
                })
        });
        metrics::histogram!(m::BLOB_SAVE).record(started.elapsed());
        match result {
            Ok(new_version) => {
                metrics::counter!(m::STORE_WRITES).increment(1);
                metrics::counter!(m::STORE_BYTES).increment(plaintext.len() as u64);
                saved.version = Some(new_version);
                saved.logged_out = state.is_none();
                Ok(())
            }
            // Not ours any more.
            Err(Err(why)) => Err(self.fence_off(why)),
            // Not written; the driver decides (it stops the session: nothing unsaved is sent).
            Err(Ok(Failure::CommitUnanswered(why) | Failure::Other(why))) => {
                Err(StoreError::Backend(why))
            }
            Err(Ok(Failure::StoreUnreachable(why))) => {
                metrics::counter!(m::BLOB_STORE_ERRORS, "op" => "save").increment(1);
                self.store_unreachable.store(true, Ordering::SeqCst);
                warn!(blob = %self.id, epoch = self.epoch, error = %why, "blob store unreachable: the save failed");
                Err(StoreError::Backend(format!(
                    "blob store unreachable: {why}"
                )))
            }
        }
    }
}

impl SessionStore for FleetStore {
    fn load(&self) -> Result<Option<StoredSession>, StoreError> {
        Ok(self.lock().initial.clone())
    }

    fn save(&self, session: &StoredSession) -> Result<(), StoreError> {
        self.write(Some(session))
    }

    /// Writes the tombstone once: the driver marks a requested logout, the session task
    /// marks a logout from the phone, and a logout the driver marked needs no second write.
    fn mark_logged_out(&self) -> Result<(), StoreError> {
        if self.lock().logged_out {
            return Ok(());
        }
        self.write(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::SystemTime;

    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use wafleet_blob::{FsBlobStore, Keyring, MasterKey};
    use wafleet_bus_schema::internal::v1 as internal;
    use wafleet_bus_schema::time::timestamp;
    use wafleet_protocol::client::DeviceIdentity;

    /// A coordinator stand-in: accepts commits at `epoch` with growing versions.
    struct Fence {
        epoch: u64,
        last: Mutex<u64>,
        calls: AtomicU32,
        /// This many commits are taken but their answers lost (a leader that died).
        unanswered: AtomicU32,
        /// How long the coordinator takes to answer.
        answer_after_ms: std::sync::atomic::AtomicU64,
    }

    #[async_trait]
    impl BlobFence for Fence {
        async fn commit(&self, epoch: u64, version: u64) -> Result<(), FenceError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let delay = Duration::from_millis(self.answer_after_ms.load(Ordering::SeqCst));
            tokio::time::sleep(delay).await;
            let mut last = self.last.lock().unwrap();
            if epoch != self.epoch {
                return Err(FenceError::Fenced(format!(
                    "epoch {} is current",
                    self.epoch
                )));
            }
            if version <= *last {
                return Err(FenceError::Fenced("version not above".into()));
            }
            *last = version;
            let lost = self
                .unanswered
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if lost {
                return Err(FenceError::Unavailable("no answer".into()));
            }
            Ok(())
        }
    }

    fn fence(epoch: u64) -> Arc<Fence> {
        Arc::new(Fence {
            epoch,
            last: Mutex::new(0),
            calls: AtomicU32::new(0),
            unanswered: AtomicU32::new(0),
            answer_after_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_answered_after_the_deadline_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let vault = vault(tmp.path(), 1);
        let f = fence(3);
        // The local deadline is 1000 - 500 ms away; the accepting answer comes after it.
        f.answer_after_ms.store(800, Ordering::SeqCst);
        let store = open(&vault, 3, f.clone(), clock(1_000)).await.unwrap();
        let saved = save(&store, &session()).await;
        assert!(matches!(saved, Err(StoreError::Fenced(_))), "{saved:?}");
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
        assert!(store.is_fenced());
        assert!(!store.store_unreachable());
        assert!(FsBlobStore::new(tmp.path())
            .unwrap()
            .load(&id())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_that_does_not_take_the_write_is_unreachable_not_fenced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("blobs");
        std::fs::create_dir(&dir).unwrap();
        let vault = vault(&dir, 1);
        let f = fence(3);
        let store = open(&vault, 3, f.clone(), clock(10_000)).await.unwrap();
        // The store goes away: its directory is replaced by a file.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::write(&dir, b"not a directory").unwrap();
        let saved = save(&store, &session()).await;
        assert!(matches!(saved, Err(StoreError::Backend(_))), "{saved:?}");
        assert!(store.store_unreachable());
        assert!(!store.is_fenced());
        assert_eq!(
            f.calls.load(Ordering::SeqCst),
            1,
            "committed once, then the write failed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unanswered_commit_is_tried_again_with_a_fresh_number_then_given_up() {
        let tmp = tempfile::tempdir().unwrap();
        let vault = vault(tmp.path(), 1);
        // The first commit is taken but its answer lost: the retry must not reuse n = 1.
        let f = fence(3);
        f.unanswered.store(1, Ordering::SeqCst);
        let store = open(&vault, 3, f.clone(), clock(10_000)).await.unwrap();
        save(&store, &session()).await.unwrap();
        assert_eq!(f.calls.load(Ordering::SeqCst), 2);
        assert_eq!(*f.last.lock().unwrap(), (3 << 32) | 2);
        assert!(!store.is_fenced());
        let written = file(tmp.path());
        // Never answered: a backend error after the last attempt, nothing written.
        let f = fence(3);
        f.unanswered.store(u32::MAX, Ordering::SeqCst);
        let store = open(&vault, 3, f.clone(), clock(10_000)).await.unwrap();
        let saved = save(&store, &session()).await;
        assert!(matches!(saved, Err(StoreError::Backend(_))), "{saved:?}");
        assert_eq!(f.calls.load(Ordering::SeqCst), COMMIT_ATTEMPTS);
        assert_eq!(file(tmp.path()), written);
        // A lease that runs out while the coordinator is silent: fenced off, no more asks.
        let f = fence(3);
        f.unanswered.store(u32::MAX, Ordering::SeqCst);
        let store = open(&vault, 3, f.clone(), clock(700)).await.unwrap();
        let saved = save(&store, &session()).await;
        assert!(matches!(saved, Err(StoreError::Fenced(_))), "{saved:?}");
        assert!(store.is_fenced());
        assert!(f.calls.load(Ordering::SeqCst) < COMMIT_ATTEMPTS);
        assert_eq!(file(tmp.path()), written);
    }

    fn clock(ms: u64) -> LeaseClock {
        LeaseClock::from_grant(&internal::LeaseGrant {
            expires_at: Some(timestamp(SystemTime::now() + Duration::from_millis(ms))),
            ..Default::default()
        })
    }

    fn vault(dir: &std::path::Path, key: u8) -> Arc<Vault> {
        let store: Arc<dyn BlobStore> = Arc::new(FsBlobStore::new(dir).unwrap());
        Arc::new(SessionVault::new(
            store,
            Arc::new(Keyring::new(MasterKey::from_bytes([key; 32]))),
        ))
    }

    fn session() -> StoredSession {
        StoredSession::new(DeviceIdentity::generate(&mut StdRng::seed_from_u64(7)))
    }

    fn id() -> BlobId {
        BlobId::for_tenant_session("acme", "s1").unwrap()
    }

    async fn open(
        vault: &Arc<Vault>,
        epoch: u64,
        fence: Arc<Fence>,
        clock: LeaseClock,
    ) -> Result<Arc<FleetStore>, OpenError> {
        FleetStore::open(Arc::clone(vault), id(), epoch, fence, clock)
            .await
            .map(Arc::new)
    }

    async fn save(store: &Arc<FleetStore>, s: &StoredSession) -> Result<(), StoreError> {
        let (store, s) = (Arc::clone(store), s.clone());
        tokio::task::spawn_blocking(move || store.save(&s))
            .await
            .unwrap()
    }

    fn file(dir: &std::path::Path) -> Vec<u8> {
        std::fs::read(FsBlobStore::new(dir).unwrap().blob_path(&id())).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn saves_are_committed_then_written_and_the_next_epoch_loads_them() {
        let tmp = tempfile::tempdir().unwrap();
        let vault = vault(tmp.path(), 1);
        let f = fence(3);
        let store = open(&vault, 3, f.clone(), clock(10_000)).await.unwrap();
        assert!(store.load().unwrap().is_none());
        let s = session();
        save(&store, &s).await.unwrap();
        save(&store, &s).await.unwrap();
        assert_eq!(*f.last.lock().unwrap(), (3 << 32) | 2);
        assert_eq!(
            wafleet_blob::SessionBlob::parse(&file(tmp.path()))
                .unwrap()
                .epoch(),
            3
        );
        let next = open(&vault, 4, fence(4), clock(10_000)).await.unwrap();
        assert_eq!(next.load().unwrap(), Some(s));
        assert!(next.load().unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blob_written_before_messaging_opens_with_an_empty_signal_state() {
        let tmp = tempfile::tempdir().unwrap();
        let vault = vault(tmp.path(), 1);
        let s = session();
        let mut plaintext = serde_json::to_value(BlobState {
            format: BLOB_FORMAT,
            session: Some(s.clone()),
        })
        .unwrap();
        assert!(plaintext["session"]["signal"].is_object());
        plaintext["session"]
            .as_object_mut()
            .unwrap()
            .remove("signal");
        vault
            .save(
                &id(),
                2,
                &serde_json::to_vec(&plaintext).unwrap(),
                &SaveCondition::CreateOnly,
            )
            .await
            .unwrap();
        let store = open(&vault, 3, fence(3), clock(10_000)).await.unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(loaded.signal, wafleet_messaging::SignalState::default());
        assert_eq!(loaded, s);
        // Saved again, the blob carries the Signal state.
        save(&store, &loaded).await.unwrap();
        let next = open(&vault, 4, fence(4), clock(10_000)).await.unwrap();
        assert_eq!(next.load().unwrap(), Some(s));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_epoch_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let vault = vault(tmp.path(), 1);
        let first = open(&vault, 5, fence(5), clock(10_000)).await.unwrap();
        save(&first, &session()).await.unwrap();
        let before = file(tmp.path());
        // The coordinator moved on to epoch 6: the epoch-5 holder is fenced off.
        let zombie = open(&vault, 5, fence(6), clock(10_000)).await.unwrap();
        let other = StoredSession::new(DeviceIdentity::generate(&mut StdRng::seed_from_u64(9)));
        assert!(matches!(
            save(&zombie, &other).await,
            Err(StoreError::Fenced(_))
        ));
        assert!(zombie.is_fenced());
        assert_eq!(file(tmp.path()), before);
        // And it stays fenced off.
        assert!(matches!(
            save(&zombie, &other).await,
            Err(StoreError::Fenced(_))
        ));
        assert_eq!(file(tmp.path()), before);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_lease_writes_nothing_and_asks_nobody() {
        let tmp = tempfile::tempdir().unwrap();
        let vault = vault(tmp.path(), 1);
        let f = fence(2);
        let store = open(&vault, 2, f.clone(), clock(10_000)).await.unwrap();
        store.clock.expire();
        assert!(matches!(
            save(&store, &session()).await,
            Err(StoreError::Fenced(_))
        ));
        assert_eq!(f.calls.load(Ordering::SeqCst), 0);
        assert!(FsBlobStore::new(tmp.path())
            .unwrap()
            .load(&id())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_writer_in_between_fences_the_store_off() {
        let tmp = tempfile::tempdir().unwrap();
        let vault = vault(tmp.path(), 1);
        let a = open(&vault, 2, fence(2), clock(10_000)).await.unwrap();
        let b = open(&vault, 2, fence(2), clock(10_000)).await.unwrap();
        save(&b, &session()).await.unwrap();
        let written = file(tmp.path());
        // `a` loaded "no blob" and writes create-only: the store's condition refuses it.
        assert!(matches!(
            save(&a, &session()).await,
            Err(StoreError::Fenced(_))
        ));
        assert_eq!(file(tmp.path()), written);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tampered_blobs_and_wrong_keys_are_rejected_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(&vault(tmp.path(), 1), 1, fence(1), clock(10_000))
            .await
            .unwrap();
        save(&store, &session()).await.unwrap();
        let good = file(tmp.path());
        // Wrong master key.
        assert!(matches!(
            open(&vault(tmp.path(), 2), 2, fence(2), clock(10_000)).await,
            Err(OpenError::Rejected(_))
        ));
        // One flipped ciphertext bit.
        let path = FsBlobStore::new(tmp.path()).unwrap().blob_path(&id());
        let mut bad = good.clone();
        let at = bad.len() - 3;
        bad[at] ^= 0x80;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(
            open(&vault(tmp.path(), 1), 2, fence(2), clock(10_000)).await,
            Err(OpenError::Rejected(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), bad);
        // A blob from a newer epoch than the lease is refused too.
        std::fs::write(&path, &good).unwrap();
        assert!(matches!(
            open(&vault(tmp.path(), 1), 0, fence(0), clock(10_000)).await,
            Err(OpenError::Rejected(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_logout_leaves_a_blob_with_no_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let vault = vault(tmp.path(), 1);
        let f = fence(1);
        let store = open(&vault, 1, f.clone(), clock(10_000)).await.unwrap();
        save(&store, &session()).await.unwrap();
        for _ in 0..2 {
            let s = Arc::clone(&store);
            tokio::task::spawn_blocking(move || s.mark_logged_out())
                .await
                .unwrap()
                .unwrap();
        }
        // One commit for the save, one for the tombstone: the second mark wrote nothing.
        assert_eq!(f.calls.load(Ordering::SeqCst), 2);
        let next = open(&vault, 2, fence(2), clock(10_000)).await.unwrap();
        assert!(next.load().unwrap().is_none());
    }
}
