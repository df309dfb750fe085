//! The fleet side of a session worker: leases from the coordinator, encrypted blobs in S3
//! (or a directory), bus events, forwarded commands, metrics, and drain on shutdown.
//!
//! - [`worker`]: the worker loop (grants, revokes, commands, heartbeats, drain).
//! - [`session`]: one leased session (blob, driver, events, renewals, release).
//! - [`store`]: the driver's [`SessionStore`](crate::SessionStore) over a
//!   [`SessionVault`](wafleet_blob::SessionVault), fenced by the lease epoch.
//! - [`lease`]: the lease's local deadline.
//! - [`bus`]: lease requests, heartbeats and event publication on NATS.
//! - [`metrics`]: Prometheus metrics and `/metrics`, `/healthz`, `/readyz`.
//! - [`reason`]: driver reason codes as bus reason codes.
//! - [`send`]: the `send` command (idempotency, rate limit, `message_sent`).
//!
//! [`serve`] puts it together for the `wafleet worker` command.

pub mod bus;
pub mod inbound;
pub mod lease;
pub mod metrics;
pub mod reason;
pub mod send;
pub mod session;
pub mod store;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::info;
use wafleet_blob::{BlobStore, FsBlobStore, Keyring, S3BlobStore, S3Config, SessionVault};

pub use worker::{Worker, WorkerConfig, WorkerError};

/// Where session blobs live.
#[derive(Debug, Clone)]
pub enum BlobBackend {
    /// An S3 bucket (custom endpoint, path-style).
    S3(S3Config),
    /// A directory on this machine (one-machine use), same encryption.
    Dir(PathBuf),
}

/// What `wafleet worker` runs.
#[derive(Debug)]
pub struct ServeOptions {
    /// The worker's settings.
    pub config: WorkerConfig,
    /// The NATS servers, comma-separated (the nodes of a cluster; the client moves to
    /// another when one goes away).
    pub nats_url: String,
    /// Use only the servers of `nats_url`, not those the cluster advertises (a worker
    /// pinned to some nodes, e.g. to cut it off alone in a test).
    pub nats_ignore_discovered_servers: bool,
    /// The blob store.
    pub blobs: BlobBackend,
    /// The master keys.
    pub keyring: Keyring,
    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    pub http_addr: SocketAddr,
}

/// What [`serve`] reports once it is up.
#[derive(Debug, Clone)]
pub struct Started {
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
}

/// Connects, serves until `shutdown` turns true, drains, and returns. `on_started` is
/// called once the worker takes leases.
pub async fn serve(
    options: ServeOptions,
    shutdown: watch::Receiver<bool>,
    on_started: impl FnOnce(Started),
) -> Result<(), String> {
    let store: Arc<dyn BlobStore> = match &options.blobs {
        BlobBackend::S3(config) => Arc::new(S3BlobStore::new(config)),
        BlobBackend::Dir(dir) => {
            Arc::new(FsBlobStore::new(dir).map_err(|e| format!("blob directory: {e}"))?)
        }
    };
    let vault = Arc::new(SessionVault::new(store, Arc::new(options.keyring)));
    // Fast reconnects, forever, in the background (the fleet's shared options): a NATS
    // node restart costs a reconnect to another node, well within the lease trust.
    let mut nats = wafleet_bus_schema::nats::connect_options(format!(
        "wafleet-worker {}",
        options.config.worker_id
    ))
    .event_callback(|event| async move {
        match event {
            async_nats::Event::Connected => info!("NATS connected"),
            async_nats::Event::Disconnected => tracing::warn!("NATS disconnected; reconnecting"),
            other => tracing::debug!(event = %other, "NATS event"),
        }
    });
    if options.nats_ignore_discovered_servers {
        nats = nats.ignore_discovered_servers();
    }
    let client = wafleet_bus_schema::nats::connect_with(&options.nats_url, nats)
        .await
        .map_err(|e| format!("NATS {}: {e}", options.nats_url))?;
    let handle = metrics::install();
    let health = Arc::new(metrics::Health::default());
    let (http_addr, http) = metrics::serve(
        options.http_addr,
        handle,
        Arc::clone(&health),
        client.clone(),
    )
    .await
    .map_err(|e| format!("HTTP listener {}: {e}", options.http_addr))?;
    let worker = Worker::new(options.config, client.clone(), vault, health);
    let (ready_tx, mut ready_rx) = watch::channel(false);
    let run = tokio::spawn(async move {
        let result = worker.run_with_ready(shutdown, ready_tx).await;
        result.map_err(|e| e.to_string())
    });
    if ready_rx.wait_for(|r| *r).await.is_ok() {
        on_started(Started { http_addr });
    }
    let result = match run.await {
        Ok(result) => result,
        Err(e) => Err(format!("worker task failed: {e}")),
    };
    http.abort();
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "NATS flush at exit failed");
    }
    info!("worker stopped");
    result
}
