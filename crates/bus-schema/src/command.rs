//! Commands: the typed form of a decoded command, the field rules, and reply builders.

use crate::codec::{encode, ContentType, EncodeError};
use crate::name::SessionAddress;
use crate::subject::{CommandSubject, CommandVerb};
use crate::v1;

/// The longest command id, in bytes.
pub const MAX_COMMAND_ID_LEN: usize = 128;
/// The most metadata entries a session may have.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// The longest metadata key, in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 64;
/// The longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_LEN: usize = 256;
/// The longest text a `send` carries (body, edit), in bytes: WhatsApp's limit on a text
/// message.
pub const MAX_TEXT_LEN: usize = 65_536;
/// The longest recipient or message id a `send` carries, in bytes.
pub const MAX_SEND_FIELD_LEN: usize = 256;

/// A command's payload, by verb.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandBody {
    /// `create`.
    Create(v1::CreateSession),
    /// `start`.
    Start(v1::StartSession),
    /// `stop`.
    Stop(v1::StopSession),
    /// `logout`.
    Logout(v1::LogoutSession),
    /// `delete`.
    Delete(v1::DeleteSession),
    /// `request_pairing_code`.
    RequestPairingCode(v1::RequestPairingCode),
    /// `send`.
    Send(v1::SendMessage),
}

impl CommandBody {
    /// The verb, which goes into the subject.
    pub fn verb(&self) -> CommandVerb {
        match self {
            CommandBody::Create(_) => CommandVerb::Create,
            CommandBody::Start(_) => CommandVerb::Start,
            CommandBody::Stop(_) => CommandVerb::Stop,
            CommandBody::Logout(_) => CommandVerb::Logout,
            CommandBody::Delete(_) => CommandVerb::Delete,
            CommandBody::RequestPairingCode(_) => CommandVerb::RequestPairingCode,
            CommandBody::Send(_) => CommandVerb::Send,
        }
    }

    /// The idempotency id.
    pub fn command_id(&self) -> &str {
        match self {
            CommandBody::Create(m) => &m.command_id,
            CommandBody::Start(m) => &m.command_id,
            CommandBody::Stop(m) => &m.command_id,
            CommandBody::Logout(m) => &m.command_id,
            CommandBody::Delete(m) => &m.command_id,
            CommandBody::RequestPairingCode(m) => &m.command_id,
            CommandBody::Send(m) => &m.command_id,
        }
    }

    /// The payload as `content_type`.
    pub fn encode(&self, content_type: ContentType) -> Result<Vec<u8>, EncodeError> {
        match self {
            CommandBody::Create(m) => encode(m, content_type),
            CommandBody::Start(m) => encode(m, content_type),
            CommandBody::Stop(m) => encode(m, content_type),
            CommandBody::Logout(m) => encode(m, content_type),
            CommandBody::Delete(m) => encode(m, content_type),
            CommandBody::RequestPairingCode(m) => encode(m, content_type),
            CommandBody::Send(m) => encode(m, content_type),
        }
    }
}

/// A command addressed to a session: what [`decode_command`](crate::decode_command)
/// returns, and what a backend builds to send one.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Tenant and session, from the subject.
    pub address: SessionAddress,
    /// The verb's message.
    pub body: CommandBody,
}

impl Command {
    /// The subject to send the command on.
    pub fn subject(&self) -> CommandSubject {
        CommandSubject::new(self.address.clone(), self.body.verb())
    }

    /// The idempotency id.
    pub fn command_id(&self) -> &str {
        self.body.command_id()
    }

    /// Checks the fields a receiver would check, so a sender learns of a bad command
    /// before sending it.
    pub fn validate(&self) -> Result<(), CommandError> {
        validate_command(&self.body)
    }
}

/// A field of a command breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The command id is empty, too long, or has bytes outside visible ASCII.
    #[error(
        "command_id must be 1 to {MAX_COMMAND_ID_LEN} visible ASCII characters (no spaces): {0}"
    )]
    InvalidCommandId(&'static str),
    /// The phone number is not E.164 digits.
    #[error("invalid phone number: {0}")]
    InvalidPhone(#[from] PhoneError),
    /// The metadata breaks the limits.
    #[error("invalid metadata: {0}")]
    InvalidMetadata(String),
    /// A `send` without a recipient, or with one too long to be a JID.
    #[error("invalid recipient: {0}")]
    InvalidRecipient(&'static str),
    /// A `send` without content, or with a field missing or too long (target ids).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A `send` text longer than [`MAX_TEXT_LEN`].
    #[error("the text is {0} bytes; at most {MAX_TEXT_LEN}")]
    TextTooLong(usize),
}

impl CommandError {
    /// The reply error code.
    pub fn error_code(&self) -> v1::ErrorCode {
        match self {
            CommandError::InvalidPhone(_) => v1::ErrorCode::InvalidPhone,
            CommandError::InvalidCommandId(_)
            | CommandError::InvalidMetadata(_)
            | CommandError::InvalidMessage(_) => v1::ErrorCode::MalformedCommand,
            CommandError::InvalidRecipient(_) => v1::ErrorCode::InvalidRecipient,
            CommandError::TextTooLong(_) => v1::ErrorCode::MessageTooLarge,
        }
    }
}

/// Why a phone number is not E.164 digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// A character other than an ASCII digit (`+`, spaces and dashes included: send the
    /// digits only).
    #[error(
        "{found:?} at byte {position}: send digits only, country code first (e.g. 15551234567)"
    )]
    NotDigit {
        /// The character.
        found: char,
        /// Its byte offset.
        position: usize,
    },
    /// Fewer than 7 or more than 15 digits.
    #[error("{0} digits; a number with its country code has 7 to 15")]
    Length(usize),
    /// Starts with 0: a national number, not country code + number.
    #[error("starts with 0; send the country code first (e.g. 4915112345678)")]
    LeadingZero,
}

