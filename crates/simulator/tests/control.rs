//! The HTTP control API, with a real companion linked through it.

mod support;

use serde_json::json;
use support::{fresh_identity, http, Companion};
use wafleet_protocol::client::{DisconnectReason, Event};
use wafleet_sim::{SimConfig, Simulator};

#[tokio::test]
async fn link_unlink_and_counters_over_http() {
    let sim = Simulator::start(SimConfig {
        control_bind: Some("127.0.0.1:0".parse().expect("address")),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let base = sim.control_url().expect("control API runs");

    let (status, phone) = http(
        &base,
        "POST",
        "/phones",
        Some(&json!({"phone": "4915112345678"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(phone["jid"], "4915112345678@s.whatsapp.net");
    assert_eq!(phone["account_public"].as_str().map(str::len), Some(64));

    // Bad input: typed JSON errors, nothing created.
    let (status, error) = http(&base, "POST", "/phones", Some(&json!({"phone": "12ab"}))).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["code"], "bad_phone");
    let (status, error) = http(
        &base,
        "POST",
        "/phones",
        Some(&json!({"phone": "4915112345678"})),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(error["error"]["code"], "phone_exists");
    let (status, error) = http(&base, "POST", "/phones", Some(&json!({"number": "1"}))).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["code"], "bad_request");
    let (status, error) = http(
        &base,
        "POST",
        "/phones/4915112345678/scan",
        Some(&json!({"qr": "nonsense"})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["code"], "bad_qr");
    let (status, error) = http(
        &base,
        "POST",
        "/phones/4915112345678/tamper",
        Some(&json!({"tamper": "sometimes"})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["code"], "bad_request");
    let (status, error) = http(&base, "GET", "/nowhere", None).await;
    assert_eq!(status, 404);
    assert_eq!(error["error"]["code"], "not_found");
    let (status, error) = http(&base, "POST", "/devices/nonsense/unlink", None).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["code"], "bad_jid");

    // Link through the API.
    let mut companion = Companion::connect(&sim, fresh_identity()).await;
    let qr = companion.first_qr().await;
    let (status, linked) = http(
        &base,
        "POST",
        "/phones/4915112345678/scan",
        Some(&json!({"qr": qr})),
    )
    .await;
    assert_eq!(status, 200, "{linked}");
    let device = linked["device"].as_str().expect("device JID").to_owned();
    assert_eq!(device, "4915112345678:1@s.whatsapp.net");
    let identity = companion
        .wait_for(|e| match e {
            Event::Paired { identity, .. } => Some((**identity).clone()),
            _ => None,
        })
        .await;

    let mut companion = Companion::connect(&sim, identity).await;
    companion
        .wait_for(|e| matches!(e, Event::Ready { .. }).then_some(()))
        .await;
    support::eventually(&sim, "socket live", |c| {
        c.live_sockets.get(&device) == Some(&1)
    })
    .await;
    let (status, counters) = http(&base, "GET", "/counters", None).await;
    assert_eq!(status, 200);
    assert_eq!(counters["device_signatures_ok"], 1);
    assert_eq!(counters["live_sockets"][&device], 1);

    let (status, _) = http(&base, "POST", &format!("/devices/{device}/unlink"), None).await;
    assert_eq!(status, 200);
    let reason = companion
        .wait_for(|e| match e {
            Event::Disconnected(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(reason, DisconnectReason::LoggedOut);
    let (status, error) = http(&base, "POST", &format!("/devices/{device}/unlink"), None).await;
    assert_eq!(status, 404);
    assert_eq!(error["error"]["code"], "unknown_device");
    sim.shutdown().await;
}
