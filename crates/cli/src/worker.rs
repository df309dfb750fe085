//! `wafleet worker`: a fleet session worker. It takes session leases from the
//! auth-coordinator over NATS, keeps each session's encrypted blob in S3 (or a directory),
//! speaks WhatsApp for the sessions it holds, and publishes their events.
//!
//! Once it takes leases it prints one JSON line on stdout:
//! `{"event":"worker_ready","worker":"w1","http":"127.0.0.1:9464"}`. SIGTERM or Ctrl-C
//! drains it: no new leases, every socket closed, every lease released, then exit 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use wafleet_blob::{Keyring, S3Config};
use wafleet_bus_schema::codec::ContentType;
use wafleet_bus_schema::WorkerId;
use wafleet_session_worker::fleet::send::SendRate;
use wafleet_session_worker::fleet::{self, BlobBackend, ServeOptions, WorkerConfig};
use wafleet_session_worker::ServerConfig;

use crate::connect::parse_root_key;

/// The `--event-encoding` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventEncoding {
    /// Protobuf (`application/protobuf`), the default.
    Protobuf,
    /// proto3 JSON (`application/json`).
    Json,
}

/// `wafleet worker …`
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The worker's name in the fleet (letters, digits, `_`, `-`).
    #[arg(long, env = "WAFLEET_WORKER_ID")]
    worker_id: String,
    /// How many sessions this worker holds at most.
    #[arg(long, default_value_t = 100)]
    capacity: u32,
    /// The NATS servers, comma-separated (every node of the cluster, e.g.
    /// `nats://nats-0:4222,nats://nats-1:4222,nats://nats-2:4222`); `--nats` is the old name.
    #[arg(
        long = "nats-url",
        alias = "nats",
        env = "WAFLEET_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
    /// Connect only to the --nats-url servers, ignoring the ones the cluster advertises.
    #[arg(long)]
    nats_ignore_discovered_servers: bool,
    /// How long a session waits for an unreachable blob store (retrying its load) before
    /// it hands its lease back with BLOB_STORE_UNAVAILABLE, in ms.
    #[arg(long, default_value_t = 30_000)]
    blob_wait_ms: u64,
    /// The liveness watchdog: each logged-in socket sends a keepalive ping every interval
    /// (jittered up to 1.5×); a ping unanswered for --keepalive-timeout-ms means the socket
    /// is dead even if it looks open, so the session reconnects and reports
    /// `disconnected` KEEPALIVE_TIMEOUT. A socket that hears nothing is found within
    /// 1.5 × interval + timeout.
    #[arg(long, env = "WAFLEET_KEEPALIVE_INTERVAL_MS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(100..))]
    keepalive_interval_ms: u64,
    /// How long a keepalive ping may go unanswered (see --keepalive-interval-ms).
    #[arg(long, env = "WAFLEET_KEEPALIVE_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
    keepalive_timeout_ms: u64,
    /// Each session's sustained send rate, in messages a second (`send` commands beyond it
    /// are answered RATE_LIMITED with a retry_after; WhatsApp bans bursty senders).
    #[arg(long, env = "WAFLEET_SEND_RATE", default_value_t = 20.0)]
    send_rate: f64,
    /// Each session's longest send burst (the token bucket's size).
    #[arg(long, env = "WAFLEET_SEND_BURST", default_value_t = 40)]
    send_burst: u32,
    /// Replicas of the event stream WAFLEET_EVENTS when this worker creates it (3 on a
    /// 3-node NATS cluster, so a node restart loses no event; an existing stream is left
    /// as it is).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    stream_replicas: u32,
    /// How session events are encoded on the bus: `protobuf`, or `json` (proto3 JSON, for
    /// backends without the .proto files). The `Content-Type` header says which.
    #[arg(long, env = "WAFLEET_EVENT_ENCODING", value_enum, default_value_t = EventEncoding::Protobuf)]
    event_encoding: EventEncoding,
    /// Keep blobs in this directory instead of S3 (one-machine use; same encryption).
    #[arg(long)]
    blob_dir: Option<PathBuf>,
    /// The master key file (32 raw bytes, or lines of hex/base64: first current, then
    /// retired). Without it, WAFLEET_MASTER_KEY (a key or a file path) is read.
    #[arg(long)]
    master_key_file: Option<PathBuf>,
    /// Another server than WhatsApp (e.g. `wafleet sim`'s `ws://…/ws/chat`); needs --root-key.
    #[arg(long, requires = "root_key")]
    server: Option<String>,
    /// The server's certificate root public key, 64 hex digits; needs --server.
    #[arg(long, requires = "server")]
    root_key: Option<String>,
    /// Heartbeat interval in ms (the coordinator's heartbeat interval).
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
    /// Lease renewal interval in ms (well under the coordinator's lease TTL).
    #[arg(long, default_value_t = 10_000)]
    renew_ms: u64,
    /// How long a drain may take, in ms.
    #[arg(long, default_value_t = 20_000)]
    drain_timeout_ms: u64,
    /// Where /metrics, /healthz and /readyz listen.
    #[arg(long, default_value = "127.0.0.1:9464")]
    http: SocketAddr,
    /// Base of the reconnect backoff in ms (testing).
    #[arg(long, hide = true)]
    backoff_base_ms: Option<u64>,
}

