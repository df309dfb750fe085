//! Reading inbound stanzas: `<message>` with its `<enc>` parts, and who it is from and
//! for. Pure parsing, no crypto: every input gives a value or a typed [`StanzaError`].

use thiserror::Error;
use wafleet_protocol::binary::{AttrValue, Content, Node};
use wafleet_protocol::jid::{Jid, Server};

/// Why a stanza cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StanzaError {
    /// A required attribute is missing.
    #[error("missing attribute {0}")]
    Missing(&'static str),
    /// An attribute that must be a JID is not one.
    #[error("attribute {0} is not a JID")]
    BadJid(&'static str),
    /// A group or broadcast stanza without `participant`.
    #[error("group stanza without participant")]
    NoParticipant,
    /// A `from` on a server we do not handle (newsletter, bot, ...).
    #[error("unsupported sender server {0}")]
    UnsupportedServer(String),
}

/// The kind of an `<enc>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncKind {
    /// `pkmsg`: a PreKeyWhisperMessage (first message of a session).
    PreKey,
    /// `msg`: a WhisperMessage.
    Whisper,
    /// `skmsg`: a group SenderKeyMessage.
    SenderKey,
    /// Anything else (`msmsg`, ...).
    Other(String),
}

impl EncKind {
    fn parse(t: &str) -> Self {
        match t {
            "pkmsg" => Self::PreKey,
            "msg" => Self::Whisper,
            "skmsg" => Self::SenderKey,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::PreKey => "pkmsg",
            Self::Whisper => "msg",
            Self::SenderKey => "skmsg",
            Self::Other(o) => o,
        }
    }
}

/// One `<enc v type [count]>ciphertext</enc>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enc {
    /// Its type.
    pub kind: EncKind,
    /// `v` (`2`: padded plaintext, `3`: unpadded); `2` when absent.
    pub version: String,
    /// The ciphertext; `None` when the `enc` carries no bytes.
    pub ciphertext: Option<Vec<u8>>,
    /// `count`: how many times the sender re-sent it after retry receipts.
    pub count: Option<u32>,
}

/// An inbound `<message>`, its attributes read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageStanza {
    /// `id`.
    pub id: String,
    /// `from`: the sending device (1:1) or the group.
    pub from: Jid,
    /// `participant`: the sending device in a group or broadcast.
    pub participant: Option<Jid>,
    /// `recipient`: the chat of a message our own other device sent.
    pub recipient: Option<Jid>,
    /// `to`, when the server names the device it delivers to.
    pub to: Option<Jid>,
    /// `t` (Unix seconds), 0 when absent or not a number.
    pub timestamp: u64,
    /// `notify`: the sender's push name.
    pub push_name: Option<String>,
    /// `category` (`peer` for protocol messages between our own devices).
    pub category: Option<String>,
    /// The `<enc>` children, in stanza order.
    pub encs: Vec<Enc>,
}

/// Reads a JID attribute (a JID on the wire, or a string that parses as one).
pub(crate) fn jid_attr(node: &Node, key: &'static str) -> Result<Option<Jid>, StanzaError> {
    match node.get_attr(key) {
        None => Ok(None),
        Some(AttrValue::Jid(j)) => Ok(Some(j.clone())),
        Some(AttrValue::Str(s)) if s.is_empty() => Ok(None),
        Some(AttrValue::Str(s)) => s.parse().map(Some).map_err(|_| StanzaError::BadJid(key)),
    }
}

/// A string attribute (a JID attribute is given in its string form).
pub(crate) fn str_attr(node: &Node, key: &str) -> Option<String> {
    node.get_attr(key).map(|v| v.to_string())
}

