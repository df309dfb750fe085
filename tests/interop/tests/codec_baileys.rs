//! The node codec against Baileys 7.0.0-rc14's `encodeBinaryNode` / `decodeBinaryNode`:
//! 1,000 random nodes encoded by wafleet decode to the same tree in Baileys, and 1,000 random
//! nodes encoded by Baileys decode to the same tree in wafleet (and re-encode to the same
//! bytes). Trees are compared in the JSON form both sides share.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};
use serde_json::json;
use wafleet_interop::{first_diff, unhex, Peer};
use wafleet_protocol::binary::{self, json as node_json, token, AttrValue, Content, Node};
use wafleet_protocol::jid::Jid;

const N: usize = 1000;

fn single_token() -> impl Strategy<Value = String> {
    (1usize..token::SINGLE_BYTE.len()).prop_map(|i| token::SINGLE_BYTE[i].to_string())
}

fn double_token() -> impl Strategy<Value = String> {
    (0usize..4, 0usize..256).prop_map(|(d, i)| token::DOUBLE_BYTE[d][i].to_string())
}

fn nibble() -> impl Strategy<Value = String> {
    "[0-9.-]{1,127}"
}

fn upper_hex() -> impl Strategy<Value = String> {
    "[0-9A-F]{1,127}"
}

/// Raw strings: any Unicode without `@` (Baileys turns `@` strings into JIDs), sometimes long
/// enough for BINARY_20.
fn raw() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[^@]{0,40}",
        1 => "[a-z ]{256,400}",
    ]
}

/// JIDs in the forms both libraries read back unchanged (Baileys formats an AD_JID with
/// device 0 without the `:0`, so devices here start at 1).
fn jid() -> impl Strategy<Value = Jid> {
    let digits = |lo: usize, hi: usize| {
        proptest::string::string_regex(&format!("[1-9][0-9]{{{lo},{hi}}}")).expect("regex")
    };
    prop_oneof![
        digits(5, 14).prop_map(|u| format!("{u}@s.whatsapp.net")),
        (digits(5, 14), 1u16..100).prop_map(|(u, d)| format!("{u}:{d}@s.whatsapp.net")),
        (digits(14, 14), 1u16..100).prop_map(|(u, d)| format!("{u}:{d}@lid")),
        digits(14, 14).prop_map(|u| format!("{u}@lid")),
        (digits(11, 11), 1u16..50).prop_map(|(u, d)| format!("{u}:{d}@hosted")),
        (digits(11, 11), 1u16..50).prop_map(|(u, d)| format!("{u}:{d}@hosted.lid")),
        digits(17, 17).prop_map(|u| format!("{u}@g.us")),
        Just("status@broadcast".to_string()),
        Just("@s.whatsapp.net".to_string()),
        digits(9, 12).prop_map(|u| format!("{u}@newsletter")),
        digits(9, 12).prop_map(|u| format!("{u}@c.us")),
        digits(9, 12).prop_map(|u| format!("{u}@bot")),
    ]
    .prop_map(|s| Jid::parse(&s).expect("generated JID parses"))
}

fn attr_value() -> impl Strategy<Value = AttrValue> {
    prop_oneof![
        single_token().prop_map(|s| AttrValue::Str(s.into())),
        double_token().prop_map(|s| AttrValue::Str(s.into())),
        nibble().prop_map(|s| AttrValue::Str(s.into())),
        upper_hex().prop_map(|s| AttrValue::Str(s.into())),
        raw().prop_map(|s| AttrValue::Str(s.into())),
        jid().prop_map(AttrValue::Jid),
    ]
}

fn tag() -> impl Strategy<Value = String> {
    prop_oneof![6 => single_token(), 2 => double_token(), 1 => "[a-z_]{1,20}"]
}

/// Attribute keys. A JS object lists integer-like keys ("300" is a token) before all others,
/// so Baileys would reorder them; the wire and wafleet keep insertion order. Leave them out.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![4 => single_token(), 1 => "k[0-9]{3}"].prop_filter("integer-like key", |k| {
        !k.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Leaf content: nothing, bytes (sizes around the BINARY_8/20 boundary), or a string that is
/// canonical on the wire (token, packable, JID).
fn leaf_content() -> impl Strategy<Value = Content> {
    prop_oneof![
        Just(Content::None),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Content::Bytes),
        single_token().prop_map(|s| Content::Str(s.into())),
        nibble().prop_map(|s| Content::Str(s.into())),
        upper_hex().prop_map(|s| Content::Str(s.into())),
        jid().prop_map(Content::Jid),
        Just(Content::Nodes(Vec::new())),
    ]
}