/// Checks that `digits` is a phone number in E.164 digits: 7 to 15 ASCII digits, the first
/// not 0. Unlike `wafleet_protocol::pairing_code::PhoneNumber::parse` it takes no `+` or
/// separators: the bus carries the normalised form.
pub fn validate_phone_number(digits: &str) -> Result<(), PhoneError> {
    if let Some((position, found)) = digits.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        return Err(PhoneError::NotDigit { found, position });
    }
    if !(7..=15).contains(&digits.len()) {
        return Err(PhoneError::Length(digits.len()));
    }
    if digits.starts_with('0') {
        return Err(PhoneError::LeadingZero);
    }
    Ok(())
}

/// Checks a command id: 1 to [`MAX_COMMAND_ID_LEN`] bytes of visible ASCII (`!` to `~`).
/// UUIDs and ULIDs fit.
pub fn validate_command_id(id: &str) -> Result<(), CommandError> {
    if id.is_empty() {
        return Err(CommandError::InvalidCommandId("it is empty"));
    }
    if id.len() > MAX_COMMAND_ID_LEN {
        return Err(CommandError::InvalidCommandId("it is too long"));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CommandError::InvalidCommandId(
            "it has spaces, control characters or non-ASCII",
        ));
    }
    Ok(())
}

fn validate_metadata(
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<(), CommandError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(CommandError::InvalidMetadata(format!(
            "{} entries; at most {MAX_METADATA_ENTRIES}",
            metadata.len()
        )));
    }
    for (key, value) in metadata {
        if key.is_empty() || key.len() > MAX_METADATA_KEY_LEN {
            return Err(CommandError::InvalidMetadata(format!(
                "key {key:?} must be 1 to {MAX_METADATA_KEY_LEN} bytes"
            )));
        }
        if value.len() > MAX_METADATA_VALUE_LEN {
            return Err(CommandError::InvalidMetadata(format!(
                "value of {key:?} is {} bytes; at most {MAX_METADATA_VALUE_LEN}",
                value.len()
            )));
        }
    }
    Ok(())
}

/// Checks every field of a command body.
pub fn validate_command(body: &CommandBody) -> Result<(), CommandError> {
    validate_command_id(body.command_id())?;
    match body {
        CommandBody::Create(m) => validate_metadata(&m.metadata),
        CommandBody::RequestPairingCode(m) => Ok(validate_phone_number(&m.phone_number)?),
        CommandBody::Send(m) => validate_send(m),
        CommandBody::Start(_)
        | CommandBody::Stop(_)
        | CommandBody::Logout(_)
        | CommandBody::Delete(_) => Ok(()),
    }
}

/// Checks a `send`: a recipient (its form is checked by the worker, which parses it), a
/// content, its target ids, and the text length.
fn validate_send(m: &v1::SendMessage) -> Result<(), CommandError> {
    use v1::send_message::Content;
    if m.to.is_empty() {
        return Err(CommandError::InvalidRecipient("it is empty"));
    }
    if m.to.len() > MAX_SEND_FIELD_LEN {
        return Err(CommandError::InvalidRecipient("it is too long"));
    }
    let target = |id: &str, what: &str| {
        if id.is_empty() || id.len() > MAX_SEND_FIELD_LEN {
            Err(CommandError::InvalidMessage(format!(
                "{what} must be 1 to {MAX_SEND_FIELD_LEN} bytes"
            )))
        } else {
            Ok(())
        }
    };
    let text = |body: &str| {
        if body.is_empty() {
            Err(CommandError::InvalidMessage("the text is empty".into()))
        } else if body.len() > MAX_TEXT_LEN {
            Err(CommandError::TextTooLong(body.len()))
        } else {
            Ok(())
        }
    };
    match &m.content {
        None => Err(CommandError::InvalidMessage(
            "no content: set text, reaction, edit or revoke".into(),
        )),
        Some(Content::Text(t)) => {
            text(&t.body)?;
            if let Some(quoted) = &t.reply_to {
                target(&quoted.id, "reply_to.id")?;
                if quoted.text.len() > MAX_TEXT_LEN {
                    return Err(CommandError::TextTooLong(quoted.text.len()));
                }
            }
            Ok(())
        }
        Some(Content::Reaction(r)) => {
            target(&r.target_id, "reaction.target_id")?;
            if r.emoji.len() > 64 {
                return Err(CommandError::InvalidMessage(
                    "reaction.emoji is longer than 64 bytes".into(),
                ));
            }
            Ok(())
        }
        Some(Content::Edit(e)) => {
            target(&e.target_id, "edit.target_id")?;
            text(&e.body)
        }
        Some(Content::Revoke(r)) => target(&r.target_id, "revoke.target_id"),
    }
}

