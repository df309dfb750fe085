//! End-to-end message content: the decrypted plaintext of a `<message>`'s `<enc>`.
//!
//! Inbound, a Signal plaintext is `waE2E.Message || pad`; once the pad is stripped
//! (`wafleet_signal::padding::unpad_for_version`, which this crate cannot call: the Signal
//! crate depends on this one), [`decode`] reads the protobuf into a typed [`DecodedMessage`]:
//! what the message says ([`MessageContent`]), the sender-key distribution a group message
//! may carry, and, for a message our own phone sent to another chat (`deviceSentMessage`),
//! the chat it went to. Outbound, [`encode_text`] builds the protobuf of a text (optionally a
//! reply), to be padded with `wafleet_signal::padding::pad`, and [`message_id`] makes a
//! message id in WhatsApp's format.
//!
//! Nothing here reads a clock or draws randomness: the time and the random bytes are
//! parameters. Decoding never panics on any input; unknown protobuf fields are skipped, and a
//! message with no content this module knows is [`MessageContent::Unsupported`], which names
//! the top-level fields it carried.

use prost::Message as _;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::jid::Jid;
use crate::proto::e2e::{self, message as pm};

/// How deep wrappers (`ephemeralMessage`, `viewOnceMessage`, …), edits and device-sent
/// messages may nest before [`decode`] gives up with [`MessageError::TooDeep`].
pub const MAX_DEPTH: usize = 8;

/// A plaintext that is not a message this module can read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MessageError {
    /// Not a valid protobuf (truncated, bad wire type, invalid UTF-8 in a string, …).
    #[error("message protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// No content and no sender-key distribution: empty bytes, or only metadata.
    #[error("message is empty")]
    Empty,
    /// A part this module reads lacks a field it cannot do without.
    #[error("message field {0} is missing")]
    MissingField(&'static str),
    /// Wrappers, edits or device-sent messages nested deeper than [`MAX_DEPTH`].
    #[error("message nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// A message id in WhatsApp's current format (Baileys `generateMessageIDV2`): `3EB0`
/// followed by the first 9 bytes, in uppercase hex, of SHA-256 over 44 bytes: the time in
/// Unix seconds (8 bytes big-endian), then `<own user>@c.us` in a zero-filled 20-byte field
/// (cut at 20 bytes; all zeros without an own JID), then 16 random bytes. 22 characters.
pub fn message_id(unix_seconds: u64, own: Option<&Jid>, random: &[u8; 16]) -> String {
    let mut data = [0u8; 8 + 20 + 16];
    data[..8].copy_from_slice(&unix_seconds.to_be_bytes());
    if let Some(jid) = own.filter(|j| !j.user.is_empty()) {
        let who = format!("{}@c.us", jid.user);
        let n = who.len().min(20);
        data[8..8 + n].copy_from_slice(&who.as_bytes()[..n]);
    }
    data[28..].copy_from_slice(random);
    let hash = Sha256::digest(data);
    format!("3EB0{}", hex::encode_upper(&hash[..9]))
}

/// The key of the message a reaction, edit or revoke is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageKey {
    /// The chat, when the sender set it.
    pub remote_jid: Option<String>,
    /// Whether the target was sent by the reacting/editing/revoking side's account.
    pub from_me: bool,
    /// The target message's id.
    pub id: String,
    /// The target's sender in a group, when set.
    pub participant: Option<String>,
}

impl MessageKey {
    fn from_proto(key: Option<&e2e::MessageKey>, what: &'static str) -> Result<Self, MessageError> {
        let key = key.ok_or(MessageError::MissingField(what))?;
        let id = key
            .id
            .clone()
            .filter(|id| !id.is_empty())
            .ok_or(MessageError::MissingField(what))?;
        Ok(MessageKey {
            remote_jid: key.remote_jid.clone(),
            from_me: key.from_me.unwrap_or(false),
            id,
            participant: key.participant.clone(),
        })
    }
}

