//! The messenger's inbound parsers and its whole inbound path on arbitrary input, by the
//! first byte's mode:
//! 0. bytes decoded as a node, then read by every parser of `wafleet-messaging`
//!    (`<message>` stanza and addressing, `<receipt>`, usync and bundle results, group
//!    metadata, a retry receipt's `<keys>`) and handed to `Messenger::handle_node`;
//! 1. a `<message>` from a peer with an established session, the fuzzer choosing the enc
//!    type, version, sender attributes and the ciphertext bytes;
//! 2. a genuine `msg` from that peer with fuzzer-chosen byte edits.
//!
//! Nothing may panic; every `<message>` gets a `Message` or `Undecryptable` event (or, for
//! a sender-key-only one, an ack); an unedited genuine `msg` decrypts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::OnceLock;
use wafleet_messaging::{group, receipt, stanza, usync, Keys, Messenger, MessengerEvent, SignalState};
use wafleet_protocol::binary::{self, Node};
use wafleet_protocol::client::{prekeys, DeviceIdentity, PreKey};
use wafleet_protocol::jid::Jid;
use wafleet_signal::keys::{IdentityKeyPair, KeyPair, PublicKey};
use wafleet_signal::{
    encrypt, padding, process_prekey_bundle, InMemoryIdentityStore, PreKeyBundle, ProtocolAddress,
    SessionRecord,
};

struct Fixture {
    identity: DeviceIdentity,
    pre_keys: Vec<PreKey>,
    state: SignalState,
    genuine_msg: Vec<u8>,
}

const PEER: &str = "222:1@s.whatsapp.net";
const ME: &str = "111:1@s.whatsapp.net";

fn message(from: &str, enc_type: &str, v: &str, bytes: Vec<u8>) -> Node {
    Node::new("message")
        .attr("from", from.parse::<Jid>().unwrap())
        .attr("id", "FUZZ1")
        .attr("t", "1700000000")
        .attr("type", "text")
        .children([Node::new("enc").attr("v", v.to_owned()).attr("type", enc_type.to_owned()).bytes(bytes)])
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut identity = DeviceIdentity::generate(&mut rng);
        identity.jid = Some(ME.into());
        let (mut pre_keys, _) = prekeys::generate(1, 5, &mut rng);
        let mut state = SignalState::default();
        // The peer starts a session with our bundle and sends two messages.
        let peer = InMemoryIdentityStore::new(IdentityKeyPair::generate(&mut rng), 77);
        let spk = &identity.signed_pre_key;
        let bundle = PreKeyBundle {
            registration_id: identity.registration_id,
            identity_key: PublicKey(identity.identity_key.public),
            signed_pre_key_id: spk.id,
            signed_pre_key: PublicKey(spk.key_pair.public),
            signed_pre_key_signature: spk.signature.clone(),
            pre_key: Some((pre_keys[0].id, PublicKey(pre_keys[0].key_pair.public))),
        };
        let me = ProtocolAddress::new("111", 1);
        let setup = process_prekey_bundle(&SessionRecord::new(), &me, &peer, &bundle, &mut rng).unwrap();
        let body = wafleet_protocol::message::encode_text("hello", None);
        let (record, first) = encrypt(&setup.record, &me, &peer, &padding::pad(&body, &mut rng)).unwrap();
        let mut m = Messenger::new(ME.parse().unwrap(), None);
        let mut keys = Keys { identity: &identity, pre_keys: &mut pre_keys, signal: &mut state };
        m.handle_node(message(PEER, "pkmsg", "2", first.serialize().to_vec()), &mut keys, 0, &mut rng);
        assert!(matches!(m.poll_event(), Some(MessengerEvent::StateChanged)));
        assert!(matches!(m.poll_event(), Some(MessengerEvent::Message(_))));
        let (_, second) = encrypt(&record, &me, &peer, &padding::pad(&body, &mut rng)).unwrap();
        let _ = KeyPair::generate(&mut rng);
        Fixture { identity, pre_keys, state, genuine_msg: second.serialize().to_vec() }
    })
}

fn run(node: Node, expect_event: bool) -> Vec<MessengerEvent> {
    let f = fixture();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut pre_keys = f.pre_keys.clone();
    let mut state = f.state.clone();
    let mut m = Messenger::new(ME.parse().unwrap(), None);
    let mut keys = Keys { identity: &f.identity, pre_keys: &mut pre_keys, signal: &mut state };
    let is_message = node.tag == "message" && node.attr_str("id").is_some_and(|s| !s.is_empty());
    let _ = m.handle_node(node, &mut keys, 1_700_000_000_000, &mut rng);
    let mut events = Vec::new();
    while let Some(e) = m.poll_event() {
        events.push(e);
    }
    let mut transmits = 0;
    while m.poll_transmit().is_some() {
        transmits += 1;
    }
    if expect_event && is_message {
        // Every message is reported, or (a sender-key-only one) acked at once.
        let reported = events
            .iter()
            .any(|e| matches!(e, MessengerEvent::Message(_) | MessengerEvent::Undecryptable(_)));
        assert!(reported || transmits > 0, "{events:?}");
    }
    events
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let Ok(node) = binary::decode_unpacked(rest) else {
                return;
            };
            let own = stanza::Own { jid: ME.parse().unwrap(), lid: None };
            if let Ok(s) = stanza::MessageStanza::parse(&node) {
                let _ = stanza::addressing(&s, &own);
            }
            let _ = receipt::parse_receipt(&node);
            let _ = usync::parse_devices(&node);
            let _ = usync::parse_bundles(&node);
            let _ = usync::parse_bundle(&node, &node);
            let _ = group::parse_participants(&node);
            run(node, false);
        }
        1 => {
            let Some((&sel, bytes)) = rest.split_first() else {
                return;
            };
            let enc_type = ["pkmsg", "msg", "skmsg", "msmsg"][usize::from(sel & 3)];
            let v = if sel & 4 == 0 { "2" } else { "3" };
            let from = if sel & 8 == 0 { PEER } else { "123-456@g.us" };
            let mut node = message(from, enc_type, v, bytes.to_vec());
            if sel & 16 != 0 {
                node = node.attr("participant", PEER.parse::<Jid>().unwrap());
            }
            if sel & 32 != 0 {
                node = node.attr("recipient", "333@s.whatsapp.net".parse::<Jid>().unwrap());
            }
            run(node, true);
        }
        _ => {
            let f = fixture();
            let mut msg = f.genuine_msg.clone();
            let edited = !rest.is_empty();
            for pair in rest.chunks(2) {
                if let [pos, val] = pair {
                    if !msg.is_empty() {
                        let i = usize::from(*pos) % msg.len();
                        msg[i] ^= val;
                    }
                } else if let [cut] = pair {
                    msg.truncate(usize::from(*cut));
                }
            }
            let events = run(message(PEER, "msg", "2", msg.clone()), true);
            if !edited || msg == f.genuine_msg {
                assert!(events.iter().any(|e| matches!(e, MessengerEvent::Message(_))), "{events:?}");
            }
        }
    }
});
