//! Prometheus metrics and the worker's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use wafleet_bus_schema::v1::ReasonCode;

/// Gauge: leases this worker holds.
pub const LEASES_HELD: &str = "wafleet_worker_leases_held";
/// Gauge: sessions by `status` (starting, scan_qr_code, working).
pub const SESSIONS: &str = "wafleet_worker_sessions";
/// Counter: disconnects followed by a reconnect, by `reason`.
pub const RECONNECTS: &str = "wafleet_worker_reconnects_total";
/// Counter: sessions ended, by `reason`.
pub const SESSIONS_ENDED: &str = "wafleet_worker_sessions_ended_total";
/// Histogram: blob load latency (seconds).
pub const BLOB_LOAD: &str = "wafleet_worker_blob_load_seconds";
/// Histogram: blob save latency (seconds), commit and write.
pub const BLOB_SAVE: &str = "wafleet_worker_blob_save_seconds";
/// Histogram: from an event's creation to the stream's ack (seconds).
pub const EVENT_PUBLISH_LAG: &str = "wafleet_worker_event_publish_lag_seconds";
/// Counter: events that could not be published after every retry.
pub const EVENTS_FAILED: &str = "wafleet_worker_events_failed_total";
/// Counter: lease grants refused, by `reason`.
pub const GRANTS_REFUSED: &str = "wafleet_worker_grants_refused_total";
/// Counter: blob store operations that failed because the store did not answer, by `op`
/// (`load`, `save`); a refused conditional write (fencing) is not counted.
pub const BLOB_STORE_ERRORS: &str = "wafleet_worker_blob_store_errors_total";
/// Gauge: leased sessions waiting for the blob store to answer before they can start.
pub const WAITING_FOR_BLOB_STORE: &str = "wafleet_worker_sessions_waiting_for_blob_store";

