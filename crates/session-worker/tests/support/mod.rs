//! Shared helpers: a simulator, driver configurations pointed at it, and event waits with a
//! guard timeout (a hang fails the test instead of stalling it).

#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wafleet_protocol::cert::RootKey;
use wafleet_session_worker::{
    Backoff, DriverConfig, DriverEvent, FsSessionStore, ServerConfig, SessionDriver, SessionName,
};
use wafleet_sim::{SimConfig, Simulator};

/// How long any single wait may take before the test fails as hung.
pub const GUARD: Duration = Duration::from_secs(30);

pub const PHONE: &str = "15551234567";

pub async fn simulator_with_phone(config: SimConfig) -> Simulator {
    let sim = Simulator::start(config).await.expect("simulator starts");
    sim.add_phone(PHONE).expect("phone added");
    sim
}

pub fn config_for(sim: &Simulator, label: &str) -> DriverConfig {
    DriverConfig {
        label: label.to_owned(),
        server: ServerConfig {
            url: sim.ws_url(),
            root: RootKey::custom(sim.root_public_key()),
        },
        backoff: Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        handshake_timeout: Duration::from_secs(5),
        ..DriverConfig::default()
    }
}

pub fn store(dir: &Path, name: &str) -> Arc<FsSessionStore> {
    Arc::new(FsSessionStore::new(
        dir,
        &SessionName::parse(name).expect("valid name"),
    ))
}

pub async fn guard<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// The next event.
pub async fn next(driver: &mut SessionDriver) -> DriverEvent {
    guard("the next driver event", driver.next_event())
        .await
        .expect("the driver is still running")
}

/// Skips events until `pick` returns `Some`; every skipped event is returned too.
pub async fn wait_for<T>(
    driver: &mut SessionDriver,
    what: &str,
    mut pick: impl FnMut(&DriverEvent) -> Option<T>,
) -> (T, Vec<DriverEvent>) {
    let mut skipped = Vec::new();
    guard(what, async {
        loop {
            let event = driver.next_event().await.unwrap_or_else(|| {
                panic!("driver ended while waiting for {what}; saw {skipped:?}")
            });
            if let Some(v) = pick(&event) {
                return (v, skipped);
            }
            skipped.push(event);
        }
    })
    .await
}

/// The first QR text.
pub async fn first_qr(driver: &mut SessionDriver) -> String {
    wait_for(driver, "a QR", |e| match e {
        DriverEvent::Qr { code, .. } => Some(code.expose().to_owned()),
        _ => None,
    })
    .await
    .0
}

pub fn ready(e: &DriverEvent) -> Option<(String, Option<String>)> {
    match e {
        DriverEvent::Ready { jid, lid } => Some((jid.clone(), lid.clone())),
        _ => None,
    }
}

pub fn failed(e: &DriverEvent) -> Option<String> {
    match e {
        DriverEvent::Failed { reason, .. } => Some(reason.clone()),
        _ => None,
    }
}

/// Polls `check` until it holds (a guard timeout fails the test).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    guard(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Links a fresh session by QR and waits until it is ready; returns the device JID.
pub async fn link(sim: &Simulator, driver: &mut SessionDriver) -> String {
    let qr = first_qr(driver).await;
    let (scan, (ready_jid, _)) = tokio::join!(sim.scan_qr(PHONE, &qr), async {
        wait_for(driver, "ready after the scan", ready).await
    });
    let device = scan.expect("the phone links the companion");
    assert_eq!(device.to_string(), ready_jid.0);
    ready_jid.0
}

/// The phone's user types `code` (the simulator waits for the driver's request to reach the
/// server, as a person reading the code would).
pub async fn enter_pairing_code(sim: &Simulator, code: &str) -> wafleet_protocol::jid::Jid {
    guard("the pairing code to be accepted", async {
        sim.enter_pairing_code(PHONE, code)
            .await
            .expect("the phone accepts the code")
    })
    .await
}

/// The phone enters `code` while the driver waits for Ready: checks that the phone linked
/// the JID the driver reports and that `Paired` came first; returns the JID and every
/// event before Ready.
pub async fn finish_code_link(
    sim: &Simulator,
    driver: &mut SessionDriver,
    code: &str,
) -> (String, Vec<DriverEvent>) {
    let (entered, ((jid, _), skipped)) = tokio::join!(
        enter_pairing_code(sim, code),
        wait_for(driver, "ready", ready)
    );
    assert_eq!(entered.to_string(), jid);
    assert!(skipped
        .iter()
        .any(|e| matches!(e, DriverEvent::Paired { .. })));
    (jid, skipped)
}
