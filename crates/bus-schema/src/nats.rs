//! async-nats glue (feature `nats`): the one set of connect options every fleet process
//! uses, the stream config, publish headers and decoding straight from received messages.

use std::time::Duration;

use async_nats::jetstream::stream;
use async_nats::{ConnectOptions, HeaderMap, ServerAddr};

use crate::codec::{encode, ContentType, DecodeError, EncodeError, CONTENT_TYPE_HEADER};
use crate::command::Command;
use crate::stream::{event_msg_id, EventStreamConfig, MSG_ID_HEADER};
use crate::subject::EventSubject;
use crate::v1;

/// The longest pause between two reconnect attempts.
pub const RECONNECT_DELAY_CAP: Duration = Duration::from_millis(250);
/// How long one connection attempt to one server may take.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the client pings the server (two unanswered pings count as a lost connection).
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// The pause before reconnect attempt `attempts` (1, 2, …; one attempt is one server of
/// the list): none for the first, then 50 ms doubling, at most [`RECONNECT_DELAY_CAP`].
/// With a cluster the client moves to the next server at once when one is down, so a
/// node restart costs one failed TCP connect and no more.
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let shift = (attempts - 2).min(8) as u32;
    Duration::from_millis(50u64 << shift).min(RECONNECT_DELAY_CAP)
}

/// The connect options of every fleet process (workers, coordinators): reconnect forever
/// with a short capped delay ([`reconnect_delay`]), connect in the background when no
/// server answers at start (the client then buffers and retries), a short connection
/// timeout, and pings often enough to notice a dead server in seconds. `name` shows in the
/// server's connection list.
pub fn connect_options(name: impl ToString) -> ConnectOptions {
    ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .retry_on_initial_connect()
        .connection_timeout(CONNECTION_TIMEOUT)
        .ping_interval(PING_INTERVAL)
}

/// Why a server list is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerListError {
    /// No server in the list.
    #[error("no NATS server given")]
    Empty,
    /// One entry does not parse.
    #[error("NATS server {url:?}: {reason}")]
    Invalid {
        /// The entry.
        url: String,
        /// Why.
        reason: String,
    },
}

/// The servers of a comma-separated list (`nats://a:4222,nats://b:4222`; blanks around the
/// commas and empty entries are ignored).
pub fn server_addrs(urls: &str) -> Result<Vec<ServerAddr>, ServerListError> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|url| {
            url.parse::<ServerAddr>()
                .map_err(|e| ServerListError::Invalid {
                    url: url.to_string(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(ServerListError::Empty);
    }
    Ok(addrs)
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailed {
    /// The server list is not usable.
    #[error(transparent)]
    Servers(#[from] ServerListError),
    /// The client refused the options (with [`connect_options`] an unreachable server is
    /// not an error: the client keeps trying in the background).
    #[error("NATS connect: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

/// Connects to the servers of a comma-separated list with `options` (normally
/// [`connect_options`], maybe with more settings, e.g. `ignore_discovered_servers`).
pub async fn connect_with(
    urls: &str,
    options: ConnectOptions,
) -> Result<async_nats::Client, ConnectFailed> {
    let addrs = server_addrs(urls)?;
    Ok(options.connect(addrs).await?)
}

/// [`connect_with`] the default [`connect_options`], named `name`.
pub async fn connect(urls: &str, name: impl ToString) -> Result<async_nats::Client, ConnectFailed> {
    connect_with(urls, connect_options(name)).await
}

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

/// Answers `request` on its reply subject with `reply`, encoded in the request's content
/// type (protobuf when it named none or an unknown one), with that `Content-Type` header.
/// `Ok` without sending when the request has no reply subject (nobody waits).
pub async fn answer_request<M: crate::codec::BusMessage>(
    client: &async_nats::Client,
    request: &async_nats::Message,
    reply: &M,
) -> Result<(), String> {
    let Some(inbox) = request.reply.clone() else {
        return Ok(());
    };
    let content_type = ContentType::from_header(content_type_of(request.headers.as_ref()))
        .unwrap_or(ContentType::Protobuf);
    let payload = encode(reply, content_type).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, content_type.header_value());
    client
        .publish_with_headers(inbox, headers, payload.into())
        .await
        .map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_are_fast_and_capped() {
        let delays: Vec<u64> = (1..=8)
            .map(|a| reconnect_delay(a).as_millis() as u64)
            .collect();
        assert_eq!(delays, [0, 50, 100, 200, 250, 250, 250, 250]);
        assert_eq!(reconnect_delay(usize::MAX), RECONNECT_DELAY_CAP);
    }

    #[test]
    fn a_comma_separated_list_gives_every_server() {
        let addrs = server_addrs(" nats://127.0.0.1:4222, nats://127.0.0.1:4223,,127.0.0.1:4224 ")
            .expect("three servers");
        let ports: Vec<u16> = addrs.iter().map(|a| a.port()).collect();
        assert_eq!(ports, [4222, 4223, 4224]);
        assert_eq!(server_addrs(" , "), Err(ServerListError::Empty));
        assert!(matches!(
            server_addrs("nats://127.0.0.1:4222,http://[::1"),
            Err(ServerListError::Invalid { .. })
        ));
    }
}
