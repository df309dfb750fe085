//! The JSON form of a node, as used by the test vectors and `wafleet node decode|encode`.
//!
//! ```json
//! {"tag": "iq", "attrs": {"id": "1", "to": "@s.whatsapp.net"}, "content": [{"tag": "ping", "attrs": {}}]}
//! ```
//!
//! - `attrs` is an object of strings, in wire order (JIDs in their string form). When
//!   reading, a missing `attrs` means none.
//! - `content` is left out for no content; it is an array of node objects for children,
//!   `"hex:<lowercase hex>"` for bytes, and a plain string for a string or JID.
//! - Reading mirrors Baileys' encoder, which writes any string containing `@` as a JID: an
//!   attribute value or string content containing `@` that parses as a [`Jid`](crate::jid::Jid) becomes a JID
//!   (that is how `"to": "@s.whatsapp.net"` becomes `fa 00 03`). A string content starting
//!   with `hex:` is always bytes.
//!
//! A JSON object cannot hold two equal keys, so a node with duplicate attribute keys keeps
//! only the last value in its JSON form (at the first key's position).

use serde_json::{Map, Value};

use super::node::{AttrValue, Content, Node};

/// Prefix marking byte content in the JSON form.
pub const BYTES_PREFIX: &str = "hex:";

/// Why a JSON value is not a node. `path` is where, e.g. `$.content[1].attrs`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The text is not JSON.
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// A node is not a JSON object.
    #[error("{path}: expected a node object")]
    NotAnObject {
        /// Where.
        path: String,
    },
    /// A node object has no `tag`.
    #[error("{path}: missing \"tag\"")]
    MissingTag {
        /// Where.
        path: String,
    },
    /// `tag` is not a non-empty string.
    #[error("{path}.tag: expected a non-empty string")]
    InvalidTag {
        /// Where.
        path: String,
    },
    /// `attrs` is not an object.
    #[error("{path}.attrs: expected an object")]
    AttrsNotObject {
        /// Where.
        path: String,
    },
    /// An attribute value is not a string.
    #[error("{path}.attrs.{key}: expected a string")]
    AttrNotString {
        /// Where.
        path: String,
        /// The attribute key.
        key: String,
    },
    /// `content` is not an array, a string or null.
    #[error("{path}.content: expected an array of nodes, a string or null")]
    InvalidContent {
        /// Where.
        path: String,
    },
    /// `content` starts with `hex:` but the rest is not hex.
    #[error("{path}.content: invalid hex after \"hex:\"")]
    InvalidHex {
        /// Where.
        path: String,
    },
    /// A node object has a key other than `tag`, `attrs`, `content`.
    #[error("{path}: unknown field {field:?}")]
    UnknownField {
        /// Where.
        path: String,
        /// The unexpected key.
        field: String,
    },
}

/// The JSON form of `node`.
pub fn to_value(node: &Node) -> Value {
    let mut object = Map::with_capacity(3);
    object.insert("tag".to_owned(), Value::String(node.tag.to_string()));
    let attrs = node
        .attrs
        .iter()
        .map(|(key, value)| (key.to_string(), Value::String(value.to_string())))
        .collect();
    object.insert("attrs".to_owned(), Value::Object(attrs));
    let content = match &node.content {
        Content::None => None,
        Content::Nodes(children) => Some(Value::Array(children.iter().map(to_value).collect())),
        Content::Bytes(bytes) => Some(Value::String(format!(
            "{BYTES_PREFIX}{}",
            hex::encode(bytes)
        ))),
        Content::Str(s) => Some(Value::String(s.to_string())),
        Content::Jid(jid) => Some(Value::String(jid.to_string())),
    };
    if let Some(content) = content {
        object.insert("content".to_owned(), content);
    }
    Value::Object(object)
}

/// The JSON form of `node` as compact one-line text.
pub fn to_string(node: &Node) -> String {
    to_value(node).to_string()
}

/// Reads a node from JSON text.
pub fn from_str(text: &str) -> Result<Node, JsonError> {
    let value: Value = serde_json::from_str(text).map_err(|e| JsonError::Syntax(e.to_string()))?;
    from_value(&value)
}

/// Reads a node from a JSON value.
pub fn from_value(value: &Value) -> Result<Node, JsonError> {
    node_at(value, "$")
}

fn node_at(value: &Value, path: &str) -> Result<Node, JsonError> {
    let object = value.as_object().ok_or_else(|| JsonError::NotAnObject {
        path: path.to_owned(),
    })?;
    if let Some(field) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "tag" | "attrs" | "content"))
    {
        return Err(JsonError::UnknownField {
            path: path.to_owned(),
            field: field.clone(),
        });
    }
    let tag = match object.get("tag") {
        None => {
            return Err(JsonError::MissingTag {
                path: path.to_owned(),
            })
        }
        Some(Value::String(tag)) if !tag.is_empty() => tag.clone().into(),
        Some(_) => {
            return Err(JsonError::InvalidTag {
                path: path.to_owned(),
            })
        }
    };
    let attrs = match object.get("attrs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(attrs)) => attrs
            .iter()
            .map(|(key, value)| match value {
                Value::String(s) => Ok((key.clone().into(), AttrValue::infer(s.clone()))),
                _ => Err(JsonError::AttrNotString {
                    path: path.to_owned(),
                    key: key.clone(),
                }),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(JsonError::AttrsNotObject {
                path: path.to_owned(),
            })
        }
    };
    let content = match object.get("content") {
        None | Some(Value::Null) => Content::None,
        Some(Value::Array(children)) => Content::Nodes(
            children
                .iter()
                .enumerate()
                .map(|(i, child)| node_at(child, &format!("{path}.content[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Some(Value::String(s)) => match s.strip_prefix(BYTES_PREFIX) {
            Some(hex) => Content::Bytes(hex::decode(hex).map_err(|_| JsonError::InvalidHex {
                path: path.to_owned(),
            })?),
            None => match AttrValue::infer(s.clone()) {
                AttrValue::Jid(jid) => Content::Jid(jid),
                AttrValue::Str(s) => Content::Str(s),
            },
        },
        Some(_) => {
            return Err(JsonError::InvalidContent {
                path: path.to_owned(),
            })
        }
    };
    Ok(Node {
        tag,
        attrs,
        content,
    })
}
