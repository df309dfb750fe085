//! The coordinator's command line, as a library: `wafleet-coordinator` and
//! `wafleet coordinator` both call [`main_with_args`].
//!
//! Config from flags, falling back to environment variables (see [`USAGE`]). SIGTERM or
//! SIGINT: stop serving, hand leadership back, exit 0. Exit 2 for an unusable command
//! line, 1 when a service cannot be reached or serving fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use wafleet_blob::{BlobStore, FsBlobStore, S3BlobStore, S3Config, StoreError};

use crate::{
    Coordinator, CoordinatorConfig, Leadership, Registry, RegistryConfig, RegistryError,
    ServiceError,
};

/// The usage text (`--help`).
pub const USAGE: &str = "\
Runs the wafleet auth-coordinator: the session registry in PostgreSQL, leases with fencing
epochs over NATS, leader election. Flags fall back to the environment variables shown.

Options:
  --nats-url URL[,URL...]      WAFLEET_NATS_URL            default nats://127.0.0.1:4222
                                                           (several servers of a cluster,
                                                           comma-separated)
  --pg-url URL                 WAFLEET_PG_URL              required
  --pg-schema NAME             WAFLEET_PG_SCHEMA           default: the server's (public)
  --heartbeat-interval SECS    WAFLEET_HEARTBEAT_INTERVAL  default 5
  --missed-heartbeats N        WAFLEET_MISSED_HEARTBEATS   default 3
  --lease-ttl SECS             WAFLEET_LEASE_TTL           default 30
  --worker-reply-timeout SECS  WAFLEET_WORKER_REPLY_TIMEOUT  default 5
  --pg-grace-ms MS             WAFLEET_PG_GRACE_MS         default 45000: how long the
                                                           leader keeps leading (degraded:
                                                           heartbeats from memory, commands
                                                           UNAVAILABLE) while PostgreSQL
                                                           cannot be reached
  --blob-dir DIR               WAFLEET_BLOB_DIR            purge deleted sessions' blobs
                                                           from this filesystem store
  --s3-endpoint URL            WAFLEET_S3_ENDPOINT         ... or from this S3 store
  --s3-bucket NAME             WAFLEET_S3_BUCKET           default wafleet-sessions
  --s3-prefix PREFIX           WAFLEET_S3_PREFIX           default sessions/
  --s3-region REGION           WAFLEET_S3_REGION           default us-east-1
  -h, --help                   this text

S3 credentials come only from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (default test/test).
A flag beats the environment; --blob-dir and --s3-endpoint together are refused, and so are
WAFLEET_BLOB_DIR and WAFLEET_S3_ENDPOINT together when neither flag is given. Without a blob
store, delete removes only the registry row.
Flags take their value as the next argument or after '=' (--lease-ttl=10).
SIGTERM or SIGINT: stop serving, hand leadership back, exit 0.";

/// The command line or environment is unusable, or a service cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag this command does not know.
    #[error("unknown argument {0:?} (see --help)")]
    UnknownArgument(String),
    /// A flag without its value.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// A value that does not parse.
    #[error("{name} = {value:?}: {reason}")]
    InvalidValue {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: String,
        /// What was expected.
        reason: &'static str,
    },
    /// No PostgreSQL URL.
    #[error("no PostgreSQL URL: pass --pg-url or set WAFLEET_PG_URL")]
    NoPgUrl,
    /// Both a filesystem and an S3 blob store.
    #[error(
        "both a blob directory ({dir}) and an S3 endpoint ({endpoint}) are configured; choose one"
    )]
    TwoBlobStores {
        /// The directory.
        dir: String,
        /// The S3 endpoint.
        endpoint: String,
    },
    /// The blob store cannot be opened.
    #[error("blob store: {0}")]
    BlobStore(#[from] StoreError),
    /// The registry cannot be reached or migrated.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// NATS cannot be reached.
    #[error("cannot connect to NATS: {0}")]
    Nats(#[from] async_nats::ConnectError),
    /// No signal handler.
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
    /// No tokio runtime.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// Serving failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// Where deleted sessions' blobs are purged from.
#[derive(Debug, Clone)]
pub enum BlobSettings {
    /// No blob store: delete removes only the registry row.
    None,
    /// A [`FsBlobStore`] rooted here.
    Fs(PathBuf),
    /// An [`S3BlobStore`].
    S3(S3Config),
}

impl BlobSettings {
    /// Opens the store (an S3 store makes no request yet).
    pub fn open(&self) -> Result<Option<Arc<dyn BlobStore>>, StoreError> {
        Ok(match self {
            BlobSettings::None => None,
            BlobSettings::Fs(dir) => Some(Arc::new(FsBlobStore::new(dir)?)),
            BlobSettings::S3(config) => Some(Arc::new(S3BlobStore::new(config))),
        })
    }
}

/// Everything the coordinator needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The NATS server.
    pub nats_url: String,
    /// The registry database.
    pub registry: RegistryConfig,
    /// The pacing.
    pub coordinator: CoordinatorConfig,
    /// The blob store to purge from.
    pub blobs: BlobSettings,
}

/// What the command line asks for.
#[derive(Debug, Clone)]
pub enum Invocation {
    /// Run with these settings.
    Run(Box<Settings>),
    /// Print [`USAGE`].
    Help,
}

const FLAGS: [&str; 13] = [
    "--nats-url",
    "--pg-grace-ms",
    "--pg-url",
    "--pg-schema",
    "--heartbeat-interval",
    "--missed-heartbeats",
    "--lease-ttl",
    "--worker-reply-timeout",
    "--blob-dir",
    "--s3-endpoint",
    "--s3-bucket",
    "--s3-prefix",
    "--s3-region",
];

/// Flag values as given (the last one of a repeated flag wins).
struct Flags(Vec<(String, String)>);

impl Flags {
    fn get(&self, flag: &str) -> Option<String> {
        self.0
            .iter()
            .rev()
            .find(|(name, _)| name == flag)
            .map(|(_, value)| value.clone())
    }
}

fn seconds(
    name: &'static str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, CliError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs < 1e9 => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(CliError::InvalidValue {
            name,
            value,
            reason: "expected a positive number of seconds",
        }),
    }
}