/// What a message replies to (`contextInfo` with a `stanzaId`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplyContext {
    /// The quoted message's id.
    pub stanza_id: String,
    /// The quoted message's sender (user JID), when set.
    pub participant: Option<String>,
    /// The quoted message's chat, when it is not the reply's chat.
    pub remote_jid: Option<String>,
    /// The quoted message's content, as the sender copied it.
    pub quoted: Option<e2e::Message>,
}

impl ReplyContext {
    fn from_proto(ctx: Option<&e2e::ContextInfo>) -> Option<Self> {
        let ctx = ctx?;
        let stanza_id = ctx.stanza_id.clone().filter(|s| !s.is_empty())?;
        Some(ReplyContext {
            stanza_id,
            participant: ctx.participant.clone(),
            remote_jid: ctx.remote_jid.clone(),
            quoted: ctx.quoted_message.as_deref().cloned(),
        })
    }

    /// The quoted message read as content, when it carries content this module knows.
    pub fn quoted_content(&self) -> Option<MessageContent> {
        content_of(self.quoted.as_ref()?, None, 1).ok().flatten()
    }
}

/// The kind of a media message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// `imageMessage`.
    Image,
    /// `videoMessage`.
    Video,
    /// `ptvMessage`: a round video note.
    VideoNote,
    /// `audioMessage` without `ptt`.
    Audio,
    /// `audioMessage` with `ptt`: a voice note.
    VoiceNote,
    /// `documentMessage`.
    Document,
    /// `stickerMessage`.
    Sticker,
}

/// A media message's metadata: what is needed to download and decrypt the file and to show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Media {
    /// Which kind of media.
    pub kind: MediaKind,
    /// The MIME type.
    pub mimetype: Option<String>,
    /// The plaintext file's size in bytes (`fileLength`).
    pub size: Option<u64>,
    /// The caption (image, video, document).
    pub caption: Option<String>,
    /// The file name (document).
    pub file_name: Option<String>,
    /// The 32-byte media key the file is encrypted with.
    pub media_key: Option<Vec<u8>>,
    /// The path on the media servers.
    pub direct_path: Option<String>,
    /// The full download URL, when set.
    pub url: Option<String>,
    /// SHA-256 of the plaintext file.
    pub file_sha256: Option<Vec<u8>>,
    /// SHA-256 of the encrypted file.
    pub file_enc_sha256: Option<Vec<u8>>,
    /// Duration in seconds (audio, video).
    pub seconds: Option<u32>,
    /// What the media message replies to.
    pub reply: Option<ReplyContext>,
}

/// What a message says.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageContent {
    /// `conversation` or `extendedTextMessage`.
    Text {
        /// The text.
        text: String,
        /// What it replies to, if anything.
        reply: Option<ReplyContext>,
    },
    /// `reactionMessage`; an empty emoji removes the sender's reaction.
    Reaction {
        /// The message reacted to.
        target: MessageKey,
        /// The emoji.
        emoji: String,
    },
    /// `protocolMessage` of type `MESSAGE_EDIT`.
    Edit {
        /// The edited message.
        target: MessageKey,
        /// Its new content.
        content: Box<MessageContent>,
    },
    /// `protocolMessage` of type `REVOKE` ("deleted for everyone").
    Revoke {
        /// The deleted message.
        target: MessageKey,
    },
    /// An image, video, audio, document or sticker.
    Media(Media),
    /// `locationMessage`.
    Location {
        /// Degrees latitude.
        latitude: Option<f64>,
        /// Degrees longitude.
        longitude: Option<f64>,
        /// The place's name.
        name: Option<String>,
        /// The place's address.
        address: Option<String>,
    },
    /// `contactMessage`.
    Contact {
        /// The contact's display name.
        display_name: Option<String>,
        /// The vCard.
        vcard: Option<String>,
    },
    /// Content this module does not read (a poll, a history-sync notification, …).
    Unsupported {
        /// The top-level `Message` field numbers present, without sender-key distribution
        /// and `messageContextInfo` (empty when only the wrapped message was at hand).
        fields: Vec<u32>,
        /// For a `protocolMessage`, its type (`ProtocolMessage.Type`).
        protocol_type: Option<i32>,
    },
}