impl v1::CommandReply {
    /// A successful reply to `send`.
    pub fn with_sent(command_id: impl Into<String>, sent: v1::MessageSent) -> Self {
        v1::CommandReply {
            command_id: command_id.into(),
            replayed: false,
            outcome: Some(v1::command_reply::Outcome::Sent(sent)),
        }
    }

    /// An error reply saying when to retry (`RATE_LIMITED`).
    pub fn with_retry_after(
        command_id: impl Into<String>,
        code: v1::ErrorCode,
        message: impl Into<String>,
        retry_after: std::time::Duration,
    ) -> Self {
        let mut reply = Self::with_error(command_id, code, message);
        if let Some(v1::command_reply::Outcome::Error(e)) = &mut reply.outcome {
            e.retry_after = Some(crate::time::proto_duration(retry_after));
        }
        reply
    }

    /// A successful reply carrying the session after the command.
    pub fn with_session(command_id: impl Into<String>, session: v1::SessionInfo) -> Self {
        v1::CommandReply {
            command_id: command_id.into(),
            replayed: false,
            outcome: Some(v1::command_reply::Outcome::Session(session)),
        }
    }

    /// A successful reply to `request_pairing_code`.
    pub fn with_pairing_code(command_id: impl Into<String>, code: v1::PairingCodeIssued) -> Self {
        v1::CommandReply {
            command_id: command_id.into(),
            replayed: false,
            outcome: Some(v1::command_reply::Outcome::PairingCode(code)),
        }
    }

    /// An error reply.
    pub fn with_error(
        command_id: impl Into<String>,
        code: v1::ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        v1::CommandReply {
            command_id: command_id.into(),
            replayed: false,
            outcome: Some(v1::command_reply::Outcome::Error(v1::CommandError {
                code: code as i32,
                message: message.into(),
                retry_after: None,
            })),
        }
    }

    /// The error, if this is an error reply.
    pub fn error(&self) -> Option<&v1::CommandError> {
        match &self.outcome {
            Some(v1::command_reply::Outcome::Error(e)) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers() {
        assert_eq!(validate_phone_number("15551234567"), Ok(()));
        assert_eq!(validate_phone_number("1234567"), Ok(()));
        assert_eq!(validate_phone_number("123456789012345"), Ok(()));
        assert_eq!(validate_phone_number("123456"), Err(PhoneError::Length(6)));
        assert_eq!(validate_phone_number(""), Err(PhoneError::Length(0)));
        assert_eq!(
            validate_phone_number("1234567890123456"),
            Err(PhoneError::Length(16))
        );
        assert_eq!(
            validate_phone_number("0151123456"),
            Err(PhoneError::LeadingZero)
        );
        assert_eq!(
            validate_phone_number("+15551234567"),
            Err(PhoneError::NotDigit {
                found: '+',
                position: 0
            })
        );
        assert_eq!(
            validate_phone_number("1555 1234567"),
            Err(PhoneError::NotDigit {
                found: ' ',
                position: 4
            })
        );
        assert_eq!(
            validate_phone_number("١٢٣٤٥٦٧"),
            Err(PhoneError::NotDigit {
                found: '١',
                position: 0
            })
        );
    }

    #[test]
    fn command_ids() {
        assert_eq!(validate_command_id("01JD3S7Y9Q2V8B6WQ4T5R0KX1M"), Ok(()));
        assert_eq!(
            validate_command_id("6f1c2d3e-0000-4000-8000-000000000000"),
            Ok(())
        );
        assert!(validate_command_id("").is_err());
        assert!(validate_command_id("a b").is_err());
        assert!(validate_command_id("é").is_err());
        assert!(validate_command_id(&"x".repeat(MAX_COMMAND_ID_LEN)).is_ok());
        assert!(validate_command_id(&"x".repeat(MAX_COMMAND_ID_LEN + 1)).is_err());
    }

    #[test]
    fn metadata_limits() {
        let body = |metadata| {
            CommandBody::Create(v1::CreateSession {
                command_id: "c1".into(),
                metadata,
            })
        };
        let ok = [("crm".to_string(), "42".to_string())]
            .into_iter()
            .collect();
        assert_eq!(validate_command(&body(ok)), Ok(()));
        let too_many = (0..=MAX_METADATA_ENTRIES)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(matches!(
            validate_command(&body(too_many)),
            Err(CommandError::InvalidMetadata(_))
        ));
        let empty_key = [(String::new(), "v".to_string())].into_iter().collect();
        assert!(validate_command(&body(empty_key)).is_err());
        let long_value = [("k".to_string(), "v".repeat(MAX_METADATA_VALUE_LEN + 1))]
            .into_iter()
            .collect();
        assert!(validate_command(&body(long_value)).is_err());
    }
}
