//! The JetStream stream that holds events, and the dedup rule.
//!
//! Workers publish every event at least once: a publish whose ack is lost is repeated with
//! the same `Nats-Msg-Id`, and the stream stores a message id only once within its
//! duplicate window. The id is built from the event's (tenant, session, epoch, sequence),
//! which a worker assigns once per event, so a retry — even from a restarted process that
//! replays its journal — carries the same id.

use std::time::Duration;

use crate::name::SessionAddress;
use crate::subject::ALL_EVENTS;

/// The stream's name.
pub const EVENT_STREAM: &str = "WAFLEET_EVENTS";
/// How long the stream remembers message ids for dedup.
pub const EVENT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long the stream keeps events by default.
pub const EVENT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The NATS header that carries the dedup id.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// What the event stream looks like; the coordinator creates (or updates) it at start-up.
/// Client-neutral: with the `nats` feature, [`EventStreamConfig::to_nats`] converts it for
/// async-nats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventStreamConfig {
    /// Stream name ([`EVENT_STREAM`]).
    pub name: String,
    /// Subjects the stream captures ([`ALL_EVENTS`]).
    pub subjects: Vec<String>,
    /// Dedup window ([`EVENT_DUPLICATE_WINDOW`]).
    pub duplicate_window: Duration,
    /// Retention ([`EVENT_MAX_AGE`]).
    pub max_age: Duration,
    /// Replicas (1 for a single server; 3 in a cluster).
    pub replicas: usize,
}

impl Default for EventStreamConfig {
    fn default() -> Self {
        EventStreamConfig {
            name: EVENT_STREAM.to_string(),
            subjects: vec![ALL_EVENTS.to_string()],
            duplicate_window: EVENT_DUPLICATE_WINDOW,
            max_age: EVENT_MAX_AGE,
            replicas: 1,
        }
    }
}

/// The `Nats-Msg-Id` of a session's event: `<tenant>:<session>:<epoch>:<sequence>`.
/// Names cannot contain `:`, so distinct inputs give distinct ids.
pub fn event_msg_id(address: &SessionAddress, epoch: u64, sequence: u64) -> String {
    format!("{}:{}:{epoch}:{sequence}", address.tenant, address.session)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_id_is_deterministic_and_separates_its_parts() {
        let a = SessionAddress::new("acme", "s1").unwrap();
        assert_eq!(event_msg_id(&a, 3, 17), "acme:s1:3:17");
        assert_eq!(event_msg_id(&a, 3, 17), event_msg_id(&a, 3, 17));
        assert_ne!(event_msg_id(&a, 31, 7), event_msg_id(&a, 3, 17));
        let b = SessionAddress::new("acme-s1", "x").unwrap();
        assert_ne!(event_msg_id(&b, 3, 17), event_msg_id(&a, 3, 17));
    }
}
