//! Shared by the interop tests that drive stock Baileys through `oracle/chat.mjs`: link it
//! to a simulated phone account, send texts, and read what it received.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::block_in_place;
use wafleet_interop::EventScript;
use wafleet_sim::Simulator;

/// How long one step may take.
pub const STEP: Duration = Duration::from_secs(40);

/// Baileys' `proto.WebMessageInfo.Status.DELIVERY_ACK`.
pub const DELIVERY_ACK: i64 = 3;

/// Polls the counters until `check` holds.
pub async fn eventually(
    sim: &Simulator,
    what: &str,
    check: impl Fn(&wafleet_sim::Counters) -> bool,
) {
    for _ in 0..2000 {
        if check(&sim.counters()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not reached; counters {:?}", sim.counters());
}

/// Starts `chat.mjs` named `name` with its auth state in `auth`.
pub fn chat_script(sim: &Simulator, name: &str, auth: &Path) -> EventScript {
    let url = sim.ws_url();
    let root = hex::encode(sim.root_public_key());
    let auth = auth.to_str().expect("UTF-8 temp path");
    EventScript::start(
        "chat.mjs",
        &[
            "--url", &url, "--root", &root, "--name", name, "--auth", auth,
        ],
    )
}

/// A fresh directory for a Baileys auth state, removed on drop.
pub struct AuthDir(pub PathBuf);

impl AuthDir {
    pub fn new(name: &str) -> AuthDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "wafleet-chat-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("auth dir");
        AuthDir(dir)
    }
}

impl Drop for AuthDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `chat.mjs` named `name`, links it to `phone` by QR and waits until it logged in,
/// went online and its prekeys are on the server.
pub async fn linked_baileys(sim: &Simulator, phone: &str, name: &str, auth: &Path) -> EventScript {
    let mut baileys = chat_script(sim, name, auth);
    let qr = block_in_place(|| baileys.wait_for("qr", STEP));
    let qr = qr["qr"].as_str().expect("QR text").to_owned();
    let device = sim
        .scan_qr(phone, &qr)
        .await
        .expect("the phone links Baileys");
    let close = block_in_place(|| baileys.wait_for("close", STEP));
    assert_eq!(close["code"], 515, "{close}");
    let open = block_in_place(|| baileys.wait_for("open", STEP));
    assert_eq!(open["me"], device.to_string(), "{open}");
    block_in_place(|| baileys.wait_for("online", STEP));
    let key = device.to_string();
    eventually(sim, "Baileys' prekeys stored", |c| {
        c.prekeys_stored.get(&key) == Some(&812)
    })
    .await;
    baileys
}

/// The first event (already seen or still to come) that `pick` accepts.
pub fn event<T>(script: &mut EventScript, mut pick: impl FnMut(&Value) -> Option<T>) -> T {
    if let Some(found) = script.seen().iter().find_map(&mut pick) {
        return found;
    }
    block_in_place(|| script.wait_until(STEP, pick))
}

/// Sends `text` to `to`; returns the message id Baileys chose. (Each send waits for its
/// `sent`, so the next `sent` event that arrives is this one's.)
pub fn send(script: &mut EventScript, to: &str, text: &str) -> String {
    script.send(&json!({"cmd": "send", "to": to, "text": text}));
    block_in_place(|| {
        script.wait_until(STEP, |e| {
            assert_ne!(e["event"], "error", "Baileys failed to send: {e}");
            (e["event"] == "sent").then(|| e["id"].as_str().expect("sent id").to_owned())
        })
    })
}

/// The ids of the texts `script` received from `user` (not from itself), in order.
pub fn received_from(script: &EventScript, user: &str) -> Vec<(String, String)> {
    script
        .seen()
        .iter()
        .filter(|e| {
            e["event"] == "message"
                && e["fromMe"] == false
                && e["remoteJid"]
                    .as_str()
                    .is_some_and(|j| j.starts_with(&format!("{user}@")))
        })
        .map(|e| {
            (
                e["id"].as_str().unwrap_or_default().to_owned(),
                e["text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Waits until `script` received all of `expected` (id, text) from `user`, and checks they
/// came in that order and decrypted (no stub).
pub fn wait_received(script: &mut EventScript, user: &str, expected: &[(String, String)]) {
    let prefix = format!("{user}@");
    for (id, _) in expected {
        let stub = event(script, |e| {
            (e["event"] == "message" && e["id"] == id.as_str()).then(|| e["stub"].clone())
        });
        assert_eq!(stub, Value::Null, "message {id} did not decrypt");
    }
    let got = received_from(script, user);
    assert_eq!(got, expected, "texts from {prefix} in order");
}

/// Waits until `script` saw a delivery (or later) status for each of `ids`.
pub fn wait_delivered(script: &mut EventScript, ids: &[String]) {
    for id in ids {
        event(script, |e| {
            // A messages.update, or the status of the sender's own upsert when Baileys
            // folded the receipt into it (it buffers events).
            ((e["event"] == "update" || e["event"] == "message")
                && e["id"] == id.as_str()
                && e["fromMe"] == true
                && e["status"].as_i64().is_some_and(|s| s >= DELIVERY_ACK))
            .then_some(())
        });
    }
}