/// The content as bytes (a packed string is given as its text).
pub(crate) fn content_bytes(node: &Node) -> Option<Vec<u8>> {
    match &node.content {
        Content::Bytes(b) => Some(b.clone()),
        Content::Str(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

impl MessageStanza {
    /// Parses a `<message>` node's attributes and `<enc>` children.
    pub fn parse(node: &Node) -> Result<Self, StanzaError> {
        let id = node
            .attr_str("id")
            .filter(|s| !s.is_empty())
            .ok_or(StanzaError::Missing("id"))?
            .to_owned();
        let from = jid_attr(node, "from")?.ok_or(StanzaError::Missing("from"))?;
        let encs = node
            .children_by_tag("enc")
            .map(|e| Enc {
                kind: EncKind::parse(e.attr_str("type").unwrap_or_default()),
                version: e.attr_str("v").unwrap_or("2").to_owned(),
                ciphertext: content_bytes(e).filter(|b| !b.is_empty()),
                count: e.attr_str("count").and_then(|c| c.parse().ok()),
            })
            .collect();
        Ok(MessageStanza {
            id,
            from,
            participant: jid_attr(node, "participant")?,
            recipient: jid_attr(node, "recipient")?,
            to: jid_attr(node, "to")?,
            timestamp: node.attr_str("t").and_then(|t| t.parse().ok()).unwrap_or(0),
            push_name: str_attr(node, "notify").filter(|s| !s.is_empty()),
            category: str_attr(node, "category"),
            encs,
        })
    }

    /// The attributes the ack and receipts are addressed with.
    pub fn key(&self) -> crate::InboundKey {
        crate::InboundKey {
            id: self.id.clone(),
            from: self.from.clone(),
            participant: self.participant.clone(),
            recipient: self.recipient.clone(),
        }
    }
}

/// Who a message is from and which chat it belongs to, as Baileys' `decodeMessageNode`
/// reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    /// The chat: the peer user (no device), the destination of our own device's message,
    /// or the group.
    pub chat: Jid,
    /// The sending device (`participant` in groups, else `from`), as given.
    pub sender: Jid,
    /// Sent by our own account.
    pub from_me: bool,
    /// Whether the chat is a group (or broadcast): the `skmsg` sender key is by (chat, sender).
    pub group: bool,
}

/// Our own account: the device JID and the LID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Own {
    /// Our device JID (`user:device@s.whatsapp.net`).
    pub jid: Jid,
    /// Our LID (`lid:device@lid`), if known.
    pub lid: Option<Jid>,
}

impl Own {
    /// Whether `jid` is a JID of our account (phone number or LID user).
    pub fn is_own_user(&self, jid: &Jid) -> bool {
        let same = |o: &Jid| o.user == jid.user && o.server == jid.server;
        same(&self.jid) || self.lid.as_ref().is_some_and(same)
    }

    /// Whether `jid` is exactly this device (phone-number or LID form).
    pub fn is_this_device(&self, jid: &Jid) -> bool {
        let dev = |j: &Jid| j.device.unwrap_or(0);
        let same = |o: &Jid| o.user == jid.user && o.server == jid.server && dev(o) == dev(jid);
        same(&self.jid) || self.lid.as_ref().is_some_and(same)
    }
}

/// Why a stanza is not for this device.
pub(crate) fn not_for_us(stanza: &MessageStanza, own: &Own) -> Option<String> {
    if let Some(to) = &stanza.to {
        let ours = if to.device.is_some() {
            own.is_this_device(to)
        } else {
            own.is_own_user(to)
        };
        if !ours && to.is_user() {
            return Some(format!("addressed to {to}"));
        }
    }
    if stanza.recipient.is_some() && stanza.from.is_user() && !own.is_own_user(&stanza.from) {
        return Some("recipient set on a message not from our account".to_owned());
    }
    None
}

/// Reads the chat, the sender and `from_me`.
pub fn addressing(stanza: &MessageStanza, own: &Own) -> Result<Addressing, StanzaError> {
    let from = &stanza.from;
    if from.is_user() {
        let from_me = own.is_own_user(from);
        let chat = match (&stanza.recipient, from_me) {
            (Some(recipient), true) => recipient.to_non_ad(),
            _ => from.to_non_ad(),
        };
        return Ok(Addressing {
            chat,
            sender: from.clone(),
            from_me,
            group: false,
        });
    }
    match from.server {
        Server::Group | Server::Broadcast => {
            let participant = stanza
                .participant
                .clone()
                .ok_or(StanzaError::NoParticipant)?;
            Ok(Addressing {
                chat: from.clone(),
                from_me: own.is_own_user(&participant),
                sender: participant,
                group: true,
            })
        }
        ref other => Err(StanzaError::UnsupportedServer(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Own {
        Own {
            jid: "111:3@s.whatsapp.net".parse().unwrap(),
            lid: Some("999:3@lid".parse().unwrap()),
        }
    }

    #[test]
    fn parses_a_one_to_one_message() {
        let node = Node::new("message")
            .attr("from", "222:1@s.whatsapp.net".parse::<Jid>().unwrap())
            .attr("id", "ABC")
            .attr("t", "1700000000")
            .attr("notify", "Bob")
            .attr("type", "text")
            .children([Node::new("enc")
                .attr("v", "2")
                .attr("type", "pkmsg")
                .bytes(vec![0x33, 1, 2])]);
        let s = MessageStanza::parse(&node).unwrap();
        assert_eq!(s.id, "ABC");
        assert_eq!(s.timestamp, 1_700_000_000);
        assert_eq!(s.push_name.as_deref(), Some("Bob"));
        assert_eq!(s.encs.len(), 1);
        assert_eq!(s.encs[0].kind, EncKind::PreKey);
        let a = addressing(&s, &own()).unwrap();
        assert_eq!(a.chat.to_string(), "222@s.whatsapp.net");
        assert_eq!(a.sender.to_string(), "222:1@s.whatsapp.net");
        assert!(!a.from_me);
        assert_eq!(not_for_us(&s, &own()), None);
    }

    #[test]
    fn own_device_message_takes_the_recipient_as_chat() {
        let node = Node::new("message")
            .attr("from", "111@s.whatsapp.net")
            .attr("recipient", "333@s.whatsapp.net")
            .attr("id", "X");
        let s = MessageStanza::parse(&node).unwrap();
        let a = addressing(&s, &own()).unwrap();
        assert!(a.from_me);
        assert_eq!(a.chat.to_string(), "333@s.whatsapp.net");
    }

    #[test]
    fn foreign_recipient_or_other_device_is_not_for_us() {
        let s = MessageStanza::parse(
            &Node::new("message")
                .attr("from", "222@s.whatsapp.net")
                .attr("recipient", "333@s.whatsapp.net")
                .attr("id", "X"),
        )
        .unwrap();
        assert!(not_for_us(&s, &own()).is_some());
        let s = MessageStanza::parse(
            &Node::new("message")
                .attr("from", "222@s.whatsapp.net")
                .attr("to", "111:4@s.whatsapp.net")
                .attr("id", "X"),
        )
        .unwrap();
        assert!(not_for_us(&s, &own()).is_some());
        let s = MessageStanza::parse(
            &Node::new("message")
                .attr("from", "222@s.whatsapp.net")
                .attr("to", "999:3@lid")
                .attr("id", "X"),
        )
        .unwrap();
        assert_eq!(not_for_us(&s, &own()), None);
    }

    #[test]
    fn missing_or_bad_attributes_are_errors() {
        assert_eq!(
            MessageStanza::parse(&Node::new("message").attr("from", "1@s.whatsapp.net")),
            Err(StanzaError::Missing("id"))
        );
        assert_eq!(
            MessageStanza::parse(&Node::new("message").attr("id", "1")),
            Err(StanzaError::Missing("from"))
        );
        assert_eq!(
            MessageStanza::parse(&Node::new("message").attr("id", "1").attr("from", "nojid")),
            Err(StanzaError::BadJid("from"))
        );
        let group = MessageStanza::parse(
            &Node::new("message")
                .attr("id", "1")
                .attr("from", "123-456@g.us"),
        )
        .unwrap();
        assert_eq!(addressing(&group, &own()), Err(StanzaError::NoParticipant));
    }
}
