//! Encoding and decoding payloads: protobuf or proto3 JSON, chosen by the `Content-Type`
//! header, with typed errors for everything a sender can get wrong.

use std::fmt;

use prost::Message;
use serde::{de::DeserializeOwned, Serialize};

use crate::command::{validate_command, Command, CommandBody, CommandError};
use crate::name::{NameError, SessionAddress, WorkerId};
use crate::subject::{
    CommandSubject, CommandVerb, EventKind, EventSubject, SubjectError, SysKind, SysSubject,
};
use crate::{internal, v1};

/// The NATS header that names the payload's encoding.
pub const CONTENT_TYPE_HEADER: &str = "Content-Type";
/// The `Content-Type` of protobuf payloads (also the encoding of a payload without one).
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
/// The `Content-Type` of proto3 JSON payloads.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// A payload encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ContentType {
    /// Protobuf binary: the default.
    #[default]
    Protobuf,
    /// proto3 JSON (lowerCamelCase field names out; both spellings in).
    Json,
}

impl ContentType {
    /// The encoding a `Content-Type` header value names. No header (or an empty one) means
    /// protobuf. Parameters (`; charset=utf-8`) are ignored; the media type is matched
    /// without regard to case. `application/protobuf` is accepted too.
    pub fn from_header(value: Option<&str>) -> Result<ContentType, DecodeError> {
        let Some(value) = value else {
            return Ok(ContentType::Protobuf);
        };
        let media = value.split(';').next().unwrap_or_default().trim();
        if media.is_empty()
            || media.eq_ignore_ascii_case(CONTENT_TYPE_PROTOBUF)
            || media.eq_ignore_ascii_case("application/protobuf")
        {
            Ok(ContentType::Protobuf)
        } else if media.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
            Ok(ContentType::Json)
        } else {
            Err(DecodeError::UnsupportedContentType(value.to_string()))
        }
    }

    /// The header value to send.
    pub fn header_value(self) -> &'static str {
        match self {
            ContentType::Protobuf => CONTENT_TYPE_PROTOBUF,
            ContentType::Json => CONTENT_TYPE_JSON,
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.header_value())
    }
}