fn leaf() -> impl Strategy<Value = Node> {
    (
        tag(),
        prop::collection::vec((key(), attr_value()), 0..5),
        leaf_content(),
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

fn parent(children: impl Strategy<Value = Vec<Node>>) -> impl Strategy<Value = Node> {
    (
        tag(),
        prop::collection::vec((key(), attr_value()), 0..5),
        children,
    )
        .prop_map(|(tag, attrs, children)| Node {
            tag: tag.into(),
            attrs: attrs
                .into_iter()
                .map(|(k, v): (String, AttrValue)| (k.into(), v))
                .collect(),
            content: Content::Nodes(children),
        })
}

/// Trees up to 4 deep, and now and then a root with 256+ leaf children (LIST_16).
fn node() -> impl Strategy<Value = Node> {
    let deep = leaf().prop_recursive(4, 64, 5, |inner| parent(prop::collection::vec(inner, 1..5)));
    prop_oneof![
        20 => deep,
        1 => parent(prop::collection::vec(leaf(), 256..300)),
    ]
}

/// Baileys keeps the last value of a repeated attribute key in the first key's position
/// (a JS object); the wire keeps both. Random keys can repeat, so drop repeats up front.
fn dedup_attrs(mut n: Node) -> Node {
    let mut seen = std::collections::HashSet::new();
    n.attrs.retain(|(k, _)| seen.insert(k.clone()));
    if let Content::Nodes(children) = n.content {
        n.content = Content::Nodes(children.into_iter().map(dedup_attrs).collect());
    }
    n
}

#[test]
fn wafleet_encoded_nodes_decode_identically_in_baileys() {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let strategy = node();
    let nodes: Vec<Node> = (0..N)
        .map(|_| dedup_attrs(strategy.new_tree(&mut runner).expect("tree").current()))
        .collect();
    let hexes: Vec<String> = nodes
        .iter()
        .map(|n| hex::encode(binary::encode(n).expect("wafleet encodes")))
        .collect();

    let mut peer = Peer::start();
    let reply = peer.call(json!({"op": "decode_many", "hex": hexes}));
    let decoded = reply["nodes"].as_array().expect("nodes");
    assert_eq!(decoded.len(), N);
    let mut wide = 0;
    for (i, (node, theirs)) in nodes.iter().zip(decoded).enumerate() {
        assert!(
            theirs.get("error").is_none(),
            "Baileys failed on node {i}: {theirs}"
        );
        let ours = node_json::to_value(node);
        if let Some(d) = first_diff(&ours, theirs) {
            panic!("node {i} decodes differently in Baileys (ours != theirs): {d}");
        }
        if node.child_nodes().len() >= 256 {
            wide += 1;
        }
    }
    assert!(wide > 0, "no node exercised LIST_16");
}

#[test]
fn baileys_encoded_nodes_decode_identically_in_wafleet() {
    let mut peer = Peer::start();
    let reply = peer.call(json!({"op": "random_nodes", "seed": 20261123u64, "count": N}));
    let nodes = reply["nodes"].as_array().expect("nodes");
    let hexes = reply["hex"].as_array().expect("hex");
    assert_eq!(nodes.len(), N);
    let mut byte_identical = 0;
    for (i, (theirs, h)) in nodes.iter().zip(hexes).enumerate() {
        let bytes = unhex(h);
        let decoded = binary::decode(&bytes).unwrap_or_else(|e| panic!("node {i}: {e}"));
        if let Some(d) = first_diff(&node_json::to_value(&decoded), theirs) {
            panic!("Baileys node {i} decodes differently in wafleet (ours != theirs): {d}");
        }
        // The same tree, built from the JSON form, encodes to Baileys' exact bytes.
        let rebuilt: Node = node_json::from_value(theirs).expect("JSON form parses");
        let ours = binary::encode(&rebuilt).expect("encodes");
        assert_eq!(
            hex::encode(&ours),
            h.as_str().expect("hex"),
            "node {i} bytes differ"
        );
        byte_identical += 1;
    }
    assert_eq!(byte_identical, N);
}

#[test]
fn token_tables_match_baileys() {
    let mut peer = Peer::start();
    let reply = peer.call(json!({"op": "tokens"}));
    let single: Vec<String> = serde_json::from_value(reply["single"].clone()).expect("single");
    let double: Vec<Vec<String>> = serde_json::from_value(reply["double"].clone()).expect("double");
    assert_eq!(single.len(), token::SINGLE_BYTE.len());
    for (i, t) in single.iter().enumerate() {
        assert_eq!(t, token::SINGLE_BYTE[i], "single-byte token {i}");
    }
    assert_eq!(double.len(), 4);
    for (d, dict) in double.iter().enumerate() {
        assert_eq!(dict.len(), 256, "dictionary {d}");
        for (i, t) in dict.iter().enumerate() {
            assert_eq!(t, token::DOUBLE_BYTE[d][i], "double-byte token {d}/{i}");
        }
    }
}
