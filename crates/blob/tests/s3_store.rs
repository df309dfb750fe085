//! The S3 store against a real S3 server (SeaweedFS from `scripts/s3.sh start`).
//!
//! Runs when `WAFLEET_S3_ENDPOINT` is set (e.g. `export WAFLEET_S3_ENDPOINT=$(bash
//! scripts/s3.sh endpoint)`); without it each test prints why it skipped and passes.

mod common;

use std::sync::Arc;

use wafleet_blob::{S3BlobStore, S3Config};

fn store(test: &str) -> Option<S3BlobStore> {
    match S3Config::from_env() {
        Some(config) => Some(S3BlobStore::new(&config)),
        None => {
            println!(
                "SKIPPED {test}: WAFLEET_S3_ENDPOINT is unset (start SeaweedFS with \
                 `bash scripts/s3.sh start` and export WAFLEET_S3_ENDPOINT=$(bash scripts/s3.sh endpoint))"
            );
            eprintln!("SKIPPED {test}: WAFLEET_S3_ENDPOINT is unset");
            None
        }
    }
}

#[tokio::test]
async fn missing_session() {
    if let Some(store) = store("s3 missing_session") {
        common::missing_session(&store).await;
    }
}

#[tokio::test]
async fn create_only_conflict() {
    if let Some(store) = store("s3 create_only_conflict") {
        common::create_only_conflict(&store).await;
    }
}

#[tokio::test]
async fn stale_etag_refused() {
    if let Some(store) = store("s3 stale_etag_refused") {
        common::stale_version_refused(&store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_racing_writers_one_wins() {
    if let Some(store) = store("s3 sixteen_racing_writers_one_wins") {
        common::racing_writers(Arc::new(store), 16, 6).await;
    }
}

#[tokio::test]
async fn vault_checks_and_tampered_object() {
    if let Some(store) = store("s3 vault_checks_and_tampered_object") {
        common::vault_checks(store).await;
    }
}

#[tokio::test]
async fn delete_is_idempotent() {
    if let Some(store) = store("s3 delete_is_idempotent") {
        common::delete_is_idempotent(&store).await;
    }
}
