//! What a [`SessionDriver`](crate::SessionDriver) reports to its caller, with a JSON form
//! (`{"event":"qr",…}`, one object per event) and snake_case reason codes.
//!
//! The messaging events (`message`, `receipt`, `undecryptable`, `sent`) are the lines
//! `wafleet listen --json` and `wafleet send --json` print. Their `Debug` form leaves out
//! what the messages say (text, captions, media keys): only ids, chats and types show in
//! logs.

use base64::Engine;
use serde::{Serialize, Serializer};
use wafleet_protocol::client::DisconnectReason;
use wafleet_protocol::message::{Media, MessageContent};

/// A string that holds a secret (a QR text carries the ADV secret, a pairing code is a
/// password): serialized as the plain string on purpose, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: String) -> Secret {
        Secret(text)
    }

    /// The text, shown on purpose.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Events of one driven session. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DriverEvent {
    /// Show this QR (text for [`QrImage`](crate::qr::QrImage)) until `expires_at`.
    Qr {
        /// The QR text.
        code: Secret,
        /// When it stops being valid.
        expires_at: u64,
        /// 0 for the first QR of a connection.
        seq: u32,
        /// How many more QRs this connection will show.
        remaining: u32,
    },
    /// Show this pairing code (`XXXX-XXXX`); the user types it on the phone.
    PairingCode {
        /// The code.
        code: Secret,
        /// When it stops being valid (the end of the QR socket).
        expires_at: u64,
    },
    /// The pairing-code request failed; QR linking goes on.
    PairingCodeFailed {
        /// What went wrong.
        reason: String,
    },
    /// The phone linked this device; the identity is saved.
    Paired {
        /// Our device JID.
        jid: String,
        /// Our LID, if given.
        lid: Option<String>,
    },
    /// Logged in.
    Ready {
        /// Our device JID.
        jid: String,
        /// Our LID, if known.
        lid: Option<String>,
    },
    /// New one-time prekeys were saved and their upload sent to the server.
    PreKeysUploaded {
        /// How many.
        count: usize,
    },
    /// The server's `pair-success` did not verify (nothing was saved).
    AuthFailure {
        /// `hmac_mismatch`, `signature_mismatch` or `invalid_device_identity`.
        reason: String,
        /// The verification error.
        detail: String,
    },
    /// The connection ended.
    Disconnected {
        /// A reason code ([`reason_code`] or a driver-side code such as `connection_lost`).
        reason: String,
        /// Whether the driver will connect again.
        will_reconnect: bool,
    },
    /// An inbound message, decrypted (`{"event":"message",…}`).
    Message(Box<MessageEvent>),
    /// A receipt for a message we sent (`{"event":"receipt",…}`), one event per message id.
    Receipt(ReceiptEvent),
    /// An inbound message that could not be decrypted or read; a retry receipt was sent.
    Undecryptable(UndecryptableEvent),
    /// The server accepted a message we sent (`{"event":"sent",…}`).
    #[serde(rename = "sent")]
    MessageSent(SentEvent),
    /// The driver stopped for good. Always the last event, unless the caller stopped it.
    Failed {
        /// A reason code: `logged_out`, `replaced`, `qr_exhausted`, `client_outdated`,
        /// `temporarily_banned`, `banned`, `main_device_gone`, `server_failure`,
        /// `storage_error`, `unreachable`, ….
        reason: String,
        /// A human-readable account.
        detail: String,
    },
}

/// Serializes bytes as standard base64.
fn base64_opt<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(b) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b)),
        None => s.serialize_none(),
    }
}