/// Why a payload could not be decoded, or a decoded message breaks the contract.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The subject is not of the expected shape.
    #[error(transparent)]
    Subject(#[from] SubjectError),
    /// The `Content-Type` header names something else than protobuf or JSON.
    #[error("unsupported content type {0:?}; use application/x-protobuf or application/json")]
    UnsupportedContentType(String),
    /// Not a protobuf encoding of the expected message.
    #[error("payload is not a protobuf {message}: {reason}")]
    Protobuf {
        /// The expected message type.
        message: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// Not proto3 JSON of the expected message.
    #[error("payload is not JSON of {message}: {reason}")]
    Json {
        /// The expected message type.
        message: &'static str,
        /// What the decoder said (with line and column).
        reason: String,
    },
    /// The command decoded, but a field is invalid.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A name inside a message (not the subject) breaks the name rules.
    #[error("invalid name in payload: {0}")]
    InvalidName(#[from] NameError),
    /// A field of the message disagrees with the subject it came on.
    #[error("payload {field} is {found:?} but the subject says {expected:?}")]
    SubjectMismatch {
        /// The field.
        field: &'static str,
        /// The value the subject implies.
        expected: String,
        /// The value in the payload.
        found: String,
    },
    /// A required field is missing (unset oneof, absent timestamp) or zero where it must
    /// not be (epoch, sequence).
    #[error("{message} has no {field}")]
    MissingField {
        /// The message type.
        message: &'static str,
        /// The field.
        field: &'static str,
    },
}

impl DecodeError {
    /// The error code to reply with when this error is about a command.
    pub fn error_code(&self) -> v1::ErrorCode {
        match self {
            DecodeError::Subject(_) => v1::ErrorCode::InvalidSubject,
            DecodeError::UnsupportedContentType(_) => v1::ErrorCode::UnsupportedContentType,
            DecodeError::Command(e) => e.error_code(),
            DecodeError::Protobuf { .. }
            | DecodeError::Json { .. }
            | DecodeError::InvalidName(_)
            | DecodeError::SubjectMismatch { .. }
            | DecodeError::MissingField { .. } => v1::ErrorCode::MalformedCommand,
        }
    }

    /// The error as a reply payload.
    pub fn to_command_error(&self) -> v1::CommandError {
        v1::CommandError {
            code: self.error_code() as i32,
            message: self.to_string(),
            retry_after: None,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The JSON mapping refused a value (an enum number with no name, a timestamp out of
    /// RFC 3339's range).
    #[error("cannot encode {message} as JSON: {reason}")]
    Json {
        /// The message type.
        message: &'static str,
        /// What the encoder said.
        reason: String,
    },
}

/// A bus message: prost encoding plus the proto3 JSON mapping.
pub trait BusMessage: Message + Default + Serialize + DeserializeOwned {}
impl<T: Message + Default + Serialize + DeserializeOwned> BusMessage for T {}

fn type_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Encodes `message` as `content_type`.
pub fn encode<M: BusMessage>(
    message: &M,
    content_type: ContentType,
) -> Result<Vec<u8>, EncodeError> {
    match content_type {
        ContentType::Protobuf => Ok(message.encode_to_vec()),
        ContentType::Json => serde_json::to_vec(message).map_err(|e| EncodeError::Json {
            message: type_name::<M>(),
            reason: e.to_string(),
        }),
    }
}

/// Decodes `payload` as `content_type`. Never panics on any input.
pub fn decode<M: BusMessage>(payload: &[u8], content_type: ContentType) -> Result<M, DecodeError> {
    match content_type {
        ContentType::Protobuf => M::decode(payload).map_err(|e| DecodeError::Protobuf {
            message: type_name::<M>(),
            reason: e.to_string(),
        }),
        ContentType::Json => serde_json::from_slice(payload).map_err(|e| DecodeError::Json {
            message: type_name::<M>(),
            reason: e.to_string(),
        }),
    }
}

/// Decodes a command as the coordinator receives it: the subject names tenant, session and
/// verb; the payload is that verb's message, encoded as `content_type` (the `Content-Type`
/// header value, if any). The command id, phone number and metadata are validated.
pub fn decode_command(
    subject: &str,
    payload: &[u8],
    content_type: Option<&str>,
) -> Result<Command, DecodeError> {
    let subject = CommandSubject::parse(subject)?;
    let content_type = ContentType::from_header(content_type)?;
    let body = match subject.verb {
        CommandVerb::Create => CommandBody::Create(decode(payload, content_type)?),
        CommandVerb::Start => CommandBody::Start(decode(payload, content_type)?),
        CommandVerb::Stop => CommandBody::Stop(decode(payload, content_type)?),
        CommandVerb::Logout => CommandBody::Logout(decode(payload, content_type)?),
        CommandVerb::Delete => CommandBody::Delete(decode(payload, content_type)?),
        CommandVerb::RequestPairingCode => {
            CommandBody::RequestPairingCode(decode(payload, content_type)?)
        }
        CommandVerb::Send => CommandBody::Send(decode(payload, content_type)?),
    };
    validate_command(&body)?;
    Ok(Command {
        address: subject.address,
        body,
    })
}

/// Decodes a command reply; it must carry an outcome.
pub fn decode_reply(
    payload: &[u8],
    content_type: Option<&str>,
) -> Result<v1::CommandReply, DecodeError> {
    let reply: v1::CommandReply = decode(payload, ContentType::from_header(content_type)?)?;
    if reply.outcome.is_none() {
        return Err(DecodeError::MissingField {
            message: "CommandReply",
            field: "outcome",
        });
    }
    Ok(reply)
}

/// The kind of an event payload.
pub fn event_kind(payload: &v1::session_event::Payload) -> EventKind {
    use v1::session_event::Payload;
    match payload {
        Payload::Status(_) => EventKind::Status,
        Payload::Qr(_) => EventKind::Qr,
        Payload::PairingCode(_) => EventKind::PairingCode,
        Payload::Ready(_) => EventKind::Ready,
        Payload::Disconnected(_) => EventKind::Disconnected,
        Payload::Message(_) => EventKind::Message,
        Payload::Receipt(_) => EventKind::Receipt,
        Payload::MessageUndecryptable(_) => EventKind::MessageUndecryptable,
        Payload::MessageSent(_) => EventKind::MessageSent,
    }
}

/// Checks an event against the contract (valid names, epoch and sequence from 1, a
/// timestamp, a payload) and returns the subject to publish it on.
pub fn event_subject(event: &v1::SessionEvent) -> Result<EventSubject, DecodeError> {
    let missing = |field| DecodeError::MissingField {
        message: "SessionEvent",
        field,
    };
    let address = SessionAddress::new(&event.tenant, &event.session)?;
    WorkerId::new(event.worker_id.as_str())?;
    if event.epoch == 0 {
        return Err(missing("epoch"));
    }
    if event.sequence == 0 {
        return Err(missing("sequence"));
    }
    if event.timestamp.is_none() {
        return Err(missing("timestamp"));
    }
    let payload = event.payload.as_ref().ok_or_else(|| missing("payload"))?;
    Ok(EventSubject::new(address, event_kind(payload)))
}

/// Decodes an event as a consumer receives it and checks it against its subject: the
/// envelope's tenant, session and payload kind must be the subject's.
pub fn decode_event(
    subject: &str,
    payload: &[u8],
    content_type: Option<&str>,
) -> Result<v1::SessionEvent, DecodeError> {
    let subject = EventSubject::parse(subject)?;
    let event: v1::SessionEvent = decode(payload, ContentType::from_header(content_type)?)?;
    let inner = event_subject(&event)?;
    mismatch(
        "tenant",
        subject.address.tenant.as_str(),
        inner.address.tenant.as_str(),
    )?;
    mismatch(
        "session",
        subject.address.session.as_str(),
        inner.address.session.as_str(),
    )?;
    mismatch("kind", subject.kind.as_str(), inner.kind.as_str())?;
    Ok(event)
}

fn mismatch(field: &'static str, expected: &str, found: &str) -> Result<(), DecodeError> {
    if expected != found {
        return Err(DecodeError::SubjectMismatch {
            field,
            expected: expected.to_string(),
            found: found.to_string(),
        });
    }
    Ok(())
}

/// An internal message, typed by its subject.
#[derive(Debug, Clone, PartialEq)]
pub enum SysMessage {
    /// From a worker.
    Heartbeat(internal::v1::WorkerHeartbeat),
    /// From a worker.
    LeaseRenew(internal::v1::LeaseRenew),
    /// From a worker.
    LeaseRelease(internal::v1::LeaseRelease),
    /// From a worker.
    Shutdown(internal::v1::WorkerShutdown),
    /// From a worker: commit a blob version under a lease epoch.
    BlobCommit(internal::v1::BlobCommit),
    /// To a worker.
    LeaseGrant(internal::v1::LeaseGrant),
    /// To a worker.
    LeaseRevoke(internal::v1::LeaseRevoke),
    /// To a worker.
    Command(internal::v1::ForwardedCommand),
}

/// Decodes an internal message. Messages that name a worker must name the subject's
/// worker, so a worker's publish permission on its own subjects is enough to keep it from
/// acting for another.
pub fn decode_sys(
    subject: &str,
    payload: &[u8],
    content_type: Option<&str>,
) -> Result<(SysSubject, SysMessage), DecodeError> {
    let subject = SysSubject::parse(subject)?;
    let ct = ContentType::from_header(content_type)?;
    let (named_worker, message) = match subject.kind {
        SysKind::Heartbeat => {
            let m: internal::v1::WorkerHeartbeat = decode(payload, ct)?;
            (Some(m.worker_id.clone()), SysMessage::Heartbeat(m))
        }
        SysKind::LeaseRenew => {
            let m: internal::v1::LeaseRenew = decode(payload, ct)?;
            (Some(m.worker_id.clone()), SysMessage::LeaseRenew(m))
        }
        SysKind::LeaseRelease => {
            let m: internal::v1::LeaseRelease = decode(payload, ct)?;
            (Some(m.worker_id.clone()), SysMessage::LeaseRelease(m))
        }
        SysKind::Shutdown => {
            let m: internal::v1::WorkerShutdown = decode(payload, ct)?;
            (Some(m.worker_id.clone()), SysMessage::Shutdown(m))
        }
        SysKind::BlobCommit => {
            let m: internal::v1::BlobCommit = decode(payload, ct)?;
            // Epoch 0 is never a lease and version 0 is never above a committed one.
            for (field, value) in [("epoch", m.epoch), ("version", m.version)] {
                if value == 0 {
                    return Err(DecodeError::MissingField {
                        message: "BlobCommit",
                        field,
                    });
                }
            }
            (Some(m.worker_id.clone()), SysMessage::BlobCommit(m))
        }
        SysKind::LeaseGrant => {
            let m: internal::v1::LeaseGrant = decode(payload, ct)?;
            (Some(m.worker_id.clone()), SysMessage::LeaseGrant(m))
        }
        SysKind::LeaseRevoke => (None, SysMessage::LeaseRevoke(decode(payload, ct)?)),
        SysKind::Command => {
            let m: internal::v1::ForwardedCommand = decode(payload, ct)?;
            if m.command.is_none() {
                return Err(DecodeError::MissingField {
                    message: "ForwardedCommand",
                    field: "command",
                });
            }
            (None, SysMessage::Command(m))
        }
    };
    if let Some(named) = named_worker {
        mismatch("worker_id", subject.worker.as_str(), &named)?;
    }
    Ok((subject, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_header_values() {
        assert_eq!(ContentType::from_header(None), Ok(ContentType::Protobuf));
        assert_eq!(
            ContentType::from_header(Some("")),
            Ok(ContentType::Protobuf)
        );
        assert_eq!(
            ContentType::from_header(Some("application/x-protobuf")),
            Ok(ContentType::Protobuf)
        );
        assert_eq!(
            ContentType::from_header(Some("Application/JSON; charset=utf-8")),
            Ok(ContentType::Json)
        );
        assert_eq!(
            ContentType::from_header(Some("text/plain")),
            Err(DecodeError::UnsupportedContentType("text/plain".into()))
        );
    }

    #[test]
    fn error_codes_of_decode_errors() {
        let e = decode_command("wafleet.v1.acme.cmd.session.s.nope", b"", None).unwrap_err();
        assert_eq!(e.error_code(), v1::ErrorCode::InvalidSubject);
        let e = decode_command("wafleet.v1.acme.cmd.session.s.start", b"\xff", None).unwrap_err();
        assert_eq!(e.error_code(), v1::ErrorCode::MalformedCommand);
        let e = decode_command(
            "wafleet.v1.acme.cmd.session.s.start",
            b"{}",
            Some("text/xml"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_command_error().code,
            v1::ErrorCode::UnsupportedContentType as i32
        );
    }
}
