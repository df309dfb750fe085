//! The simulator as a key server, against real companions over real WebSockets: what one
//! companion uploads is served to another device's bundle fetch, one-time prekeys are
//! handed out once, and usync lists an account's devices.

mod support;

use std::collections::HashSet;

use support::{eventually, link_by_qr, simulator_with_phone, Companion};
use wafleet_protocol::binary::{Content, Node};
use wafleet_protocol::client::{DeviceIdentity, Event};
use wafleet_protocol::jid::Jid;

const ALICE: &str = "15551234567";
const BOB: &str = "15557654321";

fn bytes<'a>(node: &'a Node, tag: &str) -> &'a [u8] {
    match node.child_by_tag(tag).map(|n| &n.content) {
        Some(Content::Bytes(b)) => b,
        other => panic!("<{tag}> has no bytes in {node:?}: {other:?}"),
    }
}

fn id3(node: &Node) -> u32 {
    let b = bytes(node, "id");
    assert_eq!(b.len(), 3, "3-byte key id");
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

fn jid_attr(node: &Node) -> String {
    node.get_attr("jid")
        .map(|j| j.to_string())
        .unwrap_or_else(|| panic!("no jid on {node:?}"))
}

fn iq(xmlns: &str, ty: &str, children: impl IntoIterator<Item = Node>) -> Node {
    Node::new("iq")
        .attr("xmlns", xmlns.to_owned())
        .attr("type", ty.to_owned())
        .attr("to", "s.whatsapp.net")
        .children(children)
}

fn bundle_fetch<'a>(jids: impl IntoIterator<Item = &'a str>) -> Node {
    iq(
        "encrypt",
        "get",
        [Node::new("key").children(
            jids.into_iter()
                .map(|j| Node::new("user").attr("jid", j.to_owned())),
        )],
    )
}

fn users(reply: &Node) -> Vec<Node> {
    assert_eq!(reply.attr_str("type"), Some("result"), "{reply:?}");
    reply
        .child_by_tag("list")
        .expect("<list>")
        .children_by_tag("user")
        .cloned()
        .collect()
}

fn error_code(reply: &Node) -> Option<&str> {
    (reply.attr_str("type") == Some("error"))
        .then(|| reply.child_by_tag("error")?.attr_str("code"))
        .flatten()
}

/// Logs `identity` in; returns the companion, its JID and the prekeys it uploaded, once
/// the simulator stored them.
async fn log_in(
    sim: &wafleet_sim::Simulator,
    identity: DeviceIdentity,
) -> (Companion, Jid, HashSet<(u32, [u8; 32])>) {
    let mut companion = Companion::connect(sim, identity).await;
    let jid = companion
        .wait_for(|e| match e {
            Event::Ready { jid, .. } => Some(jid.clone()),
            _ => None,
        })
        .await;
    let keys: HashSet<(u32, [u8; 32])> = companion
        .wait_for(|e| match e {
            Event::PreKeysGenerated { keys, .. } => {
                Some(keys.iter().map(|k| (k.id, k.key_pair.public)).collect())
            }
            _ => None,
        })
        .await;
    let key = jid.to_string();
    let n = keys.len();
    eventually(sim, "prekeys stored", |c| {
        c.prekeys_stored.get(&key) == Some(&n)
    })
    .await;
    (companion, jid, keys)
}