/// An inbound message as `wafleet listen` prints it. `text` is the text of a text message,
/// the caption of a media message, the new text of an edit; `null` otherwise. The other
/// content fields are present only for the types that have them.
#[derive(Clone, PartialEq, Default, Serialize)]
pub struct MessageEvent {
    /// The message id.
    pub id: String,
    /// The chat: the other user for a 1:1 message (also when we sent it from another
    /// device), the group for a group message.
    pub chat: String,
    /// Who sent it (user JID, without device).
    pub sender: String,
    /// Whether our own account sent it (from the phone or another companion).
    pub from_me: bool,
    /// The server's time of the message, unix milliseconds.
    pub timestamp: u64,
    /// The sender's display name, when the server gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_name: Option<String>,
    /// `text`, `reaction`, `edit`, `revoke`, `image`, `video`, `video_note`, `audio`,
    /// `voice_note`, `document`, `sticker`, `location`, `contact` or `unsupported`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text, caption or edited text.
    pub text: Option<String>,
    /// The id of the message this one replies to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The id of the message a reaction, edit or revoke is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A reaction's emoji (empty: the reaction was removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// Media: the MIME type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mimetype: Option<String>,
    /// Media: the plaintext file size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Media: the document's file name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// Media: the key the file is encrypted with (base64).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "base64_opt")]
    pub media_key: Option<Vec<u8>>,
    /// Media: the path on the media servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_path: Option<String>,
    /// Media: the download URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Media: SHA-256 of the plaintext file (base64).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "base64_opt")]
    pub file_sha256: Option<Vec<u8>>,
    /// Media: SHA-256 of the encrypted file (base64).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "base64_opt")]
    pub file_enc_sha256: Option<Vec<u8>>,
    /// Media: duration in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u32>,
    /// Location: degrees latitude.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    /// Location: degrees longitude.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    /// Location: the place's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Location: the place's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Contact: the display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Contact: the vCard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcard: Option<String>,
}

impl std::fmt::Debug for MessageEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never what the message says: no text, caption, emoji, media key or place.
        f.debug_struct("MessageEvent")
            .field("id", &self.id)
            .field("chat", &self.chat)
            .field("sender", &self.sender)
            .field("from_me", &self.from_me)
            .field("timestamp", &self.timestamp)
            .field("type", &self.kind)
            .finish_non_exhaustive()
    }
}

impl MessageEvent {
    /// The event of a message with these keys and this content.
    pub fn new(
        id: String,
        chat: String,
        sender: String,
        from_me: bool,
        timestamp: u64,
        content: &MessageContent,
    ) -> MessageEvent {
        let mut event = MessageEvent {
            id,
            chat,
            sender,
            from_me,
            timestamp,
            kind: content.type_name().to_owned(),
            ..MessageEvent::default()
        };
        event.fill(content);
        event
    }

    fn fill(&mut self, content: &MessageContent) {
        match content {
            MessageContent::Text { text, reply } => {
                self.text = Some(text.clone());
                self.reply_to = reply.as_ref().map(|r| r.stanza_id.clone());
            }
            MessageContent::Reaction { target, emoji } => {
                self.target = Some(target.id.clone());
                self.emoji = Some(emoji.clone());
            }
            MessageContent::Edit { target, content } => {
                self.fill(content);
                self.target = Some(target.id.clone());
            }
            MessageContent::Revoke { target } => self.target = Some(target.id.clone()),
            MessageContent::Media(media) => self.fill_media(media),
            MessageContent::Location {
                latitude,
                longitude,
                name,
                address,
            } => {
                self.latitude = *latitude;
                self.longitude = *longitude;
                self.name = name.clone();
                self.address = address.clone();
            }
            MessageContent::Contact {
                display_name,
                vcard,
            } => {
                self.display_name = display_name.clone();
                self.vcard = vcard.clone();
            }
            MessageContent::Unsupported { .. } => {}
        }
    }

    fn fill_media(&mut self, media: &Media) {
        self.text = media.caption.clone();
        self.reply_to = media.reply.as_ref().map(|r| r.stanza_id.clone());
        self.mimetype = media.mimetype.clone();
        self.size = media.size;
        self.file_name = media.file_name.clone();
        self.media_key = media.media_key.clone();
        self.direct_path = media.direct_path.clone();
        self.url = media.url.clone();
        self.file_sha256 = media.file_sha256.clone();
        self.file_enc_sha256 = media.file_enc_sha256.clone();
        self.seconds = media.seconds;
    }
}

/// A receipt for one message we sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptEvent {
    /// The message id.
    pub id: String,
    /// The chat the message went to.
    pub chat: String,
    /// Who sent the receipt (user JID, without device).
    pub sender: String,
    /// `delivered`, `read`, `played`, `retry` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When, unix milliseconds.
    pub timestamp: u64,
}

