//! The checks every `BlobStore` must pass, run against the filesystem store and a real
//! S3 server alike.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Barrier;
use wafleet_blob::{
    BlobError, BlobStore, Keyring, MasterKey, SaveCondition, SessionId, SessionVault, StoreError,
    VaultError,
};

/// A session id no earlier run used (S3 buckets outlive test runs).
pub fn fresh_session(name: &str) -> SessionId {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    SessionId::new(format!("test-{name}-{}-{nanos}", std::process::id()))
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::new(MasterKey::from_bytes([0x5A; 32])))
}

fn is_condition_failed<T: std::fmt::Debug>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::ConditionFailed { .. }))
}

/// A missing session loads as `None`; `If-Match` on it is refused and creates nothing.
pub async fn missing_session<S: BlobStore>(store: &S) {
    let session = fresh_session("missing");
    assert!(matches!(store.load(&session).await, Ok(None)));
    let result = store
        .save(
            &session,
            b"x".to_vec(),
            &SaveCondition::IfVersion(wafleet_blob::Version::new("\"0123\"")),
        )
        .await;
    assert!(is_condition_failed(&result), "{result:?}");
    assert!(matches!(store.load(&session).await, Ok(None)));
}

/// A second create-only save is refused and leaves the first object in place.
pub async fn create_only_conflict<S: BlobStore>(store: &S) {
    let session = fresh_session("create");
    let first = store
        .save(&session, b"first".to_vec(), &SaveCondition::CreateOnly)
        .await
        .unwrap_or_else(|e| panic!("first create: {e}"));
    let second = store
        .save(&session, b"second".to_vec(), &SaveCondition::CreateOnly)
        .await;
    assert!(is_condition_failed(&second), "{second:?}");
    let loaded = store
        .load(&session)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("object vanished"));
    assert_eq!(loaded.bytes, b"first");
    assert_eq!(loaded.version, first);
}

/// An update with a version that is no longer current is refused.
pub async fn stale_version_refused<S: BlobStore>(store: &S) {
    let session = fresh_session("stale");
    let v1 = store
        .save(&session, b"v1".to_vec(), &SaveCondition::CreateOnly)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let v2 = store
        .save(
            &session,
            b"v2".to_vec(),
            &SaveCondition::IfVersion(v1.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("update with the current version: {e}"));
    assert_ne!(v1, v2);
    let stale = store
        .save(&session, b"zombie".to_vec(), &SaveCondition::IfVersion(v1))
        .await;
    assert!(is_condition_failed(&stale), "{stale:?}");
    let loaded = store
        .load(&session)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("object vanished"));
    assert_eq!((loaded.bytes.as_slice(), loaded.version), (&b"v2"[..], v2));
}

