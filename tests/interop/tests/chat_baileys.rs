//! Two stock Baileys (`makeWASocket`, only the pinned root key re-pointed), each linked to
//! its own simulated phone account, chat 1:1 through the wafleet simulator.
//!
//! Baileys does everything a real client does against WhatsApp: usync device lists with
//! LIDs, prekey bundle fetches, X3DH and the ratchet (libsignal-node), fan-out to the peer's
//! devices and to its own phone, server acks, delivery receipts. That each side's
//! `messages.upsert` shows the other's text, in order, and that delivery receipts come back
//! is what proves the simulator routes messages and receipts as WhatsApp does — not our own
//! code agreeing with itself.

mod chat_support;

use chat_support::{
    chat_script, event, eventually, linked_baileys, send, wait_delivered, wait_received, AuthDir,
    STEP,
};
use tokio::task::block_in_place;
use wafleet_sim::{SimConfig, Simulator};

const ALICE: &str = "15551110001";
const BOB: &str = "15552220002";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_baileys_chat_one_to_one_through_the_simulator() {
    let sim = Simulator::start(SimConfig::default())
        .await
        .expect("simulator starts");
    sim.add_phone(ALICE).expect("alice's phone");
    sim.add_phone(BOB).expect("bob's phone");
    let (alice_auth, bob_auth) = (AuthDir::new("alice"), AuthDir::new("bob"));
    let mut alice = linked_baileys(&sim, ALICE, "Alice", &alice_auth.0).await;
    let mut bob = linked_baileys(&sim, BOB, "Bob", &bob_auth.0).await;
    let alice_jid = format!("{ALICE}@s.whatsapp.net");
    let bob_jid = format!("{BOB}@s.whatsapp.net");

    // Alice → Bob: a first message (pkmsg) and more (msg), in order.
    let mut to_bob = Vec::new();
    for i in 1..=3 {
        let text = format!("hello bob {i}");
        let id = send(&mut alice, &bob_jid, &text);
        to_bob.push((id, text));
    }
    wait_received(&mut bob, ALICE, &to_bob);
    let ids: Vec<String> = to_bob.iter().map(|(id, _)| id.clone()).collect();
    wait_delivered(&mut alice, &ids);
    // The server sends Alice's push name along (`notify`).
    let first = bob
        .seen()
        .iter()
        .find(|e| e["event"] == "message" && e["id"] == ids[0].as_str())
        .cloned()
        .expect("first message");
    assert_eq!(first["pushName"], "Alice", "{first}");
    assert_eq!(first["upsert"], "notify", "{first}");

    // Bob → Alice: replies on the session Alice started, then Alice answers after Bob's
    // ratchet step.
    let mut to_alice = Vec::new();
    for i in 1..=3 {
        let text = format!("hi alice {i}");
        let id = send(&mut bob, &alice_jid, &text);
        to_alice.push((id, text));
    }
    wait_received(&mut alice, BOB, &to_alice);
    let ids: Vec<String> = to_alice.iter().map(|(id, _)| id.clone()).collect();
    wait_delivered(&mut bob, &ids);

    let text = "and back to bob".to_owned();
    let id = send(&mut alice, &bob_jid, &text);
    to_bob.push((id.clone(), text));
    wait_received(&mut bob, ALICE, &to_bob);
    wait_delivered(&mut alice, &[id]);

    // Bob's Baileys is killed; Alice writes twice; his copies wait on the server and reach
    // his next run (same auth state, no new link) as offline messages, in order.
    let bob_device = format!("{BOB}:1@s.whatsapp.net");
    drop(bob);
    eventually(&sim, "bob's socket gone", |c| {
        !c.live_sockets.contains_key(&bob_device)
    })
    .await;
    let mut while_away = Vec::new();
    for i in 1..=2 {
        let text = format!("while you were away {i}");
        let id = send(&mut alice, &bob_jid, &text);
        while_away.push((id, text));
    }
    eventually(&sim, "queued for bob", |c| {
        c.queued_now.get(&bob_device).is_some_and(|n| *n >= 2)
    })
    .await;
    let receipts_before = sim.counters().receipts_routed;
    let mut bob = chat_script(&sim, "Bob", &bob_auth.0);
    let open = block_in_place(|| bob.wait_for("open", STEP));
    assert_eq!(open["me"], bob_device, "{open}");
    wait_received(&mut bob, ALICE, &while_away);
    for (id, _) in &while_away {
        let upsert = event(&mut bob, |e| {
            (e["event"] == "message" && e["id"] == id.as_str()).then(|| e["upsert"].clone())
        });
        assert_eq!(
            upsert, "append",
            "an offline message is appended, not notified"
        );
    }
    // Bob's receipts for them reach Alice's device, which acks them. (Baileys shows no
    // delivery for these: it processes offline messages before it goes online again, so its
    // receipts are `inactive` ones, which WhatsApp passes on but clients do not render.)
    let alice_device = format!("{ALICE}:1@s.whatsapp.net");
    let routed_before = receipts_before;
    eventually(
        &sim,
        "bob's receipts routed and acked, bob's queue empty",
        |c| {
            c.receipts_routed >= routed_before + 2
                && !c.queued_now.contains_key(&bob_device)
                && !c.queued_now.contains_key(&alice_device)
        },
    )
    .await;

    // Bob's Baileys loses its Signal sessions (its session files are deleted while it is
    // down). Alice's next message does not decrypt; Bob's retry receipt travels to Alice's
    // device, her Baileys sends the message again (to Bob's device alone), and Bob reads it.
    drop(bob);
    eventually(&sim, "bob's socket gone", |c| {
        !c.live_sockets.contains_key(&bob_device)
    })
    .await;
    let mut lost = 0;
    for entry in std::fs::read_dir(&bob_auth.0)
        .expect("bob's auth dir")
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("session-") {
            std::fs::remove_file(entry.path()).expect("remove a session file");
            lost += 1;
        }
    }
    assert!(lost > 0, "bob had sessions on disk");
    let mut bob = chat_script(&sim, "Bob", &bob_auth.0);
    block_in_place(|| bob.wait_for("online", STEP));
    let text = "after your lost session";
    let id = send(&mut alice, &bob_jid, text);
    event(&mut bob, |e| {
        (e["event"] == "message" && e["id"] == id.as_str() && e["text"] == text).then_some(())
    });
    assert!(
        sim.counters().encs_routed.contains_key("msg"),
        "the resend went through the server"
    );

    // Each side's own phone got the sent-message copies (DeviceSentMessage), from the
    // companion, with the chat as `recipient`.
    let copies = sim.phone_inbox(ALICE).expect("alice's phone");
    assert!(
        copies.iter().any(|n| n.tag == "message"
            && n.get_attr("recipient").map(|r| r.to_string()) == Some(bob_jid.clone())),
        "alice's phone got her sent copies: {copies:?}"
    );
    let counters = sim.counters();
    assert!(counters.receipts_routed >= 7, "{counters:?}");
    assert!(counters.messages_routed >= 14, "{counters:?}");
    assert_eq!(counters.messages_refused, 0, "{counters:?}");
    assert!(counters.redelivered >= 2, "{counters:?}");
    // Sessions started with pkmsg and continued with msg once the peer answered.
    assert!(
        counters.encs_routed.get("pkmsg").is_some_and(|n| *n > 0),
        "{counters:?}"
    );
    assert!(
        counters.encs_routed.get("msg").is_some_and(|n| *n > 0),
        "{counters:?}"
    );
    drop(alice);
    drop(bob);
    sim.shutdown().await;
}