/// An inbound message that could not be read. The messenger answered it with a retry
/// receipt, so the sender may send it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UndecryptableEvent {
    /// The message id.
    pub id: String,
    /// The chat.
    pub chat: String,
    /// Who sent it (user JID, without device).
    pub sender: String,
    /// Whether our own account sent it.
    pub from_me: bool,
    /// The server's time of the message, unix milliseconds.
    pub timestamp: u64,
    /// Why: `no_session`, `bad_mac`, `unknown_sender_key`, `malformed`, `not_for_us`, ….
    pub reason: String,
}

/// A message we sent, accepted by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SentEvent {
    /// The message id.
    pub id: String,
    /// The recipient (user or group JID).
    pub chat: String,
    /// The server's time of the message, unix milliseconds, when it gave one.
    pub timestamp: Option<u64>,
    /// Addressed devices the message was not encrypted for (they will not get it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedDevice>,
}

/// A device a sent message left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedDevice {
    /// The device JID.
    pub device: String,
    /// Why, in words (`no prekey bundle: error 404`, …).
    pub reason: String,
}

impl SkippedDevice {
    /// The messenger's report, as the event carries it.
    pub fn from_messenger(skipped: &wafleet_messaging::SkippedDevice) -> Self {
        SkippedDevice {
            device: skipped.device.to_string(),
            reason: skipped.reason.to_string(),
        }
    }
}

/// The snake_case code of a disconnect reason.
pub fn reason_code(reason: &DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::Replaced => "replaced",
        DisconnectReason::LoggedOut => "logged_out",
        DisconnectReason::ClientOutdated => "client_outdated",
        DisconnectReason::TemporarilyBanned { .. } => "temporarily_banned",
        DisconnectReason::Banned => "banned",
        DisconnectReason::MainDeviceGone => "main_device_gone",
        DisconnectReason::Failure { .. } => "server_failure",
        DisconnectReason::ServiceUnavailable => "service_unavailable",
        DisconnectReason::StreamError { .. } => "stream_error",
        DisconnectReason::StreamEnd => "stream_end",
        DisconnectReason::KeepaliveTimeout => "keepalive_timeout",
        DisconnectReason::QrExhausted => "qr_exhausted",
    }
}

/// A human-readable account of a disconnect reason.
pub fn reason_detail(reason: &DisconnectReason) -> String {
    match reason {
        DisconnectReason::Replaced => "another connection of this device took over".into(),
        DisconnectReason::LoggedOut => "the device was unlinked (logged out)".into(),
        DisconnectReason::ClientOutdated => "the server refused this client version".into(),
        DisconnectReason::TemporarilyBanned { expire } => match expire {
            Some(s) => format!("the account is temporarily banned for {s} s"),
            None => "the account is temporarily banned".into(),
        },
        DisconnectReason::Banned => "the account is banned".into(),
        DisconnectReason::MainDeviceGone => "the primary device is gone or locked".into(),
        DisconnectReason::Failure { reason } => format!("server failure {reason}"),
        DisconnectReason::ServiceUnavailable => "service unavailable (503)".into(),
        DisconnectReason::StreamError { code, detail } => format!(
            "stream error {} {}",
            code.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
            detail.as_deref().unwrap_or("")
        ),
        DisconnectReason::StreamEnd => "the server ended the stream".into(),
        DisconnectReason::KeepaliveTimeout => "keepalive ping unanswered".into(),
        DisconnectReason::QrExhausted => "no QR code was scanned in time".into(),
    }
}

