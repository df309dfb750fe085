//! Inbound messages onto the bus: the fleet worker's [`InboundSink`]. The driver hands it
//! each decrypted message, receipt and undecryptable message and acks it to WhatsApp only
//! once `deliver` returned, and `deliver` returns only once the event has the stream's
//! ack (JetStream PubAck). So a message WhatsApp may forget is on the stream first.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;
use wafleet_bus_schema::time::{timestamp, Timestamp};
use wafleet_bus_schema::v1::{self, session_event::Payload};
use wafleet_bus_schema::SessionAddress;

use super::lease::LeaseClock;
use crate::driver::{InboundSink, SinkError};
use crate::event::{DriverEvent, MessageEvent};

/// An event waiting for the session's publisher; `acked` hears how its publication ended.
pub struct Queued {
    pub event: v1::SessionEvent,
    pub created: Instant,
    pub acked: Option<oneshot::Sender<Result<(), String>>>,
}

/// Numbers a session's events (one epoch) and queues them for its publisher in that
/// order, whether the session task or the driver's sink emits them.
pub struct Emitter {
    address: SessionAddress,
    epoch: u64,
    worker: String,
    /// The last sequence number given, and the publisher's queue: one lock, so the queue
    /// order is the sequence order.
    queue: Mutex<(u64, mpsc::UnboundedSender<Queued>)>,
}

impl Emitter {
    pub fn new(
        address: SessionAddress,
        epoch: u64,
        worker: String,
        queue: mpsc::UnboundedSender<Queued>,
    ) -> Emitter {
        Emitter {
            address,
            epoch,
            worker,
            queue: Mutex::new((0, queue)),
        }
    }

    /// Queues `payload` as the session's next event. `false`: the publisher is gone.
    pub fn emit(
        &self,
        payload: Payload,
        acked: Option<oneshot::Sender<Result<(), String>>>,
    ) -> bool {
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.0 += 1;
        let event = v1::SessionEvent {
            tenant: self.address.tenant.as_str().to_string(),
            session: self.address.session.as_str().to_string(),
            epoch: self.epoch,
            sequence: queue.0,
            timestamp: Some(timestamp(SystemTime::now())),
            worker_id: self.worker.clone(),
            payload: Some(payload),
        };
        let sent = queue.1.send(Queued {
            event,
            created: Instant::now(),
            acked,
        });
        if sent.is_err() {
            warn!(session = %self.address, "event publisher gone: event not published");
        }
        sent.is_ok()
    }
}

/// The fleet worker's sink: each inbound event becomes a bus event, and `deliver` waits for
/// the stream's ack of it. A holder whose lease ran out publishes nothing (and so acks
/// nothing: the next holder gets the message).
pub struct BusSink {
    pub emitter: Arc<Emitter>,
    pub clock: LeaseClock,
}

#[async_trait]
impl InboundSink for BusSink {
    async fn deliver(&self, event: &DriverEvent) -> Result<(), SinkError> {
        let Some(payload) = payload(event) else {
            return Ok(());
        };
        if !self.clock.is_live() {
            return Err(SinkError("the lease ran out: not published".into()));
        }
        let (acked, ack) = oneshot::channel();
        if !self.emitter.emit(payload, Some(acked)) {
            return Err(SinkError("the event publisher is gone".into()));
        }
        match ack.await {
            Ok(Ok(())) => {
                count(event);
                Ok(())
            }
            Ok(Err(e)) => Err(SinkError(format!("not published: {e}"))),
            Err(_) => Err(SinkError("the event publisher is gone".into())),
        }
    }
}

/// Counts a published inbound event in the worker's metrics.
fn count(event: &DriverEvent) {
    use super::metrics as m;
    match event {
        DriverEvent::Message(message) => {
            metrics::counter!(m::MESSAGES_IN, "type" => message.kind.clone()).increment(1)
        }
        DriverEvent::Undecryptable(u) => {
            metrics::counter!(m::UNDECRYPTABLE, "reason" => u.reason.clone()).increment(1)
        }
        DriverEvent::Receipt(r) => {
            metrics::counter!(m::RECEIPTS, "type" => r.kind.clone()).increment(1)
        }
        _ => {}
    }
}

fn ms(unix_ms: u64) -> Option<Timestamp> {
    Some(timestamp(
        SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms),
    ))
}

