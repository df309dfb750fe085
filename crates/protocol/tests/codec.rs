//! Binary node codec: Baileys vectors byte-for-byte, packing edge cases, JID wire forms,
//! zlib, and malformed input.

use std::io::Write;

use wafleet_protocol::binary::{
    decode, decode_unpacked, decode_with, encode, encode_into, json, token, Content, DecodeError,
    DecodeLimits, EncodeError, Node, DEFAULT_MAX_DEPTH,
};
use wafleet_protocol::jid::{Jid, Server};

fn vectors() -> Vec<(String, serde_json::Value, String)> {
    let text = include_str!("data/baileys-vectors.json");
    let all: serde_json::Value = serde_json::from_str(text).unwrap();
    let nodes = all["binary_nodes"].as_object().unwrap();
    assert!(nodes.len() >= 11, "vectors file lost its binary_nodes");
    nodes
        .iter()
        .map(|(name, v)| {
            (
                name.clone(),
                v["node"].clone(),
                v["hex"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn baileys_vectors_encode_byte_for_byte() {
    for (name, node_json, hex) in vectors() {
        let node = json::from_value(&node_json).unwrap_or_else(|e| panic!("{name}: {e}"));
        let bytes = encode(&node).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(hex::encode(bytes), hex, "{name}");
    }
}

#[test]
fn baileys_vectors_decode_tree_for_tree() {
    for (name, node_json, hex) in vectors() {
        let node = decode(&hex::decode(&hex).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ours = json::to_value(&node);
        assert_eq!(ours, node_json, "{name}");
        // Value equality ignores key order; the text comparison checks it too.
        assert_eq!(json::to_string(&node), node_json.to_string(), "{name}");
    }
}

#[test]
fn ping_vector_tree_shape() {
    let bytes = hex::decode("00f80a1908ff861234b5678a1f11fa000304291657f801f80156").unwrap();
    let node = decode(&bytes).unwrap();
    assert_eq!(node.tag, "iq");
    assert_eq!(node.attr_str("id"), Some("1234.5678-1"));
    assert_eq!(
        node.attr_jid("to"),
        Some(&Jid::new("", Server::WhatsApp)),
        "@s.whatsapp.net decodes as a JID"
    );
    assert_eq!(
        node.child_by_tag("ping").map(|n| n.tag.as_ref()),
        Some("ping")
    );
    assert!(node.child_by_tag("pong").is_none());
}

/// Encodes `s` as the string content of `<x>` and returns just the string's bytes.
fn string_bytes(s: &str) -> Vec<u8> {
    let full = encode(&Node::new("x").text(s.to_owned())).unwrap();
    let prefix = [0x00, 0xf8, 0x02, 0xfc, 0x01, b'x'];
    assert_eq!(full[..6], prefix);
    full[6..].to_vec()
}

/// Encodes then decodes `node`, asserting the round trip.
fn round_trip(node: &Node) -> Vec<u8> {
    let bytes = encode(node).unwrap();
    assert_eq!(&decode(&bytes).unwrap(), node);
    bytes
}

#[test]
fn tokens_are_used_first() {
    assert_eq!(token::SINGLE_BYTE[3], "s.whatsapp.net");
    assert_eq!(string_bytes("s.whatsapp.net"), [3]);
    assert_eq!(string_bytes("read-self"), [0xec, 0x00]);
    // "7" is a token even though it is packable.
    assert!(token::lookup("7").is_some());
    assert_eq!(string_bytes("7").len(), 1);
    assert_eq!(token::lookup(""), None);
}

#[test]
fn every_token_round_trips_through_lookup() {
    for (i, t) in token::SINGLE_BYTE.iter().enumerate().skip(1) {
        assert_eq!(token::lookup(t), Some(token::Token::Single(i as u8)), "{t}");
        assert_eq!(token::single(i as u8), Some(*t));
    }
    for (d, dict) in token::DOUBLE_BYTE.iter().enumerate() {
        for (i, t) in dict.iter().enumerate() {
            let want = token::Token::Double {
                dict: d as u8,
                index: i as u8,
            };
            assert_eq!(token::lookup(t), Some(want), "{t}");
            assert_eq!(token::double(d as u8, i as u8), Some(*t));
        }
    }
    assert_eq!(token::single(0), None);
    assert_eq!(token::single(236), None);
    assert_eq!(token::double(4, 0), None);
    assert_eq!(token::lookup("definitely not a token"), None);
}

#[test]
fn nibble_packing_odd_and_even() {
    assert_eq!(string_bytes("123"), [0xff, 0x82, 0x12, 0x3f]);
    assert_eq!(string_bytes("1234"), [0xff, 0x02, 0x12, 0x34]);
    assert_eq!(string_bytes("1.-9"), [0xff, 0x02, 0x1b, 0xa9]);
    round_trip(&Node::new("x").text("1.-9"));
    round_trip(&Node::new("x").text("123"));
}

#[test]
fn packing_stops_at_127_chars() {
    let s127 = "1".repeat(127);
    let b = string_bytes(&s127);
    assert_eq!(b[..2], [0xff, 64 | 0x80]);
    assert_eq!(b.len(), 2 + 64);
    assert_eq!(*b.last().unwrap(), 0x1f);
    round_trip(&Node::new("x").text(s127));

    let s128 = "1".repeat(128);
    let b = string_bytes(&s128);
    assert_eq!(b[..2], [0xfc, 128]);
    assert_eq!(b[2..], *s128.as_bytes());

    let h127 = "A".repeat(127);
    assert_eq!(string_bytes(&h127)[..2], [0xfb, 0xc0]);
    assert_eq!(string_bytes(&"A".repeat(128))[..2], [0xfc, 128]);
}

#[test]
fn hex_packing_is_uppercase_only() {
    assert_eq!(string_bytes("ABCDEF"), [0xfb, 0x03, 0xab, 0xcd, 0xef]);
    assert_eq!(string_bytes("3EB0A"), [0xfb, 0x83, 0x3e, 0xb0, 0xaf]);
    let lower = string_bytes("3eb0abcdef");
    assert_eq!(lower[..2], [0xfc, 10]);
    assert_eq!(lower[2..], *b"3eb0abcdef");
    // Mixed digits-and-dots beat hex; a dot with hex letters is raw.
    assert_eq!(string_bytes("1.A")[0], 0xfc);
    round_trip(&Node::new("x").text("3EB0A"));
}

#[test]
fn empty_string_is_raw() {
    assert_eq!(string_bytes(""), [0xfc, 0x00]);
    let node = Node::new("x").attr("a", "");
    assert_eq!(
        round_trip(&node),
        hex::decode("00f803fc0178fc0161fc00").unwrap()
    );
    // As content it decodes as (empty) bytes: raw strings are bytes in content position.
    let decoded = decode(&encode(&Node::new("x").text("")).unwrap()).unwrap();
    assert_eq!(decoded.content, Content::Bytes(vec![]));
}

#[test]
fn raw_string_content_decodes_as_bytes() {
    let decoded = decode(&encode(&Node::new("x").text("hello world")).unwrap()).unwrap();
    assert_eq!(decoded.content, Content::Bytes(b"hello world".to_vec()));
}

#[test]
fn binary_length_boundaries() {
    let cases: [(usize, &[u8]); 6] = [
        (0, &[0xfc, 0x00]),
        (255, &[0xfc, 0xff]),
        (256, &[0xfd, 0x00, 0x01, 0x00]),
        ((1 << 20) - 1, &[0xfd, 0x0f, 0xff, 0xff]),
        (1 << 20, &[0xfe, 0x00, 0x10, 0x00, 0x00]),
        ((1 << 20) + 1, &[0xfe, 0x00, 0x10, 0x00, 0x01]),
    ];
    for (len, header) in cases {
        let node = Node::new("x").bytes(vec![0xab; len]);
        let bytes = round_trip(&node);
        assert_eq!(&bytes[6..6 + header.len()], header, "len {len}");
        assert_eq!(bytes.len(), 6 + header.len() + len, "len {len}");
    }
}

#[test]
fn long_raw_attribute_strings_round_trip() {
    for len in [255, 256, (1 << 20) - 1, 1 << 20] {
        let node = Node::new("x").attr("a", "z".repeat(len));
        round_trip(&node);
    }
}

#[test]
fn list_sizes() {
    // Empty child list: LIST_EMPTY, distinct from no content.
    let empty = round_trip(&Node::new("x").children([]));
    assert_eq!(empty, [0x00, 0xf8, 0x02, 0xfc, 0x01, b'x', 0x00]);
    for (count, header) in [
        (255usize, vec![0xf8, 0xff]),
        (256, vec![0xf9, 0x01, 0x00]),
        (300, vec![0xf9, 0x01, 0x2c]),
        (65535, vec![0xf9, 0xff, 0xff]),
    ] {
        let node = Node::new("x").children(vec![Node::new("ping"); count]);
        let bytes = round_trip(&node);
        assert_eq!(bytes[6..6 + header.len()], header[..], "{count} children");
    }
    // 128 attributes: list size 257 needs LIST_16.
    let mut node = Node::new("x");
    for i in 0..128 {
        node = node.attr(format!("k{i}"), "v");
    }
    assert_eq!(round_trip(&node)[1..4], [0xf9, 0x01, 0x01]);
}

#[test]
fn too_many_children_or_attributes() {
    let node = Node::new("x").children(vec![Node::new("ping"); 65536]);
    assert!(matches!(
        encode(&node),
        Err(EncodeError::TooManyChildren { count: 65536, .. })
    ));
    let mut node = Node::new("x");
    node.attrs = vec![("k".into(), "v".into()); 32767];
    assert_eq!(encode(&node).unwrap()[1..4], [0xf9, 0xff, 0xff]);
    node.content = Content::Str("1".into());
    assert!(matches!(
        encode(&node),
        Err(EncodeError::TooManyAttributes { count: 32767, .. })
    ));
}

#[test]
fn empty_tag_is_an_error_both_ways() {
    assert_eq!(encode(&Node::new("")), Err(EncodeError::EmptyTag));
    // f8 01 fc 00: a node whose tag is "".
    assert!(matches!(
        decode(&[0x00, 0xf8, 0x01, 0xfc, 0x00]),
        Err(DecodeError::EmptyTag { offset: 2 })
    ));
    assert!(matches!(
        decode(&[0x00, 0xf8, 0x01, 0x00]),
        Err(DecodeError::EmptyTag { .. })
    ));
}

#[test]
fn encode_into_appends_and_restores_on_error() {
    let mut buf = vec![0xaa];
    encode_into(&Node::new("iq"), &mut buf).unwrap();
    assert_eq!(buf, [0xaa, 0x00, 0xf8, 0x01, 0x19]);
    let bad = Node::new("iq").children([Node::new("")]);
    assert_eq!(encode_into(&bad, &mut buf), Err(EncodeError::EmptyTag));
    assert_eq!(buf, [0xaa, 0x00, 0xf8, 0x01, 0x19]);
}

fn jid_attr_bytes(jid: &Jid) -> Vec<u8> {
    let node = Node::new("x").attr("a", jid.clone());
    let bytes = round_trip(&node);
    assert_eq!(
        bytes[..9],
        [0x00, 0xf8, 0x03, 0xfc, 0x01, b'x', 0xfc, 0x01, b'a']
    );
    bytes[9..].to_vec()
}

fn jid(s: &str) -> Jid {
    s.parse().unwrap()
}

#[test]
fn jid_wire_forms() {
    let cases: &[(&str, &str)] = &[
        ("@s.whatsapp.net", "fa0003"),
        ("status@broadcast", "fa0b0d"),
        ("120363000000000000@g.us", "faff091203630000000000001c"),
        ("15551234567:3@s.whatsapp.net", "f70003ff8615551234567f"),
        ("15551234567:0@s.whatsapp.net", "f70000ff8615551234567f"),
        ("123:0@lid", "f70100ff82123f"),
        ("123456789012345:12@lid", "f7010cff88123456789012345f"),
        ("123:5@hosted", "f78005ff82123f"),
        ("123:99@hosted.lid", "f78163ff82123f"),
        ("15551234567_5:3@s.whatsapp.net", "f70503ff8615551234567f"),
        // FB_JID: user, u16 device, server.
        ("123:4@msgr", "f6ff82123f0004cc"),
        // INTEROP_JID: user, u16 device, u16 integrator, server.
        ("7-123:4@interop", "f5ff82123f00040007fc07696e7465726f70"),
    ];
    for (s, hex) in cases {
        let j = jid(s);
        assert_eq!(j.to_string(), *s);
        assert_eq!(hex::encode(jid_attr_bytes(&j)), *hex, "{s}");
    }
    // Check the string tokens assumed above.
    assert_eq!(token::SINGLE_BYTE[0x0b], "status");
    assert_eq!(token::SINGLE_BYTE[0x0d], "broadcast");
    assert_eq!(token::SINGLE_BYTE[0x1c], "g.us");
    assert_eq!(token::SINGLE_BYTE[0xcc], "msgr");
}

#[test]
fn jid_as_content() {
    let node = Node::new("x").content(Content::Jid(jid("123:5@lid")));
    let bytes = round_trip(&node);
    assert_eq!(hex::encode(bytes), "00f802fc0178f70105ff82123f");
}

#[test]
fn ad_jid_with_unknown_domain_type_keeps_it_as_agent() {
    // AD_JID domain 5, device 3, user "1".
    let node =
        decode(&hex::decode("00f803fc0178fc0161f70503ff81 1f".replace(' ', "")).unwrap()).unwrap();
    let j = node.attr_jid("a").unwrap();
    assert_eq!(j.server, Server::WhatsApp);
    assert_eq!(j.agent, Some(5));
    assert_eq!(j.device, Some(3));
    assert_eq!(j.to_string(), "1_5:3@s.whatsapp.net");
}

#[test]
fn unencodable_jids() {
    let from_strings = [
        "123_1:5@s.whatsapp.net", // agent that is lid's domain type
        "123_0:5@s.whatsapp.net", // agent 0 would decode as no agent
        "123:256@s.whatsapp.net", // AD_JID devices are bytes
    ];
    let built = [
        Jid::new("123", Server::Lid).with_agent(2).with_device(5), // agent on lid
        Jid::new("123", Server::WhatsApp).with_agent(5),           // agent without device
        Jid::new("123", Server::Interop).with_integrator(7),       // interop without device
        Jid::new("123", Server::Messenger)
            .with_agent(5)
            .with_device(1), // agent on FB_JID
        Jid::new("123", Server::Other(String::new())),
    ];
    for j in from_strings.iter().map(|s| jid(s)).chain(built) {
        let err = encode(&Node::new("x").attr("a", j.clone())).unwrap_err();
        assert!(
            matches!(err, EncodeError::UnencodableJid { .. }),
            "{j}: {err:?}"
        );
    }
    round_trip(&Node::new("x").attr("a", Jid::new("1", Server::Other("example.org".into()))));
    // Without a device, '_' and '-' are user characters, written like Baileys does.
    assert_eq!(
        hex::encode(jid_attr_bytes(&jid("7-123@interop"))),
        "faff837a123ffc07696e7465726f70"
    );
}

#[test]
fn zlib_flagged_payload_decodes() {
    let plain = encode(
        &Node::new("iq")
            .attr("id", "1")
            .children([Node::new("ping")]),
    )
    .unwrap();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&plain[1..]).unwrap();
    let mut payload = vec![0x02];
    payload.extend(z.finish().unwrap());
    assert_eq!(decode(&payload).unwrap(), decode(&plain).unwrap());
    assert_eq!(
        decode_unpacked(&plain[1..]).unwrap(),
        decode(&plain).unwrap()
    );
}

#[test]
fn zlib_bomb_is_capped() {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&vec![0u8; 1 << 20]).unwrap();
    let mut payload = vec![0x02];
    payload.extend(z.finish().unwrap());
    assert!(payload.len() < 4096);
    let limits = DecodeLimits {
        max_inflated_len: (1 << 20) - 1,
        ..DecodeLimits::default()
    };
    assert_eq!(
        decode_with(&payload, &limits),
        Err(DecodeError::InflatedTooLarge {
            limit: (1 << 20) - 1
        })
    );
    // Exactly at the cap it inflates (and then fails as a node: zeros are LIST_EMPTY).
    let limits = DecodeLimits {
        max_inflated_len: 1 << 20,
        ..DecodeLimits::default()
    };
    assert!(matches!(
        decode_with(&payload, &limits),
        Err(DecodeError::EmptyNode { offset: 0 })
    ));
}

#[test]
fn invalid_zlib_is_an_error() {
    assert!(matches!(
        decode(&[0x02, 0x01, 0x02, 0x03]),
        Err(DecodeError::Inflate(_))
    ));
}

#[test]
fn every_truncation_is_an_error() {
    for (name, _, hex) in vectors() {
        let bytes = hex::decode(&hex).unwrap();
        for cut in 0..bytes.len() {
            let err = decode(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, DecodeError::Empty | DecodeError::UnexpectedEnd { .. }),
                "{name} cut at {cut}: {err:?}"
            );
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    assert_eq!(
        decode(&[0x00, 0xf8, 0x01, 0x19, 0x00]),
        Err(DecodeError::TrailingBytes {
            offset: 3,
            count: 1
        })
    );
}

#[test]
fn bad_tags_and_tokens() {
    // 0xf0..=0xf4 are unused; as a node tag string.
    for t in 0xf0..=0xf4u8 {
        assert_eq!(
            decode(&[0x00, 0xf8, 0x01, t]),
            Err(DecodeError::InvalidTag {
                offset: 2,
                tag: t,
                expected: "a string"
            })
        );
    }
    // A node that does not start with a list tag.
    assert!(matches!(
        decode(&[0x00, 0x19]),
        Err(DecodeError::InvalidTag {
            offset: 0,
            tag: 0x19,
            expected: "a list"
        })
    ));
    // A child list entry that is not a list.
    assert!(matches!(
        decode(&[0x00, 0xf8, 0x02, 0x19, 0xf8, 0x01, 0x19]),
        Err(DecodeError::InvalidTag { offset: 5, .. })
    ));
}

#[test]
fn bad_nibbles() {
    // NIBBLE_8 content with nibble 0xc.
    assert_eq!(
        decode(&[0x00, 0xf8, 0x02, 0x19, 0xff, 0x01, 0x1c]),
        Err(DecodeError::InvalidNibble {
            offset: 5,
            nibble: 0xc
        })
    );
    // The pad nibble 0xf is only allowed at the end of an odd string.
    assert_eq!(
        decode(&[0x00, 0xf8, 0x02, 0x19, 0xff, 0x02, 0xf1, 0x23]),
        Err(DecodeError::InvalidNibble {
            offset: 5,
            nibble: 0xf
        })
    );
    assert_eq!(
        decode(&[0x00, 0xf8, 0x02, 0x19, 0xff, 0x80]),
        Err(DecodeError::InvalidPackedLength { offset: 4 })
    );
    // Hex accepts every nibble.
    let node = decode(&[0x00, 0xf8, 0x02, 0x19, 0xfb, 0x01, 0xf0]).unwrap();
    assert_eq!(node.content, Content::Str("F0".into()));
}

#[test]
fn attribute_strings_must_be_utf8() {
    // <iq a=b"\xff"/> with a raw attribute value.
    assert_eq!(
        decode(&[0x00, 0xf8, 0x03, 0x19, 0xfc, 0x01, b'a', 0xfc, 0x01, 0xff]),
        Err(DecodeError::InvalidUtf8 { offset: 8 })
    );
    // The same bytes as content are fine.
    let node = decode(&[0x00, 0xf8, 0x02, 0x19, 0xfc, 0x01, 0xff]).unwrap();
    assert_eq!(node.content, Content::Bytes(vec![0xff]));
}

#[test]
fn jids_where_strings_are_needed() {
    // Tag is a JID.
    assert_eq!(
        decode(&[0x00, 0xf8, 0x01, 0xfa, 0x00, 0x03]),
        Err(DecodeError::UnexpectedJid { offset: 2 })
    );
    // JID_PAIR with an empty server.
    assert_eq!(
        decode(&[0x00, 0xf8, 0x03, 0x19, 0x11, 0xfa, 0x00, 0x00]),
        Err(DecodeError::EmptyJidServer { offset: 4 })
    );
    // JID_PAIR whose user is itself a JID.
    assert!(matches!(
        decode(&[0x00, 0xf8, 0x03, 0x19, 0x11, 0xfa, 0xfa, 0x00, 0x03, 0x03]),
        Err(DecodeError::UnexpectedJid { offset: 5 })
    ));
    // FB_JID naming s.whatsapp.net with device 65389 (found by the node_decode fuzz target:
    // it decoded, then could not re-encode, since such devices are AD_JID bytes).
    assert_eq!(
        decode(&[0x00, 0xf8, 0x03, 0x19, 0x11, 0xf6, 0x11, 0xff, 0x6d, 0x03]),
        Err(DecodeError::FbJidOnAdServer {
            offset: 4,
            server: "s.whatsapp.net".into()
        })
    );
    // The same on msgr is an ordinary FB_JID.
    assert!(decode(&[0x00, 0xf8, 0x03, 0x19, 0x11, 0xf6, 0x11, 0xff, 0x6d, 0xcc]).is_ok());
}

/// `depth` nested `<x>` nodes, each with one child except the innermost.
fn nested(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x00];
    for _ in 1..depth {
        bytes.extend_from_slice(&[0xf8, 0x02, 0xfc, 0x01, b'x', 0xf8, 0x01]);
    }
    bytes.extend_from_slice(&[0xf8, 0x01, 0xfc, 0x01, b'x']);
    bytes
}

#[test]
fn depth_limit() {
    assert!(decode(&nested(DEFAULT_MAX_DEPTH)).is_ok());
    assert_eq!(
        decode(&nested(DEFAULT_MAX_DEPTH + 1)),
        Err(DecodeError::TooDeep {
            max: DEFAULT_MAX_DEPTH
        })
    );
    // Hostile depth: an error, not a stack overflow.
    assert!(matches!(
        decode(&nested(1_000_000)),
        Err(DecodeError::TooDeep { .. })
    ));
    let limits = DecodeLimits {
        max_depth: 3,
        ..DecodeLimits::default()
    };
    assert!(decode_with(&nested(3), &limits).is_ok());
    assert!(decode_with(&nested(4), &limits).is_err());

    let mut node = Node::new("x");
    for _ in 1..DEFAULT_MAX_DEPTH {
        node = Node::new("x").children([node]);
    }
    round_trip(&node);
    let too_deep = Node::new("x").children([node]);
    assert!(matches!(
        encode(&too_deep),
        Err(EncodeError::TooDeep { .. })
    ));
}

#[test]
fn huge_declared_lengths_do_not_allocate() {
    // BINARY_32 claiming 4 GiB, LIST_16 claiming 65535 children, with nothing behind them.
    assert!(matches!(
        decode(&[0x00, 0xf8, 0x02, 0x19, 0xfe, 0xff, 0xff, 0xff, 0xff]),
        Err(DecodeError::UnexpectedEnd { .. })
    ));
    assert!(matches!(
        decode(&[0x00, 0xf8, 0x02, 0x19, 0xf9, 0xff, 0xff]),
        Err(DecodeError::UnexpectedEnd { .. })
    ));
    assert!(matches!(
        decode(&[0x00, 0xf9, 0xff, 0xff, 0x19]),
        Err(DecodeError::UnexpectedEnd { .. })
    ));
}

#[test]
fn empty_payload() {
    assert_eq!(decode(&[]), Err(DecodeError::Empty));
    assert!(matches!(
        decode_unpacked(&[]),
        Err(DecodeError::UnexpectedEnd { offset: 0, .. })
    ));
}

/// Drops the agent of `s.whatsapp.net` JIDs, as Baileys' decoder does for `AD_JID`s with an
/// unknown domain type (we keep it so the JID re-encodes to the same bytes).
fn baileys_view(node: &mut Node) {
    let strip = |jid: &mut Jid| {
        if jid.server == Server::WhatsApp {
            jid.agent = None;
        }
    };
    for (_, value) in &mut node.attrs {
        if let wafleet_protocol::binary::AttrValue::Jid(jid) = value {
            strip(jid);
        }
    }
    match &mut node.content {
        Content::Jid(jid) => strip(jid),
        Content::Nodes(children) => children.iter_mut().for_each(baileys_view),
        _ => {}
    }
}

#[test]
fn baileys_random_nodes_match_both_ways() {
    let text = include_str!("data/baileys-random.jsonl");
    let mut count = 0;
    for (i, line) in text.lines().enumerate() {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let node = json::from_value(&case["node"]).unwrap_or_else(|e| panic!("line {i}: {e}"));
        let hex = case["hex"].as_str().unwrap();
        assert_eq!(hex::encode(encode(&node).unwrap()), hex, "line {i}");
        let mut decoded = decode(&hex::decode(hex).unwrap()).unwrap();
        baileys_view(&mut decoded);
        assert_eq!(json::to_value(&decoded), case["decoded"], "line {i}");
        count += 1;
    }
    assert_eq!(count, 300);
}