impl DriverEvent {
    /// The event as one line of JSON.
    pub fn to_json_line(&self) -> String {
        // Every field is a string, number, bool or option of those: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"event":"error","reason":"serialize","detail":"{e}"}}"#)
        })
    }

    /// Whether this is the driver's last event.
    pub fn is_terminal(&self) -> bool {
        matches!(self, DriverEvent::Failed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(e: &DriverEvent) -> Value {
        let line = e.to_json_line();
        assert!(!line.contains('\n'));
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn events_serialize_as_documented() {
        assert_eq!(
            parse(&DriverEvent::Qr {
                code: Secret::new("2@ref,a,b,c,1".into()),
                expires_at: 1_700_000_060_000,
                seq: 0,
                remaining: 5
            }),
            json!({"event":"qr","code":"2@ref,a,b,c,1","expires_at":1_700_000_060_000u64,"seq":0,"remaining":5})
        );
        assert_eq!(
            parse(&DriverEvent::PairingCode {
                code: Secret::new("ABCD-EFGH".into()),
                expires_at: 5
            }),
            json!({"event":"pairing_code","code":"ABCD-EFGH","expires_at":5})
        );
        assert_eq!(
            parse(&DriverEvent::Ready {
                jid: "15551234567:3@s.whatsapp.net".into(),
                lid: None
            }),
            json!({"event":"ready","jid":"15551234567:3@s.whatsapp.net","lid":null})
        );
        assert_eq!(
            parse(&DriverEvent::Disconnected {
                reason: "connection_lost".into(),
                will_reconnect: true
            }),
            json!({"event":"disconnected","reason":"connection_lost","will_reconnect":true})
        );
        assert_eq!(
            parse(&DriverEvent::AuthFailure {
                reason: "hmac_mismatch".into(),
                detail: "d".into()
            }),
            json!({"event":"auth_failure","reason":"hmac_mismatch","detail":"d"})
        );
        assert_eq!(
            parse(&DriverEvent::PreKeysUploaded { count: 812 }),
            json!({"event":"pre_keys_uploaded","count":812})
        );
        assert_eq!(
            parse(&DriverEvent::Failed {
                reason: "qr_exhausted".into(),
                detail: "x".into()
            })["event"],
            "failed"
        );
    }

    fn text(text: &str) -> MessageContent {
        MessageContent::Text {
            text: text.into(),
            reply: None,
        }
    }

    #[test]
    fn messaging_events_serialize_as_the_cli_prints_them() {
        let message = DriverEvent::Message(Box::new(MessageEvent::new(
            "3EB0ABC".into(),
            "15550001111@s.whatsapp.net".into(),
            "15550001111@s.whatsapp.net".into(),
            false,
            1_700_000_000_000,
            &text("hello"),
        )));
        assert_eq!(
            parse(&message),
            json!({"event":"message","id":"3EB0ABC","chat":"15550001111@s.whatsapp.net",
                   "sender":"15550001111@s.whatsapp.net","from_me":false,
                   "timestamp":1_700_000_000_000u64,"type":"text","text":"hello"})
        );
        let media = MessageContent::Media(Media {
            kind: wafleet_protocol::message::MediaKind::Image,
            mimetype: Some("image/jpeg".into()),
            size: Some(1234),
            caption: Some("look".into()),
            file_name: None,
            media_key: Some(vec![1, 2, 3]),
            direct_path: Some("/v/t62/x".into()),
            url: None,
            file_sha256: Some(vec![0xff]),
            file_enc_sha256: None,
            seconds: None,
            reply: None,
        });
        let line = parse(&DriverEvent::Message(Box::new(MessageEvent::new(
            "X".into(),
            "1@g.us".into(),
            "2@s.whatsapp.net".into(),
            true,
            5,
            &media,
        ))));
        assert_eq!(line["type"], "image");
        assert_eq!(line["text"], "look");
        assert_eq!(line["mimetype"], "image/jpeg");
        assert_eq!(line["size"], 1234);
        assert_eq!(line["media_key"], "AQID");
        assert_eq!(line["file_sha256"], "/w==");
        assert_eq!(line["direct_path"], "/v/t62/x");
        assert_eq!(line["from_me"], true);
        assert!(line.get("url").is_none());
        assert_eq!(
            parse(&DriverEvent::Receipt(ReceiptEvent {
                id: "A".into(),
                chat: "c".into(),
                sender: "s".into(),
                kind: "read".into(),
                timestamp: 7
            })),
            json!({"event":"receipt","id":"A","chat":"c","sender":"s","type":"read","timestamp":7})
        );
        assert_eq!(
            parse(&DriverEvent::Undecryptable(UndecryptableEvent {
                id: "B".into(),
                chat: "c".into(),
                sender: "s".into(),
                from_me: false,
                timestamp: 8,
                reason: "bad_mac".into()
            })),
            json!({"event":"undecryptable","id":"B","chat":"c","sender":"s","from_me":false,
                   "timestamp":8,"reason":"bad_mac"})
        );
        assert_eq!(
            parse(&DriverEvent::MessageSent(SentEvent {
                id: "C".into(),
                chat: "c".into(),
                timestamp: Some(9000),
                skipped: Vec::new(),
            })),
            json!({"event":"sent","id":"C","chat":"c","timestamp":9000})
        );
        assert_eq!(
            parse(&DriverEvent::MessageSent(SentEvent {
                id: "D".into(),
                chat: "c".into(),
                timestamp: None,
                skipped: vec![SkippedDevice {
                    device: "1:2@s.whatsapp.net".into(),
                    reason: "no session".into(),
                }],
            })),
            json!({"event":"sent","id":"D","chat":"c","timestamp":null,
                   "skipped":[{"device":"1:2@s.whatsapp.net","reason":"no session"}]})
        );
    }

    #[test]
    fn message_contents_fill_their_fields() {
        let key = wafleet_protocol::message::MessageKey {
            remote_jid: None,
            from_me: false,
            id: "T".into(),
            participant: None,
        };
        let e = MessageEvent::new(
            "i".into(),
            "c".into(),
            "s".into(),
            false,
            0,
            &MessageContent::Reaction {
                target: key.clone(),
                emoji: "👍".into(),
            },
        );
        assert_eq!(
            (e.kind.as_str(), e.target.as_deref()),
            ("reaction", Some("T"))
        );
        assert_eq!(e.emoji.as_deref(), Some("👍"));
        assert_eq!(e.text, None);
        let e = MessageEvent::new(
            "i".into(),
            "c".into(),
            "s".into(),
            false,
            0,
            &MessageContent::Edit {
                target: key,
                content: Box::new(text("fixed")),
            },
        );
        assert_eq!(e.kind, "edit");
        assert_eq!(e.text.as_deref(), Some("fixed"));
        assert_eq!(e.target.as_deref(), Some("T"));
        let e = MessageEvent::new(
            "i".into(),
            "c".into(),
            "s".into(),
            false,
            0,
            &MessageContent::Location {
                latitude: Some(52.5),
                longitude: Some(13.4),
                name: Some("Berlin".into()),
                address: None,
            },
        );
        let line = parse(&DriverEvent::Message(Box::new(e)));
        assert_eq!(line["latitude"], 52.5);
        assert_eq!(line["name"], "Berlin");
        assert_eq!(line["text"], Value::Null);
    }

    #[test]
    fn message_contents_stay_out_of_debug() {
        let e = DriverEvent::Message(Box::new(MessageEvent::new(
            "3EB0ABC".into(),
            "c".into(),
            "s".into(),
            false,
            1,
            &text("the secret plan"),
        )));
        let debug = format!("{e:?}");
        assert!(debug.contains("3EB0ABC"), "{debug}");
        assert!(!debug.contains("secret plan"), "{debug}");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let e = DriverEvent::PairingCode {
            code: Secret::new("ABCD-EFGH".into()),
            expires_at: 1,
        };
        assert!(!format!("{e:?}").contains("ABCD"));
    }

    #[test]
    fn reason_codes_are_snake_case_and_distinct() {
        let reasons = [
            DisconnectReason::Replaced,
            DisconnectReason::LoggedOut,
            DisconnectReason::ClientOutdated,
            DisconnectReason::TemporarilyBanned { expire: None },
            DisconnectReason::Banned,
            DisconnectReason::MainDeviceGone,
            DisconnectReason::Failure { reason: 500 },
            DisconnectReason::ServiceUnavailable,
            DisconnectReason::StreamError {
                code: None,
                detail: None,
            },
            DisconnectReason::StreamEnd,
            DisconnectReason::KeepaliveTimeout,
            DisconnectReason::QrExhausted,
        ];
        let codes: std::collections::HashSet<_> = reasons.iter().map(reason_code).collect();
        assert_eq!(codes.len(), reasons.len());
        for c in codes {
            assert!(
                c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{c}"
            );
        }
    }
}