/// Parses the arguments (without the program name), falling back to `env` for what they
/// leave out. `env` is the process environment in [`main_with_args`]; tests pass a map.
pub fn parse_args(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Invocation, CliError> {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let mut flags = Vec::new();
    let mut argv = args.into_iter();
    while let Some(arg) = argv.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Invocation::Help);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        if !FLAGS.contains(&flag.as_str()) {
            return Err(CliError::UnknownArgument(arg));
        }
        let value = match inline {
            Some(value) => value,
            None => argv
                .next()
                .ok_or_else(|| CliError::MissingValue(flag.clone()))?,
        };
        flags.push((flag, value));
    }
    let flags = Flags(flags);
    let setting = |flag: &str, var: &str| flags.get(flag).or_else(|| env(var));

    let defaults = CoordinatorConfig::default();
    let missed_heartbeats = match setting("--missed-heartbeats", "WAFLEET_MISSED_HEARTBEATS") {
        None => defaults.missed_heartbeats,
        Some(value) => match value.parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(CliError::InvalidValue {
                    name: "missed heartbeats",
                    value,
                    reason: "expected a positive integer",
                })
            }
        },
    };
    let heartbeat_interval = seconds(
        "heartbeat interval",
        setting("--heartbeat-interval", "WAFLEET_HEARTBEAT_INTERVAL"),
        defaults.heartbeat_interval,
    )?;
    let lease_ttl = seconds(
        "lease TTL",
        setting("--lease-ttl", "WAFLEET_LEASE_TTL"),
        defaults.lease_ttl,
    )?;
    let worker_reply_timeout = seconds(
        "worker reply timeout",
        setting("--worker-reply-timeout", "WAFLEET_WORKER_REPLY_TIMEOUT"),
        defaults.worker_reply_timeout,
    )?;
    let pg_grace = match setting("--pg-grace-ms", "WAFLEET_PG_GRACE_MS") {
        None => defaults.pg_grace,
        Some(value) => match value.parse::<u64>() {
            Ok(ms) if ms > 0 && ms < 1_000_000_000 => Duration::from_millis(ms),
            _ => {
                return Err(CliError::InvalidValue {
                    name: "PostgreSQL grace",
                    value,
                    reason: "expected a positive number of milliseconds",
                })
            }
        },
    };
    let nats_url = setting("--nats-url", "WAFLEET_NATS_URL")
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_string());
    if nats_servers(&nats_url).is_err() {
        return Err(CliError::InvalidValue {
            name: "NATS URL",
            value: nats_url,
            reason: "expected one or more comma-separated nats:// URLs",
        });
    }
    let pg_url = setting("--pg-url", "WAFLEET_PG_URL").ok_or(CliError::NoPgUrl)?;
    let mut registry = RegistryConfig::new(pg_url);
    registry.schema = setting("--pg-schema", "WAFLEET_PG_SCHEMA");

    let blobs = blob_settings(&flags, &env)?;
    Ok(Invocation::Run(Box::new(Settings {
        nats_url,
        registry,
        coordinator: CoordinatorConfig {
            heartbeat_interval,
            missed_heartbeats,
            lease_ttl,
            worker_reply_timeout,
            pg_grace,
            ..defaults
        },
        blobs,
    })))
}