impl MessageContent {
    /// A short name for the content's type, for logs and event JSON (`type`): `text`,
    /// `reaction`, `edit`, `revoke`, `image`, `video`, `video_note`, `audio`, `voice_note`,
    /// `document`, `sticker`, `location`, `contact` or `unsupported`.
    pub fn type_name(&self) -> &'static str {
        match self {
            MessageContent::Text { .. } => "text",
            MessageContent::Reaction { .. } => "reaction",
            MessageContent::Edit { .. } => "edit",
            MessageContent::Revoke { .. } => "revoke",
            MessageContent::Media(m) => match m.kind {
                MediaKind::Image => "image",
                MediaKind::Video => "video",
                MediaKind::VideoNote => "video_note",
                MediaKind::Audio => "audio",
                MediaKind::VoiceNote => "voice_note",
                MediaKind::Document => "document",
                MediaKind::Sticker => "sticker",
            },
            MessageContent::Location { .. } => "location",
            MessageContent::Contact { .. } => "contact",
            MessageContent::Unsupported { .. } => "unsupported",
        }
    }
}

/// A sender-key distribution message: the Signal group-session setup a group member sends
/// (in a `pkmsg`/`msg`) before or with its first group message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderKeyDistribution {
    /// The group JID.
    pub group_id: String,
    /// The serialized Signal `SenderKeyDistributionMessage`.
    pub distribution: Vec<u8>,
}

/// Own-device sync: the message is one our account sent from another device (`from_me`),
/// and it went to another chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSent {
    /// The chat the message was sent to.
    pub destination_jid: String,
    /// The participant hash the sending device computed, when set.
    pub phash: Option<String>,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedMessage {
    /// What it says; `None` when it only carries a sender-key distribution.
    pub content: Option<MessageContent>,
    /// The sender-key distribution it carries, if any.
    pub sender_key_distribution: Option<SenderKeyDistribution>,
    /// Set when the message was a `deviceSentMessage` (unwrapped into `content`).
    pub device_sent: Option<DeviceSent>,
    /// `messageContextInfo.messageSecret`, if any (used by polls and encrypted reactions).
    pub message_secret: Option<Vec<u8>>,
}

/// Decodes an unpadded `waE2E.Message`.
pub fn decode(bytes: &[u8]) -> Result<DecodedMessage, MessageError> {
    if bytes.is_empty() {
        return Err(MessageError::Empty);
    }
    let msg = e2e::Message::decode(bytes)?;
    let mut skdm = sender_key_of(&msg)?;
    let mut secret = secret_of(&msg);
    let (device_sent, content) = match &msg.device_sent_message {
        Some(ds) => {
            let destination_jid = ds.destination_jid.clone().filter(|d| !d.is_empty()).ok_or(
                MessageError::MissingField("deviceSentMessage.destinationJid"),
            )?;
            let inner = ds
                .message
                .as_deref()
                .ok_or(MessageError::MissingField("deviceSentMessage.message"))?;
            let inner_raw = len_field(bytes, 31).and_then(|d| len_field(d, 2));
            if skdm.is_none() {
                skdm = sender_key_of(inner)?;
            }
            if secret.is_none() {
                secret = secret_of(inner);
            }
            let device_sent = DeviceSent {
                destination_jid,
                phash: ds.phash.clone(),
            };
            (Some(device_sent), content_of(inner, inner_raw, 1)?)
        }
        None => (None, content_of(&msg, Some(bytes), 0)?),
    };
    if content.is_none() && skdm.is_none() {
        return Err(MessageError::Empty);
    }
    Ok(DecodedMessage {
        content,
        sender_key_distribution: skdm,
        device_sent,
        message_secret: secret,
    })
}

