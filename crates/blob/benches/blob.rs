//! Session blob latency: seal+open of a 64 KiB state, and a conditional save + load
//! through the filesystem store and (when `WAFLEET_S3_ENDPOINT` is set) the S3 store.
//!
//! `cargo bench -p wafleet-blob --bench blob`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wafleet_blob::{
    envelope, BlobStore, FsBlobStore, Keyring, MasterKey, S3BlobStore, S3Config, SaveCondition,
    SessionId, SessionVault,
};

const STATE_LEN: usize = 64 * 1024;

fn state() -> Vec<u8> {
    (0..STATE_LEN).map(|i| (i * 131 % 251) as u8).collect()
}

fn session(name: &str) -> SessionId {
    SessionId::new(format!("bench-{name}-{}", std::process::id())).unwrap_or_else(|e| panic!("{e}"))
}

fn envelope_bench(c: &mut Criterion) {
    let ring = Keyring::new(MasterKey::from_bytes([1; 32]));
    let id = session("envelope");
    let state = state();
    let mut group = c.benchmark_group("envelope_64KiB");
    group.throughput(Throughput::Bytes(STATE_LEN as u64));
    group.bench_function("seal", |b| {
        b.iter(|| envelope::seal(&ring, &id, 1, &state).unwrap_or_else(|e| panic!("{e}")))
    });
    let sealed = envelope::seal(&ring, &id, 1, &state).unwrap_or_else(|e| panic!("{e}"));
    group.bench_function("open", |b| {
        b.iter(|| envelope::open(&ring, &id, &sealed).unwrap_or_else(|e| panic!("{e}")))
    });
    group.finish();
}

/// One iteration = load (open) + seal + conditional save, as a worker does per state change.
fn store_bench<S: BlobStore>(c: &mut Criterion, name: &str, store: S) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let vault = SessionVault::new(
        store,
        Arc::new(Keyring::new(MasterKey::from_bytes([2; 32]))),
    );
    let id = session(name);
    let state = state();
    let mut version = runtime.block_on(async {
        match vault.load(&id, 1).await.unwrap_or_else(|e| panic!("{e}")) {
            Some(loaded) => {
                vault
                    .save(&id, 1, &state, &SaveCondition::IfVersion(loaded.version))
                    .await
            }
            None => vault.save(&id, 1, &state, &SaveCondition::CreateOnly).await,
        }
        .unwrap_or_else(|e| panic!("{e}"))
    });
    let mut group = c.benchmark_group(format!("{name}_64KiB"));
    group.sample_size(30);
    group.bench_function("save_if_match", |b| {
        b.iter(|| {
            version = runtime
                .block_on(vault.save(&id, 1, &state, &SaveCondition::IfVersion(version.clone())))
                .unwrap_or_else(|e| panic!("{e}"));
        })
    });
    group.bench_function("load_open", |b| {
        b.iter(|| {
            runtime
                .block_on(vault.load(&id, 1))
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("missing"))
        })
    });
    group.finish();
}

fn stores(c: &mut Criterion) {
    let root = std::env::temp_dir().join(format!("wafleet-blob-bench-{}", std::process::id()));
    store_bench(
        c,
        "fs",
        FsBlobStore::new(&root).unwrap_or_else(|e| panic!("{e}")),
    );
    let _ = std::fs::remove_dir_all(&root);
    match S3Config::from_env() {
        Some(config) => store_bench(c, "s3", S3BlobStore::new(&config)),
        None => eprintln!("s3 benchmark skipped: WAFLEET_S3_ENDPOINT is unset"),
    }
}

criterion_group!(benches, envelope_bench, stores);
criterion_main!(benches);
