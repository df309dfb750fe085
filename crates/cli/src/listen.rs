//! `wafleet listen`: logs a linked session in and prints what arrives.
//!
//! Each inbound message, receipt and undecryptable message is printed on stdout (one JSON
//! line with `--json`) and stdout is flushed *before* the driver acks it to the server: a
//! message the server considers delivered has been printed. Killed at any point, the next
//! `wafleet listen` prints what was not acked yet (a message may then be printed twice,
//! with the same id). Connection events go to stderr. It never links: with no linked
//! session it exits at once.

use std::io::Write;
use std::sync::Arc;

use clap::Args;
use wafleet_session_worker::{
    DriverConfig, DriverEvent, Inbound, InboundSink, MessageEvent, SessionDriver, SessionStore,
    SinkError,
};

use crate::connect::{self, ConnectArgs};
use crate::exit::{self, Failure};
use crate::link::backoff;

/// Arguments of `wafleet listen`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print each event as one JSON line (`event` = message | receipt | undecryptable).
    #[arg(long)]
    json: bool,
    /// Base of the reconnect backoff in ms (testing).
    #[arg(long, hide = true)]
    backoff_base_ms: Option<u64>,
}

/// Prints each event and flushes stdout; a failed write (stdout closed) refuses the event,
/// so it is not acked.
struct StdoutSink {
    json: bool,
}

#[async_trait::async_trait]
impl InboundSink for StdoutSink {
    async fn deliver(&self, event: &DriverEvent) -> Result<(), SinkError> {
        let line = if self.json {
            event.to_json_line()
        } else {
            human(event)
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| SinkError(format!("stdout: {e}")))
    }
}

/// Runs `wafleet listen` until Ctrl-C (exit 0) or a terminal failure (non-zero).
pub fn run(args: ListenArgs) -> Result<(), Failure> {
    connect::init_logging();
    let target = args.connect.target()?;
    target
        .require_linked()
        .map_err(|e| Failure::new(exit::NOT_LINKED, e))?;
    let config = DriverConfig {
        label: target.name.to_string(),
        server: target.server,
        backoff: backoff(args.backoff_base_ms),
        inbound: Inbound::Sink(Arc::new(StdoutSink { json: args.json })),
        ..DriverConfig::default()
    };
    let store = target.store;
    connect::runtime()?.block_on(async move {
        let mut driver = SessionDriver::start(config, store.clone()).map_err(|e| e.to_string())?;
        loop {
            let event = tokio::select! {
                event = driver.next_event() => event,
                _ = tokio::signal::ctrl_c() => {
                    driver.finish().await;
                    return Ok(());
                }
            };
            match event {
                None => {
                    return Err("the session driver ended without a result"
                        .to_owned()
                        .into())
                }
                Some(DriverEvent::Ready { jid, .. }) => eprintln!("ready: {jid}"),
                Some(DriverEvent::Disconnected {
                    reason,
                    will_reconnect,
                }) => eprintln!(
                    "disconnected: {reason}{}",
                    if will_reconnect { ", reconnecting" } else { "" }
                ),
                Some(DriverEvent::Failed { reason, detail }) => {
                    if reason == "logged_out" {
                        store.mark_logged_out().map_err(|e| e.to_string())?;
                    }
                    return Err(format!("{reason}: {detail}").into());
                }
                Some(DriverEvent::Qr { .. } | DriverEvent::PairingCode { .. }) => {
                    driver.finish().await;
                    return Err(Failure::new(
                        exit::NOT_LINKED,
                        "the server asked to link this device again; run `wafleet link` first",
                    ));
                }
                Some(_) => {}
            }
        }
    })
}

/// One event as a line for people: `<time> <chat> <sender>: <text>`.
fn human(event: &DriverEvent) -> String {
    match event {
        DriverEvent::Message(m) => {
            let from = if m.from_me { "me" } else { m.sender.as_str() };
            let chat = if m.chat == m.sender {
                String::new()
            } else {
                format!(" [{}]", m.chat)
            };
            format!("{} {from}{chat}: {} ({})", utc(m.timestamp), what(m), m.id)
        }
        DriverEvent::Receipt(r) => format!(
            "{} receipt {} for {} from {}",
            utc(r.timestamp),
            r.kind,
            r.id,
            r.sender
        ),
        DriverEvent::Undecryptable(u) => format!(
            "{} undecryptable message {} from {}: {}",
            utc(u.timestamp),
            u.id,
            u.sender,
            u.reason
        ),
        other => other.to_json_line(),
    }
}

/// What a message says, in one line.
fn what(m: &MessageEvent) -> String {
    let text = m.text.as_deref().unwrap_or("").replace('\n', " ");
    match m.kind.as_str() {
        "text" => text,
        "reaction" => format!(
            "reacted {} to {}",
            m.emoji.as_deref().unwrap_or(""),
            m.target.as_deref().unwrap_or("?")
        ),
        "edit" => format!("edited {}: {text}", m.target.as_deref().unwrap_or("?")),
        "revoke" => format!("deleted {}", m.target.as_deref().unwrap_or("?")),
        kind if text.is_empty() => format!("[{kind}]"),
        kind => format!("[{kind}] {text}"),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
    }
}