/// Encodes a text message: `conversation`, or with a reply `extendedTextMessage` with
/// `contextInfo` (`stanzaId`, `participant`, `remoteJid`, `quotedMessage`). Not padded
/// (`wafleet_signal::padding::pad` does that).
pub fn encode_text(text: &str, reply: Option<&ReplyContext>) -> Vec<u8> {
    let msg = match reply {
        None => e2e::Message {
            conversation: Some(text.to_owned()),
            ..Default::default()
        },
        Some(r) => e2e::Message {
            extended_text_message: Some(Box::new(pm::ExtendedTextMessage {
                text: Some(text.to_owned()),
                context_info: Some(Box::new(e2e::ContextInfo {
                    stanza_id: Some(r.stanza_id.clone()),
                    participant: r.participant.clone(),
                    quoted_message: r.quoted.clone().map(Box::new),
                    remote_jid: r.remote_jid.clone(),
                    ..Default::default()
                })),
                ..Default::default()
            })),
            ..Default::default()
        },
    };
    msg.encode_to_vec()
}

impl MessageKey {
    fn to_proto(&self) -> e2e::MessageKey {
        e2e::MessageKey {
            remote_jid: self.remote_jid.clone(),
            from_me: Some(self.from_me),
            id: Some(self.id.clone()),
            participant: self.participant.clone(),
        }
    }
}

