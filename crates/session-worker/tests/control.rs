//! Controlling a running driver against the simulator: a pairing code asked for while the
//! QR is shown, logout of a logged-in device, and the refusals.

mod support;

use support::*;
use wafleet_session_worker::{ControlError, DriverEvent, DriverExit, SessionDriver, SessionStore};
use wafleet_sim::SimConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_code_requested_while_the_qr_is_shown_links() {
    let sim = simulator_with_phone(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "carol");
    let mut driver = SessionDriver::start(config_for(&sim, "carol"), store.clone()).unwrap();
    let control = driver.control();

    // Before the socket shows a QR there is nothing to link on; an invalid number is
    // refused before anything is sent.
    assert!(matches!(
        control.request_pairing_code("12ab").await,
        Err(ControlError::InvalidPhone(_))
    ));
    first_qr(&mut driver).await;
    assert!(matches!(
        control.request_pairing_code("+1 555 CALL NOW").await,
        Err(ControlError::InvalidPhone(_))
    ));

    let issued = guard(
        "the pairing code",
        control.request_pairing_code(&format!("+{PHONE}")),
    )
    .await
    .expect("a code while the QR is shown");
    let code = issued.code.expose().to_owned();
    assert_eq!(code.len(), 9, "XXXX-XXXX");
    assert!(issued.expires_at > 0);
    // The same code again for the same number (any spelling), none for another number.
    let again = control
        .request_pairing_code(PHONE)
        .await
        .expect("same code");
    assert_eq!(again, issued);
    assert_eq!(
        control.request_pairing_code("4915112345678").await,
        Err(ControlError::PairingCodeForOtherPhone)
    );
    assert_eq!(
        control.request_pairing_code("12ab").await.map(|_| ()),
        Err(ControlError::InvalidPhone(
            wafleet_protocol::pairing_code::PhoneNumberError::NotDigits('a')
        ))
    );

    // The code is reported as the usual event as well, once.
    let (event_code, _) = wait_for(&mut driver, "the pairing code event", |e| match e {
        DriverEvent::PairingCode { code, expires_at } => {
            Some((code.expose().to_owned(), *expires_at))
        }
        _ => None,
    })
    .await;
    assert_eq!(event_code, (code.clone(), issued.expires_at));

    let (jid, skipped) = finish_code_link(&sim, &mut driver, &code).await;
    assert!(
        !skipped.iter().any(|e| matches!(
            e,
            DriverEvent::PairingCode { .. } | DriverEvent::PairingCodeFailed { .. }
        )),
        "{skipped:?}"
    );
    assert_eq!(
        store.load().unwrap().unwrap().identity.jid.as_deref(),
        Some(jid.as_str())
    );
    // Logged in: no more codes.
    assert_eq!(
        control.request_pairing_code(PHONE).await,
        Err(ControlError::NotLinking)
    );
    assert_eq!(driver.finish().await, DriverExit::Stopped);
    assert_eq!(
        control.request_pairing_code(PHONE).await,
        Err(ControlError::Ended)
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_phone_and_control_share_one_code() {
    let sim = simulator_with_phone(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&sim, "dave");
    config.phone = Some(PHONE.to_owned());
    let mut driver = SessionDriver::start(config, store(dir.path(), "dave")).unwrap();
    let (code, _) = wait_for(&mut driver, "a pairing code", |e| match e {
        DriverEvent::PairingCode { code, .. } => Some(code.expose().to_owned()),
        _ => None,
    })
    .await;
    let control = driver.control();
    let issued = control.request_pairing_code(PHONE).await.expect("the code");
    assert_eq!(issued.code.expose(), code);
    assert_eq!(
        control.request_pairing_code("4915112345678").await,
        Err(ControlError::PairingCodeForOtherPhone)
    );
    driver.finish().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_unlinks_the_device_and_ends_the_driver() {
    let sim = simulator_with_phone(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "erin");
    let mut driver = SessionDriver::start(config_for(&sim, "erin"), store.clone()).unwrap();
    let jid = link(&sim, &mut driver).await;
    eventually("one live socket", || {
        sim.counters().live_sockets.get(&jid).copied() == Some(1)
    })
    .await;
    let linked: Vec<String> = sim
        .linked_devices(PHONE)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(linked, std::slice::from_ref(&jid));
    let control = driver.control();
    guard("the logout", control.logout())
        .await
        .expect("logged out");
    // Returned once the store is marked.
    assert!(store.load().unwrap().is_none());

    let (reason, skipped) = wait_for(&mut driver, "the driver's end", failed).await;
    assert_eq!(reason, "logged_out");
    assert!(
        matches!(
            skipped.last(),
            Some(DriverEvent::Disconnected { reason, will_reconnect: false }) if reason == "logged_out"
        ),
        "{skipped:?}"
    );
    assert!(
        matches!(driver.join().await, DriverExit::Failed { reason, .. } if reason == "logged_out")
    );
    assert!(sim.linked_devices(PHONE).is_empty());
    eventually("no live socket", || {
        sim.counters().live_sockets.values().sum::<usize>() == 0
    })
    .await;
    let counters = sim.counters();
    assert!(!counters.prekeys_stored.contains_key(&jid), "{counters:?}");
    assert_eq!(counters.replaced_sent, 0);
    assert_eq!(control.logout().await, Err(ControlError::Ended));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_before_linking_is_refused_and_linking_goes_on() {
    let sim = simulator_with_phone(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), "frank");
    let mut driver = SessionDriver::start(config_for(&sim, "frank"), store.clone()).unwrap();
    let control = driver.control();
    let qr = first_qr(&mut driver).await;
    assert_eq!(control.logout().await, Err(ControlError::NotLoggedIn));
    // Nothing changed: the QR shown still links.
    let (scan, (ready_jid, _)) = tokio::join!(sim.scan_qr(PHONE, &qr), async {
        wait_for(&mut driver, "ready after the scan", ready).await
    });
    assert_eq!(scan.expect("linked").to_string(), ready_jid.0);
    assert!(store.load().unwrap().is_some());
    assert_eq!(driver.finish().await, DriverExit::Stopped);
    assert_eq!(control.logout().await, Err(ControlError::Ended));
    sim.shutdown().await;
}
