//! What the messenger reports to its driver, and what a caller sends.

use wafleet_protocol::jid::Jid;
use wafleet_protocol::message::{MessageContent, ReplyContext};

use crate::error::{SendError, UndecryptableReason};

/// Identifies one inbound stanza for [`crate::Messenger::delivered`]: the attributes its
/// `<ack>` and `<receipt>` are addressed with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InboundKey {
    /// The stanza (message) id.
    pub id: String,
    /// The stanza's `from` (a device JID in 1:1, the group JID in a group).
    pub from: Jid,
    /// The stanza's `participant` (the sending device in a group), if any.
    pub participant: Option<Jid>,
    /// The stanza's `recipient` (the chat of a message our own other device sent), if any.
    pub recipient: Option<Jid>,
}

/// A decrypted inbound message.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// Pass to [`crate::Messenger::delivered`] once the message is durable downstream.
    pub key: InboundKey,
    /// The message id.
    pub id: String,
    /// The chat: the peer user for 1:1 (the destination for our own devices' messages),
    /// the group JID for a group.
    pub chat: Jid,
    /// The sending device.
    pub sender: Jid,
    /// Sent by our own account (another of our devices, e.g. the phone).
    pub from_me: bool,
    /// The stanza's `t` (Unix seconds), 0 when absent.
    pub timestamp: u64,
    /// The sender's push name (`notify`), when given.
    pub push_name: Option<String>,
    /// What the message says.
    pub content: MessageContent,
    /// Whether this is a redelivery of a message already decrypted (served from the
    /// recent-message cache, same id and content).
    pub redelivered: bool,
}

/// An inbound message that could not be decrypted or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecryptable {
    /// Pass to [`crate::Messenger::delivered`] once the event is durable downstream.
    pub key: InboundKey,
    /// The message id.
    pub id: String,
    /// The chat, as for [`InboundMessage::chat`] (the `from` user when the stanza could
    /// not be read further).
    pub chat: Jid,
    /// The sending device.
    pub sender: Jid,
    /// Sent by our own account.
    pub from_me: bool,
    /// The stanza's `t` (Unix seconds), 0 when absent.
    pub timestamp: u64,
    /// Why.
    pub reason: UndecryptableReason,
}

/// The kind of a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptKind {
    /// No `type`: delivered to the device.
    Delivered,
    /// `sender`: one of our own devices got a message our account sent.
    Sender,
    /// `read` / `read-self`.
    Read,
    /// `played` / `played-self`.
    Played,
    /// `retry`: the device could not decrypt and asks for a resend.
    Retry,
    /// Any other `type` (`inactive`, `peer_msg`, ...).
    Other(String),
}

impl ReceiptKind {
    /// Reads the `type` attribute.
    pub fn from_type(t: Option<&str>) -> Self {
        match t {
            None | Some("") | Some("delivery") => Self::Delivered,
            Some("sender") => Self::Sender,
            Some("read") | Some("read-self") => Self::Read,
            Some("played") | Some("played-self") => Self::Played,
            Some("retry") => Self::Retry,
            Some(other) => Self::Other(other.to_owned()),
        }
    }

    /// A short name for logs and event JSON.
    pub fn name(&self) -> &str {
        match self {
            Self::Delivered => "delivered",
            Self::Sender => "sender",
            Self::Read => "read",
            Self::Played => "played",
            Self::Retry => "retry",
            Self::Other(o) => o,
        }
    }
}

/// A receipt for messages we sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The message ids (the stanza id, then each `<list><item id/>`).
    pub ids: Vec<String>,
    /// The chat (the peer user, or the group).
    pub chat: Jid,
    /// The device that sent the receipt.
    pub sender: Jid,
    /// What it says.
    pub kind: ReceiptKind,
    /// The receipt's `t` (Unix seconds), when given.
    pub timestamp: Option<u64>,
}

/// What the messenger reports. Drain all events before any transmit (see the crate docs).
#[derive(Debug, Clone, PartialEq)]
pub enum MessengerEvent {
    /// The [`crate::SignalState`] or the prekeys changed: persist them *before* sending any
    /// transmit queued so far.
    StateChanged,
    /// An inbound message (boxed: its content may quote a whole message).
    Message(Box<InboundMessage>),
    /// An inbound message that could not be read (a retry receipt is already queued).
    Undecryptable(Box<Undecryptable>),
    /// A receipt for messages we sent.
    Receipt(Receipt),
    /// The server acked a message we sent.
    Sent {
        /// The message id.
        id: String,
        /// The ack's `t` (Unix seconds), when given.
        server_timestamp: Option<u64>,
        /// Addressed devices the message was not encrypted for, and why (e.g. a device
        /// that has not uploaded its prekeys yet): they will not get it.
        skipped: Vec<SkippedDevice>,
    },
    /// A send failed.
    SendFailed {
        /// The message id.
        id: String,
        /// Why.
        error: SendError,
    },
}

/// An addressed device a sent message left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedDevice {
    /// The device.
    pub device: Jid,
    /// Why.
    pub reason: SkipReason,
}

/// Why a device was left out of a sent message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    /// The server had no prekey bundle for it (it has not uploaded its keys yet).
    #[error("no prekey bundle: {0}")]
    NoBundle(String),
    /// Its bundle was refused (a bad signed-prekey signature, an untrusted identity).
    #[error("prekey bundle refused: {0}")]
    BundleRefused(String),
    /// No session with it and none could be started.
    #[error("no session")]
    NoSession,
    /// Encrypting for it failed.
    #[error("encryption failed: {0}")]
    Encrypt(String),
}

/// What to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A text, optionally a reply.
    Text {
        /// The text.
        text: String,
        /// What it replies to.
        reply: Option<Box<ReplyContext>>,
    },
    /// An already encoded `waE2E.Message` (unpadded) with its stanza `type`
    /// (`text`, `media`, `reaction`, ...).
    Encoded {
        /// The protobuf bytes.
        message: Vec<u8>,
        /// The `<message type>`.
        stanza_type: String,
    },
}

impl Outgoing {
    /// A plain text.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text {
            text: text.into(),
            reply: None,
        }
    }

    pub(crate) fn encode(&self) -> (Vec<u8>, String) {
        match self {
            Self::Text { text, reply } => (
                wafleet_protocol::message::encode_text(text, reply.as_deref()),
                "text".to_owned(),
            ),
            Self::Encoded {
                message,
                stanza_type,
            } => (message.clone(), stanza_type.clone()),
        }
    }
}
