//! Stock Baileys (`makeWASocket`, only its pinned root key re-pointed) links to the wafleet
//! simulator by QR and by pairing code, restarts on 515 and logs in.
//!
//! Baileys accepting the simulator proves the simulator speaks the protocol as a real
//! client expects. In the other direction the proof is the simulator's check of Baileys'
//! device signature (`device_signatures_ok`): Baileys' own `Curve.verify` always returns
//! true, so its acceptance of our signatures proves nothing about them.

use std::time::Duration;

use tokio::task::block_in_place;
use wafleet_interop::EventScript;
use wafleet_protocol::jid::Jid;
use wafleet_sim::{SimConfig, SimError, Simulator, Tamper};

const PHONE: &str = "15551234567";
const STEP: Duration = Duration::from_secs(30);

async fn simulator() -> Simulator {
    let sim = Simulator::start(SimConfig::default())
        .await
        .expect("simulator starts");
    sim.add_phone(PHONE).expect("phone added");
    sim
}

fn baileys(sim: &Simulator, extra: &[&str]) -> EventScript {
    let url = sim.ws_url();
    let root = hex::encode(sim.root_public_key());
    let mut args = vec!["--url", url.as_str(), "--root", root.as_str()];
    args.extend_from_slice(extra);
    EventScript::start("link.mjs", &args)
}

/// Polls the counters until `check` holds (the socket task updates them asynchronously).
async fn eventually(sim: &Simulator, what: &str, check: impl Fn(&wafleet_sim::Counters) -> bool) {
    for _ in 0..1500 {
        if check(&sim.counters()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not reached; counters {:?}", sim.counters());
}

/// After linking: Baileys restarts on 515, logs in (`open`) as `device`, uploads its first
/// 812 prekeys, and the simulator verified its device signature.
async fn restarts_and_logs_in(sim: &Simulator, baileys: &mut EventScript, device: &Jid) {
    let close = block_in_place(|| baileys.wait_for("close", STEP));
    assert_eq!(close["code"], 515, "{close}");
    let open = block_in_place(|| baileys.wait_for("open", STEP));
    assert_eq!(open["me"], device.to_string(), "{open}");
    let counters = sim.counters();
    assert_eq!(counters.device_signatures_ok, 1);
    assert_eq!(counters.device_signatures_bad, 0);
    let key = device.to_string();
    eventually(sim, "Baileys logged in with its prekeys stored", |c| {
        c.live_sockets.get(&key) == Some(&1) && c.prekeys_stored.get(&key) == Some(&812)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baileys_links_by_qr_and_logs_in() {
    let sim = simulator().await;
    let mut baileys = baileys(&sim, &[]);
    let qr = block_in_place(|| baileys.wait_for("qr", STEP));
    let qr = qr["qr"].as_str().expect("QR text");
    let device = sim
        .scan_qr(PHONE, qr)
        .await
        .expect("the phone links Baileys");
    assert_eq!(device.user, PHONE);
    restarts_and_logs_in(&sim, &mut baileys, &device).await;
    drop(baileys);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baileys_links_by_pairing_code_and_logs_in() {
    let sim = simulator().await;
    let mut baileys = baileys(&sim, &["--pairing-phone", PHONE]);
    let code = block_in_place(|| baileys.wait_for("pairing_code", STEP));
    let code = code["code"].as_str().expect("pairing code").to_owned();
    assert_eq!(code.len(), 8);
    // Baileys returns the code without waiting for the server's answer to companion_hello;
    // the simulated phone waits for the request (PENDING_LINK_WAIT).
    let device = sim
        .enter_pairing_code(PHONE, &code)
        .await
        .expect("the code links Baileys");
    restarts_and_logs_in(&sim, &mut baileys, &device).await;
    drop(baileys);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baileys_refuses_a_device_identity_with_a_wrong_hmac() {
    let sim = simulator().await;
    sim.set_tamper(PHONE, Tamper::Hmac).expect("phone exists");
    let mut baileys = baileys(&sim, &[]);
    let qr = block_in_place(|| baileys.wait_for("qr", STEP));
    let qr = qr["qr"].as_str().expect("QR text").to_owned();
    // Baileys drops the socket instead of answering with an error iq.
    let scan = sim.scan_qr(PHONE, &qr).await;
    assert!(matches!(scan, Err(SimError::SocketClosed)), "{scan:?}");
    let close = block_in_place(|| baileys.wait_for("close", STEP));
    assert_ne!(close["code"], 515, "{close}");
    assert!(
        !baileys
            .seen()
            .iter()
            .any(|e| e["event"] == "open" || e["event"] == "paired"),
        "Baileys accepted a wrong HMAC: {:?}",
        baileys.seen()
    );
    assert_eq!(sim.counters().device_signatures_ok, 0);
    drop(baileys);
    sim.shutdown().await;
}
