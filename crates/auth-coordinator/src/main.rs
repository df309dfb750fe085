//! `wafleet-coordinator`: runs the auth-coordinator.
//!
//! Config from flags, falling back to environment variables:
//!
//! | flag | env | default |
//! |---|---|---|
//! | `--nats-url URL` | `WAFLEET_NATS_URL` | `nats://127.0.0.1:4222` |
//! | `--pg-url URL` | `WAFLEET_PG_URL` | required |
//! | `--pg-schema NAME` | `WAFLEET_PG_SCHEMA` | the server's default (`public`) |
//! | `--heartbeat-interval SECS` | `WAFLEET_HEARTBEAT_INTERVAL` | 5 |
//! | `--missed-heartbeats N` | `WAFLEET_MISSED_HEARTBEATS` | 3 |
//! | `--lease-ttl SECS` | `WAFLEET_LEASE_TTL` | 30 |
//!
//! SIGTERM or SIGINT: stop serving, hand leadership back, exit 0.

use std::process::ExitCode;
use std::time::Duration;

use wafleet_auth_coordinator::{
    Coordinator, CoordinatorConfig, Leadership, Registry, RegistryConfig,
};

/// The command line or environment is unusable, or a service cannot be reached.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("unknown argument {0:?} (see the crate docs for the flags)")]
    UnknownArgument(String),
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("{name} = {value:?}: {reason}")]
    InvalidValue {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("no PostgreSQL URL: pass --pg-url or set WAFLEET_PG_URL")]
    NoPgUrl,
    #[error(transparent)]
    Registry(#[from] wafleet_auth_coordinator::RegistryError),
    #[error("cannot connect to NATS: {0}")]
    Nats(#[from] async_nats::ConnectError),
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Service(#[from] wafleet_auth_coordinator::ServiceError),
}

struct Settings {
    nats_url: String,
    registry: RegistryConfig,
    coordinator: CoordinatorConfig,
}

fn setting(args: &[(String, String)], flag: &str, env: &str) -> Option<String> {
    args.iter()
        .rev()
        .find(|(name, _)| name == flag)
        .map(|(_, value)| value.clone())
        .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
}

fn seconds(
    name: &'static str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, StartError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs < 1e9 => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(StartError::InvalidValue {
            name,
            value,
            reason: "expected a positive number of seconds",
        }),
    }
}

fn parse_settings(argv: impl Iterator<Item = String>) -> Result<Settings, StartError> {
    const FLAGS: [&str; 6] = [
        "--nats-url",
        "--pg-url",
        "--pg-schema",
        "--heartbeat-interval",
        "--missed-heartbeats",
        "--lease-ttl",
    ];
    let mut args = Vec::new();
    let mut argv = argv;
    while let Some(arg) = argv.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        if !FLAGS.contains(&flag.as_str()) {
            return Err(StartError::UnknownArgument(arg));
        }
        let value = match inline {
            Some(value) => value,
            None => argv
                .next()
                .ok_or_else(|| StartError::MissingValue(flag.clone()))?,
        };
        args.push((flag, value));
    }
    let defaults = CoordinatorConfig::default();
    let missed = match setting(&args, "--missed-heartbeats", "WAFLEET_MISSED_HEARTBEATS") {
        None => defaults.missed_heartbeats,
        Some(value) => match value.parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(StartError::InvalidValue {
                    name: "missed heartbeats",
                    value,
                    reason: "expected a positive integer",
                })
            }
        },
    };
    let heartbeat_interval = seconds(
        "heartbeat interval",
        setting(&args, "--heartbeat-interval", "WAFLEET_HEARTBEAT_INTERVAL"),
        defaults.heartbeat_interval,
    )?;
    let lease_ttl = seconds(
        "lease TTL",
        setting(&args, "--lease-ttl", "WAFLEET_LEASE_TTL"),
        defaults.lease_ttl,
    )?;
    let pg_url = setting(&args, "--pg-url", "WAFLEET_PG_URL").ok_or(StartError::NoPgUrl)?;
    let mut registry = RegistryConfig::new(pg_url);
    registry.schema = setting(&args, "--pg-schema", "WAFLEET_PG_SCHEMA");
    Ok(Settings {
        nats_url: setting(&args, "--nats-url", "WAFLEET_NATS_URL")
            .unwrap_or_else(|| "nats://127.0.0.1:4222".to_string()),
        registry,
        coordinator: CoordinatorConfig {
            heartbeat_interval,
            missed_heartbeats: missed,
            lease_ttl,
            ..defaults
        },
    })
}

async fn run(settings: Settings) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).map_err(StartError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(StartError::Signal)?;

    let registry = Registry::connect(&settings.registry).await?;
    let nats = async_nats::ConnectOptions::new()
        .name("wafleet-coordinator")
        .connect(settings.nats_url.as_str())
        .await?;
    let leadership = Leadership::start(
        settings.registry.pg_config()?,
        settings.coordinator.heartbeat_interval,
    );
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let coordinator = Coordinator::new(registry, nats.clone(), settings.coordinator);
    let service = tokio::spawn(async move { coordinator.run(leadership, shutdown_rx).await });
    tracing::info!("coordinator started; campaigning for leadership");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = shutdown.send(true);
    match service.await {
        Ok(result) => result?,
        Err(e) => tracing::error!(error = %e, "coordinator task failed"),
    }
    if let Err(e) = nats.flush().await {
        tracing::warn!(error = %e, "NATS flush at shutdown failed");
    }
    tracing::info!("stopped; leadership released");
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let settings = match parse_settings(std::env::args().skip(1)) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("wafleet-coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wafleet-coordinator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wafleet-coordinator: {e}");
            ExitCode::FAILURE
        }
    }
}
