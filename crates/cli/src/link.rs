//! `wafleet link`: links one session in the foreground and logs it in.
//!
//! Against the real WhatsApp unless `--server` and `--root-key` are both given. Shows the
//! QR in the terminal (or, with `--phone`, a pairing code), saves the identity under
//! `<data dir>/<session>/`, and exits 0 once the session is ready. Run again on a linked
//! session, it logs in without a QR. With `--json` every event is one JSON line on stdout.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use wafleet_session_worker::qr::QrImage;
use wafleet_session_worker::{
    Backoff, DriverConfig, DriverEvent, FsSessionStore, Inbound, SessionDriver, SessionStore,
};

use crate::connect::{self, ConnectArgs};

/// Arguments of `wafleet link`.
#[derive(Debug, Args)]
pub struct LinkArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Link with a pairing code for this phone number (international digits, e.g.
    /// 4915112345678) instead of scanning the QR.
    #[arg(long)]
    phone: Option<String>,
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

/// The reconnect backoff of a foreground command: `base_ms` (testing) or the default.
pub(crate) fn backoff(base_ms: Option<u64>) -> Backoff {
    match base_ms {
        Some(base) => Backoff {
            base: Duration::from_millis(base),
            max: Duration::from_millis(base.saturating_mul(16)),
        },
        None => Backoff::default(),
    }
}

/// Runs `wafleet link`.
pub fn run(args: LinkArgs) -> Result<(), String> {
    connect::init_logging();
    let target = args.connect.target()?;
    let mut config = DriverConfig {
        label: target.name.to_string(),
        server: target.server,
        phone: args.phone.clone(),
        max_consecutive_failures: Some(5),
        backoff: backoff(args.backoff_base_ms),
        // Messages wait on the server for `wafleet listen`.
        inbound: Inbound::Leave,
        ..DriverConfig::default()
    };
    if let Some(ttl) = args.first_qr_ttl_ms {
        config.session.first_qr_ttl_ms = ttl;
    }
    if let Some(ttl) = args.next_qr_ttl_ms {
        config.session.next_qr_ttl_ms = ttl;
    }
    connect::runtime()?.block_on(link(config, target.store, &args))
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
        DriverEvent::Failed { .. }
        | DriverEvent::Message(_)
        | DriverEvent::Receipt(_)
        | DriverEvent::Undecryptable(_)
        | DriverEvent::MessageSent(_) => {}
    }
}