/// Counter: session blobs written (each a fenced commit and a whole-blob PUT); divided by
/// the messages in and out, the store writes per message.
pub const STORE_WRITES: &str = "wafleet_worker_store_writes_total";
/// Counter: bytes of session state written (the blob's plaintext; the sealed object is
/// 28 bytes longer plus its header).
pub const STORE_BYTES: &str = "wafleet_worker_store_bytes_total";
/// Counter: inbound messages published, by `type` (text, reaction, image, …).
pub const MESSAGES_IN: &str = "wafleet_worker_messages_in_total";
/// Counter: messages sent by `send` commands and acked by the server, by `type`.
pub const MESSAGES_OUT: &str = "wafleet_worker_messages_out_total";
/// Counter: inbound messages that could not be decrypted, by `reason`.
pub const UNDECRYPTABLE: &str = "wafleet_worker_messages_undecryptable_total";
/// Counter: receipts for sent messages, by `type` (delivered, read, played, …).
pub const RECEIPTS: &str = "wafleet_worker_receipts_total";
/// Counter: `send` commands answered, by `outcome` (`sent` or the error code).
pub const SEND_COMMANDS: &str = "wafleet_worker_send_commands_total";
/// Histogram: a successful `send` command, from its arrival to its reply (seconds).
pub const SEND_SECONDS: &str = "wafleet_worker_send_seconds";
/// Counter: `send` commands refused by the session's rate limit.
pub const SENDS_RATE_LIMITED: &str = "wafleet_worker_sends_rate_limited_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder (once) and describes every metric.
/// A second call returns `None` (a recorder is installed already).
pub fn install() -> Option<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    metrics::describe_gauge!(LEASES_HELD, "Session leases this worker holds");
    metrics::describe_gauge!(SESSIONS, "Sessions on this worker by status");
    metrics::describe_counter!(RECONNECTS, "Disconnects followed by a reconnect, by reason");
    metrics::describe_counter!(SESSIONS_ENDED, "Sessions ended on this worker, by reason");
    metrics::describe_histogram!(
        BLOB_LOAD,
        metrics::Unit::Seconds,
        "Session blob load and decrypt latency"
    );
    metrics::describe_histogram!(
        BLOB_SAVE,
        metrics::Unit::Seconds,
        "Session blob fenced commit, encrypt and conditional write latency"
    );
    metrics::describe_histogram!(
        EVENT_PUBLISH_LAG,
        metrics::Unit::Seconds,
        "Time from an event's creation to the stream's ack"
    );
    metrics::describe_counter!(EVENTS_FAILED, "Events not acked after every retry");
    metrics::describe_counter!(
        STORE_WRITES,
        "Session blobs written (fenced commit and whole-blob write)"
    );
    metrics::describe_counter!(STORE_BYTES, "Bytes of session state written");
    metrics::describe_counter!(MESSAGES_IN, "Inbound messages published, by type");
    metrics::describe_counter!(
        MESSAGES_OUT,
        "Messages sent by send commands and acked by the server, by type"
    );
    metrics::describe_counter!(
        UNDECRYPTABLE,
        "Inbound messages that could not be decrypted, by reason"
    );
    metrics::describe_counter!(RECEIPTS, "Receipts for sent messages, by type");
    metrics::describe_counter!(SEND_COMMANDS, "Send commands answered, by outcome");
    metrics::describe_histogram!(
        SEND_SECONDS,
        metrics::Unit::Seconds,
        "Send command latency, from its arrival to the reply after the server's ack"
    );
    metrics::describe_counter!(
        SENDS_RATE_LIMITED,
        "Send commands refused by the session's rate limit"
    );
    metrics::describe_counter!(
        GRANTS_REFUSED,
        "Lease grants this worker refused, by reason"
    );
    metrics::describe_counter!(
        BLOB_STORE_ERRORS,
        "Blob store loads and saves that failed because the store did not answer, by op"
    );
    metrics::describe_gauge!(
        WAITING_FOR_BLOB_STORE,
        "Leased sessions waiting for the blob store before they can start"
    );
    // Every series an alert may read exists from the start (at zero), so a scrape of an
    // idle worker already shows them.
    for op in ["load", "save"] {
        metrics::counter!(BLOB_STORE_ERRORS, "op" => op).absolute(0);
    }
    metrics::gauge!(WAITING_FOR_BLOB_STORE).set(0.0);
    for status in ["starting", "scan_qr_code", "working"] {
        metrics::gauge!(SESSIONS, "status" => status).set(0.0);
    }
    metrics::gauge!(LEASES_HELD).set(0.0);
    metrics::counter!(EVENTS_FAILED).absolute(0);
    for reason in ["full", "draining"] {
        metrics::counter!(GRANTS_REFUSED, "reason" => reason).absolute(0);
    }
    for reason in [
        ReasonCode::Requested,
        ReasonCode::LoggedOut,
        ReasonCode::Replaced,
        ReasonCode::QrExhausted,
        ReasonCode::ClientOutdated,
        ReasonCode::BlobRejected,
        ReasonCode::TemporaryBan,
        ReasonCode::ConnectionLost,
        ReasonCode::WorkerDraining,
        ReasonCode::PairingFailed,
        ReasonCode::InternalFailure,
        ReasonCode::BlobStoreUnavailable,
    ] {
        metrics::counter!(SESSIONS_ENDED, "reason" => super::reason::label(reason)).absolute(0);
    }
    metrics::counter!(SESSIONS_ENDED, "reason" => "lease_lost").absolute(0);
    for reason in ["connection_lost", "restart_required", "keepalive_timeout"] {
        metrics::counter!(RECONNECTS, "reason" => reason).absolute(0);
    }
    for histogram in [BLOB_LOAD, BLOB_SAVE, EVENT_PUBLISH_LAG] {
        // Registers the series; an empty histogram renders its zero buckets.
        let _ = metrics::histogram!(histogram);
    }
    Some(handle)
}

/// What `/healthz` and `/readyz` look at.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once the worker is connected and subscribed; cleared when it drains.
    pub ready: AtomicBool,
}

#[derive(Clone)]
struct HttpState {
    handle: Option<PrometheusHandle>,
    health: Arc<Health>,
    nats: async_nats::Client,
}

/// Serves the endpoints on `addr` until the returned task is aborted. `/readyz` is 200
/// only while the worker takes leases and its NATS connection is up.
pub async fn serve(
    addr: SocketAddr,
    handle: Option<PrometheusHandle>,
    health: Arc<Health>,
    nats: async_nats::Client,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let state = HttpState {
        handle,
        health,
        nats,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok((bound, task))
}

async fn metrics_page(State(state): State<HttpState>) -> (StatusCode, String) {
    match &state.handle {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no metrics recorder in this process\n".into(),
        ),
    }
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    let connected = matches!(
        state.nats.connection_state(),
        async_nats::connection::State::Connected
    );
    if state.health.ready.load(Ordering::SeqCst) && connected {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
