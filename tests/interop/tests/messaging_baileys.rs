//! A wafleet session and stock Baileys (`makeWASocket`, only the pinned root key
//! re-pointed) exchange 1:1 texts through the simulator, each on its own simulated phone
//! account.
//!
//! Baileys encrypts with libsignal-node to the wafleet device it finds by usync and bundle
//! fetch; wafleet must decrypt its `pkmsg` and then its `msg`s in order. wafleet encrypts
//! to Baileys' device with its own Signal code; Baileys' `messages.upsert` must show the
//! text. Replies in both directions after each side's ratchet step show the sessions keep
//! working. The wafleet side is the real session driver (`SessionDriver`, filesystem store),
//! the code `wafleet listen` and `wafleet send` run.

mod chat_support;
mod wafleet_support;

use chat_support::{
    chat_script, event, eventually, linked_baileys, received_from, send, wait_received, AuthDir,
    STEP,
};
use tokio::task::block_in_place;
use wafleet_sim::{SimConfig, Simulator};
use wafleet_support::{inbound, linked_wafleet};

/// The wafleet session's account.
const WAFLEET: &str = "15553330003";
/// Baileys' account.
const BAILEYS: &str = "15554440004";
/// Messages Baileys sends before wafleet answers: the first is a `pkmsg`, the rest `msg`.
const FIRST_BURST: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wafleet_and_stock_baileys_exchange_texts_both_ways() {
    let sim = Simulator::start(SimConfig::default())
        .await
        .expect("simulator starts");
    sim.add_phone(WAFLEET).expect("wafleet's phone");
    sim.add_phone(BAILEYS).expect("baileys' phone");
    let (wafleet_dir, baileys_auth) = (AuthDir::new("wafleet"), AuthDir::new("baileys"));
    let mut driver = linked_wafleet(&sim, &wafleet_dir.0, WAFLEET).await;
    let mut baileys = linked_baileys(&sim, BAILEYS, "Baileys", &baileys_auth.0).await;
    let wafleet_jid = format!("{WAFLEET}@s.whatsapp.net");
    let baileys_jid = format!("{BAILEYS}@s.whatsapp.net");

    // Baileys → wafleet: a pkmsg, then msgs, decrypted in order with Baileys' ids.
    let mut sent = Vec::new();
    for i in 1..=FIRST_BURST {
        let text = format!("from baileys {i}");
        let id = send(&mut baileys, &wafleet_jid, &text);
        sent.push((id, text));
    }
    let got = inbound(&mut driver, FIRST_BURST).await;
    let got_pairs: Vec<(String, String)> = got
        .iter()
        .map(|m| (m.id.clone(), m.text.clone().unwrap_or_default()))
        .collect();
    assert_eq!(got_pairs, sent, "Baileys' texts, in order, with their ids");
    for m in &got {
        assert!(!m.from_me, "{m:?}");
        assert_eq!(m.chat, baileys_jid);
        assert_eq!(m.sender, baileys_jid);
        assert_eq!(m.kind, "text");
    }
    let counters = sim.counters();
    assert!(
        counters.encs_routed.get("pkmsg").copied().unwrap_or(0) >= 1,
        "the first message was a pkmsg: {counters:?}"
    );

    // wafleet → Baileys: Baileys' messages.upsert shows the text, with wafleet's id.
    let control = driver.control();
    let mut replies = Vec::new();
    for i in 1..=3 {
        let text = format!("from wafleet {i}");
        let ack = control
            .send_text(BAILEYS, &text)
            .await
            .expect("server acked wafleet's send");
        assert!(ack.id.starts_with("3EB0"), "WhatsApp-format id: {}", ack.id);
        replies.push((ack.id, text));
    }
    wait_received(&mut baileys, WAFLEET, &replies);

    // Baileys again, after its ratchet step on wafleet's replies; and wafleet once more.
    let text = "baileys after the ratchet step".to_owned();
    let id = send(&mut baileys, &wafleet_jid, &text);
    let got = inbound(&mut driver, 1).await;
    assert_eq!((got[0].id.clone(), got[0].text.clone()), (id, Some(text)));
    let last = control
        .send_text(&baileys_jid, "wafleet after the ratchet step")
        .await
        .expect("second reply acked");
    replies.push((last.id, "wafleet after the ratchet step".to_owned()));
    wait_received(&mut baileys, WAFLEET, &replies);
    assert_eq!(received_from(&baileys, WAFLEET).len(), replies.len());

    // Baileys loses its Signal sessions (its session files are deleted while it is down).
    // wafleet's next message does not decrypt there; Baileys' retry receipt reaches the
    // wafleet device, which sends the message again with the same id, and Baileys reads it.
    let baileys_device = format!("{BAILEYS}:1@s.whatsapp.net");
    drop(baileys);
    eventually(&sim, "Baileys' socket gone", |c| {
        !c.live_sockets.contains_key(&baileys_device)
    })
    .await;
    let mut lost = 0;
    for entry in std::fs::read_dir(&baileys_auth.0)
        .expect("Baileys' auth dir")
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("session-") {
            std::fs::remove_file(entry.path()).expect("remove a session file");
            lost += 1;
        }
    }
    assert!(lost > 0, "Baileys had sessions on disk");
    let mut baileys = chat_script(&sim, "Baileys", &baileys_auth.0);
    block_in_place(|| baileys.wait_for("online", STEP));
    let pkmsgs_before = sim
        .counters()
        .encs_routed
        .get("pkmsg")
        .copied()
        .unwrap_or(0);
    let text = "after your lost session";
    let resent = control
        .send_text(BAILEYS, text)
        .await
        .expect("server acked the message Baileys cannot decrypt");
    event(&mut baileys, |e| {
        (e["event"] == "message" && e["id"] == resent.id.as_str() && e["text"] == text)
            .then_some(())
    });
    let counters = sim.counters();
    assert!(
        counters.encs_routed.get("pkmsg").copied().unwrap_or(0) > pkmsgs_before,
        "the answer to the retry started a fresh session: {counters:?}"
    );

    driver.stop();
    let _ = driver.finish().await;
    sim.shutdown().await;
}
