//! Shared by the interop tests that put a wafleet session (the real session driver with a
//! filesystem store, the code `wafleet listen` and `wafleet send` run) beside Baileys.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use tokio::time::timeout;
use wafleet_protocol::cert::RootKey;
use wafleet_session_worker::{
    Backoff, DriverConfig, DriverEvent, FsSessionStore, MessageEvent, ServerConfig, SessionDriver,
    SessionName,
};
use wafleet_sim::Simulator;

/// How long one driver event may take.
pub const WAIT: Duration = Duration::from_secs(40);

/// Starts the driver on a fresh store, links it to `phone` by QR and waits until it is
/// logged in.
pub async fn linked_wafleet(sim: &Simulator, dir: &std::path::Path, phone: &str) -> SessionDriver {
    let config = DriverConfig {
        label: "wafleet".into(),
        server: ServerConfig {
            url: sim.ws_url(),
            root: RootKey::custom(sim.root_public_key()),
        },
        backoff: Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        ..DriverConfig::default()
    };
    let name = SessionName::parse("wafleet").expect("session name");
    let store = Arc::new(FsSessionStore::new(dir, &name));
    let mut driver = SessionDriver::start(config, store).expect("driver starts");
    loop {
        let event = timeout(WAIT, driver.next_event())
            .await
            .expect("driver event in time")
            .expect("driver running");
        match event {
            DriverEvent::Qr { code, .. } => {
                sim.scan_qr(phone, code.expose())
                    .await
                    .expect("the phone links wafleet");
            }
            DriverEvent::Ready { .. } => return driver,
            DriverEvent::Failed { reason, detail } => panic!("driver failed: {reason}: {detail}"),
            _ => {}
        }
    }
}

/// The next `count` inbound messages of the driver, failing on anything undecryptable.
pub async fn inbound(driver: &mut SessionDriver, count: usize) -> Vec<MessageEvent> {
    let mut got = Vec::new();
    while got.len() < count {
        let event = timeout(WAIT, driver.next_event())
            .await
            .unwrap_or_else(|_| panic!("{} of {count} messages arrived in time", got.len()))
            .expect("driver running");
        match event {
            DriverEvent::Message(m) => got.push(*m),
            DriverEvent::Undecryptable(u) => panic!("undecryptable: {u:?}"),
            DriverEvent::Failed { reason, detail } => panic!("driver failed: {reason}: {detail}"),
            _ => {}
        }
    }
    got
}
