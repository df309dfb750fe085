//! Property tests: canonical trees round-trip through the wire and the JSON form; decoding
//! arbitrary or corrupted bytes never panics.

use proptest::prelude::*;
use wafleet_protocol::binary::{decode, encode, json, token, AttrValue, Content, Node};
use wafleet_protocol::jid::{Jid, Server};

fn token_string() -> impl Strategy<Value = String> {
    prop_oneof![
        (1usize..token::SINGLE_BYTE.len()).prop_map(|i| token::SINGLE_BYTE[i].to_owned()),
        (0usize..4, 0usize..256).prop_map(|(d, i)| token::DOUBLE_BYTE[d][i].to_owned()),
    ]
}

/// Any string: tokens, packable strings (including too long to pack) and arbitrary text.
fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        token_string(),
        "[0-9.-]{0,130}",
        "[0-9A-F]{0,130}",
        "[0-9a-f]{0,20}",
        "\\PC{0,40}",
    ]
}

/// Strings that are written as tokens or packed, so decode back as strings in content.
fn canonical_content_string() -> impl Strategy<Value = String> {
    prop_oneof![token_string(), "[0-9.-]{1,127}", "[0-9A-F]{1,127}"]
}

fn user() -> impl Strategy<Value = String> {
    "[0-9a-z]{0,16}"
}

fn other_server() -> impl Strategy<Value = Server> {
    "[a-z]{1,6}\\.test".prop_map(Server::Other)
}

fn pair_server() -> impl Strategy<Value = Server> {
    prop_oneof![
        Just(Server::WhatsApp),
        Just(Server::Lid),
        Just(Server::Group),
        Just(Server::Broadcast),
        Just(Server::Newsletter),
        Just(Server::LegacyUser),
        Just(Server::Hosted),
        Just(Server::HostedLid),
        Just(Server::Messenger),
        Just(Server::Interop),
        Just(Server::Bot),
        other_server(),
    ]
}

fn ad_server() -> impl Strategy<Value = Server> {
    prop_oneof![
        Just(Server::WhatsApp),
        Just(Server::Lid),
        Just(Server::Hosted),
        Just(Server::HostedLid),
    ]
}

/// JIDs with a wire form, one strategy per wire tag.
fn jid() -> impl Strategy<Value = Jid> {
    prop_oneof![
        (user(), pair_server()).prop_map(|(u, s)| Jid::new(u, s)),
        (user(), ad_server(), 0u16..=255).prop_map(|(u, s, d)| Jid::new(u, s).with_device(d)),
        (user(), 2u8..=127, 0u16..=255)
            .prop_map(|(u, a, d)| Jid::new(u, Server::WhatsApp).with_agent(a).with_device(d)),
        (
            user(),
            prop_oneof![Just(Server::Messenger), Just(Server::Group), other_server()],
            any::<u16>()
        )
            .prop_map(|(u, s, d)| Jid::new(u, s).with_device(d)),
        (user(), any::<u16>(), any::<u16>()).prop_map(|(u, d, i)| Jid::new(u, Server::Interop)
            .with_device(d)
            .with_integrator(i)),
    ]
}

fn attr_value() -> impl Strategy<Value = AttrValue> {
    prop_oneof![
        3 => any_string().prop_map(|s| AttrValue::Str(s.into())),
        1 => jid().prop_map(AttrValue::Jid),
    ]
}

fn leaf_content() -> impl Strategy<Value = Content> {
    prop_oneof![
        Just(Content::None),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Content::Bytes),
        canonical_content_string().prop_map(|s| Content::Str(s.into())),
        jid().prop_map(Content::Jid),
    ]
}

fn node_with(content: impl Strategy<Value = Content>) -> impl Strategy<Value = Node> {
    (
        any_string().prop_filter("tags are non-empty", |s| !s.is_empty()),
        prop::collection::vec((any_string(), attr_value()), 0..6),
        content,
    )
        .prop_map(|(tag, attrs, content)| Node {
            tag: tag.into(),
            attrs: attrs
                .into_iter()
                .map(|(k, v): (String, AttrValue)| (k.into(), v))
                .collect(),
            content,
        })
}

/// Trees that are canonical on the wire: encode → decode gives them back unchanged.
fn canonical_node() -> impl Strategy<Value = Node> {
    node_with(leaf_content()).prop_recursive(4, 48, 6, |inner| {
        node_with(prop_oneof![
            leaf_content(),
            prop::collection::vec(inner, 0..6).prop_map(Content::Nodes),
        ])
    })
}

/// Whether the JSON form reads `node` back as itself: no duplicate attribute keys (a JSON
/// object keeps one) and no plain string attribute that the JSON reader would take for a JID.
fn json_safe(node: &Node) -> bool {
    let keys: std::collections::HashSet<_> = node.attrs.iter().map(|(k, _)| k).collect();
    keys.len() == node.attrs.len()
        && node.attrs.iter().all(|(_, v)| match v {
            AttrValue::Str(s) => !s.contains('@'),
            AttrValue::Jid(_) => true,
        })
        && node.child_nodes().iter().all(json_safe)
}

proptest! {
    #[test]
    fn canonical_trees_round_trip(node in canonical_node()) {
        let bytes = encode(&node).unwrap();
        prop_assert_eq!(bytes[0], 0);
        prop_assert_eq!(decode(&bytes).unwrap(), node);
    }

    #[test]
    fn json_form_round_trips(node in canonical_node()) {
        prop_assume!(json_safe(&node));
        let text = json::to_string(&node);
        prop_assert_eq!(json::from_str(&text).unwrap(), node);
    }

    #[test]
    fn jid_strings_round_trip(jid in jid()) {
        prop_assert_eq!(Jid::parse(&jid.to_string()).unwrap(), jid);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
        let mut flagged = vec![0u8, 0xf8];
        flagged.extend_from_slice(&bytes);
        if let Ok(node) = decode(&flagged) {
            let _ = json::to_string(&node);
            let _ = encode(&node);
        }
    }

    #[test]
    fn decoding_corrupted_encodings_never_panics(
        node in canonical_node(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode(&node).unwrap();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(node) = decode(&bytes) {
            let _ = json::to_string(&node);
            let _ = encode(&node);
        }
        let _ = decode(&bytes[..cut.index(bytes.len())]);
    }
}
