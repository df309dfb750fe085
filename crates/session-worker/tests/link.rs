//! The driver against the project's simulator on loopback: linking by QR and by pairing
//! code, login without a QR, refused `pair-success`, QR exhaustion, `replaced`, unlink and
//! reconnects.

mod support;

use std::time::Duration;

use support::*;
use wafleet_session_worker::{DriverEvent, DriverExit, SessionDriver, SessionStore};
use wafleet_sim::{SimConfig, SimError, Tamper};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_link_saves_the_identity_then_logs_in_without_qr() {
    let sim = simulator_with_phone(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "alice");
    let mut driver = SessionDriver::start(config_for(&sim, "alice"), store.clone()).unwrap();
    let jid = link(&sim, &mut driver).await;

    // Paired identity saved; the first 812 prekeys saved here before the server has them.
    let saved = store.load().unwrap().expect("identity saved");
    assert_eq!(saved.identity.jid.as_deref(), Some(jid.as_str()));
    assert!(saved.identity.account.is_some());
    eventually("the prekey upload", || {
        sim.counters().prekeys_stored.get(&jid).copied() == Some(812)
    })
    .await;
    let saved = store.load().unwrap().unwrap();
    assert_eq!(saved.pre_keys.len(), 812);
    assert_eq!(driver.finish().await, DriverExit::Stopped);

    // Same data dir: logs in, no QR.
    let mut again = SessionDriver::start(config_for(&sim, "alice"), store.clone()).unwrap();
    let first = next(&mut again).await;
    assert_eq!(
        ready(&first).map(|r| r.0),
        Some(jid.clone()),
        "first event {first:?}"
    );
    assert_eq!(again.finish().await, DriverExit::Stopped);
    assert_eq!(sim.counters().device_signatures_ok, 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_code_link() {
    let sim = simulator_with_phone(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "bob");
    let mut config = config_for(&sim, "bob");
    config.phone = Some(format!("+{PHONE}"));
    let mut driver = SessionDriver::start(config, store.clone()).unwrap();
    let (code, _) = wait_for(&mut driver, "a pairing code", |e| match e {
        DriverEvent::PairingCode { code, .. } => Some(code.expose().to_owned()),
        _ => None,
    })
    .await;
    assert_eq!(code.len(), 9, "XXXX-XXXX");
    let (jid, skipped) = finish_code_link(&sim, &mut driver, &code).await;
    // Only one code per QR socket, whatever the QR rotation.
    assert!(!skipped
        .iter()
        .any(|e| matches!(e, DriverEvent::PairingCode { .. })));
    assert_eq!(
        store.load().unwrap().unwrap().identity.jid.as_deref(),
        Some(jid.as_str())
    );
    driver.finish().await;
    sim.shutdown().await;
}

async fn tampered_pair_success_is_refused(tamper: Tamper, expected: &str) {
    let sim = simulator_with_phone(SimConfig::default()).await;
    sim.set_tamper(PHONE, tamper).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "mallory");
    let mut driver = SessionDriver::start(config_for(&sim, "m"), store.clone()).unwrap();
    let qr = first_qr(&mut driver).await;
    let (scan, (reason, skipped)) = tokio::join!(
        sim.scan_qr(PHONE, &qr),
        wait_for(&mut driver, "auth failure", |e| match e {
            DriverEvent::AuthFailure { reason, .. } => Some(reason.clone()),
            _ => None,
        })
    );
    assert_eq!(reason, expected);
    assert!(
        matches!(scan, Err(SimError::CompanionRejected { ref code, .. }) if code == "401"),
        "{scan:?}"
    );
    assert!(!skipped
        .iter()
        .any(|e| matches!(e, DriverEvent::Paired { .. } | DriverEvent::Ready { .. })));
    driver.finish().await;
    assert!(store.load().unwrap().is_none(), "nothing saved");
    assert!(!store.dir().exists());
    let counters = sim.counters();
    assert_eq!(counters.pair_success_rejected, 1);
    assert_eq!(counters.device_signatures_ok, 0);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_hmac_is_refused_and_nothing_saved() {
    tampered_pair_success_is_refused(Tamper::Hmac, "hmac_mismatch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_account_signature_is_refused_and_nothing_saved() {
    tampered_pair_success_is_refused(Tamper::AccountSignature, "signature_mismatch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unscanned_qrs_end_in_qr_exhausted_without_reconnect() {
    let sim = simulator_with_phone(SimConfig {
        first_qr_ttl: Duration::from_millis(400),
        next_qr_ttl: Duration::from_millis(150),
        qr_refs: 3,
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "idle");
    let mut config = config_for(&sim, "idle");
    config.session.first_qr_ttl_ms = 400;
    config.session.next_qr_ttl_ms = 150;
    let mut driver = SessionDriver::start(config, store.clone()).unwrap();
    let (reason, skipped) = wait_for(&mut driver, "the end", failed).await;
    assert_eq!(reason, "qr_exhausted");
    let qrs: Vec<(u32, u32)> = skipped
        .iter()
        .filter_map(|e| match e {
            DriverEvent::Qr { seq, remaining, .. } => Some((*seq, *remaining)),
            _ => None,
        })
        .collect();
    assert_eq!(qrs, [(0, 2), (1, 1), (2, 0)], "one socket, three QRs");
    assert!(matches!(
        skipped.last(),
        Some(DriverEvent::Disconnected {
            will_reconnect: false,
            ..
        })
    ));
    assert!(
        matches!(driver.join().await, DriverExit::Failed { reason, .. } if reason == "qr_exhausted")
    );
    assert!(store.load().unwrap().is_none());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_connection_stops_without_reconnecting() {
    let sim = simulator_with_phone(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "twin");
    let mut first = SessionDriver::start(config_for(&sim, "first"), store.clone()).unwrap();
    let jid = link(&sim, &mut first).await;
    // A second driver with the same identity logs in: the server kicks the first.
    let mut second = SessionDriver::start(config_for(&sim, "second"), store.clone()).unwrap();
    assert_eq!(
        ready(&next(&mut second).await).map(|r| r.0),
        Some(jid.clone())
    );
    let (reason, skipped) = wait_for(&mut first, "the first driver's end", failed).await;
    assert_eq!(reason, "replaced");
    assert!(skipped.iter().any(|e| matches!(
        e,
        DriverEvent::Disconnected { reason, will_reconnect: false } if reason == "replaced"
    )));
    assert!(
        matches!(first.join().await, DriverExit::Failed { reason, .. } if reason == "replaced")
    );
    eventually("one live socket", || {
        sim.counters().live_sockets.get(&jid).copied() == Some(1)
    })
    .await;
    // The simulator counts the newer socket before it kicks the older one: two at the
    // moment of replacement, never more, and one kick only (the first driver ended and
    // never came back to kick the second).
    let counters = sim.counters();
    assert_eq!(counters.replaced_sent, 1);
    assert_eq!(counters.max_live_sockets_per_device, 2, "{counters:?}");
    second.finish().await;
    assert_eq!(sim.counters().replaced_sent, 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_from_the_phone_logs_out() {
    let sim = simulator_with_phone(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "gone");
    let mut driver = SessionDriver::start(config_for(&sim, "gone"), store.clone()).unwrap();
    let jid = link(&sim, &mut driver).await;
    sim.unlink(&jid.parse().unwrap()).await.unwrap();
    let (reason, _) = wait_for(&mut driver, "logged out", failed).await;
    assert_eq!(reason, "logged_out");
    assert!(
        matches!(driver.join().await, DriverExit::Failed { reason, .. } if reason == "logged_out")
    );
    // The caller marks the identity; it is not loaded again.
    store.mark_logged_out().unwrap();
    assert!(store.load().unwrap().is_none());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_drop_reconnects_and_is_ready_again() {
    let sim = simulator_with_phone(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "flaky");
    let mut driver = SessionDriver::start(config_for(&sim, "flaky"), store.clone()).unwrap();
    let jid = link(&sim, &mut driver).await;
    for _ in 0..3 {
        eventually("a live socket", || {
            sim.counters().live_sockets.get(&jid).copied() == Some(1)
        })
        .await;
        assert_eq!(sim.drop_connections(&jid.parse().unwrap()), 1);
        let ((), skipped) = wait_for(&mut driver, "ready again", |e| ready(e).map(|_| ())).await;
        assert!(
            skipped.iter().any(|e| matches!(
                e,
                DriverEvent::Disconnected {
                    will_reconnect: true,
                    ..
                }
            )),
            "{skipped:?}"
        );
        assert!(!skipped.iter().any(|e| matches!(e, DriverEvent::Qr { .. })));
    }
    driver.finish().await;
    assert!(sim.counters().max_live_sockets_per_device <= 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_stops_the_driver_before_connecting() {
    let sim = simulator_with_phone(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "broken");
    std::fs::create_dir_all(store.dir()).unwrap();
    std::fs::write(store.path(), b"{\"version\":1,").unwrap();
    let err = SessionDriver::start(config_for(&sim, "broken"), store.clone()).unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert_eq!(std::fs::read(store.path()).unwrap(), b"{\"version\":1,");
    assert!(sim.counters().live_sockets.is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outdated_client_stops_with_client_outdated() {
    let sim = simulator_with_phone(SimConfig {
        min_client_version: Some([99, 0, 0]),
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "old");
    let mut driver = SessionDriver::start(config_for(&sim, "old"), store.clone()).unwrap();
    let (reason, skipped) = wait_for(&mut driver, "the end", failed).await;
    assert_eq!(reason, "client_outdated");
    assert_eq!(
        skipped,
        [DriverEvent::Disconnected {
            reason: "client_outdated".into(),
            will_reconnect: false
        }]
    );
    assert!(
        matches!(driver.join().await, DriverExit::Failed { reason, .. } if reason == "client_outdated")
    );
    assert!(store.load().unwrap().is_none());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pairing_code_per_qr_socket_across_rotations() {
    let sim = simulator_with_phone(SimConfig {
        first_qr_ttl: Duration::from_millis(1500),
        next_qr_ttl: Duration::from_millis(1500),
        qr_refs: 3,
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "rotating");
    let mut config = config_for(&sim, "rotating");
    config.phone = Some(PHONE.into());
    // Long enough that the code's key derivation (debug build) cannot put the
    // companion's QR clock a whole QR behind the server's.
    config.session.first_qr_ttl_ms = 1500;
    config.session.next_qr_ttl_ms = 1500;
    let mut driver = SessionDriver::start(config, store.clone()).unwrap();
    let (reason, events) = wait_for(&mut driver, "the end", failed).await;
    assert_eq!(reason, "qr_exhausted");
    let qrs = events
        .iter()
        .filter(|e| matches!(e, DriverEvent::Qr { .. }))
        .count();
    let codes = events
        .iter()
        .filter(|e| matches!(e, DriverEvent::PairingCode { .. }))
        .count();
    assert_eq!((qrs, codes), (3, 1), "{events:?}");
    // The code comes after the first QR.
    let first_code = events
        .iter()
        .position(|e| matches!(e, DriverEvent::PairingCode { .. }));
    assert!(matches!(
        events.first(),
        Some(DriverEvent::Qr { seq: 0, .. })
    ));
    assert!(first_code > Some(0));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_sockets_closed_by_the_server_end_in_qr_exhausted_after_three() {
    // The server's refs run out long before the companion's QR clock (60 s) does: each
    // socket is closed while the companion still expects more QRs.
    let sim = simulator_with_phone(SimConfig {
        first_qr_ttl: Duration::from_millis(200),
        next_qr_ttl: Duration::from_millis(100),
        qr_refs: 2,
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "unattended");
    let mut driver = SessionDriver::start(config_for(&sim, "unattended"), store.clone()).unwrap();
    let (reason, events) = wait_for(&mut driver, "the end", failed).await;
    assert_eq!(reason, "qr_exhausted");
    let sockets = events
        .iter()
        .filter(|e| matches!(e, DriverEvent::Qr { seq: 0, .. }))
        .count();
    assert_eq!(sockets, 3, "{events:?}");
    let disconnects: Vec<bool> = events
        .iter()
        .filter_map(|e| match e {
            DriverEvent::Disconnected { will_reconnect, .. } => Some(*will_reconnect),
            _ => None,
        })
        .collect();
    assert_eq!(disconnects, [true, true, false]);
    assert!(store.load().unwrap().is_none());
    sim.shutdown().await;
}
