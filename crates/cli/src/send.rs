//! `wafleet send`: logs a linked session in, sends one text, prints its id once the server
//! acked it, and exits.
//!
//! The recipient is checked before anything connects. Inbound messages are left on the
//! server for `wafleet listen` (neither decrypted nor acked here). Failures exit with the
//! codes of [`crate::exit`]: not linked, invalid recipient, no such user, timeout.

use std::time::Duration;

use clap::Args;
use wafleet_session_worker::{
    ControlError, DriverConfig, DriverEvent, Inbound, Recipient, SentEvent, SessionDriver,
    SessionStore,
};

use crate::connect::{self, ConnectArgs};
use crate::exit::{self, Failure};
use crate::link::backoff;

/// Arguments of `wafleet send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The recipient: E.164 digits (e.g. 4915112345678), a user JID
    /// (…@s.whatsapp.net, …@lid) or a group JID (…@g.us).
    #[arg(long)]
    to: String,
    /// The text to send.
    #[arg(long)]
    text: String,
    /// Print the result as one JSON line (`{"event":"sent","id":…}`).
    #[arg(long)]
    json: bool,
    /// Give up (exit 6) unless logged in and acked by the server within this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Base of the reconnect backoff in ms (testing).
    #[arg(long, hide = true)]
    backoff_base_ms: Option<u64>,
}

/// Runs `wafleet send`.
pub fn run(args: SendArgs) -> Result<(), Failure> {
    connect::init_logging();
    let target = args.connect.target()?;
    let to = Recipient::parse(&args.to)
        .map_err(|e| Failure::new(exit::INVALID_RECIPIENT, e.to_string()))?;
    target
        .require_linked()
        .map_err(|e| Failure::new(exit::NOT_LINKED, e))?;
    let timeout = Duration::from_secs(args.timeout);
    let config = DriverConfig {
        label: target.name.to_string(),
        server: target.server,
        backoff: backoff(args.backoff_base_ms),
        max_consecutive_failures: Some(3),
        inbound: Inbound::Leave,
        send_timeout: timeout,
        ..DriverConfig::default()
    };
    let store = target.store;
    connect::runtime()?.block_on(async move {
        let mut driver = SessionDriver::start(config, store.clone()).map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + timeout;
        let result = tokio::select! {
            result = send(&mut driver, &*store, &to, &args.text) => result,
            _ = tokio::time::sleep_until(deadline) => Err(Failure::new(
                exit::TIMEOUT,
                format!("timeout: not sent and acked within {} s", args.timeout),
            )),
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned().into()),
        };
        driver.finish().await;
        let sent = result?;
        if args.json {
            println!("{}", DriverEvent::MessageSent(sent).to_json_line());
        } else {
            for skipped in &sent.skipped {
                eprintln!(
                    "warning: not sent to device {}: {}",
                    skipped.device, skipped.reason
                );
            }
            println!("{}", sent.id);
        }
        Ok(())
    })
}

/// Waits for the login, sends, waits for the server's ack. A connection that drops
/// before the send was started is waited out; one that drops after is an error (the
/// message may have gone out: sending again could duplicate it).
async fn send(
    driver: &mut SessionDriver,
    store: &dyn SessionStore,
    to: &Recipient,
    text: &str,
) -> Result<SentEvent, Failure> {
    let control = driver.control();
    loop {
        match driver.next_event().await {
            None => {
                return Err("the session driver ended without a result"
                    .to_owned()
                    .into())
            }
            Some(DriverEvent::Ready { .. }) => {
                match control.send_text(&to.jid().to_string(), text).await {
                    Ok(sent) => {
                        return Ok(SentEvent {
                            id: sent.id,
                            chat: sent.chat,
                            timestamp: sent.server_timestamp,
                            skipped: sent.skipped,
                        })
                    }
                    // Lost between the login and the command: wait for the next login.
                    Err(ControlError::NotConnected) => continue,
                    Err(e) => return Err(control_failure(e)),
                }
            }
            Some(DriverEvent::Failed { reason, detail }) => {
                if reason == "logged_out" {
                    store.mark_logged_out().map_err(|e| e.to_string())?;
                }
                return Err(format!("{reason}: {detail}").into());
            }
            Some(DriverEvent::Qr { .. } | DriverEvent::PairingCode { .. }) => {
                return Err(Failure::new(
                    exit::NOT_LINKED,
                    "the server asked to link this device again; run `wafleet link` first",
                ))
            }
            Some(_) => {}
        }
    }
}

fn control_failure(e: ControlError) -> Failure {
    let code = match &e {
        ControlError::InvalidRecipient(_) => exit::INVALID_RECIPIENT,
        ControlError::NoSuchUser(_) => exit::NO_SUCH_USER,
        ControlError::Timeout => exit::TIMEOUT,
        ControlError::NotLoggedIn => exit::NOT_LINKED,
        _ => exit::OTHER,
    };
    let message = match e {
        ControlError::ConnectionLost => {
            "the connection ended before the server acked the message (it may or may not have been sent)".to_owned()
        }
        ControlError::Timeout => "timeout: the server did not ack the message in time".to_owned(),
        other => other.to_string(),
    };
    Failure::new(code, message)
}