/// `writers` tasks race an `If-Match` update from the same version, `rounds` times:
/// exactly one wins each round, and the object holds the winner's bytes.
pub async fn racing_writers<S: BlobStore + 'static>(store: Arc<S>, writers: usize, rounds: usize) {
    let session = fresh_session("race");
    let mut version = store
        .save(&session, b"round 0".to_vec(), &SaveCondition::CreateOnly)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for round in 1..=rounds {
        let barrier = Arc::new(Barrier::new(writers));
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let store = Arc::clone(&store);
            let session = session.clone();
            let barrier = Arc::clone(&barrier);
            let condition = SaveCondition::IfVersion(version.clone());
            tasks.push(tokio::spawn(async move {
                let bytes = format!("round {round} writer {writer}").into_bytes();
                barrier.wait().await;
                let result = store.save(&session, bytes.clone(), &condition).await;
                (bytes, result)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (bytes, result) = task.await.unwrap_or_else(|e| panic!("task: {e}"));
            match result {
                Ok(new_version) => winners.push((bytes, new_version)),
                Err(StoreError::ConditionFailed { .. }) => {}
                Err(e) => panic!("round {round}: unexpected error {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
        let (bytes, new_version) = winners.remove(0);
        let loaded = store
            .load(&session)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("object vanished"));
        assert_eq!(
            loaded.bytes, bytes,
            "round {round}: object is not the winner's"
        );
        assert_eq!(loaded.version, new_version);
        version = new_version;
    }
}

/// Through a vault: state round-trips, a tampered object is a typed error on load, and a
/// zombie writer with a stale version is refused.
pub async fn vault_checks<S: BlobStore>(store: S) {
    let vault = SessionVault::new(store, keyring());
    let session = fresh_session("vault");
    assert!(matches!(vault.load(&session, 1).await, Ok(None)));
    let v1 = vault
        .save(&session, 1, b"identity+keys", &SaveCondition::CreateOnly)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let loaded = vault
        .load(&session, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("missing"));
    assert_eq!(
        (loaded.state.as_slice(), loaded.epoch, &loaded.version),
        (&b"identity+keys"[..], 1, &v1)
    );
    // The new owner (epoch 2) writes; the zombie (epoch 1, still holding v1) is refused.
    let v2 = vault
        .save(
            &session,
            2,
            b"epoch 2 state",
            &SaveCondition::IfVersion(v1.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let zombie = vault
        .save(&session, 1, b"zombie state", &SaveCondition::IfVersion(v1))
        .await;
    assert!(
        matches!(&zombie, Err(e) if e.is_condition_failed()),
        "{zombie:?}"
    );
    // The zombie cannot even load the new owner's blob as its own.
    let zombie_load = vault.load(&session, 1).await;
    assert!(
        matches!(
            zombie_load,
            Err(VaultError::Blob(BlobError::EpochAhead {
                blob_epoch: 2,
                lease_epoch: 1
            }))
        ),
        "{zombie_load:?}"
    );

    // Flip one ciphertext byte in the stored object.
    let stored = vault
        .store()
        .load(&session)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("missing"));
    let mut tampered = stored.bytes.clone();
    let last = tampered.len() - 20;
    tampered[last] ^= 0x04;
    vault
        .store()
        .save(&session, tampered, &SaveCondition::IfVersion(v2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let result = vault.load(&session, 2).await;
    assert!(
        matches!(
            result,
            Err(VaultError::Blob(BlobError::AuthenticationFailed))
        ),
        "{result:?}"
    );

    // Garbage in place of an envelope.
    let garbage_session = fresh_session("garbage");
    vault
        .store()
        .save(
            &garbage_session,
            b"<html>not a blob</html>".to_vec(),
            &SaveCondition::CreateOnly,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let result = vault.load(&garbage_session, 2).await;
    assert!(
        matches!(result, Err(VaultError::Blob(BlobError::BadMagic))),
        "{result:?}"
    );
}

/// Deleting removes the object, deleting again (or a session never saved) is `Ok`, and
/// after a delete the session can be created afresh (create-only).
pub async fn delete_is_idempotent<S: BlobStore>(store: &S) {
    let session = fresh_session("delete");
    store
        .delete(&session)
        .await
        .unwrap_or_else(|e| panic!("delete of a missing object: {e}"));
    store
        .save(&session, b"doomed".to_vec(), &SaveCondition::CreateOnly)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let other = fresh_session("delete-other");
    store
        .save(&other, b"kept".to_vec(), &SaveCondition::CreateOnly)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .delete(&session)
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    assert!(matches!(store.load(&session).await, Ok(None)));
    // Only that session's object went.
    let kept = store
        .load(&other)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("the other session's object vanished"));
    assert_eq!(kept.bytes, b"kept");
    store
        .delete(&session)
        .await
        .unwrap_or_else(|e| panic!("second delete: {e}"));
    store
        .save(&session, b"reborn".to_vec(), &SaveCondition::CreateOnly)
        .await
        .unwrap_or_else(|e| panic!("create after delete: {e}"));
    store
        .delete(&session)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store.delete(&other).await.unwrap_or_else(|e| panic!("{e}"));
}
