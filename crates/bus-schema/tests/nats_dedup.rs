//! The dedup rule on a real NATS server (2.15.1, started by `scripts/services.sh up`, which
//! `scripts/test.sh` runs first): an event published twice with its `Nats-Msg-Id` is stored
//! once in a stream made from the crate's stream config.
//!
//! Skips, saying so, only when `WAFLEET_NATS_URL` is unset.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use wafleet_bus_schema::nats::{decode_event_message, event_publication};
use wafleet_bus_schema::time::timestamp;
use wafleet_bus_schema::{v1, ContentType, EventStreamConfig, EVENT_STREAM, MSG_ID_HEADER};

fn nats_url() -> Option<String> {
    match std::env::var("WAFLEET_NATS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED: WAFLEET_NATS_URL is unset; run `eval \"$(bash scripts/services.sh up)\"` \
                 (scripts/test.sh does) to test against a real NATS server"
            );
            None
        }
    }
}

fn ready_event(tenant: &str, session: &str, epoch: u64, sequence: u64) -> v1::SessionEvent {
    v1::SessionEvent {
        tenant: tenant.into(),
        session: session.into(),
        epoch,
        sequence,
        timestamp: Some(timestamp(SystemTime::now())),
        worker_id: "worker-test".into(),
        payload: Some(v1::session_event::Payload::Ready(v1::Ready {
            jid: "15551234567:12@s.whatsapp.net".into(),
            lid: "123456789012345:12@lid".into(),
            push_name: String::new(),
        })),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_repeated_event_is_stored_once() {
    let Some(url) = nats_url() else { return };
    let client = async_nats::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let js = jetstream::new(client);

    // The crate's own stream config (created, or updated to it). A tenant of this run only
    // keeps concurrent runs apart; its messages are purged at the end.
    let info = js
        .create_or_update_stream(EventStreamConfig::default().to_nats())
        .await
        .expect("create the event stream");
    assert_eq!(info.config.name, EVENT_STREAM);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    let stream = js.get_stream(EVENT_STREAM).await.expect("the event stream");
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let tenant = format!("dedup{run}");

    let first = ready_event(&tenant, "s1", 3, 1);
    let second = ready_event(&tenant, "s1", 3, 2);
    let mut acks = Vec::new();
    for event in [&first, &first, &second, &first] {
        for content_type in [ContentType::Protobuf, ContentType::Json] {
            // The same event in either encoding has the same id: the second encoding is a
            // duplicate too.
            let publication = event_publication(event, content_type).expect("valid event");
            let ack = js
                .publish_with_headers(
                    publication.subject.to_string(),
                    publication.headers,
                    publication.payload.into(),
                )
                .await
                .expect("publish")
                .await
                .expect("ack");
            acks.push(ack);
        }
    }
    let duplicates: Vec<bool> = acks.iter().map(|a| a.duplicate).collect();
    assert_eq!(
        duplicates,
        [false, true, true, true, false, true, true, true],
        "the server flags every repeat of an id as a duplicate"
    );

    // What is stored is the first publication of each id, and it decodes as the event.
    let stored = [
        (acks[0].sequence, &first, 1),
        (acks[4].sequence, &second, 2),
    ];
    for (stream_sequence, event, event_sequence) in stored {
        let raw = stream
            .get_raw_message(stream_sequence)
            .await
            .expect("stored message");
        assert_eq!(
            raw.headers
                .get(MSG_ID_HEADER)
                .map(|v| v.as_str().to_string()),
            Some(format!("{tenant}:s1:3:{event_sequence}"))
        );
        let message = async_nats::Message {
            subject: raw.subject.clone(),
            reply: None,
            payload: raw.payload.clone(),
            headers: Some(raw.headers.clone()),
            status: None,
            description: None,
            length: raw.payload.len(),
        };
        assert_eq!(&decode_event_message(&message).expect("decodes"), event);
    }

    // Exactly those two are stored under this run's tenant.
    let purged = stream
        .purge()
        .filter(format!("wafleet.v1.{tenant}.evt.>"))
        .await
        .expect("purge this run's events");
    assert_eq!(purged.purged, 2, "two distinct events, each stored once");
}