/// Flags first: `--blob-dir` or `--s3-endpoint` (not both). Without either, the
/// environment: `WAFLEET_BLOB_DIR` or `WAFLEET_S3_ENDPOINT` (not both).
fn blob_settings(
    flags: &Flags,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<BlobSettings, CliError> {
    let (dir, endpoint) = match (flags.get("--blob-dir"), flags.get("--s3-endpoint")) {
        (None, None) => (
            env("WAFLEET_BLOB_DIR"),
            env(wafleet_blob::store::s3::ENDPOINT_ENV),
        ),
        given => given,
    };
    match (dir, endpoint) {
        (Some(dir), Some(endpoint)) => Err(CliError::TwoBlobStores { dir, endpoint }),
        (Some(dir), None) => Ok(BlobSettings::Fs(PathBuf::from(dir))),
        (None, Some(endpoint)) => {
            let flag_of = |var: &str| match var {
                "WAFLEET_S3_BUCKET" => flags.get("--s3-bucket"),
                "WAFLEET_S3_PREFIX" => flags.get("--s3-prefix"),
                "WAFLEET_S3_REGION" => flags.get("--s3-region"),
                _ => None,
            };
            let config = S3Config::from_lookup(|var| {
                if var == wafleet_blob::store::s3::ENDPOINT_ENV {
                    return Some(endpoint.clone());
                }
                flag_of(var).or_else(|| env(var))
            });
            Ok(config.map_or(BlobSettings::None, BlobSettings::S3))
        }
        (None, None) => Ok(BlobSettings::None),
    }
}

/// The servers of a comma-separated `--nats-url` list (the workers' parser).
pub fn nats_servers(
    urls: &str,
) -> Result<Vec<async_nats::ServerAddr>, wafleet_bus_schema::nats::ServerListError> {
    wafleet_bus_schema::nats::server_addrs(urls)
}

/// The coordinator's NATS options: the fleet's (`wafleet_bus_schema::nats::connect_options`:
/// reconnect for ever, quickly, so a node restart in a cluster costs well under a
/// worker's lease trust; retry the first connection too), plus reporting connects and
/// disconnects to `link` (the heard window restarts on every reconnect).
pub fn nats_options(link: &crate::service::NatsLink) -> async_nats::ConnectOptions {
    let link = link.clone();
    wafleet_bus_schema::nats::connect_options("wafleet-coordinator").event_callback(move |event| {
        let link = link.clone();
        async move { link.on_event(&event) }
    })
}

/// Connects to the comma-separated servers in `urls` with [`nats_options`].
pub async fn connect_nats(
    urls: &str,
    link: &crate::service::NatsLink,
) -> Result<async_nats::Client, CliError> {
    let servers = nats_servers(urls).map_err(|_| CliError::InvalidValue {
        name: "NATS URL",
        value: urls.to_string(),
        reason: "expected one or more comma-separated nats:// URLs",
    })?;
    Ok(nats_options(link).connect(servers).await?)
}

/// Connects, serves until SIGTERM or SIGINT, hands leadership back.
pub async fn run(settings: Settings) -> Result<(), CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).map_err(CliError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(CliError::Signal)?;

    let blobs = settings.blobs.open()?;
    match &settings.blobs {
        BlobSettings::None => {
            tracing::info!("no blob store configured: delete removes only the registry row")
        }
        BlobSettings::Fs(dir) => {
            tracing::info!(dir = %dir.display(), "purging deleted sessions' blobs from the filesystem store")
        }
        BlobSettings::S3(config) => {
            tracing::info!(endpoint = %config.endpoint, bucket = %config.bucket, prefix = %config.prefix,
                "purging deleted sessions' blobs from the S3 store")
        }
    }
    let registry = Registry::connect(&settings.registry).await?;
    let link = crate::service::NatsLink::new();
    let nats = connect_nats(&settings.nats_url, &link).await?;
    let leadership = Leadership::start_with(
        settings.registry.pg_config()?,
        settings.coordinator.leadership(),
    );
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut coordinator =
        Coordinator::new(registry, nats.clone(), settings.coordinator).with_nats_link(link);
    if let Some(store) = blobs {
        coordinator = coordinator.with_blob_store(store);
    }
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

/// The whole command: parses `args` (without the program name) and the environment,
/// installs a `tracing` subscriber on stderr (`RUST_LOG`, `info` by default) unless one is
/// installed, runs, and returns the exit code. Errors are one line on stderr, prefixed by
/// `program`.
pub fn main_with_args(program: &str, args: Vec<String>) -> ExitCode {
    let settings = match parse_args(args, |name| std::env::var(name).ok()) {
        Ok(Invocation::Run(settings)) => settings,
        Ok(Invocation::Help) => {
            println!("Usage: {program} [OPTIONS]\n\n{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
        .and_then(|runtime| runtime.block_on(run(*settings)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Invocation, CliError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_args(args.iter().map(|a| a.to_string()), |name| {
            env.get(name).cloned()
        })
    }

    fn settings(args: &[&str], env: &[(&str, &str)]) -> Settings {
        match parse(args, env) {
            Ok(Invocation::Run(settings)) => *settings,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_beat_the_environment_and_timing_knobs_parse() {
        let s = settings(
            &[
                "--pg-url",
                "postgres://flag",
                "--heartbeat-interval=1",
                "--missed-heartbeats",
                "3",
                "--lease-ttl",
                "10",
                "--worker-reply-timeout",
                "0.5",
            ],
            &[
                ("WAFLEET_PG_URL", "postgres://env"),
                ("WAFLEET_LEASE_TTL", "99"),
                ("WAFLEET_PG_SCHEMA", "coord"),
            ],
        );
        assert_eq!(s.registry.url, "postgres://flag");
        assert_eq!(s.registry.schema.as_deref(), Some("coord"));
        assert_eq!(s.coordinator.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(s.coordinator.missed_heartbeats, 3);
        assert_eq!(s.coordinator.lease_ttl, Duration::from_secs(10));
        assert_eq!(
            s.coordinator.worker_reply_timeout,
            Duration::from_millis(500)
        );
        assert_eq!(s.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(s.coordinator.pg_grace, Duration::from_secs(45));
        assert!(matches!(s.blobs, BlobSettings::None));
        let s = settings(
            &[
                "--nats-url",
                "nats://127.0.0.1:4001, nats://127.0.0.1:4002,nats://127.0.0.1:4003",
                "--pg-grace-ms=1500",
            ],
            &[("WAFLEET_PG_URL", "p")],
        );
        assert_eq!(s.coordinator.pg_grace, Duration::from_millis(1500));
        let servers = nats_servers(&s.nats_url).expect("servers");
        assert_eq!(servers.len(), 3);
        assert_eq!(servers[1].port(), 4002);
    }

    #[test]
    fn bad_command_lines_are_typed_errors() {
        assert!(matches!(parse(&[], &[]), Err(CliError::NoPgUrl)));
        assert!(matches!(
            parse(&["--pg-url"], &[]),
            Err(CliError::MissingValue(_))
        ));
        assert!(matches!(
            parse(&["--bogus", "1"], &[("WAFLEET_PG_URL", "p")]),
            Err(CliError::UnknownArgument(_))
        ));
        for bad in [
            ["--lease-ttl", "0"],
            ["--heartbeat-interval", "soon"],
            ["--missed-heartbeats", "-1"],
            ["--worker-reply-timeout", "inf"],
            ["--pg-grace-ms", "0"],
            ["--pg-grace-ms", "1.5"],
            ["--nats-url", " , "],
        ] {
            assert!(
                matches!(
                    parse(&bad, &[("WAFLEET_PG_URL", "p")]),
                    Err(CliError::InvalidValue { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(parse(&["--help"], &[]), Ok(Invocation::Help)));
    }

    #[test]
    fn the_blob_store_comes_from_one_place() {
        let pg = ("WAFLEET_PG_URL", "p");
        match settings(&["--blob-dir", "/tmp/b"], &[pg]).blobs {
            BlobSettings::Fs(dir) => assert_eq!(dir, PathBuf::from("/tmp/b")),
            other => panic!("{other:?}"),
        }
        // A flag beats the other store's environment variable.
        let s3_env = ("WAFLEET_S3_ENDPOINT", "http://127.0.0.1:18333");
        assert!(matches!(
            settings(&["--blob-dir", "/tmp/b"], &[pg, s3_env]).blobs,
            BlobSettings::Fs(_)
        ));
        match settings(
            &["--s3-bucket", "b2"],
            &[pg, s3_env, ("WAFLEET_S3_PREFIX", "p/")],
        )
        .blobs
        {
            BlobSettings::S3(config) => {
                assert_eq!(config.endpoint, "http://127.0.0.1:18333");
                assert_eq!(config.bucket, "b2");
                assert_eq!(config.prefix, "p/");
                assert_eq!(config.region, "us-east-1");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(
                &["--blob-dir", "/tmp/b", "--s3-endpoint", "http://x"],
                &[pg]
            ),
            Err(CliError::TwoBlobStores { .. })
        ));
        assert!(matches!(
            parse(&[], &[pg, s3_env, ("WAFLEET_BLOB_DIR", "/tmp/b")]),
            Err(CliError::TwoBlobStores { .. })
        ));
    }
}
