//! The bus contract end to end: every message through protobuf and JSON, the JSON mapping
//! rules, the examples in docs/BUS.md, subjects and their filters, and malformed input.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};
use wafleet_bus_schema::internal::v1 as internal;
use wafleet_bus_schema::subject::{
    self, session_commands, session_events, tenant_commands, tenant_events, ALL_COMMANDS,
    ALL_EVENTS, ALL_FROM_WORKERS,
};
use wafleet_bus_schema::time::{proto_duration, Timestamp};
use wafleet_bus_schema::v1;
use wafleet_bus_schema::{
    decode, decode_command, decode_event, decode_reply, decode_sys, encode, event_msg_id,
    event_subject, BusMessage, CommandBody, CommandError, CommandSubject, CommandVerb, ContentType,
    DecodeError, EventKind, EventSubject, NameError, PhoneError, SessionAddress, SubjectError,
    SysKind, SysMessage, SysSubject, WorkerId,
};

// ---------------------------------------------------------------------------------------
// Samples: every message with every field set.

fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos })
}

fn metadata() -> BTreeMap<String, String> {
    [("crm_id", "4711"), ("team", "support")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn session_info() -> v1::SessionInfo {
    v1::SessionInfo {
        tenant: "acme".into(),
        session: "support-1".into(),
        status: v1::SessionStatus::Working as i32,
        reason: v1::ReasonCode::Requested as i32,
        epoch: 7,
        worker_id: "worker-0".into(),
        jid: "15551234567:12@s.whatsapp.net".into(),
        metadata: metadata(),
        created_at: ts(1_764_500_000, 0),
        updated_at: ts(1_764_504_000, 250_000_000),
    }
}

fn pairing_code() -> v1::PairingCodeIssued {
    v1::PairingCodeIssued {
        code: "ABCD1234".into(),
        expires_at: ts(1_764_504_180, 0),
    }
}

fn event(payload: v1::session_event::Payload) -> v1::SessionEvent {
    v1::SessionEvent {
        tenant: "acme".into(),
        session: "support-1".into(),
        epoch: 7,
        sequence: 42,
        timestamp: ts(1_764_504_000, 123_000_000),
        worker_id: "worker-0".into(),
        payload: Some(payload),
    }
}

fn event_payloads() -> Vec<v1::session_event::Payload> {
    use v1::session_event::Payload;
    vec![
        Payload::Status(v1::SessionStatusChanged {
            status: v1::SessionStatus::Failed as i32,
            reason: v1::ReasonCode::QrExhausted as i32,
            message: "6 QR codes expired unscanned".into(),
        }),
        Payload::Qr(v1::QrCode {
            code: "2@ref,noise,identity,adv".into(),
            expires_at: ts(1_764_504_060, 0),
            sequence: 1,
            refs_remaining: 5,
        }),
        Payload::PairingCode(pairing_code()),
        Payload::Ready(v1::Ready {
            jid: "15551234567:12@s.whatsapp.net".into(),
            lid: "123456789012345:12@lid".into(),
            push_name: "Support".into(),
        }),
        Payload::Disconnected(v1::Disconnected {
            reason: v1::ReasonCode::ConnectionLost as i32,
            will_reconnect: true,
            retry_in: Some(proto_duration(Duration::from_millis(1500))),
            message: "socket closed".into(),
        }),
    ]
}

fn held() -> Vec<internal::HeldLease> {
    vec![
        internal::HeldLease {
            tenant: "acme".into(),
            session: "support-1".into(),
            epoch: 7,
        },
        internal::HeldLease {
            tenant: "globex".into(),
            session: "sales".into(),
            epoch: 2,
        },
    ]
}

fn lease_grant() -> internal::LeaseGrant {
    internal::LeaseGrant {
        tenant: "acme".into(),
        session: "support-1".into(),
        epoch: 7,
        worker_id: "worker-0".into(),
        expires_at: ts(1_764_504_030, 0),
    }
}

/// Encodes in both encodings, decodes, and checks the message is unchanged; returns the
/// JSON form.
fn round_trip<M: BusMessage + std::fmt::Debug + PartialEq>(message: &M) -> Value {
    for ct in [ContentType::Protobuf, ContentType::Json] {
        let bytes = encode(message, ct).unwrap();
        let back: M = decode(&bytes, ct).unwrap();
        assert_eq!(&back, message, "{ct} round trip");
    }
    serde_json::from_slice(&encode(message, ContentType::Json).unwrap()).unwrap()
}

#[test]
fn every_public_message_round_trips() {
    round_trip(&v1::CommandError {
        code: v1::ErrorCode::NotLeased as i32,
        message: "worker-1 holds epoch 8".into(),
        retry_after: None,
    });
    round_trip(&v1::CommandError {
        code: v1::ErrorCode::RateLimited as i32,
        message: "retry in 250 ms".into(),
        retry_after: Some(wafleet_bus_schema::time::proto_duration(
            std::time::Duration::from_millis(250),
        )),
    });
    round_trip(&v1::SendMessage {
        command_id: "s-1".into(),
        to: "15551234567".into(),
        content: Some(v1::send_message::Content::Text(v1::SendText {
            body: "hello".into(),
            reply_to: Some(v1::QuotedMessage {
                id: "3EB0AB".into(),
                sender: String::new(),
                text: "hi".into(),
            }),
        })),
    });
    round_trip(&v1::CommandReply::with_sent(
        "s-1",
        v1::MessageSent {
            message_id: "3EB0CD".into(),
            chat: "15551234567@s.whatsapp.net".into(),
            server_timestamp: ts(1_764_504_300, 0),
            r#type: "text".into(),
        },
    ));
    round_trip(&session_info());
    round_trip(&pairing_code());
    round_trip(&v1::CreateSession {
        command_id: "c-1".into(),
        metadata: metadata(),
    });
    round_trip(&v1::StartSession {
        command_id: "c-2".into(),
    });
    round_trip(&v1::StopSession {
        command_id: "c-3".into(),
    });
    round_trip(&v1::LogoutSession {
        command_id: "c-4".into(),
    });
    round_trip(&v1::DeleteSession {
        command_id: "c-5".into(),
    });
    round_trip(&v1::RequestPairingCode {
        command_id: "c-6".into(),
        phone_number: "15551234567".into(),
    });
    round_trip(&v1::CommandReply::with_session("c-1", session_info()));
    round_trip(&v1::CommandReply::with_pairing_code("c-6", pairing_code()));
    let mut replayed =
        v1::CommandReply::with_error("c-7", v1::ErrorCode::UnknownSession, "no such session");
    replayed.replayed = true;
    round_trip(&replayed);
    for payload in event_payloads() {
        round_trip(&event(payload));
    }
}

#[test]
fn every_internal_message_round_trips() {
    round_trip(&internal::WorkerHeartbeat {
        worker_id: "worker-0".into(),
        capacity: 500,
        leases: held(),
        draining: true,
        sent_at: ts(1_764_504_000, 0),
        version: "0.1.0".into(),
    });
    round_trip(&lease_grant());
    round_trip(&internal::LeaseRenew {
        tenant: "acme".into(),
        session: "support-1".into(),
        epoch: 7,
        worker_id: "worker-0".into(),
    });
    round_trip(&internal::LeaseRelease {
        tenant: "acme".into(),
        session: "support-1".into(),
        epoch: 7,
        worker_id: "worker-0".into(),
        reason: v1::ReasonCode::WorkerDraining as i32,
    });
    round_trip(&internal::BlobCommit {
        tenant: "acme".into(),
        session: "support-1".into(),
        epoch: 7,
        worker_id: "worker-0".into(),
        version: (7 << 32) | 3,
    });
    round_trip(&internal::LeaseRevoke {
        tenant: "acme".into(),
        session: "support-1".into(),
        epoch: 7,
        reason: v1::ReasonCode::LeaseLost as i32,
    });
    round_trip(&internal::LeaseReply {
        outcome: Some(internal::lease_reply::Outcome::Lease(lease_grant())),
    });
    round_trip(&internal::LeaseReply {
        outcome: Some(internal::lease_reply::Outcome::Error(v1::CommandError {
            code: v1::ErrorCode::StaleEpoch as i32,
            message: "epoch 8 is current".into(),
            retry_after: None,
        })),
    });
    round_trip(&internal::WorkerShutdown {
        worker_id: "worker-0".into(),
        leases: held(),
        deadline: ts(1_764_504_300, 0),
    });
    for command in [
        internal::forwarded_command::Command::Stop(v1::StopSession {
            command_id: "c-3".into(),
        }),
        internal::forwarded_command::Command::Logout(v1::LogoutSession {
            command_id: "c-4".into(),
        }),
        internal::forwarded_command::Command::RequestPairingCode(v1::RequestPairingCode {
            command_id: "c-6".into(),
            phone_number: "15551234567".into(),
        }),
    ] {
        round_trip(&internal::ForwardedCommand {
            tenant: "acme".into(),
            session: "support-1".into(),
            epoch: 7,
            command: Some(command),
        });
    }
}

// ---------------------------------------------------------------------------------------
// The JSON mapping.

#[test]
fn json_follows_proto3_conventions() {
    let json = round_trip(&event(event_payloads().remove(4)));
    assert_eq!(
        json,
        json!({
            "tenant": "acme",
            "session": "support-1",
            "epoch": "7",
            "sequence": "42",
            "timestamp": "2025-11-30T12:00:00.123+00:00",
            "workerId": "worker-0",
            "disconnected": {
                "reason": "CONNECTION_LOST",
                "willReconnect": true,
                "retryIn": "1.500s",
                "message": "socket closed"
            }
        })
    );
}

#[test]
fn json_decoding_accepts_snake_case_numbers_and_z_times() {
    let event: v1::SessionEvent = decode(
        br#"{"tenant":"acme","session":"s1","epoch":7,"sequence":"1",
             "timestamp":"2025-11-30T12:00:00Z","worker_id":"w0",
             "qr":{"code":"2@x","expires_at":"2025-11-30T12:01:00Z","sequence":1,"refs_remaining":5}}"#,
        ContentType::Json,
    )
    .unwrap();
    assert_eq!(event.epoch, 7);
    assert_eq!(event.worker_id, "w0");
    assert_eq!(event.timestamp, ts(1_764_504_000, 0));
    match event.payload {
        Some(v1::session_event::Payload::Qr(qr)) => assert_eq!(qr.refs_remaining, 5),
        other => panic!("expected a qr payload, got {other:?}"),
    }
}

#[test]
fn defaults_are_left_out_of_json() {
    let json = round_trip(&v1::StartSession {
        command_id: "c-2".into(),
    });
    assert_eq!(json, json!({"commandId": "c-2"}));
    assert_eq!(round_trip(&v1::StartSession::default()), json!({}));
}

#[test]
fn protobuf_maps_encode_the_same_every_time() {
    let a = v1::CreateSession {
        command_id: "c".into(),
        metadata: (0..20)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect(),
    };
    let b = a.clone();
    assert_eq!(
        encode(&a, ContentType::Protobuf).unwrap(),
        encode(&b, ContentType::Protobuf).unwrap()
    );
}

#[test]
fn json_rejects_unknown_fields_and_enum_names() {
    let err = decode::<v1::StartSession>(br#"{"commandId":"c","extra":1}"#, ContentType::Json)
        .unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Json {
                message: "StartSession",
                ..
            }
        ),
        "{err}"
    );
    let err = decode::<v1::SessionStatusChanged>(br#"{"status":"ASLEEP"}"#, ContentType::Json)
        .unwrap_err();
    assert!(matches!(err, DecodeError::Json { .. }), "{err}");
}

#[test]
fn an_enum_number_without_a_name_cannot_become_json() {
    let status = v1::SessionStatusChanged {
        status: 99,
        ..Default::default()
    };
    assert!(encode(&status, ContentType::Json).is_err());
    // Protobuf carries it (a newer producer's value), and it stays what it was.
    let back: v1::SessionStatusChanged = decode(
        &encode(&status, ContentType::Protobuf).unwrap(),
        ContentType::Protobuf,
    )
    .unwrap();
    assert_eq!(back.status, 99);
}

// ---------------------------------------------------------------------------------------
// docs/BUS.md: every JSON example decodes as the message it claims to be, and re-encodes
// to the same JSON.

/// `(type, subject, json)` for every block in BUS.md introduced by a line
/// `<!-- example TYPE [SUBJECT] -->`.
fn doc_examples() -> Vec<(String, Option<String>, String)> {
    let doc = include_str!("../../../docs/BUS.md");
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim().strip_prefix("<!-- example ") else {
            continue;
        };
        let mut words = rest.trim_end_matches("-->").split_whitespace();
        let ty = words.next().unwrap().to_string();
        let subject = words.next().map(str::to_string);
        assert_eq!(
            lines.next().map(str::trim),
            Some("```json"),
            "{ty}: block must follow"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        out.push((ty, subject, body.join("\n")));
    }
    out
}

fn check_example<M: BusMessage + std::fmt::Debug + PartialEq>(json: &str) -> M {
    let message: M = decode(json.as_bytes(), ContentType::Json)
        .unwrap_or_else(|e| panic!("example does not decode: {e}\n{json}"));
    let written: Value = serde_json::from_str(json).unwrap();
    let again: Value =
        serde_json::from_slice(&encode(&message, ContentType::Json).unwrap()).unwrap();
    assert_eq!(again, written, "example is not in canonical form");
    message
}

#[test]
fn the_examples_in_bus_md_are_valid() {
    let examples = doc_examples();
    let mut seen = std::collections::BTreeSet::new();
    for (ty, subject, json) in &examples {
        seen.insert(ty.clone());
        match ty.as_str() {
            "CreateSession" | "StartSession" | "StopSession" | "LogoutSession"
            | "DeleteSession" | "RequestPairingCode" | "SendMessage" => {
                let subject = subject.as_deref().expect("command examples name a subject");
                let command = decode_command(subject, json.as_bytes(), Some("application/json"))
                    .unwrap_or_else(|e| panic!("{ty} example: {e}"));
                assert_eq!(
                    command.body.verb().as_str(),
                    subject.rsplit('.').next().unwrap()
                );
                match &command.body {
                    CommandBody::Create(m) => {
                        assert_eq!(check_example::<v1::CreateSession>(json), *m)
                    }
                    CommandBody::Start(m) => {
                        assert_eq!(check_example::<v1::StartSession>(json), *m)
                    }
                    CommandBody::Stop(m) => assert_eq!(check_example::<v1::StopSession>(json), *m),
                    CommandBody::Logout(m) => {
                        assert_eq!(check_example::<v1::LogoutSession>(json), *m)
                    }
                    CommandBody::Delete(m) => {
                        assert_eq!(check_example::<v1::DeleteSession>(json), *m)
                    }
                    CommandBody::RequestPairingCode(m) => {
                        assert_eq!(check_example::<v1::RequestPairingCode>(json), *m)
                    }
                    CommandBody::Send(m) => {
                        assert_eq!(check_example::<v1::SendMessage>(json), *m)
                    }
                }
            }
            "CommandReply" => {
                check_example::<v1::CommandReply>(json);
                decode_reply(json.as_bytes(), Some("application/json")).unwrap();
            }
            "SessionEvent" => {
                let event = check_example::<v1::SessionEvent>(json);
                let subject = subject.as_deref().expect("event examples name a subject");
                assert_eq!(
                    decode_event(subject, json.as_bytes(), Some("application/json")).unwrap(),
                    event
                );
            }
            "WorkerHeartbeat" | "LeaseGrant" | "LeaseRenew" | "LeaseRelease" | "LeaseRevoke"
            | "WorkerShutdown" | "ForwardedCommand" | "BlobCommit" => {
                let subject = subject
                    .as_deref()
                    .expect("internal examples name a subject");
                decode_sys(subject, json.as_bytes(), Some("application/json"))
                    .unwrap_or_else(|e| panic!("{ty} example: {e}"));
                match ty.as_str() {
                    "WorkerHeartbeat" => {
                        check_example::<internal::WorkerHeartbeat>(json);
                    }
                    "LeaseGrant" => {
                        check_example::<internal::LeaseGrant>(json);
                    }
                    "LeaseRenew" => {
                        check_example::<internal::LeaseRenew>(json);
                    }
                    "LeaseRelease" => {
                        check_example::<internal::LeaseRelease>(json);
                    }
                    "LeaseRevoke" => {
                        check_example::<internal::LeaseRevoke>(json);
                    }
                    "WorkerShutdown" => {
                        check_example::<internal::WorkerShutdown>(json);
                    }
                    "BlobCommit" => {
                        check_example::<internal::BlobCommit>(json);
                    }
                    _ => {
                        check_example::<internal::ForwardedCommand>(json);
                    }
                }
            }
            "LeaseReply" => {
                check_example::<internal::LeaseReply>(json);
            }
            "HeartbeatAck" => {
                check_example::<internal::HeartbeatAck>(json);
            }
            other => panic!("BUS.md has an example of unknown type {other}"),
        }
    }
    for ty in [
        "CreateSession",
        "StartSession",
        "StopSession",
        "LogoutSession",
        "DeleteSession",
        "RequestPairingCode",
        "SendMessage",
        "CommandReply",
        "SessionEvent",
        "WorkerHeartbeat",
        "LeaseGrant",
        "LeaseRenew",
        "LeaseRelease",
        "LeaseRevoke",
        "LeaseReply",
        "HeartbeatAck",
        "WorkerShutdown",
        "ForwardedCommand",
        "BlobCommit",
    ] {
        assert!(seen.contains(ty), "BUS.md has no example of {ty}");
    }
    let kinds: Vec<&str> = examples
        .iter()
        .filter(|(ty, _, _)| ty == "SessionEvent")
        .filter_map(|(_, s, _)| s.as_deref()?.rsplit('.').next())
        .collect();
    for kind in EventKind::ALL {
        assert!(
            kinds.contains(&kind.as_str()),
            "BUS.md has no {kind} event example"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Commands.

#[test]
fn commands_decode_from_protobuf_and_json() {
    let message = v1::RequestPairingCode {
        command_id: "01JD3S7Y9Q2V8B6WQ4T5R0KX1M".into(),
        phone_number: "15551234567".into(),
    };
    let subject = "wafleet.v1.acme.cmd.session.support-1.request_pairing_code";
    for (ct, header) in [
        (ContentType::Protobuf, None),
        (ContentType::Protobuf, Some("application/x-protobuf")),
        (ContentType::Json, Some("application/json")),
    ] {
        let command = decode_command(subject, &encode(&message, ct).unwrap(), header).unwrap();
        assert_eq!(
            command.address,
            SessionAddress::new("acme", "support-1").unwrap()
        );
        assert_eq!(command.command_id(), message.command_id);
        assert_eq!(
            command.body,
            CommandBody::RequestPairingCode(message.clone())
        );
        assert_eq!(command.subject().to_string(), subject);
    }
}

#[test]
fn malformed_commands_are_typed_errors() {
    let start = "wafleet.v1.acme.cmd.session.s1.start";
    let pair = "wafleet.v1.acme.cmd.session.s1.request_pairing_code";
    let json = Some("application/json");

    let e = decode_command(start, b"\x0a\x05ab", None).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::Protobuf {
                message: "StartSession",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.error_code(), v1::ErrorCode::MalformedCommand);

    let e = decode_command(start, b"{\"commandId\":", json).unwrap_err();
    assert!(matches!(e, DecodeError::Json { .. }), "{e}");
    let e = decode_command(start, b"[1,2]", json).unwrap_err();
    assert!(matches!(e, DecodeError::Json { .. }), "{e}");
    let e = decode_command(start, br#"{"commandId":7}"#, json).unwrap_err();
    assert!(matches!(e, DecodeError::Json { .. }), "{e}");

    // Empty payload: every field default, so no command id.
    let e = decode_command(start, b"", None).unwrap_err();
    assert!(
        matches!(e, DecodeError::Command(CommandError::InvalidCommandId(_))),
        "{e}"
    );
    assert_eq!(
        e.to_command_error().code,
        v1::ErrorCode::MalformedCommand as i32
    );

    let e = decode_command(
        pair,
        br#"{"commandId":"c","phoneNumber":"+1 555 123 4567"}"#,
        json,
    )
    .unwrap_err();
    assert_eq!(
        e,
        DecodeError::Command(CommandError::InvalidPhone(PhoneError::NotDigit {
            found: '+',
            position: 0
        }))
    );
    assert_eq!(e.error_code(), v1::ErrorCode::InvalidPhone);
    let e = decode_command(pair, br#"{"commandId":"c"}"#, json).unwrap_err();
    assert_eq!(
        e,
        DecodeError::Command(CommandError::InvalidPhone(PhoneError::Length(0)))
    );

    let e = decode_command(start, br#"{"commandId":"c"}"#, Some("text/plain")).unwrap_err();
    assert_eq!(e, DecodeError::UnsupportedContentType("text/plain".into()));
    assert_eq!(e.error_code(), v1::ErrorCode::UnsupportedContentType);

    let e = decode_command("wafleet.v1.acme.cmd.session.s1.reboot", b"", None).unwrap_err();
    assert_eq!(
        e,
        DecodeError::Subject(SubjectError::UnknownVerb("reboot".into()))
    );
    assert_eq!(e.error_code(), v1::ErrorCode::InvalidSubject);
}

#[test]
fn a_payload_of_another_verb_does_not_pass_as_this_one() {
    // A RequestPairingCode (fields 1 and 2) sent to `start`: field 2 is unknown to
    // StartSession, which protobuf skips; JSON names it and is refused.
    let pair = v1::RequestPairingCode {
        command_id: "c".into(),
        phone_number: "15551234567".into(),
    };
    let e = decode_command(
        "wafleet.v1.acme.cmd.session.s1.start",
        &encode(&pair, ContentType::Json).unwrap(),
        Some("application/json"),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::Json {
                message: "StartSession",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn reply_without_outcome_is_an_error() {
    let e = decode_reply(br#"{"commandId":"c"}"#, Some("application/json")).unwrap_err();
    assert_eq!(
        e,
        DecodeError::MissingField {
            message: "CommandReply",
            field: "outcome"
        }
    );
}

// ---------------------------------------------------------------------------------------
// Events.

#[test]
fn event_subject_follows_the_payload() {
    for payload in event_payloads() {
        let e = event(payload);
        let subject = event_subject(&e).unwrap();
        let bytes = encode(&e, ContentType::Protobuf).unwrap();
        assert_eq!(decode_event(&subject.to_string(), &bytes, None).unwrap(), e);
    }
}

#[test]
fn events_that_break_the_contract_are_refused() {
    let good = event(event_payloads().remove(0));
    let subject = event_subject(&good).unwrap().to_string();
    let bytes = |e: &v1::SessionEvent| encode(e, ContentType::Protobuf).unwrap();

    // Published on another session's subject.
    let e = decode_event(
        "wafleet.v1.acme.evt.session.other.status",
        &bytes(&good),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::SubjectMismatch {
                field: "session",
                ..
            }
        ),
        "{e}"
    );
    // Another tenant.
    let e = decode_event(
        "wafleet.v1.globex.evt.session.support-1.status",
        &bytes(&good),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::SubjectMismatch {
                field: "tenant",
                ..
            }
        ),
        "{e}"
    );
    // Another kind.
    let e = decode_event(
        "wafleet.v1.acme.evt.session.support-1.ready",
        &bytes(&good),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(e, DecodeError::SubjectMismatch { field: "kind", .. }),
        "{e}"
    );

    for (field, broken) in [
        (
            "epoch",
            v1::SessionEvent {
                epoch: 0,
                ..good.clone()
            },
        ),
        (
            "sequence",
            v1::SessionEvent {
                sequence: 0,
                ..good.clone()
            },
        ),
        (
            "timestamp",
            v1::SessionEvent {
                timestamp: None,
                ..good.clone()
            },
        ),
        (
            "payload",
            v1::SessionEvent {
                payload: None,
                ..good.clone()
            },
        ),
    ] {
        let e = decode_event(&subject, &bytes(&broken), None).unwrap_err();
        assert_eq!(
            e,
            DecodeError::MissingField {
                message: "SessionEvent",
                field
            }
        );
    }
    let bad_name = v1::SessionEvent {
        session: "a.b".into(),
        ..good.clone()
    };
    assert!(matches!(
        event_subject(&bad_name),
        Err(DecodeError::InvalidName(_))
    ));
    let no_worker = v1::SessionEvent {
        worker_id: String::new(),
        ..good
    };
    assert!(matches!(
        event_subject(&no_worker),
        Err(DecodeError::InvalidName(NameError::Empty { .. }))
    ));
}

// ---------------------------------------------------------------------------------------
// Internal messages.

#[test]
fn internal_messages_decode_by_subject() {
    let renew = internal::LeaseRenew {
        tenant: "acme".into(),
        session: "support-1".into(),
        epoch: 7,
        worker_id: "worker-0".into(),
    };
    let subject = SysSubject::new(WorkerId::new("worker-0").unwrap(), SysKind::LeaseRenew);
    let (parsed, message) = decode_sys(
        &subject.to_string(),
        &encode(&renew, ContentType::Protobuf).unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(parsed, subject);
    assert_eq!(message, SysMessage::LeaseRenew(renew.clone()));

    // A worker renewing on another worker's behalf.
    let e = decode_sys(
        "wafleet.v1._sys.worker.worker-1.lease_renew",
        &encode(&renew, ContentType::Protobuf).unwrap(),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::SubjectMismatch {
                field: "worker_id",
                ..
            }
        ),
        "{e}"
    );

    let e = decode_sys(
        "wafleet.v1._sys.coord.worker-0.command",
        &encode(
            &internal::ForwardedCommand::default(),
            ContentType::Protobuf,
        )
        .unwrap(),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::MissingField {
                field: "command",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn blob_commits_decode_by_subject_and_need_an_epoch_and_a_version() {
    let commit = internal::BlobCommit {
        tenant: "acme".into(),
        session: "support-1".into(),
        epoch: 7,
        worker_id: "worker-0".into(),
        version: (7 << 32) | 1,
    };
    let subject = SysSubject::new(WorkerId::new("worker-0").unwrap(), SysKind::BlobCommit);
    let (parsed, message) = decode_sys(
        &subject.to_string(),
        &encode(&commit, ContentType::Json).unwrap(),
        Some("application/json"),
    )
    .unwrap();
    assert_eq!(parsed, subject);
    assert_eq!(message, SysMessage::BlobCommit(commit.clone()));

    // On another worker's subject.
    let e = decode_sys(
        "wafleet.v1._sys.worker.worker-1.blob_commit",
        &encode(&commit, ContentType::Protobuf).unwrap(),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::SubjectMismatch {
                field: "worker_id",
                ..
            }
        ),
        "{e}"
    );
    for (field, bad) in [
        (
            "epoch",
            internal::BlobCommit {
                epoch: 0,
                ..commit.clone()
            },
        ),
        (
            "version",
            internal::BlobCommit {
                version: 0,
                ..commit.clone()
            },
        ),
    ] {
        let e = decode_sys(
            &subject.to_string(),
            &encode(&bad, ContentType::Protobuf).unwrap(),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e,
            DecodeError::MissingField {
                message: "BlobCommit",
                field
            }
        );
        assert_eq!(e.error_code(), v1::ErrorCode::MalformedCommand);
    }
    let e = decode_sys(&subject.to_string(), b"\xff\xff", None).unwrap_err();
    assert!(matches!(e, DecodeError::Protobuf { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------
// Subjects and filters.

/// NATS subject matching: `*` matches one token, a final `>` one or more.
fn nats_matches(filter: &str, subject: &str) -> bool {
    let f: Vec<&str> = filter.split('.').collect();
    let s: Vec<&str> = subject.split('.').collect();
    for (i, token) in f.iter().enumerate() {
        match *token {
            ">" => return s.len() > i,
            "*" if i < s.len() => {}
            t if i < s.len() && s[i] == t => {}
            _ => return false,
        }
    }
    f.len() == s.len()
}

#[test]
fn the_matcher_used_below_follows_nats() {
    assert!(nats_matches("a.*.c", "a.b.c"));
    assert!(!nats_matches("a.*.c", "a.b.c.d"));
    assert!(nats_matches("a.>", "a.b.c"));
    assert!(!nats_matches("a.>", "a"));
    assert!(!nats_matches("a.b", "a.c"));
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
}

fn verb() -> impl Strategy<Value = CommandVerb> {
    proptest::sample::select(CommandVerb::ALL.to_vec())
}

fn kind() -> impl Strategy<Value = EventKind> {
    proptest::sample::select(EventKind::ALL.to_vec())
}

proptest! {
    #[test]
    fn command_subjects_round_trip_and_match_their_filters(
        tenant in name(), session in name(), other in name(), verb in verb()
    ) {
        let address = SessionAddress::new(&tenant, &session).unwrap();
        let subject = address.command_subject(verb);
        let text = subject.to_string();
        prop_assert_eq!(CommandSubject::parse(&text), Ok(subject.clone()));
        prop_assert_eq!(subject::Subject::parse(&text), Ok(subject::Subject::Command(subject)));
        prop_assert!(nats_matches(ALL_COMMANDS, &text));
        prop_assert!(nats_matches(&tenant_commands(&address.tenant), &text));
        prop_assert!(nats_matches(&session_commands(&address), &text));
        prop_assert!(!nats_matches(ALL_EVENTS, &text));
        prop_assume!(other != tenant && other != session);
        let elsewhere = SessionAddress::new(&other, &session).unwrap();
        prop_assert!(!nats_matches(&tenant_commands(&elsewhere.tenant), &text));
        let sibling = SessionAddress::new(&tenant, &other).unwrap();
        prop_assert!(!nats_matches(&session_commands(&sibling), &text));
    }

    #[test]
    fn event_subjects_round_trip_and_match_their_filters(
        tenant in name(), session in name(), other in name(), kind in kind()
    ) {
        let address = SessionAddress::new(&tenant, &session).unwrap();
        let subject = address.event_subject(kind);
        let text = subject.to_string();
        prop_assert_eq!(EventSubject::parse(&text), Ok(subject));
        prop_assert!(nats_matches(ALL_EVENTS, &text));
        prop_assert!(nats_matches(&tenant_events(&address.tenant), &text));
        prop_assert!(nats_matches(&session_events(&address), &text));
        prop_assert!(!nats_matches(ALL_COMMANDS, &text));
        prop_assume!(other != tenant);
        let elsewhere = SessionAddress::new(&other, &session).unwrap();
        prop_assert!(!nats_matches(&tenant_events(&elsewhere.tenant), &text));
    }

    #[test]
    fn sys_subjects_round_trip_and_stay_out_of_tenant_space(
        worker in name(), kind in proptest::sample::select(SysKind::ALL.to_vec()), tenant in name()
    ) {
        let worker = WorkerId::new(worker).unwrap();
        let subject = SysSubject::new(worker.clone(), kind);
        let text = subject.to_string();
        prop_assert_eq!(SysSubject::parse(&text), Ok(subject));
        let tenant = wafleet_bus_schema::TenantId::new(tenant).unwrap();
        prop_assert!(!nats_matches(&tenant_commands(&tenant), &text));
        prop_assert!(!nats_matches(&tenant_events(&tenant), &text));
        prop_assert!(!nats_matches(ALL_EVENTS, &text));
        prop_assert!(!nats_matches(ALL_COMMANDS, &text));
        let own = match kind.direction() {
            subject::SysDirection::FromWorker => subject::from_worker(&worker),
            subject::SysDirection::ToWorker => subject::to_worker(&worker),
        };
        prop_assert!(nats_matches(&own, &text));
        prop_assert_eq!(
            nats_matches(ALL_FROM_WORKERS, &text),
            kind.direction() == subject::SysDirection::FromWorker
        );
    }

    #[test]
    fn a_token_with_subject_syntax_is_refused(
        good in name(), bad in "[A-Za-z0-9]{0,5}[.*> \t\r\n][A-Za-z0-9]{0,5}"
    ) {
        let text = format!("wafleet.v1.{bad}.cmd.session.{good}.start");
        prop_assert!(CommandSubject::parse(&text).is_err());
        let text = format!("wafleet.v1.{good}.evt.session.{bad}.qr");
        prop_assert!(EventSubject::parse(&text).is_err());
        prop_assert!(SessionAddress::new(&good, &bad).is_err());
    }

    #[test]
    fn decoders_never_panic_on_bytes(
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        verb in verb(), kind in kind(), json in any::<bool>()
    ) {
        let ct = if json { Some("application/json") } else { None };
        let _ = decode_command(&format!("wafleet.v1.a.cmd.session.s.{verb}"), &payload, ct);
        let _ = decode_event(&format!("wafleet.v1.a.evt.session.s.{kind}"), &payload, ct);
        let _ = decode_sys("wafleet.v1._sys.worker.w.heartbeat", &payload, ct);
        let _ = decode_reply(&payload, ct);
    }

    #[test]
    fn decoders_never_panic_on_json_like_text(text in r#"[{}\[\]",:a-zA-Z0-9_ .-]{0,120}"#) {
        let _ = decode_command("wafleet.v1.a.cmd.session.s.create", text.as_bytes(), Some("application/json"));
        let _ = decode_event("wafleet.v1.a.evt.session.s.status", text.as_bytes(), Some("application/json"));
    }

    #[test]
    fn phone_rule_agrees_with_the_protocol_crate_on_digit_strings(digits in "[0-9]{0,18}") {
        let ours = wafleet_bus_schema::command::validate_phone_number(&digits);
        let protocol = wafleet_protocol::pairing_code::PhoneNumber::parse(&digits);
        prop_assert_eq!(ours.is_ok(), protocol.is_ok(), "{}: {:?} vs {:?}", digits, ours, protocol);
    }

    #[test]
    fn events_round_trip(
        tenant in name(), session in name(), worker in name(),
        epoch in 1u64.., sequence in 1u64..,
        seconds in -62_135_596_800i64..=253_402_300_799, nanos in 0i32..1_000_000_000,
        which in 0usize..5, text in "\\PC{0,40}", number in any::<u32>(), flag in any::<bool>()
    ) {
        use v1::session_event::Payload;
        let payload = match which {
            0 => Payload::Status(v1::SessionStatusChanged {
                status: (number % 6) as i32, reason: (number % 15) as i32, message: text.clone() }),
            1 => Payload::Qr(v1::QrCode {
                code: text.clone(), expires_at: ts(seconds, nanos), sequence: number, refs_remaining: number / 2 }),
            2 => Payload::PairingCode(v1::PairingCodeIssued { code: text.clone(), expires_at: ts(seconds, nanos) }),
            3 => Payload::Ready(v1::Ready { jid: text.clone(), lid: text.clone(), push_name: text.clone() }),
            _ => Payload::Disconnected(v1::Disconnected {
                reason: (number % 15) as i32, will_reconnect: flag,
                retry_in: Some(proto_duration(Duration::from_millis(u64::from(number)))), message: text.clone() }),
        };
        let e = v1::SessionEvent {
            tenant, session, epoch, sequence, timestamp: ts(seconds, nanos), worker_id: worker,
            payload: Some(payload),
        };
        let subject = event_subject(&e).unwrap().to_string();
        for (ct, header) in [(ContentType::Protobuf, None), (ContentType::Json, Some("application/json"))] {
            let bytes = encode(&e, ct).unwrap();
            prop_assert_eq!(decode_event(&subject, &bytes, header).unwrap(), e.clone());
        }
    }

    #[test]
    fn msg_ids_are_distinct_for_distinct_events(
        a in (name(), name(), any::<u64>(), any::<u64>()),
        b in (name(), name(), any::<u64>(), any::<u64>()),
    ) {
        let id = |(t, s, e, q): &(String, String, u64, u64)| {
            event_msg_id(&SessionAddress::new(t, s).unwrap(), *e, *q)
        };
        prop_assert_eq!(id(&a) == id(&b), a == b);
    }
}