fn init_logging() {
    // WAFLEET_LOG: a level or tracing directives (`info,wafleet_session_worker=debug`);
    // info by default. Logs go to stderr.
    let filter = std::env::var("WAFLEET_LOG")
        .ok()
        .and_then(|l| tracing_subscriber::EnvFilter::try_new(l).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Runs `wafleet worker` until SIGTERM or Ctrl-C.
pub fn run(args: WorkerArgs) -> Result<(), String> {
    init_logging();
    let worker_id = WorkerId::new(args.worker_id.as_str())
        .map_err(|e| format!("--worker-id {:?}: {e}", args.worker_id))?;
    let keyring = match &args.master_key_file {
        Some(path) => Keyring::from_file(path),
        None => Keyring::from_env(),
    }
    .map_err(|e| format!("master key: {e}"))?;
    let blobs = match (&args.blob_dir, S3Config::from_env()) {
        (Some(dir), _) => BlobBackend::Dir(dir.clone()),
        (None, Some(s3)) => BlobBackend::S3(s3),
        (None, None) => {
            return Err("no blob store: set WAFLEET_S3_ENDPOINT (S3) or pass --blob-dir DIR".into())
        }
    };
    let mut config = WorkerConfig::new(worker_id.clone());
    config.capacity = args.capacity;
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_ms.max(50));
    config.pacing.renew_every = Duration::from_millis(args.renew_ms.max(50));
    config.drain_timeout = Duration::from_millis(args.drain_timeout_ms);
    config.pacing.blob_wait = Duration::from_millis(args.blob_wait_ms);
    config.driver.session.keepalive_min_ms = args.keepalive_interval_ms;
    config.driver.session.keepalive_max_ms = args
        .keepalive_interval_ms
        .saturating_add(args.keepalive_interval_ms / 2);
    config.driver.session.keepalive_timeout_ms = args.keepalive_timeout_ms;
    if !(args.send_rate.is_finite() && args.send_rate > 0.0) {
        return Err(format!(
            "--send-rate must be a positive number, not {}",
            args.send_rate
        ));
    }
    config.pacing.send_rate = SendRate {
        per_second: args.send_rate,
        burst: args.send_burst.max(1),
    };
    config.stream_replicas = args.stream_replicas as usize;
    config.event_encoding = match args.event_encoding {
        EventEncoding::Protobuf => ContentType::Protobuf,
        EventEncoding::Json => ContentType::Json,
    };
    config.driver.server = match (&args.server, &args.root_key) {
        (Some(url), Some(key)) => ServerConfig {
            url: url.clone(),
            root: parse_root_key(key)?,
        },
        (None, None) => ServerConfig::default(),
        _ => return Err("--server and --root-key go together".into()),
    };
    if let Some(ms) = args.backoff_base_ms {
        config.driver.backoff.base = Duration::from_millis(ms);
    }
    let options = ServeOptions {
        config,
        nats_url: args.nats.clone(),
        nats_ignore_discovered_servers: args.nats_ignore_discovered_servers,
        blobs,
        keyring,
        http_addr: args.http,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested: draining");
            let _ = shutdown_tx.send(true);
        });
        fleet::serve(options, shutdown, |started| {
            println!(
                "{}",
                serde_json::json!({
                    "event": "worker_ready",
                    "worker": worker_id.as_str(),
                    "http": started.http_addr.to_string(),
                })
            );
        })
        .await
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
