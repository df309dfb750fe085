//! The JSON form: Baileys-style `@` inference, bytes, and malformed shapes.

use serde_json::json;
use wafleet_protocol::binary::json::{self, JsonError};
use wafleet_protocol::binary::{encode, AttrValue, Content, Node};
use wafleet_protocol::jid::{Jid, Server};

#[test]
fn attrs_may_be_missing_and_content_omitted() {
    let node = json::from_str(r#"{"tag":"iq"}"#).unwrap();
    assert_eq!(node, Node::new("iq"));
    assert_eq!(json::to_string(&node), r#"{"tag":"iq","attrs":{}}"#);
    let node = json::from_str(r#"{"tag":"iq","attrs":null,"content":null}"#).unwrap();
    assert_eq!(node, Node::new("iq"));
}

#[test]
fn at_strings_become_jids() {
    let node = json::from_value(&json!({
        "tag": "message",
        "attrs": {"to": "@s.whatsapp.net", "from": "123:4@lid", "odd": "a:b@c", "id": "x"},
        "content": "status@broadcast"
    }))
    .unwrap();
    assert_eq!(
        node.get_attr("to"),
        Some(&AttrValue::Jid(Jid::new("", Server::WhatsApp)))
    );
    assert_eq!(
        node.attr_jid("from"),
        Some(&Jid::new("123", Server::Lid).with_device(4))
    );
    // Contains '@' but is not a JID (bad device): stays a string, like the rest.
    assert_eq!(node.attr_str("odd"), Some("a:b@c"));
    assert_eq!(node.attr_str("id"), Some("x"));
    assert_eq!(
        node.content,
        Content::Jid(Jid::new("status", Server::Broadcast))
    );
    // Attribute order is kept.
    let keys: Vec<_> = node.attrs.iter().map(|(k, _)| k.as_ref()).collect();
    assert_eq!(keys, ["to", "from", "odd", "id"]);
    assert_eq!(
        hex::encode(
            encode(&json::from_str(r#"{"tag":"iq","attrs":{"to":"@s.whatsapp.net"}}"#).unwrap())
                .unwrap()
        ),
        "00f8031911fa0003"
    );
}

#[test]
fn bytes_content() {
    let node = json::from_str(r#"{"tag":"enc","content":"hex:010203FF"}"#).unwrap();
    assert_eq!(node.content, Content::Bytes(vec![1, 2, 3, 0xff]));
    assert_eq!(
        json::to_string(&node),
        r#"{"tag":"enc","attrs":{},"content":"hex:010203ff"}"#
    );
    let node = json::from_str(r#"{"tag":"enc","content":"hex:"}"#).unwrap();
    assert_eq!(node.content, Content::Bytes(vec![]));
    assert_eq!(
        json::from_str(r#"{"tag":"enc","content":"hex:0g"}"#),
        Err(JsonError::InvalidHex { path: "$".into() })
    );
}

#[test]
fn children_and_strings() {
    let value = json!({"tag": "iq", "attrs": {"id": "1"}, "content": [
        {"tag": "a", "attrs": {}, "content": "1234"},
        {"tag": "b", "attrs": {}, "content": []}
    ]});
    let node = json::from_value(&value).unwrap();
    assert_eq!(node.child_nodes().len(), 2);
    assert_eq!(node.child_nodes()[0].content, Content::Str("1234".into()));
    assert_eq!(node.child_nodes()[1].content, Content::Nodes(vec![]));
    assert_eq!(json::to_value(&node), value);
}

#[test]
fn malformed_shapes() {
    let cases: &[(&str, JsonError)] = &[
        ("[1]", JsonError::NotAnObject { path: "$".into() }),
        ("{}", JsonError::MissingTag { path: "$".into() }),
        (r#"{"tag":1}"#, JsonError::InvalidTag { path: "$".into() }),
        (r#"{"tag":""}"#, JsonError::InvalidTag { path: "$".into() }),
        (
            r#"{"tag":"a","attrs":[]}"#,
            JsonError::AttrsNotObject { path: "$".into() },
        ),
        (
            r#"{"tag":"a","attrs":{"k":1}}"#,
            JsonError::AttrNotString {
                path: "$".into(),
                key: "k".into(),
            },
        ),
        (
            r#"{"tag":"a","content":5}"#,
            JsonError::InvalidContent { path: "$".into() },
        ),
        (
            r#"{"tag":"a","content":[{"tag":"b"},{"tag":"c","content":{}}]}"#,
            JsonError::InvalidContent {
                path: "$.content[1]".into(),
            },
        ),
        (
            r#"{"tag":"a","content":["x"]}"#,
            JsonError::NotAnObject {
                path: "$.content[0]".into(),
            },
        ),
        (
            r#"{"tag":"a","children":[]}"#,
            JsonError::UnknownField {
                path: "$".into(),
                field: "children".into(),
            },
        ),
    ];
    for (text, want) in cases {
        assert_eq!(json::from_str(text).as_ref(), Err(want), "{text}");
    }
    assert!(matches!(
        json::from_str("{\"tag\":"),
        Err(JsonError::Syntax(_))
    ));
}
