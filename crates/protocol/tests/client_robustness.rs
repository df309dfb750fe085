//! Arbitrary server nodes never panic the session, in any phase.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use wafleet_protocol::binary::{AttrValue, Content, Node};
use wafleet_protocol::client::{DeviceIdentity, Session, SessionConfig};
use wafleet_protocol::jid::{Jid, Server};

const TAGS: &[&str] = &[
    "iq",
    "success",
    "failure",
    "stream:error",
    "notification",
    "message",
    "receipt",
    "call",
    "pair-device",
    "pair-success",
    "ref",
    "device-identity",
    "device",
    "platform",
    "biz",
    "count",
    "conflict",
    "link_code_companion_reg",
    "link_code_pairing_ref",
    "primary_identity_pub",
    "link_code_pairing_wrapped_primary_ephemeral_pub",
    "ping",
    "error",
    "xmlstreamend",
];
const KEYS: &[&str] = &[
    "id",
    "type",
    "from",
    "to",
    "code",
    "reason",
    "value",
    "stage",
    "xmlns",
    "jid",
    "lid",
    "name",
    "participant",
    "t",
];
const VALUES: &[&str] = &[
    "set",
    "result",
    "error",
    "get",
    "515",
    "401",
    "405",
    "503",
    "replaced",
    "device_removed",
    "primary_hello",
    "link_code_companion_reg",
    "0",
    "-1",
    "99999999999",
    "urn:xmpp:ping",
    "",
    "1-1",
    "x",
];

fn attr_value() -> impl Strategy<Value = AttrValue> {
    prop_oneof![
        prop::sample::select(VALUES).prop_map(AttrValue::from),
        Just(AttrValue::Jid(Jid::new("", Server::WhatsApp))),
        Just(AttrValue::Jid(
            Jid::new("15551234567", Server::WhatsApp).with_device(3)
        )),
        Just(AttrValue::Jid(Jid::new("1", Server::Lid))),
    ]
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = (
        prop::sample::select(TAGS),
        prop::collection::vec((prop::sample::select(KEYS), attr_value()), 0..5),
        prop_oneof![
            Just(Content::None),
            prop::collection::vec(any::<u8>(), 0..100).prop_map(Content::Bytes),
            prop::sample::select(VALUES).prop_map(|v| Content::Str(v.into())),
        ],
    )
        .prop_map(|(tag, attrs, content)| Node {
            tag: tag.into(),
            attrs: attrs.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            content,
        });
    leaf.prop_recursive(3, 24, 4, |inner| {
        (
            prop::sample::select(TAGS),
            prop::collection::vec((prop::sample::select(KEYS), attr_value()), 0..5),
            prop::collection::vec(inner, 0..4),
        )
            .prop_map(|(tag, attrs, children)| Node {
                tag: tag.into(),
                attrs: attrs.into_iter().map(|(k, v)| (k.into(), v)).collect(),
                content: Content::Nodes(children),
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_nodes_never_panic(nodes in prop::collection::vec(node(), 1..12), paired in any::<bool>(), seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut identity = DeviceIdentity::generate(&mut rng);
        if paired {
            identity.jid = Some("15551234567:3@s.whatsapp.net".into());
        }
        let mut s = Session::new(identity, SessionConfig::default(), &mut rng);
        let mut now = 1_700_000_000_000u64;
        for n in nodes {
            s.handle_node(n, now, &mut rng);
            now += 7_000;
            s.handle_timeout(now, &mut rng);
            while s.poll_event().is_some() {}
            while let Some(tx) = s.poll_transmit() {
                wafleet_protocol::binary::encode(&tx).unwrap();
            }
            let _ = s.confirm_pre_keys_persisted();
        }
    }
}