/// Encodes a reaction to `target` (`reactionMessage`); an empty `emoji` removes ours.
/// `sender_timestamp_ms` is the reaction's time, which orders a sender's reactions.
pub fn encode_reaction(target: &MessageKey, emoji: &str, sender_timestamp_ms: i64) -> Vec<u8> {
    e2e::Message {
        reaction_message: Some(pm::ReactionMessage {
            key: Some(target.to_proto()),
            text: Some(emoji.to_owned()),
            grouping_key: None,
            sender_timestamp_ms: Some(sender_timestamp_ms),
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Encodes an edit of our message `target` to `text` (`protocolMessage` `MESSAGE_EDIT`
/// with the new `conversation` as `editedMessage`).
pub fn encode_edit(target: &MessageKey, text: &str, timestamp_ms: i64) -> Vec<u8> {
    e2e::Message {
        protocol_message: Some(Box::new(pm::ProtocolMessage {
            key: Some(target.to_proto()),
            r#type: Some(pm::protocol_message::Type::MessageEdit as i32),
            edited_message: Some(Box::new(e2e::Message {
                conversation: Some(text.to_owned()),
                ..Default::default()
            })),
            timestamp_ms: Some(timestamp_ms),
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Encodes the deletion for everyone of our message `target` (`protocolMessage` `REVOKE`).
pub fn encode_revoke(target: &MessageKey) -> Vec<u8> {
    e2e::Message {
        protocol_message: Some(Box::new(pm::ProtocolMessage {
            key: Some(target.to_proto()),
            r#type: Some(pm::protocol_message::Type::Revoke as i32),
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec()
}

fn sender_key_of(msg: &e2e::Message) -> Result<Option<SenderKeyDistribution>, MessageError> {
    let Some(s) = msg.sender_key_distribution_message.as_ref().or(msg
        .fast_ratchet_key_sender_key_distribution_message
        .as_ref())
    else {
        return Ok(None);
    };
    let group_id =
        s.group_id
            .clone()
            .filter(|g| !g.is_empty())
            .ok_or(MessageError::MissingField(
                "senderKeyDistributionMessage.groupId",
            ))?;
    let distribution = s
        .axolotl_sender_key_distribution_message
        .clone()
        .filter(|d| !d.is_empty())
        .ok_or(MessageError::MissingField(
            "senderKeyDistributionMessage.axolotlSenderKeyDistributionMessage",
        ))?;
    Ok(Some(SenderKeyDistribution {
        group_id,
        distribution,
    }))
}

fn secret_of(msg: &e2e::Message) -> Option<Vec<u8>> {
    msg.message_context_info.as_ref()?.message_secret.clone()
}

/// The wrappers that only carry another `Message` (field 1 of a `FutureProofMessage`), by
/// their field number in `Message`.
fn wrapped(msg: &e2e::Message) -> Option<(u32, Option<&e2e::Message>)> {
    [
        (40, &msg.ephemeral_message),
        (37, &msg.view_once_message),
        (55, &msg.view_once_message_v2),
        (59, &msg.view_once_message_v2_extension),
        (53, &msg.document_with_caption_message),
        (58, &msg.edited_message),
    ]
    .into_iter()
    .find_map(|(n, w)| w.as_ref().map(|w| (n, w.message.as_deref())))
}

/// Top-level fields that are not content.
const METADATA_FIELDS: [u32; 3] = [2, 15, 35];

/// The content of `msg`; `raw` is its encoding when at hand (to name unknown fields).
fn content_of(
    msg: &e2e::Message,
    raw: Option<&[u8]>,
    depth: usize,
) -> Result<Option<MessageContent>, MessageError> {
    if depth > MAX_DEPTH {
        return Err(MessageError::TooDeep);
    }
    if let Some((n, inner)) = wrapped(msg) {
        let inner_raw = raw
            .and_then(|r| len_field(r, n))
            .and_then(|w| len_field(w, 1));
        let content = match inner {
            Some(inner) => content_of(inner, inner_raw, depth + 1)?,
            None => None,
        };
        return Ok(Some(content.unwrap_or(MessageContent::Unsupported {
            fields: vec![n],
            protocol_type: None,
        })));
    }
    if let Some(p) = &msg.protocol_message {
        let ty = p
            .r#type
            .unwrap_or(pm::protocol_message::Type::Revoke as i32);
        return Ok(Some(match pm::protocol_message::Type::try_from(ty).ok() {
            Some(pm::protocol_message::Type::Revoke) => MessageContent::Revoke {
                target: MessageKey::from_proto(p.key.as_ref(), "protocolMessage.key.id")?,
            },
            Some(pm::protocol_message::Type::MessageEdit) => {
                let target = MessageKey::from_proto(p.key.as_ref(), "protocolMessage.key.id")?;
                let edited = p
                    .edited_message
                    .as_deref()
                    .ok_or(MessageError::MissingField("protocolMessage.editedMessage"))?;
                let edited_raw = raw
                    .and_then(|r| len_field(r, 12))
                    .and_then(|pr| len_field(pr, 14));
                let content = content_of(edited, edited_raw, depth + 1)?
                    .ok_or(MessageError::MissingField("protocolMessage.editedMessage"))?;
                MessageContent::Edit {
                    target,
                    content: Box::new(content),
                }
            }
            _ => MessageContent::Unsupported {
                fields: vec![12],
                protocol_type: Some(ty),
            },
        }));
    }
    if let Some(r) = &msg.reaction_message {
        return Ok(Some(MessageContent::Reaction {
            target: MessageKey::from_proto(r.key.as_ref(), "reactionMessage.key.id")?,
            emoji: r.text.clone().unwrap_or_default(),
        }));
    }
    if let Some(text) = &msg.conversation {
        return Ok(Some(MessageContent::Text {
            text: text.clone(),
            reply: None,
        }));
    }
    if let Some(x) = &msg.extended_text_message {
        return Ok(Some(MessageContent::Text {
            text: x.text.clone().unwrap_or_default(),
            reply: ReplyContext::from_proto(x.context_info.as_deref()),
        }));
    }
    if let Some(media) = media_of(msg) {
        return Ok(Some(MessageContent::Media(media)));
    }
    if let Some(l) = &msg.location_message {
        return Ok(Some(MessageContent::Location {
            latitude: l.degrees_latitude,
            longitude: l.degrees_longitude,
            name: l.name.clone(),
            address: l.address.clone(),
        }));
    }
    if let Some(c) = &msg.contact_message {
        return Ok(Some(MessageContent::Contact {
            display_name: c.display_name.clone(),
            vcard: c.vcard.clone(),
        }));
    }
    let fields = raw.map(content_fields).unwrap_or_default();
    if fields.is_empty() && raw.is_some() {
        return Ok(None);
    }
    Ok(Some(MessageContent::Unsupported {
        fields,
        protocol_type: None,
    }))
}

fn media_of(msg: &e2e::Message) -> Option<Media> {
    // The media messages are distinct protobuf types with the same field names; one
    // builder for all of them (caption, file name and duration only where a type has them).
    macro_rules! media {
        ($m:expr, $kind:expr, caption: $caption:expr, file_name: $file_name:expr, seconds: $seconds:expr) => {{
            let m = $m;
            Media {
                kind: $kind,
                mimetype: m.mimetype.clone(),
                size: m.file_length,
                caption: $caption,
                file_name: $file_name,
                media_key: m.media_key.clone(),
                direct_path: m.direct_path.clone(),
                url: m.url.clone(),
                file_sha256: m.file_sha256.clone(),
                file_enc_sha256: m.file_enc_sha256.clone(),
                seconds: $seconds,
                reply: ReplyContext::from_proto(m.context_info.as_deref()),
            }
        }};
    }
    if let Some(m) = &msg.image_message {
        return Some(
            media!(m, MediaKind::Image, caption: m.caption.clone(), file_name: None, seconds: None),
        );
    }
    if let Some((m, kind)) = msg
        .video_message
        .as_ref()
        .map(|m| (m, MediaKind::Video))
        .or(msg.ptv_message.as_ref().map(|m| (m, MediaKind::VideoNote)))
    {
        return Some(
            media!(m, kind, caption: m.caption.clone(), file_name: None, seconds: m.seconds),
        );
    }
    if let Some(m) = &msg.audio_message {
        let kind = if m.ptt == Some(true) {
            MediaKind::VoiceNote
        } else {
            MediaKind::Audio
        };
        return Some(media!(m, kind, caption: None, file_name: None, seconds: m.seconds));
    }
    if let Some(m) = &msg.document_message {
        return Some(media!(
            m,
            MediaKind::Document,
            caption: m.caption.clone(),
            file_name: m.file_name.clone(),
            seconds: None
        ));
    }
    msg.sticker_message
        .as_ref()
        .map(|m| media!(m, MediaKind::Sticker, caption: None, file_name: None, seconds: None))
}

/// Reads a base-128 varint; `None` when truncated or longer than 10 bytes.
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Walks the top-level fields of a protobuf: calls `f(number, len_payload)` for each field
/// (`len_payload` only for length-delimited ones) and stops at anything malformed or at a
/// (deprecated) group.
fn walk<'a>(mut buf: &'a [u8], mut f: impl FnMut(u32, Option<&'a [u8]>)) {
    while !buf.is_empty() {
        let Some(key) = varint(&mut buf) else { return };
        let Ok(number) = u32::try_from(key >> 3) else {
            return;
        };
        let payload = match key & 7 {
            0 => {
                if varint(&mut buf).is_none() {
                    return;
                }
                None
            }
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                let Some(rest) = buf.get(n..) else { return };
                buf = rest;
                None
            }
            2 => {
                let Some(len) = varint(&mut buf).and_then(|l| usize::try_from(l).ok()) else {
                    return;
                };
                let (Some(p), Some(rest)) = (buf.get(..len), buf.get(len..)) else {
                    return;
                };
                buf = rest;
                Some(p)
            }
            _ => return,
        };
        f(number, payload);
    }
}

/// The payload of the last length-delimited field `number` (protobuf merges repeated
/// occurrences of a message field; the last one wins for what this module reads).
fn len_field(buf: &[u8], number: u32) -> Option<&[u8]> {
    let mut found = None;
    walk(buf, |n, p| {
        if n == number && p.is_some() {
            found = p;
        }
    });
    found
}

/// The distinct top-level field numbers of a `Message`, without the metadata ones.
fn content_fields(buf: &[u8]) -> Vec<u32> {
    let mut fields = Vec::new();
    walk(buf, |n, _| {
        if !METADATA_FIELDS.contains(&n) && !fields.contains(&n) {
            fields.push(n);
        }
    });
    fields
}
