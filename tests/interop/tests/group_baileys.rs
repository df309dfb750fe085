//! Three stock Baileys companions (`makeWASocket`, only the pinned root key re-pointed), one
//! per simulator account, in one group: Baileys creates the group over `w:g2`, the others
//! learn it from the `w:gp2` notification, each sends a text that the other two decrypt
//! (sender keys through the simulator's `skmsg` fan-out), and after a removal the removed
//! member is told and a later message reaches only the remaining one.
//!
//! Everything checked here is Baileys' own view (`messages.upsert`, `groups.upsert`,
//! `group-participants.update`), not the simulator agreeing with itself.

mod wafleet_support;

use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::block_in_place;
use wafleet_interop::EventScript;
use wafleet_protocol::jid::Jid;
use wafleet_sim::{GroupAddressing, PhoneMessage, SimConfig, Simulator};
use wafleet_support::{inbound, linked_wafleet};

const PHONES: [&str; 3] = ["15550000001", "15550000002", "15550000003"];
const STEP: Duration = Duration::from_secs(60);

/// Polls the counters until `check` holds.
async fn eventually(sim: &Simulator, what: &str, check: impl Fn(&wafleet_sim::Counters) -> bool) {
    for _ in 0..1500 {
        if check(&sim.counters()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not reached; counters {:?}", sim.counters());
}

/// Starts a Baileys companion, links it to `phone` by QR and waits until it logged in with
/// its prekeys uploaded.
async fn linked(sim: &Simulator, phone: &str) -> (EventScript, Jid) {
    let url = sim.ws_url();
    let root = hex::encode(sim.root_public_key());
    let mut script = EventScript::start("group-chat.mjs", &["--url", &url, "--root", &root]);
    let qr = block_in_place(|| script.wait_for("qr", STEP));
    let qr = qr["qr"].as_str().expect("QR text").to_owned();
    let device = sim
        .scan_qr(phone, &qr)
        .await
        .expect("the phone links Baileys");
    let open = block_in_place(|| script.wait_for("open", STEP));
    assert_eq!(open["me"], device.to_string(), "{open}");
    let key = device.to_string();
    eventually(sim, "prekeys uploaded", |c| {
        c.prekeys_stored.get(&key).is_some_and(|n| *n > 0)
    })
    .await;
    (script, device)
}

/// Sends a command and waits for its answer (`ref` echoed), panicking on an error event.
fn call(script: &mut EventScript, reference: &str, mut command: Value) -> Value {
    command["ref"] = json!(reference);
    script.send(&command);
    let reply =
        block_in_place(|| script.wait_until(STEP, |e| (e["ref"] == reference).then(|| e.clone())));
    assert_ne!(reply["event"], "error", "{command} failed: {reply}");
    reply
}

fn pn(phone: &str) -> String {
    format!("{phone}@s.whatsapp.net")
}

/// Waits until `script`'s Baileys upserts a message from someone else in `group` with `text`.
fn receives(script: &mut EventScript, group: &str, text: &str, author: &str) -> Value {
    let message = block_in_place(|| {
        script.wait_until(STEP, |e| {
            (e["event"] == "message" && e["chat"] == group && e["text"] == text).then(|| e.clone())
        })
    });
    assert_eq!(message["from_me"], false, "{message}");
    assert_eq!(message["upsert"], "notify", "{message}");
    let participant = message["participant"].as_str().unwrap_or_default();
    assert!(
        participant.starts_with(author),
        "author {participant} is not {author}: {message}"
    );
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_baileys_chat_in_a_group_and_a_removed_member_is_cut_off() {
    group_chat(GroupAddressing::Pn).await;
}

/// The same in a LID-addressed group, as WhatsApp creates them today: members named by
/// LID (with their phone numbers), Baileys' sender keys under its LID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_baileys_chat_in_a_lid_addressed_group() {
    group_chat(GroupAddressing::Lid).await;
}

async fn group_chat(addressing: GroupAddressing) {
    let sim = Simulator::start(SimConfig::default())
        .await
        .expect("simulator starts");
    sim.set_group_addressing(addressing);
    // How the group names each account: `<phone>@s.whatsapp.net` or `<lid>@lid`.
    let mut names = Vec::new();
    for phone in PHONES {
        let info = sim.add_phone(phone).expect("phone added");
        names.push(match addressing {
            GroupAddressing::Pn => info.jid.to_string(),
            GroupAddressing::Lid => info.lid.to_string(),
        });
    }
    let user = |i: usize| names[i].split('@').next().unwrap_or_default().to_owned();
    let (mut a, _) = linked(&sim, PHONES[0]).await;
    let (mut b, _) = linked(&sim, PHONES[1]).await;
    let (mut c, _) = linked(&sim, PHONES[2]).await;

    // A creates the group with B and C.
    let created = call(
        &mut a,
        "create",
        json!({"cmd": "group_create", "subject": "Interop", "participants": [pn(PHONES[1]), pn(PHONES[2])]}),
    );
    let group = created["id"].as_str().expect("group id").to_owned();
    assert!(group.ends_with("@g.us"), "{created}");
    assert_eq!(created["subject"], "Interop");
    let admins: Vec<&Value> = created["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .filter(|p| p["admin"] == "superadmin")
        .collect();
    assert_eq!(admins.len(), 1, "{created}");
    assert_eq!(admins[0]["id"], names[0].as_str());
    for script in [&mut b, &mut c] {
        let upsert = block_in_place(|| {
            script.wait_until(STEP, |e| {
                (e["event"] == "groups_upsert" && e["groups"][0]["id"] == group.as_str())
                    .then(|| e.clone())
            })
        });
        assert_eq!(upsert["groups"][0]["subject"], "Interop", "{upsert}");
        assert_eq!(
            upsert["groups"][0]["participants"].as_array().map(Vec::len),
            Some(3),
            "{upsert}"
        );
    }
    let metadata = call(
        &mut b,
        "meta",
        json!({"cmd": "group_metadata", "jid": group}),
    );
    assert_eq!(metadata["participants"].as_array().map(Vec::len), Some(3));

    // Each of the three sends; the other two decrypt.
    call(
        &mut a,
        "a1",
        json!({"cmd": "send", "to": group, "text": "hello from A"}),
    );
    receives(&mut b, &group, "hello from A", &user(0));
    receives(&mut c, &group, "hello from A", &user(0));
    call(
        &mut b,
        "b1",
        json!({"cmd": "send", "to": group, "text": "hello from B"}),
    );
    receives(&mut a, &group, "hello from B", &user(1));
    receives(&mut c, &group, "hello from B", &user(1));
    call(
        &mut c,
        "c1",
        json!({"cmd": "send", "to": group, "text": "hello from C"}),
    );
    receives(&mut a, &group, "hello from C", &user(2));
    receives(&mut b, &group, "hello from C", &user(2));
    // A second round uses the sender keys already distributed.
    call(
        &mut a,
        "a2",
        json!({"cmd": "send", "to": group, "text": "again from A"}),
    );
    receives(&mut b, &group, "again from A", &user(0));
    receives(&mut c, &group, "again from A", &user(0));

    // A removes C: C (and B) get the notification; a later message reaches B only.
    let removed = call(
        &mut a,
        "remove",
        json!({"cmd": "group_participants", "jid": group, "action": "remove", "participants": [pn(PHONES[2])]}),
    );
    assert_eq!(removed["result"][0]["status"], "200", "{removed}");
    for script in [&mut c, &mut b] {
        let update = block_in_place(|| {
            script.wait_until(STEP, |e| {
                (e["event"] == "group_participants" && e["id"] == group.as_str()).then(|| e.clone())
            })
        });
        assert_eq!(update["action"], "remove", "{update}");
        assert_eq!(update["participants"], json!([names[2]]), "{update}");
    }
    call(
        &mut a,
        "a3",
        json!({"cmd": "send", "to": group, "text": "after the removal"}),
    );
    receives(&mut b, &group, "after the removal", &user(0));
    block_in_place(|| c.settle(Duration::from_secs(3)));
    assert!(
        !c.seen()
            .iter()
            .any(|e| e["event"] == "message" && e["text"] == "after the removal"),
        "the removed member got a later message: {:?}",
        c.seen()
    );

    let counters = sim.counters().groups;
    assert_eq!(counters.created, 1, "{counters:?}");
    assert!(counters.messages >= 5, "{counters:?}");
    assert_eq!(counters.messages_refused, 0, "{counters:?}");
    // Create (B, C) and remove (B, C): four notifications to live companions, all acked.
    eventually(&sim, "w:gp2 notifications acked", |c| {
        c.groups.notifications_acked >= 4
    })
    .await;
    drop((a, b, c));
    sim.shutdown().await;
}

/// Two stock Baileys and a wafleet session (the real driver) in one group: Baileys creates
/// it with the other two, each of the three sends a text and the other two decrypt it
/// (Baileys' sender keys reach wafleet inside `pkmsg`s, wafleet's reach Baileys the same
/// way, `skmsg` fan-out through the simulator).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_baileys_and_a_wafleet_session_chat_in_a_group() {
    let sim = Simulator::start(SimConfig::default())
        .await
        .expect("simulator starts");
    for phone in PHONES {
        sim.add_phone(phone).expect("phone added");
    }
    let dir = std::env::temp_dir().join(format!("wafleet-group-{}", std::process::id()));
    let mut wafleet = linked_wafleet(&sim, &dir, PHONES[2]).await;
    let (mut a, _) = linked(&sim, PHONES[0]).await;
    let (mut b, _) = linked(&sim, PHONES[1]).await;

    let created = call(
        &mut a,
        "create",
        json!({"cmd": "group_create", "subject": "Mixed", "participants": [pn(PHONES[1]), pn(PHONES[2])]}),
    );
    let group = created["id"].as_str().expect("group id").to_owned();
    block_in_place(|| {
        b.wait_until(STEP, |e| {
            (e["event"] == "groups_upsert" && e["groups"][0]["id"] == group.as_str()).then_some(())
        })
    });

    // A sends: B and wafleet decrypt it.
    call(
        &mut a,
        "a1",
        json!({"cmd": "send", "to": group, "text": "hello from A"}),
    );
    receives(&mut b, &group, "hello from A", PHONES[0]);
    let got = inbound(&mut wafleet, 1).await;
    assert_eq!(got[0].chat, group);
    assert_eq!(got[0].sender, pn(PHONES[0]));
    assert_eq!(got[0].text.as_deref(), Some("hello from A"));

    // B sends: A and wafleet decrypt it.
    call(
        &mut b,
        "b1",
        json!({"cmd": "send", "to": group, "text": "hello from B"}),
    );
    receives(&mut a, &group, "hello from B", PHONES[1]);
    let got = inbound(&mut wafleet, 1).await;
    assert_eq!(
        (got[0].chat.as_str(), got[0].sender.as_str()),
        (group.as_str(), pn(PHONES[1]).as_str())
    );
    assert_eq!(got[0].text.as_deref(), Some("hello from B"));

    // wafleet sends: A and B decrypt it.
    let sent = wafleet
        .control()
        .send_text(&group, "hello from wafleet")
        .await
        .expect("server acked wafleet's group message");
    let at_a = receives(&mut a, &group, "hello from wafleet", PHONES[2]);
    let at_b = receives(&mut b, &group, "hello from wafleet", PHONES[2]);
    assert_eq!(at_a["id"], sent.id.as_str());
    assert_eq!(at_b["id"], sent.id.as_str());
    let groups = sim.counters().groups;
    assert_eq!(groups.messages, 3, "{groups:?}");
    assert_eq!(
        groups.phash_mismatches, 0,
        "wafleet's phash is the server's: {groups:?}"
    );

    wafleet.stop();
    let _ = wafleet.finish().await;
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
}

/// Polls `phone`'s decrypted inbox (the simulated phone's own Signal stack) until it holds
/// a text `text` in `chat`; returns that message.
async fn phone_receives(sim: &Simulator, phone: &str, chat: &str, text: &str) -> PhoneMessage {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let messages = sim.phone_messages(phone).expect("phone exists");
        if let Some(undecryptable) = messages.iter().find(|m| m.kind == "undecryptable") {
            panic!("the phone could not decrypt: {undecryptable:?}");
        }
        let found = messages
            .into_iter()
            .find(|m| m.chat.to_string() == chat && m.text.as_deref() == Some(text));
        if let Some(message) = found {
            return message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{phone} did not decrypt {text:?} in {chat}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stock Baileys, a wafleet session and a simulated phone (its own Signal stack, no
/// companion) in one group: each of the three sends, the other two decrypt. Then the phone
/// of the wafleet session's account writes to Baileys 1:1: Baileys reads it, and the wafleet
/// session gets the phone's device-sent copy as `from_me` in the chat with Baileys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baileys_a_wafleet_session_and_a_simulated_phone_chat_in_a_group() {
    let sim = Simulator::start(SimConfig::default())
        .await
        .expect("simulator starts");
    for phone in PHONES {
        sim.add_phone(phone).expect("phone added");
    }
    // PHONES[0]: Baileys; PHONES[1]: the phone alone; PHONES[2]: wafleet (and its phone).
    let (baileys, phone, wafleet_account) = (PHONES[0], PHONES[1], PHONES[2]);
    let dir = std::env::temp_dir().join(format!("wafleet-group-phone-{}", std::process::id()));
    let mut wafleet = linked_wafleet(&sim, &dir, wafleet_account).await;
    let (mut a, _) = linked(&sim, baileys).await;

    let created = call(
        &mut a,
        "create",
        json!({"cmd": "group_create", "subject": "With a phone", "participants": [pn(phone), pn(wafleet_account)]}),
    );
    let group = created["id"].as_str().expect("group id").to_owned();

    // Baileys sends: the phone and wafleet decrypt it.
    call(
        &mut a,
        "a1",
        json!({"cmd": "send", "to": group, "text": "hello from Baileys"}),
    );
    let at_phone = phone_receives(&sim, phone, &group, "hello from Baileys").await;
    assert_eq!(at_phone.sender.to_non_ad().to_string(), pn(baileys));
    assert!(!at_phone.from_me);
    let got = inbound(&mut wafleet, 1).await;
    assert_eq!(
        (
            got[0].chat.as_str(),
            got[0].sender.as_str(),
            got[0].text.as_deref()
        ),
        (
            group.as_str(),
            pn(baileys).as_str(),
            Some("hello from Baileys")
        )
    );

    // The phone sends: Baileys and wafleet decrypt it.
    let from_phone = sim
        .phone_send_text(phone, &group, "hello from the phone")
        .expect("server acked the phone's group message");
    let at_a = receives(&mut a, &group, "hello from the phone", phone);
    assert_eq!(at_a["id"], from_phone.as_str());
    let got = inbound(&mut wafleet, 1).await;
    assert_eq!(
        (
            got[0].id.as_str(),
            got[0].chat.as_str(),
            got[0].sender.as_str()
        ),
        (from_phone.as_str(), group.as_str(), pn(phone).as_str())
    );
    assert_eq!(got[0].text.as_deref(), Some("hello from the phone"));
    assert!(!got[0].from_me);

    // wafleet sends: Baileys and the phone decrypt it.
    let sent = wafleet
        .control()
        .send_text(&group, "hello from wafleet")
        .await
        .expect("server acked wafleet's group message");
    let at_a = receives(&mut a, &group, "hello from wafleet", wafleet_account);
    assert_eq!(at_a["id"], sent.id.as_str());
    let at_phone = phone_receives(&sim, phone, &group, "hello from wafleet").await;
    assert_eq!(at_phone.id, sent.id);
    assert_eq!(at_phone.sender.to_non_ad().to_string(), pn(wafleet_account));
    let groups = sim.counters().groups;
    assert_eq!(groups.messages, 3, "{groups:?}");

    // wafleet's own phone writes to Baileys: Baileys reads it; wafleet sees it as its own.
    let text = "from wafleet's phone";
    let id = sim
        .phone_send_text(wafleet_account, baileys, text)
        .expect("server acked the phone's 1:1 message");
    let at_a = block_in_place(|| {
        a.wait_until(STEP, |e| {
            (e["event"] == "message" && e["text"] == text).then(|| e.clone())
        })
    });
    assert_eq!(at_a["id"], id.as_str(), "{at_a}");
    assert_eq!(at_a["from_me"], false, "{at_a}");
    let got = inbound(&mut wafleet, 1).await;
    assert_eq!(got[0].id, id);
    assert!(got[0].from_me, "{:?}", got[0]);
    assert_eq!(
        (
            got[0].chat.as_str(),
            got[0].sender.as_str(),
            got[0].text.as_deref()
        ),
        (
            pn(baileys).as_str(),
            pn(wafleet_account).as_str(),
            Some(text)
        )
    );

    wafleet.stop();
    let _ = wafleet.finish().await;
    let _ = std::fs::remove_dir_all(&dir);
    drop(a);
    sim.shutdown().await;
}
