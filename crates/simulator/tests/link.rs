//! The simulator against a real companion (`client::Session` + `noise::ClientConnection`)
//! over real WebSockets on loopback.

mod support;

use std::time::Duration;

use support::{
    eventually, fresh_identity, link_by_qr, simulator_with, simulator_with_phone, Companion, Ended,
    Step,
};
use wafleet_protocol::adv::AdvError;
use wafleet_protocol::cert::RootKey;
use wafleet_protocol::client::{DisconnectReason, Event};
use wafleet_protocol::jid::Jid;
use wafleet_protocol::qr::PairingQr;
use wafleet_sim::{SimConfig, SimError, Tamper};

const PHONE: &str = "15551234567";

fn ready_jid(e: &Event) -> Option<Jid> {
    match e {
        Event::Ready { jid, .. } => Some(jid.clone()),
        _ => None,
    }
}

fn disconnect(e: &Event) -> Option<DisconnectReason> {
    match e {
        Event::Disconnected(reason) => Some(reason.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn qr_link_then_login_and_prekey_upload() {
    let sim = simulator_with_phone(PHONE).await;
    let mut companion = Companion::connect(&sim, fresh_identity()).await;
    let qr = companion.first_qr().await;
    let (scan, paired) = tokio::join!(sim.scan_qr(PHONE, &qr), async {
        let paired = companion
            .wait_for(|e| match e {
                Event::Paired {
                    jid,
                    lid,
                    platform,
                    identity,
                    ..
                } => Some((
                    jid.clone(),
                    lid.clone(),
                    platform.clone(),
                    (**identity).clone(),
                )),
                _ => None,
            })
            .await;
        // The 515 follows, and the server closes the socket.
        assert_eq!(companion.event().await, Event::Restart);
        paired
    });
    let device = scan.expect("scan links the companion");
    let (jid, lid, platform, identity) = paired;
    assert_eq!(jid, device);
    assert_eq!(device.user, PHONE);
    assert_eq!(device.device, Some(1));
    assert!(lid.is_some_and(|l| l.device == Some(1)));
    assert_eq!(platform.as_deref(), Some(wafleet_sim::PLATFORM));
    // The phone verified the companion's device signature.
    let counters = sim.counters();
    assert_eq!(counters.device_signatures_ok, 1);
    assert_eq!(counters.device_signatures_bad, 0);
    let (ended, _) = companion.until_closed().await;
    assert_eq!(ended, Ended::HungUp, "the companion hangs up after 515");

    // Login with the paired identity: success, then a first prekey upload that is stored.
    let mut companion = Companion::connect(&sim, identity).await;
    let ready = companion.wait_for(ready_jid).await;
    assert_eq!(ready, device);
    let uploaded = companion
        .wait_for(|e| match e {
            Event::PreKeysGenerated { keys, .. } => Some(keys.len()),
            _ => None,
        })
        .await;
    assert_eq!(uploaded, 812);
    let key = device.to_string();
    eventually(&sim, "812 prekeys stored", |c| {
        c.prekeys_stored.get(&key) == Some(&812) && c.prekey_uploads.get(&key) == Some(&1)
    })
    .await;
    assert_eq!(sim.counters().live_sockets.get(&key), Some(&1));
    sim.shutdown().await;
}

#[tokio::test]
async fn pairing_code_link_then_login() {
    let sim = simulator_with_phone(PHONE).await;
    let mut companion = Companion::connect(&sim, fresh_identity()).await;
    companion.first_qr().await;
    companion.request_pairing_code(PHONE);
    let code = companion
        .wait_for(|e| match e {
            Event::PairingCode { code, .. } => Some(code.as_str().to_owned()),
            _ => None,
        })
        .await;
    let device = sim
        .enter_pairing_code(PHONE, &code)
        .await
        .expect("pairing code links the companion");
    let identity = companion
        .wait_for(|e| match e {
            Event::Paired { identity, .. } => Some((**identity).clone()),
            _ => None,
        })
        .await;
    assert_eq!(identity.jid(), Some(device.clone()));
    assert_eq!(companion.event().await, Event::Restart);
    assert_eq!(sim.counters().device_signatures_ok, 1);

    let mut companion = Companion::connect(&sim, identity).await;
    assert_eq!(companion.wait_for(ready_jid).await, device);
    sim.shutdown().await;
}

#[tokio::test]
async fn wrong_pairing_code_fails_on_the_key_bundle() {
    let sim = simulator_with_phone(PHONE).await;
    let mut companion = Companion::connect(&sim, fresh_identity()).await;
    companion.first_qr().await;
    companion.request_pairing_code(PHONE);
    let code = companion
        .wait_for(|e| match e {
            Event::PairingCode { code, .. } => Some(code.as_str().to_owned()),
            _ => None,
        })
        .await;
    // Another valid code: the first character changed within the alphabet.
    let wrong: String = code
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                if c == 'A' {
                    'B'
                } else {
                    'A'
                }
            } else {
                c
            }
        })
        .collect();
    let result = sim.enter_pairing_code(PHONE, &wrong).await;
    assert!(matches!(result, Err(SimError::KeyBundle)), "{result:?}");
    let counters = sim.counters();
    assert_eq!(counters.device_signatures_ok, 0);
    assert!(counters.prekeys_stored.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn tampered_hmac_is_refused_by_the_companion_with_401() {
    let sim = simulator_with_phone(PHONE).await;
    sim.set_tamper(PHONE, Tamper::Hmac).expect("phone exists");
    let mut companion = Companion::connect(&sim, fresh_identity()).await;
    let qr = companion.first_qr().await;
    let (scan, failure) = tokio::join!(sim.scan_qr(PHONE, &qr), async {
        companion
            .wait_for(|e| match e {
                Event::AuthFailure(e) => Some(e.clone()),
                Event::Paired { .. } => panic!("companion accepted a tampered identity"),
                _ => None,
            })
            .await
    });
    assert_eq!(failure, AdvError::HmacMismatch);
    match scan {
        Err(SimError::CompanionRejected { code, text }) => {
            assert_eq!(code, "401");
            assert_eq!(text, "hmac-mismatch");
        }
        other => panic!("expected a 401 rejection, got {other:?}"),
    }
    let counters = sim.counters();
    assert_eq!(counters.pair_success_rejected, 1);
    assert_eq!(counters.device_signatures_ok, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn tampered_account_signature_is_refused_with_signature_mismatch() {
    let sim = simulator_with_phone(PHONE).await;
    sim.set_tamper(PHONE, Tamper::AccountSignature)
        .expect("phone exists");
    let mut companion = Companion::connect(&sim, fresh_identity()).await;
    let qr = companion.first_qr().await;
    let scan = sim.scan_qr(PHONE, &qr).await;
    assert!(
        matches!(&scan, Err(SimError::CompanionRejected { code, text }) if code == "401" && text == "signature-mismatch"),
        "{scan:?}"
    );
    let failure = companion
        .wait_for(|e| match e {
            Event::AuthFailure(e) => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(failure, AdvError::SignatureMismatch);
    sim.shutdown().await;
}

#[tokio::test]
async fn forged_device_signature_is_refused_by_the_phone() {
    let sim = simulator_with_phone(PHONE).await;
    let mut companion = Companion::connect_forging_signature(&sim, fresh_identity()).await;
    let qr = companion.first_qr().await;
    let scan = sim.scan_qr(PHONE, &qr).await;
    assert!(
        matches!(
            scan,
            Err(SimError::DeviceSignature(AdvError::DeviceSignatureMismatch))
        ),
        "{scan:?}"
    );
    let counters = sim.counters();
    assert_eq!(counters.device_signatures_bad, 1);
    assert_eq!(counters.device_signatures_ok, 0);
    // No 515: the socket ends with a 401 stream error, and the device cannot log in.
    let (_, events) = companion.until_closed().await;
    assert!(!events.contains(&Event::Restart), "{events:?}");
    let identity = events
        .into_iter()
        .find_map(|e| match e {
            Event::Paired { identity, .. } => Some(*identity),
            _ => None,
        })
        .expect("the companion itself accepted pair-success");
    let mut again = Companion::connect(&sim, identity).await;
    assert_eq!(
        again.wait_for(disconnect).await,
        DisconnectReason::LoggedOut
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn second_login_replaces_the_older_socket() {
    let sim = simulator_with_phone(PHONE).await;
    let identity = link_by_qr(&sim, PHONE).await;
    let device = identity.jid().expect("paired").to_string();
    let mut first = Companion::connect(&sim, identity.clone()).await;
    first.wait_for(ready_jid).await;
    let mut second = Companion::connect(&sim, identity).await;
    second.wait_for(ready_jid).await;
    assert_eq!(first.wait_for(disconnect).await, DisconnectReason::Replaced);
    let counters = sim.counters();
    assert_eq!(counters.replaced_sent, 1);
    assert_eq!(counters.live_sockets.get(&device), Some(&1));
    assert_eq!(counters.max_live_sockets_per_device, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn unlink_logs_the_device_out_for_good() {
    let sim = simulator_with_phone(PHONE).await;
    let identity = link_by_qr(&sim, PHONE).await;
    let device = identity.jid().expect("paired");
    let mut companion = Companion::connect(&sim, identity.clone()).await;
    companion.wait_for(ready_jid).await;
    sim.unlink(&device).await.expect("device is linked");
    assert_eq!(
        companion.wait_for(disconnect).await,
        DisconnectReason::LoggedOut
    );
    // Later logins fail with 401.
    let mut again = Companion::connect(&sim, identity).await;
    assert_eq!(
        again.wait_for(disconnect).await,
        DisconnectReason::LoggedOut
    );
    assert!(matches!(
        sim.unlink(&device).await,
        Err(SimError::UnknownDevice(_))
    ));
    sim.shutdown().await;
}

#[tokio::test]
async fn drop_connections_closes_without_a_stream_error() {
    let sim = simulator_with_phone(PHONE).await;
    let identity = link_by_qr(&sim, PHONE).await;
    let device = identity.jid().expect("paired");
    let mut companion = Companion::connect(&sim, identity).await;
    companion.wait_for(ready_jid).await;
    eventually(&sim, "one live socket", |c| {
        c.live_sockets.get(&device.to_string()) == Some(&1)
    })
    .await;
    assert_eq!(sim.drop_connections(&device), 1);
    let (ended, events) = companion.until_closed().await;
    assert_eq!(ended, Ended::Dropped, "an abrupt drop sends no close frame");
    assert!(
        !events.iter().any(|e| matches!(e, Event::Disconnected(_))),
        "no stream error expected, got {events:?}"
    );
    assert_eq!(sim.counters().live_sockets.get(&device.to_string()), None);
    sim.shutdown().await;
}

#[tokio::test]
async fn too_old_client_gets_405() {
    let config = SimConfig {
        min_client_version: Some([9, 0, 0]),
        ..SimConfig::default()
    };
    let sim = simulator_with(config, PHONE).await;
    let mut companion = Companion::connect(&sim, fresh_identity()).await;
    assert_eq!(
        companion.wait_for(disconnect).await,
        DisconnectReason::ClientOutdated
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_companion_pinned_to_whatsapps_root_refuses_the_simulator() {
    let sim = simulator_with_phone(PHONE).await;
    let mut companion = Companion::connect_pinned(&sim, fresh_identity(), RootKey::WHATSAPP).await;
    match companion.next().await {
        Step::Failed(error) => assert!(error.contains("certificate"), "{error}"),
        other => panic!("expected a certificate failure, got {other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_qr_texts_get_typed_errors() {
    let sim = simulator_with_phone(PHONE).await;
    assert!(matches!(
        sim.scan_qr(PHONE, "not a qr").await,
        Err(SimError::BadQr(_))
    ));
    let mut companion = Companion::connect(&sim, fresh_identity()).await;
    let qr = companion.first_qr().await;
    // A well-formed QR whose ref nobody shows.
    let mut other = PairingQr::parse(&qr).expect("the companion's QR parses");
    other.reference = "2@not-issued".to_owned();
    assert!(matches!(
        sim.scan_qr(PHONE, &other.to_text()).await,
        Err(SimError::NoSuchRef)
    ));
    assert!(matches!(
        sim.scan_qr("15550000000", &qr).await,
        Err(SimError::UnknownPhone(_))
    ));
    assert!(matches!(
        sim.add_phone("+1 555"),
        Err(SimError::BadPhone(_))
    ));
    assert!(matches!(
        sim.add_phone("+15551234568"),
        Err(SimError::PhoneNotDigits(_))
    ));
    // Nothing was linked by the failures; the real QR still works.
    assert_eq!(sim.counters().device_signatures_ok, 0);
    sim.scan_qr(PHONE, &qr).await.expect("the real QR links");
    sim.shutdown().await;
}

#[tokio::test]
async fn registration_socket_closes_when_all_refs_expired() {
    let config = SimConfig {
        first_qr_ttl: Duration::from_millis(300),
        next_qr_ttl: Duration::from_millis(100),
        qr_refs: 2,
        ..SimConfig::default()
    };
    let sim = simulator_with(config, PHONE).await;
    let mut companion = Companion::connect(&sim, fresh_identity()).await;
    let qr = companion.first_qr().await;
    let (ended, _) = companion.until_closed().await;
    assert_eq!(ended, Ended::ServerClosed);
    assert!(matches!(
        sim.scan_qr(PHONE, &qr).await,
        Err(SimError::NoSuchRef)
    ));
    sim.shutdown().await;
}

#[tokio::test]
async fn websocket_only_on_ws_chat() {
    let sim = simulator_with_phone(PHONE).await;
    let wrong = sim.ws_url().replace("/ws/chat", "/other");
    assert!(tokio_tungstenite::connect_async(wrong).await.is_err());
    sim.shutdown().await;
}