/// The bus event of an inbound driver event (`None` for the other driver events).
pub fn payload(event: &DriverEvent) -> Option<Payload> {
    Some(match event {
        DriverEvent::Message(m) => Payload::Message(message(m)),
        DriverEvent::Receipt(r) => Payload::Receipt(v1::Receipt {
            ids: vec![r.id.clone()],
            chat: r.chat.clone(),
            sender: r.sender.clone(),
            r#type: r.kind.clone(),
            timestamp: ms(r.timestamp),
        }),
        DriverEvent::Undecryptable(u) => Payload::MessageUndecryptable(v1::MessageUndecryptable {
            id: u.id.clone(),
            chat: u.chat.clone(),
            sender: u.sender.clone(),
            from_me: u.from_me,
            timestamp: ms(u.timestamp),
            reason: u.reason.clone(),
        }),
        _ => return None,
    })
}

fn message(m: &MessageEvent) -> v1::Message {
    let media = m.mimetype.is_some() || m.media_key.is_some() || m.direct_path.is_some();
    let location = m.latitude.is_some() || m.longitude.is_some();
    let contact = m.display_name.is_some() || m.vcard.is_some();
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let bytes = |v: &Option<Vec<u8>>| v.clone().unwrap_or_default();
    v1::Message {
        id: m.id.clone(),
        chat: m.chat.clone(),
        sender: m.sender.clone(),
        from_me: m.from_me,
        timestamp: ms(m.timestamp),
        push_name: text(&m.push_name),
        r#type: m.kind.clone(),
        text: text(&m.text),
        reply_to: text(&m.reply_to),
        target: text(&m.target),
        emoji: text(&m.emoji),
        media: media.then(|| v1::Media {
            mimetype: text(&m.mimetype),
            size: m.size.unwrap_or(0),
            file_name: text(&m.file_name),
            media_key: bytes(&m.media_key),
            direct_path: text(&m.direct_path),
            url: text(&m.url),
            file_sha256: bytes(&m.file_sha256),
            file_enc_sha256: bytes(&m.file_enc_sha256),
            seconds: m.seconds.unwrap_or(0),
        }),
        location: location.then(|| v1::Location {
            latitude: m.latitude.unwrap_or(0.0),
            longitude: m.longitude.unwrap_or(0.0),
            name: text(&m.name),
            address: text(&m.address),
        }),
        contact: contact.then(|| v1::Contact {
            display_name: text(&m.display_name),
            vcard: text(&m.vcard),
        }),
        group: if m.chat.ends_with("@g.us") {
            m.chat.clone()
        } else {
            String::new()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ReceiptEvent, UndecryptableEvent};

    #[test]
    fn inbound_driver_events_map_to_bus_payloads_and_others_to_none() {
        let m = MessageEvent {
            id: "3EB0A1".into(),
            chat: "120363025246125486@g.us".into(),
            sender: "15551234567@s.whatsapp.net".into(),
            timestamp: 1_700_000_000_000,
            kind: "image".into(),
            text: Some("caption".into()),
            mimetype: Some("image/jpeg".into()),
            media_key: Some(vec![1, 2, 3]),
            size: Some(42),
            ..MessageEvent::default()
        };
        let Some(Payload::Message(bus)) = payload(&DriverEvent::Message(Box::new(m))) else {
            panic!("not a message payload");
        };
        assert_eq!(bus.id, "3EB0A1");
        assert_eq!(bus.group, "120363025246125486@g.us");
        assert_eq!(bus.text, "caption");
        assert_eq!(
            bus.timestamp.as_ref().map(|t| t.seconds),
            Some(1_700_000_000)
        );
        let media = bus.media.expect("media");
        assert_eq!((media.mimetype.as_str(), media.size), ("image/jpeg", 42));
        assert_eq!(media.media_key, vec![1, 2, 3]);
        assert!(bus.location.is_none() && bus.contact.is_none());

        let r = ReceiptEvent {
            id: "X".into(),
            chat: "1@s.whatsapp.net".into(),
            sender: "1@s.whatsapp.net".into(),
            kind: "read".into(),
            timestamp: 5_000,
        };
        let Some(Payload::Receipt(bus)) = payload(&DriverEvent::Receipt(r)) else {
            panic!("not a receipt payload");
        };
        assert_eq!(
            (bus.ids, bus.r#type.as_str()),
            (vec!["X".to_string()], "read")
        );

        let u = UndecryptableEvent {
            id: "Y".into(),
            chat: "1@s.whatsapp.net".into(),
            sender: "1@s.whatsapp.net".into(),
            from_me: false,
            timestamp: 0,
            reason: "bad_mac".into(),
        };
        let Some(Payload::MessageUndecryptable(bus)) = payload(&DriverEvent::Undecryptable(u))
        else {
            panic!("not an undecryptable payload");
        };
        assert_eq!(bus.reason, "bad_mac");
        assert!(payload(&DriverEvent::PreKeysUploaded { count: 1 }).is_none());
    }
}
