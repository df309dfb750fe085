//! The filesystem store against the common store checks.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use wafleet_blob::{BlobStore, FsBlobStore, SaveCondition};

fn store(name: &str) -> (FsBlobStore, PathBuf) {
    let root =
        std::env::temp_dir().join(format!("wafleet-blob-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let store = FsBlobStore::new(&root).unwrap_or_else(|e| panic!("{e}"));
    (store, root)
}

#[tokio::test]
async fn missing_session() {
    let (store, root) = store("missing");
    common::missing_session(&store).await;
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn create_only_conflict() {
    let (store, root) = store("create");
    common::create_only_conflict(&store).await;
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn stale_version_refused() {
    let (store, root) = store("stale");
    common::stale_version_refused(&store).await;
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_racing_writers_one_wins() {
    let (store, root) = store("race");
    common::racing_writers(Arc::new(store), 16, 20).await;
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn delete_is_idempotent_and_leaves_no_file() {
    let (store, root) = store("delete");
    common::delete_is_idempotent(&store).await;
    let session = common::fresh_session("delete-files");
    store
        .save(&session, b"x".to_vec(), &SaveCondition::CreateOnly)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(store.blob_path(&session).exists());
    store
        .delete(&session)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Neither the blob nor its lock file is left.
    let left: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn vault_checks() {
    let (store, root) = store("vault");
    common::vault_checks(store).await;
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn two_stores_on_one_directory_exclude_each_other() {
    // Two store values (as two processes would have) share only the directory.
    let (first, root) = store("shared");
    let second = FsBlobStore::new(&root).unwrap_or_else(|e| panic!("{e}"));
    let session = common::fresh_session("shared");
    let v = first
        .save(&session, b"a".to_vec(), &SaveCondition::CreateOnly)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let condition = SaveCondition::IfVersion(v);
    let (a, b) = tokio::join!(
        first.save(&session, b"from first".to_vec(), &condition),
        second.save(&session, b"from second".to_vec(), &condition),
    );
    assert_eq!(u8::from(a.is_ok()) + u8::from(b.is_ok()), 1, "{a:?} {b:?}");
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _ = std::fs::remove_dir_all(root);
}
