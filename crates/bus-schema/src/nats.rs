//! async-nats glue (feature `nats`): the stream config, publish headers and decoding
//! straight from received messages.

use async_nats::jetstream::stream;
use async_nats::HeaderMap;

use crate::codec::{encode, ContentType, DecodeError, EncodeError, CONTENT_TYPE_HEADER};
use crate::command::Command;
use crate::stream::{event_msg_id, EventStreamConfig, MSG_ID_HEADER};
use crate::subject::EventSubject;
use crate::v1;

impl EventStreamConfig {
    /// The async-nats stream config: file storage, limits retention, old messages dropped
    /// first, the dedup window set.
    pub fn to_nats(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            duplicate_window: self.duplicate_window,
            max_age: self.max_age,
            num_replicas: self.replicas,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        }
    }
}

/// Why an event cannot be published.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PublishError {
    /// The event breaks the contract.
    #[error(transparent)]
    Invalid(#[from] DecodeError),
    /// It cannot be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// An event ready to publish: subject, headers (`Nats-Msg-Id`, `Content-Type`) and payload.
#[derive(Debug, Clone)]
pub struct EventPublication {
    /// Where to publish.
    pub subject: EventSubject,
    /// `Nats-Msg-Id` and `Content-Type`.
    pub headers: HeaderMap,
    /// The encoded event.
    pub payload: Vec<u8>,
}

/// Checks an event and prepares its publication.
pub fn event_publication(
    event: &v1::SessionEvent,
    content_type: ContentType,
) -> Result<EventPublication, PublishError> {
    let subject = crate::codec::event_subject(event)?;
    let mut headers = HeaderMap::new();
    headers.insert(
        MSG_ID_HEADER,
        event_msg_id(&subject.address, event.epoch, event.sequence).as_str(),
    );
    headers.insert(CONTENT_TYPE_HEADER, content_type.header_value());
    let payload = encode(event, content_type)?;
    Ok(EventPublication {
        subject,
        headers,
        payload,
    })
}

/// The `Content-Type` header of a message, if any.
pub fn content_type_of(headers: Option<&HeaderMap>) -> Option<&str> {
    headers
        .and_then(|h| h.get(CONTENT_TYPE_HEADER))
        .map(|v| v.as_str())
}

/// [`decode_command`](crate::decode_command) on a received message.
pub fn decode_command_message(message: &async_nats::Message) -> Result<Command, DecodeError> {
    crate::codec::decode_command(
        message.subject.as_str(),
        &message.payload,
        content_type_of(message.headers.as_ref()),
    )
}

/// [`decode_event`](crate::decode_event) on a received message.
pub fn decode_event_message(
    message: &async_nats::Message,
) -> Result<v1::SessionEvent, DecodeError> {
    crate::codec::decode_event(
        message.subject.as_str(),
        &message.payload,
        content_type_of(message.headers.as_ref()),
    )
}
