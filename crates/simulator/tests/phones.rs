//! Simulated phones with their own Signal stack (`wafleet-messaging`): they text each other
//! 1:1 (a `pkmsg`, then `msg`s) and in a group (sender keys), over the Rust API and the HTTP
//! control API; bad sends get typed errors; and a phone's message to another chat reaches
//! its account's companion as a device-sent copy that the companion decrypts as `from_me`.

mod support;

use serde_json::json;
use support::{eventually, http, link_by_qr, Companion};
use wafleet_messaging::{Keys, Messenger, MessengerEvent, SignalState};
use wafleet_protocol::client::Event;
use wafleet_protocol::jid::{Jid, Server};
use wafleet_sim::{GroupAddressing, PhoneMessage, SimConfig, SimError, Simulator};

const A: &str = "15550000101";
const B: &str = "15550000102";
const C: &str = "15550000103";
/// No account has this number.
const NOBODY: &str = "19990000000";

fn pn(phone: &str) -> Jid {
    Jid::new(phone, Server::WhatsApp)
}

async fn simulator(phones: &[&str]) -> Simulator {
    let sim = Simulator::start(SimConfig {
        control_bind: Some("127.0.0.1:0".parse().expect("address")),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    for phone in phones {
        sim.add_phone(phone).expect("phone added");
    }
    sim
}

/// (id, chat, sender, from_me, text) of what `phone` decrypted, oldest first; no message
/// may be undecryptable.
fn decrypted(sim: &Simulator, phone: &str) -> Vec<(String, Jid, Jid, bool, String)> {
    sim.phone_messages(phone)
        .expect("phone exists")
        .into_iter()
        .map(|m: PhoneMessage| {
            assert_eq!(m.kind, "text", "{m:?}");
            (
                m.id,
                m.chat,
                m.sender,
                m.from_me,
                m.text.unwrap_or_default(),
            )
        })
        .collect()
}

fn text(id: &str, chat: &Jid, sender: &Jid, body: &str) -> (String, Jid, Jid, bool, String) {
    (
        id.to_owned(),
        chat.clone(),
        sender.clone(),
        false,
        body.to_owned(),
    )
}

#[tokio::test]
async fn phones_text_one_to_one_and_in_a_group() {
    let sim = simulator(&[A, B, C]).await;

    // 1:1: A's first message is a pkmsg; B's answer and A's next ride the session.
    let first = sim.phone_send_text(A, B, "hello B").expect("acked");
    let reply = sim
        .phone_send_text(B, &pn(A).to_string(), "hello A")
        .expect("acked");
    let again = sim.phone_send_text(A, B, "again").expect("acked");
    assert!(first.starts_with("3EB0"), "WhatsApp-format id: {first}");
    assert_eq!(
        decrypted(&sim, B),
        vec![
            text(&first, &pn(A), &pn(A), "hello B"),
            text(&again, &pn(A), &pn(A), "again")
        ]
    );
    assert_eq!(
        decrypted(&sim, A),
        vec![text(&reply, &pn(B), &pn(B), "hello A")]
    );
    let encs = sim.counters().encs_routed;
    assert_eq!(
        (encs.get("pkmsg"), encs.get("msg")),
        (Some(&1), Some(&2)),
        "{encs:?}"
    );
    // B's phone acknowledged both with delivery receipts.
    let receipts = sim.phone_receipts(A).expect("phone");
    for id in [&first, &again] {
        assert!(
            receipts
                .iter()
                .any(|r| r.ids.contains(id) && r.kind == "delivered" && r.sender == pn(B)),
            "{id}: {receipts:?}"
        );
    }

    // A group: each sender's key reaches the other two inside a pkmsg/msg, then its skmsg.
    let group = sim.create_group(A, "Phones", &[B, C]).expect("group").jid;
    let g = group.to_string();
    let from_a = sim.phone_send_text(A, &g, "hi group").expect("acked");
    let from_c = sim.phone_send_text(C, &g, "hi from C").expect("acked");
    let from_a2 = sim.phone_send_text(A, &g, "second round").expect("acked");
    assert_eq!(
        decrypted(&sim, C),
        vec![
            text(&from_a, &group, &pn(A), "hi group"),
            text(&from_a2, &group, &pn(A), "second round")
        ]
    );
    assert_eq!(
        decrypted(&sim, B)[2..],
        [
            text(&from_a, &group, &pn(A), "hi group"),
            text(&from_c, &group, &pn(C), "hi from C"),
            text(&from_a2, &group, &pn(A), "second round")
        ]
    );
    assert_eq!(
        decrypted(&sim, A)[1..],
        [text(&from_c, &group, &pn(C), "hi from C")]
    );
    let groups = sim.counters().groups;
    assert_eq!(
        (groups.messages, groups.phash_mismatches),
        (3, 0),
        "{groups:?}"
    );

    // A LID-addressed group (as WhatsApp creates them today): members named by LID.
    let lid_group = sim
        .create_group_with(A, "By LID", &[B], GroupAddressing::Lid)
        .expect("group")
        .jid;
    let by_lid = sim
        .phone_send_text(B, &lid_group.to_string(), "in a LID group")
        .expect("acked");
    let at_a = sim.phone_messages(A).expect("phone");
    let last = at_a.last().expect("a message");
    assert_eq!(
        (last.id.as_str(), &last.chat, last.text.as_deref()),
        (by_lid.as_str(), &lid_group, Some("in a LID group"))
    );
    assert_eq!(last.sender.server, Server::Lid, "{last:?}");
    // C is no member: the server refuses the group query, the send fails with its reason.
    let refused = sim.phone_send_text(C, &lid_group.to_string(), "let me in");
    assert!(
        matches!(&refused, Err(SimError::SendFailed(reason)) if reason.contains("403")),
        "{refused:?}"
    );

    // Over HTTP: B sends to the group, A reads it.
    let base = sim.control_url().expect("control API");
    let (status, sent) = http(
        &base,
        "POST",
        &format!("/phones/{B}/send"),
        Some(&json!({"to": g, "text": "over http"})),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["id"].as_str().expect("message id");
    let (status, inbox) = http(&base, "GET", &format!("/phones/{A}/messages"), None).await;
    assert_eq!(status, 200, "{inbox}");
    let last = inbox["messages"].as_array().and_then(|m| m.last()).cloned();
    assert_eq!(
        last,
        Some(json!({
            "id": id, "chat": g, "sender": pn(B).to_string(), "from_me": false,
            "timestamp": last.as_ref().map_or(json!(0), |l| l["timestamp"].clone()),
            "type": "text", "text": "over http", "error": null,
        }))
    );
    assert!(
        inbox["receipts"].as_array().is_some_and(|r| !r.is_empty()),
        "{inbox}"
    );

    // Bad sends: typed errors, and their HTTP codes.
    assert!(matches!(
        sim.phone_send_text(NOBODY, B, "x"),
        Err(SimError::UnknownPhone(_))
    ));
    assert!(matches!(
        sim.phone_send_text(A, NOBODY, "x"),
        Err(SimError::NoSuchUser(u)) if u == pn(NOBODY).to_string()
    ));
    for bad in ["+1 555", "15550000102:1@s.whatsapp.net", "status@broadcast"] {
        assert!(
            matches!(
                sim.phone_send_text(A, bad, "x"),
                Err(SimError::InvalidRecipient(_))
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        sim.phone_send_text(A, "120363000000000009@g.us", "x"),
        Err(SimError::UnknownGroup(_))
    ));
    for (phone, body, status, code) in [
        (A, json!({"to": NOBODY, "text": "x"}), 404, "no_such_user"),
        (
            A,
            json!({"to": "nope", "text": "x"}),
            400,
            "invalid_recipient",
        ),
        (NOBODY, json!({"to": B, "text": "x"}), 404, "unknown_phone"),
        (A, json!({"to": B}), 400, "bad_request"),
    ] {
        let (got, error) = http(&base, "POST", &format!("/phones/{phone}/send"), Some(&body)).await;
        assert_eq!(
            (got, error["error"]["code"].as_str()),
            (status, Some(code)),
            "{error}"
        );
    }
    let (status, _) = http(&base, "GET", &format!("/phones/{NOBODY}/messages"), None).await;
    assert_eq!(status, 404);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_phones_message_to_another_chat_reaches_its_companion_as_from_me() {
    let sim = simulator(&[A, B]).await;
    // Before the link: the phone knows its account as the phone alone.
    let before = sim.phone_send_text(A, B, "before the link").expect("acked");
    let identity = link_by_qr(&sim, A).await;
    let device = identity.jid().expect("paired");
    let mut companion = Companion::connect(&sim, identity).await;
    let lid = companion
        .wait_for(|e| match e {
            Event::Ready { lid, .. } => Some(lid.clone()),
            _ => None,
        })
        .await;
    // The companion's first prekeys: the test keeps their private halves to decrypt.
    let (mut pre_keys, identity) = companion
        .wait_for(|e| match e {
            Event::PreKeysGenerated { keys, identity } => {
                Some((keys.clone(), (**identity).clone()))
            }
            _ => None,
        })
        .await;
    let key = device.to_string();
    eventually(&sim, "the companion's prekeys uploaded", |c| {
        c.prekeys_stored.get(&key).is_some_and(|n| *n > 0)
    })
    .await;

    let id = sim
        .phone_send_text(A, B, "sent from the phone")
        .expect("acked");
    assert_eq!(
        decrypted(&sim, B),
        vec![
            text(&before, &pn(A), &pn(A), "before the link"),
            text(&id, &pn(A), &pn(A), "sent from the phone")
        ]
    );

    // The companion got a copy addressed to B's chat and decrypts it as its own account's.
    let stanza = companion.next_message().await;
    assert_eq!(stanza.attr_str("id"), Some(id.as_str()));
    let mut signal = SignalState::default();
    let mut keys = Keys {
        identity: &identity,
        pre_keys: &mut pre_keys,
        signal: &mut signal,
    };
    let mut messenger = Messenger::new(device.clone(), lid);
    messenger.handle_node(stanza, &mut keys, 0, &mut rand::rngs::OsRng);
    let message = std::iter::from_fn(|| messenger.poll_event())
        .find_map(|e| match e {
            MessengerEvent::Message(m) => Some(m),
            MessengerEvent::Undecryptable(u) => panic!("undecryptable: {u:?}"),
            _ => None,
        })
        .expect("the copy decrypts");
    assert!(message.from_me, "{message:?}");
    assert_eq!(message.chat, pn(B));
    assert_eq!(message.sender, pn(A));
    assert_eq!(message.id, id);
    assert_eq!(
        message.content,
        wafleet_protocol::message::MessageContent::Text {
            text: "sent from the phone".to_owned(),
            reply: None
        }
    );
    let encs = sim.counters().encs_routed;
    // B's phone never answered, so both messages to it are pkmsgs; A's new companion one.
    assert_eq!(
        (encs.get("pkmsg"), encs.get("msg")),
        (Some(&3), None),
        "{encs:?}"
    );
    sim.shutdown().await;
}
