//! Message routing over real WebSockets, with real companions (`wafleet_protocol::client`):
//! a message for an offline device waits in its queue and reaches it at its next login
//! (closed by `<ib><offline count>`), the companion's ack empties the queue, and what is
//! addressed to a phone lands in its inbox, readable over the control API.

mod support;

use serde_json::json;
use support::{eventually, http, link_by_qr, simulator_with, Companion};
use wafleet_protocol::binary::Node;
use wafleet_protocol::client::{DeviceIdentity, Event};
use wafleet_protocol::jid::Jid;
use wafleet_sim::SimConfig;

const ALICE: &str = "15551110001";
const BOB: &str = "15552220002";

async fn log_in(sim: &wafleet_sim::Simulator, identity: DeviceIdentity) -> (Companion, Jid, u32) {
    let mut companion = Companion::connect(sim, identity).await;
    let jid = companion
        .wait_for(|e| match e {
            Event::Ready { jid, .. } => Some(jid.clone()),
            _ => None,
        })
        .await;
    let offline = companion
        .wait_for(|e| match e {
            Event::OfflineDelivered { count } => Some(*count),
            _ => None,
        })
        .await;
    (companion, jid, offline)
}

fn enc(kind: &'static str) -> Node {
    Node::new("enc")
        .attr("v", "2")
        .attr("type", kind)
        .bytes(vec![1, 2, 3])
}

#[tokio::test]
async fn an_offline_companion_gets_its_messages_at_login_and_phones_keep_theirs() {
    let sim = simulator_with(
        SimConfig {
            control_bind: Some("127.0.0.1:0".parse().expect("address")),
            ..SimConfig::default()
        },
        ALICE,
    )
    .await;
    sim.add_phone(BOB).expect("bob's phone");
    let alice_identity = link_by_qr(&sim, ALICE).await;
    let bob_identity = link_by_qr(&sim, BOB).await;
    let (mut alice, alice_jid, offline) = log_in(&sim, alice_identity).await;
    assert_eq!(offline, 0, "nothing queued for a fresh device");
    let bob_device = bob_identity.jid().expect("paired");
    let bob_user = Jid::new(BOB, wafleet_protocol::jid::Server::WhatsApp);

    // Alice writes to Bob while his companion is offline.
    for _ in 0..2 {
        let message = Node::new("message")
            .attr("to", bob_user.clone())
            .attr("type", "text")
            .children([Node::new("participants").children([
                Node::new("to")
                    .attr("jid", bob_user.clone())
                    .children([enc("pkmsg")]),
                Node::new("to")
                    .attr("jid", bob_device.clone())
                    .children([enc("pkmsg")]),
            ])]);
        let ack = alice.request(message).await;
        assert_eq!(ack.tag, "ack");
        assert_eq!(ack.attr_str("class"), Some("message"));
        assert_eq!(
            ack.get_attr("from").map(|f| f.to_string()),
            Some(bob_user.to_string())
        );
    }
    let key = bob_device.to_string();
    let counters = sim.counters();
    assert_eq!(counters.messages_routed, 4);
    assert_eq!(counters.messages_queued, 2);
    assert_eq!(counters.queued_now.get(&key), Some(&2));

    // Bob's phone has both, over the control API too.
    let inbox = sim.phone_inbox(BOB).expect("bob's phone");
    assert_eq!(inbox.len(), 2);
    assert_eq!(
        inbox[0].get_attr("from").map(|f| f.to_string()),
        Some(alice_jid.to_string())
    );
    let base = sim.control_url().expect("control API");
    let (status, body) = http(&base, "GET", &format!("/phones/{BOB}/inbox"), None).await;
    assert_eq!(status, 200, "{body}");
    let listed = body["inbox"].as_array().expect("inbox array");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["tag"], "message");
    assert_eq!(listed[0]["attrs"]["from"], json!(alice_jid.to_string()));
    let (status, body) = http(&base, "GET", "/phones/19990000000/inbox", None).await;
    assert_eq!(status, 404, "{body}");

    // Bob logs in: both come, then the count; his session acks them and the queue empties.
    let (_bob, _, offline) = log_in(&sim, bob_identity).await;
    assert_eq!(offline, 2);
    eventually(&sim, "bob acked his queue", |c| {
        c.messages_acked == 2 && c.queued_now.is_empty()
    })
    .await;
    sim.shutdown().await;
}