#[tokio::test]
async fn uploaded_prekeys_are_served_once_and_usync_lists_the_devices() {
    let sim = simulator_with_phone(ALICE).await;
    sim.add_phone(BOB).expect("second phone");
    let alice_identity = link_by_qr(&sim, ALICE).await;
    let bob_identity = link_by_qr(&sim, BOB).await;
    let (mut alice, alice_jid, uploaded) = log_in(&sim, alice_identity.clone()).await;
    let (mut bob, _, _) = log_in(&sim, bob_identity).await;
    let alice_device = alice_jid.to_string();
    assert!(uploaded.len() > 2, "a first upload has many keys");

    // Bob fetches Alice's companion: her upload, with one of her one-time prekeys.
    let reply = bob.request(bundle_fetch([alice_device.as_str()])).await;
    let [user] = &users(&reply)[..] else {
        panic!("one <user> per requested device: {reply:?}");
    };
    assert_eq!(jid_attr(user), alice_device);
    assert_eq!(
        bytes(user, "registration"),
        alice_identity.registration_id.to_be_bytes()
    );
    assert_eq!(bytes(user, "type"), [5]);
    assert_eq!(bytes(user, "identity"), alice_identity.identity_key.public);
    let skey = user.child_by_tag("skey").expect("<skey>");
    let spk = &alice_identity.signed_pre_key;
    assert_eq!(id3(skey), spk.id);
    assert_eq!(bytes(skey, "value"), spk.key_pair.public);
    assert_eq!(bytes(skey, "signature"), spk.signature.as_slice());
    let mut served = HashSet::new();
    let key = user.child_by_tag("key").expect("a one-time prekey");
    let first = (
        id3(key),
        <[u8; 32]>::try_from(bytes(key, "value")).expect("32 bytes"),
    );
    assert!(uploaded.contains(&first), "served key was uploaded");
    served.insert(first);

    // All but one of the rest in one batch: each distinct, none served before.
    let rest = uploaded.len() - 2;
    let reply = bob
        .request(bundle_fetch(std::iter::repeat_n(
            alice_device.as_str(),
            rest,
        )))
        .await;
    for user in users(&reply) {
        let key = user.child_by_tag("key").expect("prekeys left");
        let pair = (
            id3(key),
            <[u8; 32]>::try_from(bytes(key, "value")).expect("32 bytes"),
        );
        assert!(uploaded.contains(&pair));
        assert!(served.insert(pair), "prekey {} served twice", pair.0);
    }
    assert_eq!(served.len(), uploaded.len() - 1);

    // Alice sees one left; the last is served; then bundles come without <key>.
    let count = alice
        .request(iq("encrypt", "get", [Node::new("count")]))
        .await;
    assert_eq!(
        count
            .child_by_tag("count")
            .and_then(|c| c.attr_str("value")),
        Some("1")
    );
    let reply = bob.request(bundle_fetch([alice_device.as_str()])).await;
    let last = users(&reply);
    let key = last[0].child_by_tag("key").expect("the last prekey");
    assert!(served.insert((id3(key), <[u8; 32]>::try_from(bytes(key, "value")).unwrap())));
    assert_eq!(
        served, uploaded,
        "every uploaded prekey served exactly once"
    );
    let reply = bob.request(bundle_fetch([alice_device.as_str()])).await;
    let empty = users(&reply);
    assert!(
        empty[0].child_by_tag("key").is_none(),
        "no <key> when none left"
    );
    assert!(empty[0].child_by_tag("skey").is_some(), "still a bundle");
    let count = alice
        .request(iq("encrypt", "get", [Node::new("count")]))
        .await;
    assert_eq!(
        count
            .child_by_tag("count")
            .and_then(|c| c.attr_str("value")),
        Some("0")
    );

    // Unknown devices and an unknown user: a 404 per <user>.
    let unknown_device = format!("{ALICE}:42@s.whatsapp.net");
    let unknown_user = "15550000000:1@s.whatsapp.net";
    let primary = format!("{ALICE}@s.whatsapp.net");
    let reply = bob
        .request(bundle_fetch([unknown_device.as_str(), unknown_user]))
        .await;
    let users404 = users(&reply);
    assert_eq!(users404.len(), 2);
    for user in &users404 {
        let error = user.child_by_tag("error").expect("<error>");
        assert_eq!(error.attr_str("code"), Some("404"));
        assert_eq!(error.attr_str("text"), Some("item-not-found"));
        assert!(user.child_by_tag("skey").is_none());
    }
    assert_eq!(jid_attr(&users404[1]), unknown_user);

    // The phone (device 0) has keys of its own: its identity is the account key, and its
    // signed prekey verifies with it.
    let phone = sim.add_phone("15559990000").expect("third phone");
    let reply = bob.request(bundle_fetch([primary.as_str()])).await;
    let [user] = &users(&reply)[..] else {
        panic!("one <user>: {reply:?}");
    };
    assert!(user.child_by_tag("error").is_none(), "{user:?}");
    assert!(user.child_by_tag("key").is_some(), "a one-time prekey");
    let skey = user.child_by_tag("skey").expect("<skey>");
    let identity: [u8; 32] = bytes(user, "identity").try_into().expect("32 bytes");
    let mut signed = vec![5u8];
    signed.extend_from_slice(bytes(skey, "value"));
    assert!(wafleet_protocol::xeddsa::verify(
        &identity,
        &signed,
        bytes(skey, "signature")
    ));
    let reply = bob
        .request(bundle_fetch([phone.jid.to_string().as_str()]))
        .await;
    assert_eq!(bytes(&users(&reply)[0], "identity"), phone.account_public);

    // usync: Alice's account is her phone (0) and her companion; an unknown user has none.
    let usync = iq(
        "usync",
        "get",
        [Node::new("usync")
            .attr("sid", "sync-1")
            .attr("mode", "query")
            .attr("last", "true")
            .attr("index", "0")
            .attr("context", "message")
            .children([
                Node::new("query").children([Node::new("devices").attr("version", "2")]),
                Node::new("list").children([
                    Node::new("user").attr("jid", primary.clone()),
                    Node::new("user").attr("jid", "15550000000@s.whatsapp.net"),
                ]),
            ])],
    );
    let reply = bob.request(usync).await;
    let body = reply.child_by_tag("usync").expect("<usync>");
    assert_eq!(body.attr_str("sid"), Some("sync-1"));
    let listed: Vec<Node> = body
        .child_by_tag("list")
        .expect("<list>")
        .children_by_tag("user")
        .cloned()
        .collect();
    assert_eq!(listed.len(), 2);
    assert_eq!(jid_attr(&listed[0]), primary);
    let devices = |user: &Node| -> Vec<(String, Option<String>)> {
        user.child_by_tag("devices")
            .and_then(|d| d.child_by_tag("device-list"))
            .expect("<devices><device-list>")
            .children_by_tag("device")
            .map(|d| {
                (
                    d.attr_str("id").expect("id").to_owned(),
                    d.attr_str("key-index").map(str::to_owned),
                )
            })
            .collect()
    };
    let alice_dev = alice_jid.device.expect("companion device id").to_string();
    assert_eq!(
        devices(&listed[0]),
        vec![("0".to_owned(), None), (alice_dev.clone(), Some(alice_dev))]
    );
    assert!(devices(&listed[1]).is_empty());

    // Malformed requests get an iq error, and the socket keeps working.
    let no_jid = iq(
        "encrypt",
        "get",
        [Node::new("key").children([Node::new("user")])],
    );
    assert_eq!(error_code(&bob.request(no_jid).await), Some("400"));
    let bad_jid = bundle_fetch(["not a jid"]);
    assert_eq!(error_code(&bob.request(bad_jid).await), Some("400"));
    let empty_key = iq("encrypt", "get", [Node::new("key")]);
    assert_eq!(error_code(&bob.request(empty_key).await), Some("400"));
    let no_list = iq("usync", "get", [Node::new("usync")]);
    assert_eq!(error_code(&bob.request(no_list).await), Some("400"));
    let bare = iq("usync", "get", []);
    assert_eq!(error_code(&bob.request(bare).await), Some("400"));
    let reply = bob.request(bundle_fetch([alice_device.as_str()])).await;
    assert_eq!(
        users(&reply).len(),
        1,
        "socket still served after bad requests"
    );
    sim.shutdown().await;
}
