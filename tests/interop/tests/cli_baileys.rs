//! The `wafleet` binary beside stock Baileys through the simulator, as a CLI user sees it:
//! `wafleet link`, then `wafleet listen --json` prints what Baileys sends (200 texts in
//! order, with Baileys' ids; `pkmsg`s until wafleet answers), `wafleet send --json` reaches
//! Baileys' `messages.upsert`, a text Baileys sends while `listen` is down is printed when
//! it comes back (the simulator's offline queue; a text whose ack the killed `listen` had
//! not sent yet may come again, with the same id), and Baileys' replies after its ratchet
//! step, now `msg`s, are printed too.
//!
//! The binary is the one `cargo test --workspace` builds (`cli_support::wafleet_bin`).

mod chat_support;
#[path = "../../../crates/cli/tests/cli_support/mod.rs"]
mod cli_support;

use chat_support::{linked_baileys, wait_received, AuthDir};
use serde_json::Value;
use wafleet_sim::{SimConfig, Simulator};

/// The wafleet CLI session's account.
const WAFLEET: &str = "15553330013";
/// Baileys' account.
const BAILEYS: &str = "15554440014";
/// Texts Baileys sends before wafleet answers: the first is a `pkmsg`, the rest `msg`.
const BURST: usize = 200;

/// Checks one `message` line of `wafleet listen --json` against what Baileys sent.
fn assert_from_baileys(line: &Value, id: &str, text: &str) {
    let baileys_jid = format!("{BAILEYS}@s.whatsapp.net");
    assert_eq!(line["id"], id, "{line}");
    assert_eq!(line["text"], text, "{line}");
    assert_eq!(line["type"], "text", "{line}");
    assert_eq!(line["from_me"], false, "{line}");
    assert_eq!(line["sender"], baileys_jid.as_str(), "{line}");
    assert_eq!(line["chat"], baileys_jid.as_str(), "{line}");
}

/// The next `message` line that is not one of `earlier` (id, text): a message whose ack
/// the killed `listen` had not sent yet comes again, with the same id and text.
async fn new_message(listen: &mut cli_support::Listener, earlier: &[(String, String)]) -> Value {
    loop {
        let line = listen.message().await;
        match earlier.iter().find(|(id, _)| line["id"] == id.as_str()) {
            Some((_, text)) => assert_eq!(line["text"], text.as_str(), "a redelivery: {line}"),
            None => return line,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wafleet_listen_prints_baileys_texts_and_wafleet_send_reaches_baileys() {
    let sim = Simulator::start(SimConfig::default())
        .await
        .expect("simulator starts");
    sim.add_phone(WAFLEET).expect("wafleet's phone");
    sim.add_phone(BAILEYS).expect("baileys' phone");
    let (data_dir, baileys_auth) = (AuthDir::new("wafleet-cli"), AuthDir::new("baileys-cli"));
    let device = cli_support::link(&sim, &data_dir.0, "cli", WAFLEET).await;
    let mut baileys = linked_baileys(&sim, BAILEYS, "Baileys", &baileys_auth.0).await;
    let wafleet_jid = format!("{WAFLEET}@s.whatsapp.net");

    // Baileys → `wafleet listen --json`: a pkmsg, then msgs, printed in order.
    let mut listen = cli_support::Listener::start(&sim, &data_dir.0, "cli");
    assert_eq!(listen.ready().await, device);
    let mut sent = Vec::new();
    for i in 1..=BURST {
        let text = format!("from baileys {i}");
        let id = chat_support::send(&mut baileys, &wafleet_jid, &text);
        sent.push((id, text));
    }
    for (id, text) in &sent {
        assert_from_baileys(&listen.message().await, id, text);
    }
    // Baileys' libsignal sends PreKeyWhisperMessages until the peer answers.
    let routed = |kind: &str| sim.counters().encs_routed.get(kind).copied().unwrap_or(0);
    assert!(routed("pkmsg") >= 1, "the first was a pkmsg");
    listen.stop().await;

    // `wafleet send --json` → Baileys' messages.upsert, with the printed id.
    let text = "from the wafleet cli";
    let reply = cli_support::send(&sim, &data_dir.0, "cli", BAILEYS, text).await;
    let id = reply["id"].as_str().expect("message id").to_owned();
    assert!(id.starts_with("3EB0"), "WhatsApp-format id: {id}");
    assert_eq!(reply["chat"], format!("{BAILEYS}@s.whatsapp.net"));
    wait_received(&mut baileys, WAFLEET, &[(id, text.to_owned())]);

    // Baileys answers (after its ratchet step on wafleet's message) while listen is down:
    // the text waits in the offline queue and is printed once listen is back; a second one
    // arrives live.
    let away = "while you were away".to_owned();
    let away_id = chat_support::send(&mut baileys, &wafleet_jid, &away);
    let mut listen = cli_support::Listener::start(&sim, &data_dir.0, "cli");
    assert_eq!(listen.ready().await, device);
    assert_from_baileys(&new_message(&mut listen, &sent).await, &away_id, &away);
    let live = "and now live".to_owned();
    let live_id = chat_support::send(&mut baileys, &wafleet_jid, &live);
    assert_from_baileys(&new_message(&mut listen, &sent).await, &live_id, &live);
    assert!(
        routed("msg") >= 2,
        "after wafleet's answer Baileys sends msgs"
    );
    listen.stop().await;
    drop(baileys);
    sim.shutdown().await;
}
