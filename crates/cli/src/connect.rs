//! What `wafleet link`, `listen` and `send` share: which session, where it is stored, which
//! server (with its certificate root), and the logging set-up.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use wafleet_protocol::cert::RootKey;
use wafleet_session_worker::{
    FsSessionStore, ServerConfig, SessionName, SessionStore, StoredSession,
};

/// The environment variable naming the data directory.
pub const DATA_DIR_ENV: &str = "WAFLEET_DATA_DIR";
/// The data directory when neither `--data-dir` nor the environment names one.
pub const DEFAULT_DATA_DIR: &str = "./wafleet-data";

/// `--session`, `--data-dir`, `--server`, `--root-key`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The session's name (its directory under the data directory).
    #[arg(long)]
    pub session: String,
    /// Where sessions are stored [default: $WAFLEET_DATA_DIR or ./wafleet-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Another server than WhatsApp (e.g. `ws://127.0.0.1:PORT/ws/chat` of `wafleet sim`);
    /// needs --root-key.
    #[arg(long, requires = "root_key")]
    pub server: Option<String>,
    /// The server's certificate root public key, 64 hex digits; needs --server.
    #[arg(long, requires = "server")]
    pub root_key: Option<String>,
}

/// The session, its store and the server, checked.
pub struct Target {
    /// The session's name.
    pub name: SessionName,
    /// Its local store.
    pub store: Arc<FsSessionStore>,
    /// The server to connect to.
    pub server: ServerConfig,
}

impl ConnectArgs {
    /// Checks the arguments: a valid session name, a root key of 32 bytes.
    pub fn target(&self) -> Result<Target, String> {
        let name = SessionName::parse(&self.session).map_err(|e| e.to_string())?;
        let server = match (&self.server, &self.root_key) {
            (Some(url), Some(key)) => ServerConfig {
                url: url.clone(),
                root: parse_root_key(key)?,
            },
            (None, None) => ServerConfig::default(),
            _ => return Err("--server and --root-key go together".into()),
        };
        let data_dir = self
            .data_dir
            .clone()
            .or_else(|| std::env::var_os(DATA_DIR_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let store = Arc::new(FsSessionStore::new(data_dir, &name));
        Ok(Target {
            name,
            store,
            server,
        })
    }
}

impl Target {
    /// The stored session if it is linked; otherwise the error `listen` and `send` exit with
    /// at once (they never show a QR).
    pub fn require_linked(&self) -> Result<StoredSession, String> {
        match self.store.load().map_err(|e| e.to_string())? {
            Some(stored) if stored.identity.is_paired() => Ok(stored),
            _ => Err(format!(
                "not linked: run `wafleet link --session {}` first",
                self.name
            )),
        }
    }
}

pub(crate) fn parse_root_key(hex_key: &str) -> Result<RootKey, String> {
    let bytes = hex::decode(hex_key.trim())
        .map_err(|e| format!("--root-key must be 64 hex digits: {e}"))?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("--root-key must be 32 bytes, got {}", b.len()))?;
    Ok(RootKey::custom(key))
}

/// Logs to stderr at `WAFLEET_LOG` (debug|info|warn|error; warnings by default).
pub fn init_logging() {
    let level = std::env::var("WAFLEET_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::WARN);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A current-thread tokio runtime for one foreground command.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}
