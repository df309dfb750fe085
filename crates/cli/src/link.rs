//! `wafleet link`: links one session in the foreground and logs it in.
//!
//! Against the real WhatsApp unless `--server` and `--root-key` are both given. Shows the
//! QR in the terminal (or, with `--phone`, a pairing code), saves the identity under
//! `<data dir>/<session>/`, and exits 0 once the session is ready. Run again on a linked
//! session, it logs in without a QR. With `--json` every event is one JSON line on stdout.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use wafleet_protocol::cert::RootKey;
use wafleet_session_worker::qr::QrImage;
use wafleet_session_worker::{
    Backoff, DriverConfig, DriverEvent, FsSessionStore, ServerConfig, SessionDriver, SessionName,
    SessionStore,
};

/// The environment variable naming the data directory.
pub const DATA_DIR_ENV: &str = "WAFLEET_DATA_DIR";
/// The data directory when neither `--data-dir` nor the environment names one.
pub const DEFAULT_DATA_DIR: &str = "./wafleet-data";

/// Arguments of `wafleet link`.
#[derive(Debug, Args)]
pub struct LinkArgs {
    /// The session's name (its directory under the data directory).
    #[arg(long)]
    session: String,
    /// Link with a pairing code for this phone number (international digits, e.g.
    /// 4915112345678) instead of scanning the QR.
    #[arg(long)]
    phone: Option<String>,
    /// Where sessions are stored [default: $WAFLEET_DATA_DIR or ./wafleet-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Another server than WhatsApp (e.g. `ws://127.0.0.1:PORT/ws/chat` of `wafleet sim`);
    /// needs --root-key.
    #[arg(long, requires = "root_key")]
    server: Option<String>,
    /// The server's certificate root public key, 64 hex digits; needs --server.
    #[arg(long, requires = "server")]
    root_key: Option<String>,
    /// Print each event as one JSON line on stdout.
    #[arg(long)]
    json: bool,
    /// Lifetime of the first QR in ms (testing against a simulator).
    #[arg(long, hide = true)]
    first_qr_ttl_ms: Option<u64>,
    /// Lifetime of each later QR in ms (testing against a simulator).
    #[arg(long, hide = true)]
    next_qr_ttl_ms: Option<u64>,
    /// Base of the reconnect backoff in ms (testing).
    #[arg(long, hide = true)]
    backoff_base_ms: Option<u64>,
}

pub(crate) fn parse_root_key(hex_key: &str) -> Result<RootKey, String> {
    let bytes = hex::decode(hex_key.trim())
        .map_err(|e| format!("--root-key must be 64 hex digits: {e}"))?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("--root-key must be 32 bytes, got {}", b.len()))?;
    Ok(RootKey::custom(key))
}

fn init_logging() {
    // WAFLEET_LOG=debug|info|warn|error; warnings by default. Logs go to stderr.
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

/// Runs `wafleet link`.
pub fn run(args: LinkArgs) -> Result<(), String> {
    init_logging();
    let name = SessionName::parse(&args.session).map_err(|e| e.to_string())?;
    let server = match (&args.server, &args.root_key) {
        (Some(url), Some(key)) => ServerConfig {
            url: url.clone(),
            root: parse_root_key(key)?,
        },
        (None, None) => ServerConfig::default(),
        _ => return Err("--server and --root-key go together".into()),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| std::env::var_os(DATA_DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let mut config = DriverConfig {
        label: name.to_string(),
        server,
        phone: args.phone.clone(),
        max_consecutive_failures: Some(5),
        ..DriverConfig::default()
    };
    if let Some(ttl) = args.first_qr_ttl_ms {
        config.session.first_qr_ttl_ms = ttl;
    }
    if let Some(ttl) = args.next_qr_ttl_ms {
        config.session.next_qr_ttl_ms = ttl;
    }
    if let Some(base) = args.backoff_base_ms {
        config.backoff = Backoff {
            base: Duration::from_millis(base),
            max: Duration::from_millis(base.saturating_mul(16)),
        };
    }
    let store = Arc::new(FsSessionStore::new(data_dir, &name));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(link(config, store, &args))
}

async fn link(
    config: DriverConfig,
    store: Arc<FsSessionStore>,
    args: &LinkArgs,
) -> Result<(), String> {
    let show_qr = config.phone.is_none();
    let mut driver = SessionDriver::start(config, store.clone()).map_err(|e| e.to_string())?;
    // After a new link, stay until the first prekeys are uploaded (the server has none, so
    // the session always generates them): the account is then reachable by others.
    let mut ready = false;
    loop {
        let event = tokio::select! {
            event = driver.next_event() => event,
            _ = tokio::signal::ctrl_c() => {
                driver.finish().await;
                return Err("interrupted".into());
            }
        };
        let Some(event) = event else {
            return Err("the session driver ended without a result".into());
        };
        if args.json {
            println!("{}", event.to_json_line());
        } else {
            print_human(&event, show_qr);
        }
        match event {
            DriverEvent::Ready { .. } => {
                ready = true;
                let uploaded = store
                    .load()
                    .map_err(|e| e.to_string())?
                    .is_some_and(|s| s.identity.pre_keys_uploaded);
                if uploaded {
                    driver.finish().await;
                    return Ok(());
                }
            }
            DriverEvent::PreKeysUploaded { .. } if ready => {
                driver.finish().await;
                return Ok(());
            }
            DriverEvent::AuthFailure { reason, detail } => {
                driver.finish().await;
                return Err(format!(
                    "auth_failure: {reason}: {detail} (nothing was saved)"
                ));
            }
            DriverEvent::Failed { reason, detail } => {
                if reason == "logged_out" {
                    store.mark_logged_out().map_err(|e| e.to_string())?;
                }
                return Err(format!("{reason}: {detail}"));
            }
            _ => {}
        }
    }
}

fn seconds_until(at_ms: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    at_ms.saturating_sub(now).div_ceil(1000)
}

fn print_human(event: &DriverEvent, show_qr: bool) {
    match event {
        DriverEvent::Qr {
            code,
            expires_at,
            remaining,
            ..
        } if show_qr => match QrImage::new(code.expose()) {
            Ok(image) => {
                println!("{}", image.to_terminal());
                println!(
                    "Scan with WhatsApp on the phone: Settings → Linked devices → Link a device. \
                     Valid {} s ({remaining} more codes follow).",
                    seconds_until(*expires_at)
                );
            }
            Err(e) => eprintln!("cannot draw the QR: {e}"),
        },
        DriverEvent::Qr { .. } => {}
        DriverEvent::PairingCode { code, expires_at } => println!(
            "Pairing code: {}\nOn the phone: Settings → Linked devices → Link a device → \
             Link with phone number instead. Valid {} s.",
            code.expose(),
            seconds_until(*expires_at)
        ),
        DriverEvent::PairingCodeFailed { reason } => eprintln!("pairing code failed: {reason}"),
        DriverEvent::Paired { jid, .. } => println!("Linked as {jid}; logging in…"),
        DriverEvent::Ready { jid, .. } => println!("Ready: {jid}"),
        DriverEvent::PreKeysUploaded { count } => println!("Uploaded {count} prekeys."),
        DriverEvent::AuthFailure { reason, .. } => eprintln!("linking refused: {reason}"),
        DriverEvent::Disconnected {
            reason,
            will_reconnect,
        } => {
            if reason != "restart_required" {
                eprintln!(
                    "disconnected: {reason}{}",
                    if *will_reconnect {
                        ", reconnecting"
                    } else {
                        ""
                    }
                )
            }
        }
        DriverEvent::Failed { .. } => {}
    }
}
