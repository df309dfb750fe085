//! The in-memory binary node: a tag, ordered attributes and optional content.
//!
//! This is the tree the codec reads and writes. Attribute order is kept as inserted (it is
//! part of the wire bytes), and duplicate keys are not merged: [`Node::attr`] appends.

use std::borrow::Cow;
use std::fmt;

use crate::jid::Jid;

/// A string in a node: borrowed when it is one of the protocol's static tokens (so decoding
/// the common tags, keys and values allocates nothing), owned otherwise.
pub type Text = Cow<'static, str>;

/// An attribute value: a string, or a JID (written with the JID wire tags).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AttrValue {
    /// A plain string (token, packed or raw on the wire).
    Str(Text),
    /// A JID.
    Jid(Jid),
}

impl AttrValue {
    /// Baileys' reading of a string: a JID if it contains `@` and parses as one, otherwise
    /// the string itself. Used by the JSON form; the encoder never guesses.
    pub fn infer(s: impl Into<Text>) -> AttrValue {
        let s = s.into();
        if s.contains('@') {
            if let Ok(jid) = s.parse() {
                return AttrValue::Jid(jid);
            }
        }
        AttrValue::Str(s)
    }

    /// The string, if this is [`AttrValue::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            AttrValue::Jid(_) => None,
        }
    }

    /// The JID, if this is [`AttrValue::Jid`].
    pub fn as_jid(&self) -> Option<&Jid> {
        match self {
            AttrValue::Jid(jid) => Some(jid),
            AttrValue::Str(_) => None,
        }
    }
}

impl fmt::Display for AttrValue {
    /// The string, or the JID's string form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Str(s) => f.write_str(s),
            AttrValue::Jid(jid) => jid.fmt(f),
        }
    }
}

impl From<&'static str> for AttrValue {
    fn from(s: &'static str) -> AttrValue {
        AttrValue::Str(Cow::Borrowed(s))
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> AttrValue {
        AttrValue::Str(Cow::Owned(s))
    }
}

impl From<Text> for AttrValue {
    fn from(s: Text) -> AttrValue {
        AttrValue::Str(s)
    }
}

impl From<Jid> for AttrValue {
    fn from(jid: Jid) -> AttrValue {
        AttrValue::Jid(jid)
    }
}

/// What a node carries after its attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Content {
    /// No content (odd list size on the wire).
    #[default]
    None,
    /// Child nodes (`LIST_EMPTY`, `LIST_8` or `LIST_16`). An empty list is distinct from `None`.
    Nodes(Vec<Node>),
    /// Raw bytes (`BINARY_8/20/32`).
    Bytes(Vec<u8>),
    /// A string written as a token or packed digits/hex. Strings that are neither are written
    /// raw and therefore decode as [`Content::Bytes`].
    Str(Text),
    /// A JID.
    Jid(Jid),
}

/// A binary node, e.g. `<iq id="1" type="get"><ping/></iq>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Node {
    /// The tag, e.g. `iq`. Never empty on the wire.
    pub tag: Text,
    /// Attributes in wire order.
    pub attrs: Vec<(Text, AttrValue)>,
    /// The content.
    pub content: Content,
}

impl Node {
    /// A node with this tag, no attributes and no content.
    pub fn new(tag: impl Into<Text>) -> Node {
        Node {
            tag: tag.into(),
            attrs: Vec::new(),
            content: Content::None,
        }
    }

    /// Appends an attribute (no de-duplication).
    pub fn attr(mut self, key: impl Into<Text>, value: impl Into<AttrValue>) -> Node {
        self.attrs.push((key.into(), value.into()));
        self
    }

    /// Sets the content to these child nodes.
    pub fn children(mut self, children: impl IntoIterator<Item = Node>) -> Node {
        self.content = Content::Nodes(children.into_iter().collect());
        self
    }

    /// Sets the content to these bytes.
    pub fn bytes(mut self, bytes: impl Into<Vec<u8>>) -> Node {
        self.content = Content::Bytes(bytes.into());
        self
    }

    /// Sets the content to a string (see [`Content::Str`] for how it is written).
    pub fn text(mut self, text: impl Into<Text>) -> Node {
        self.content = Content::Str(text.into());
        self
    }

    /// Sets the content.
    pub fn content(mut self, content: Content) -> Node {
        self.content = content;
        self
    }

    /// The first attribute named `key`.
    pub fn get_attr(&self, key: &str) -> Option<&AttrValue> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The first attribute named `key`, if it is a string.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.get_attr(key).and_then(AttrValue::as_str)
    }

    /// The first attribute named `key`, if it is a JID.
    pub fn attr_jid(&self, key: &str) -> Option<&Jid> {
        self.get_attr(key).and_then(AttrValue::as_jid)
    }

    /// The child nodes (empty unless the content is [`Content::Nodes`]).
    pub fn child_nodes(&self) -> &[Node] {
        match &self.content {
            Content::Nodes(nodes) => nodes,
            _ => &[],
        }
    }

    /// The first child with this tag.
    pub fn child_by_tag(&self, tag: &str) -> Option<&Node> {
        self.child_nodes().iter().find(|n| n.tag == tag)
    }

    /// All children with this tag.
    pub fn children_by_tag<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.child_nodes().iter().filter(move |n| n.tag == tag)
    }

    /// The content bytes, if the content is [`Content::Bytes`].
    pub fn content_bytes(&self) -> Option<&[u8]> {
        match &self.content {
            Content::Bytes(bytes) => Some(bytes),
            _ => None,
        }
    }
}
