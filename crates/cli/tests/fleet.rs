//! The fleet end to end on real NATS (JetStream), PostgreSQL and S3 (SeaweedFS), with
//! `wafleet coordinator` and `wafleet worker` as processes and the simulator as WhatsApp.

mod fleet_support;

use std::time::Duration;

use fleet_support::{eventually, Fleet, OTHER_MASTER_KEY, TENANT};
use wafleet_blob::SessionBlob;
use wafleet_bus_schema::v1::{session_event::Payload, ErrorCode, ReasonCode, SessionStatus};
use wafleet_bus_schema::CommandVerb;

fn error_code(reply: &wafleet_bus_schema::v1::CommandReply) -> Option<ErrorCode> {
    reply
        .error()
        .map(|e| ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_links_through_the_bus_and_reports_working_with_its_jid() {
    let mut fleet = Fleet::start().await;
    fleet.start_worker("w-link", 10).await;
    fleet.create_and_start("desk").await;
    let worker = fleet.link_by_qr("desk", "15550001001").await;
    assert_eq!(worker, "w-link");
    let events = fleet.events_of("desk");
    let qr = events.iter().find(|s| s.kind() == "qr").expect("qr event");
    let Some(Payload::Qr(code)) = &qr.event.payload else {
        unreachable!()
    };
    assert!(code.code.contains("#2@"), "QR text {:?}", code.code);
    assert_eq!(code.sequence, 1);
    assert!(code.expires_at.is_some());
    // The QR event came on the session's own subject, so it is this session's.
    assert_eq!(qr.event.tenant, TENANT);
    let ready = events
        .iter()
        .find_map(|s| match &s.event.payload {
            Some(Payload::Ready(r)) => Some(r.clone()),
            _ => None,
        })
        .expect("ready event");
    assert!(
        ready.jid.starts_with("15550001001:") && ready.jid.ends_with("@s.whatsapp.net"),
        "{ready:?}"
    );
    // The registry agrees: a repeated start answers with the session as it is.
    let reply = eventually(Duration::from_secs(10), "registry says WORKING", || async {
        let reply = fleet.simple("desk", CommandVerb::Start).await;
        match &reply.outcome {
            Some(wafleet_bus_schema::v1::command_reply::Outcome::Session(info))
                if info.status == SessionStatus::Working as i32 =>
            {
                Some(info.clone())
            }
            _ => None,
        }
    })
    .await;
    assert_eq!(reply.jid, ready.jid);
    assert_eq!(reply.worker_id, "w-link");
    // Events of one epoch are numbered 1, 2, 3, … without gaps.
    let mut sequences: Vec<u64> = events.iter().map(|s| s.event.sequence).collect();
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=sequences.len() as u64).collect::<Vec<_>>());
    // The metrics endpoint shows the lease and the working session.
    let http = fleet.worker_http("w-link");
    let metrics = http_get(&http, "/metrics").await;
    assert!(
        metrics.contains("wafleet_worker_leases_held 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wafleet_worker_sessions{status=\"working\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wafleet_worker_blob_save_seconds"),
        "{metrics}"
    );
    assert!(http_get(&http, "/healthz").await.contains("ok"));
    assert!(http_get(&http, "/readyz").await.contains("ready"));
    fleet.kill_worker("w-link");
    fleet.finish().await;
}

/// A plain HTTP/1.0 GET on loopback; returns the body (and panics on a non-200).
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{path}: {response}"
    );
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pairing_code_over_the_bus_links_and_bad_phones_are_refused() {
    let mut fleet = Fleet::start().await;
    fleet.start_worker("w-code", 10).await;
    fleet.create_and_start("crm").await;
    fleet
        .wait_event("crm", Duration::from_secs(30), "a QR", |s| s.kind() == "qr")
        .await;
    // A wrong phone number: a typed error, and nothing else happens.
    let before = fleet.events_of("crm").len();
    let reply = fleet
        .command(
            "crm",
            CommandVerb::RequestPairingCode,
            r#"{"commandId":"pc-bad-1","phoneNumber":"+1 555 CALL"}"#,
        )
        .await;
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::InvalidPhone),
        "{reply:?}"
    );
    fleet.sim.add_phone("4915112345678").expect("phone");
    let reply = fleet
        .command(
            "crm",
            CommandVerb::RequestPairingCode,
            r#"{"commandId":"pc-1","phoneNumber":"4915112345678"}"#,
        )
        .await;
    let code = match &reply.outcome {
        Some(wafleet_bus_schema::v1::command_reply::Outcome::PairingCode(code)) => {
            code.code.clone()
        }
        other => panic!("expected a pairing code, got {other:?}\n{}", fleet.logs()),
    };
    let after_bad: Vec<_> = fleet.events_of("crm")[before..]
        .iter()
        .filter(|s| s.kind() != "qr" && s.kind() != "pairing_code")
        .map(|s| s.kind())
        .collect();
    assert!(after_bad.is_empty(), "unexpected events {after_bad:?}");
    fleet
        .wait_event(
            "crm",
            Duration::from_secs(10),
            "pairing_code event",
            |s| matches!(&s.event.payload, Some(Payload::PairingCode(p)) if p.code == code),
        )
        .await;
    fleet
        .sim
        .enter_pairing_code("4915112345678", &code)
        .await
        .unwrap_or_else(|e| panic!("enter code: {e:?}\n{}", fleet.logs()));
    fleet
        .wait_event("crm", Duration::from_secs(60), "WORKING", |s| {
            s.status().map(|(st, _)| st) == Some(SessionStatus::Working)
        })
        .await;
    // A pairing code for a WORKING session is the wrong state.
    let reply = fleet
        .command(
            "crm",
            CommandVerb::RequestPairingCode,
            r#"{"commandId":"pc-2","phoneNumber":"4915112345678"}"#,
        )
        .await;
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::InvalidState),
        "{reply:?}\n{}",
        fleet.logs()
    );
    fleet.kill_worker("w-code");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_typed_errors_and_change_nothing() {
    let mut fleet = Fleet::start().await;
    fleet.start_worker("w-bad", 10).await;
    fleet.create_and_start("ok-1").await;
    fleet.link_by_qr("ok-1", "15550002001").await;
    let events_before = fleet.events.lock().expect("events").len();
    let unknown = fleet.simple("nobody", CommandVerb::Start).await;
    assert_eq!(error_code(&unknown), Some(ErrorCode::UnknownSession));
    let subject = Fleet::address("ok-1")
        .command_subject(CommandVerb::Stop)
        .to_string();
    let malformed = fleet
        .raw_command(&subject, b"{not json", Some("application/json"))
        .await;
    assert_eq!(error_code(&malformed), Some(ErrorCode::MalformedCommand));
    let garbage = fleet.raw_command(&subject, &[0xff, 0x01, 0x02], None).await;
    assert_eq!(error_code(&garbage), Some(ErrorCode::MalformedCommand));
    let phone = fleet
        .command(
            "ok-1",
            CommandVerb::RequestPairingCode,
            r#"{"commandId":"bad-phone","phoneNumber":"0123"}"#,
        )
        .await;
    assert_eq!(error_code(&phone), Some(ErrorCode::InvalidPhone));
    let bad_subject = fleet
        .raw_command(
            &format!("wafleet.v1.{TENANT}.cmd.session.ok-1.explode"),
            br#"{"commandId":"x"}"#,
            Some("application/json"),
        )
        .await;
    assert_eq!(error_code(&bad_subject), Some(ErrorCode::InvalidSubject));
    // Nothing changed: the session is still WORKING on the same epoch, no event came.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fleet.events.lock().expect("events").len(), events_before);
    let last = fleet.last_status("ok-1").expect("status");
    assert_eq!(last.status().map(|s| s.0), Some(SessionStatus::Working));
    fleet.kill_worker("w-bad");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_blob_or_a_wrong_master_key_fails_the_session_and_leaves_the_blob() {
    let mut fleet = Fleet::start().await;
    fleet.start_worker("w-a", 10).await;
    fleet.create_and_start("vault").await;
    fleet.link_by_qr("vault", "15550003001").await;
    let stop = fleet.simple("vault", CommandVerb::Stop).await;
    assert!(stop.error().is_none(), "{stop:?}");
    fleet
        .wait_event("vault", Duration::from_secs(10), "STOPPED", |s| {
            s.status().map(|x| x.0) == Some(SessionStatus::Stopped)
        })
        .await;
    let original = fleet
        .blob_bytes("vault")
        .await
        .expect("a blob after linking");
    let epoch_before = SessionBlob::parse(&original).expect("envelope").epoch();

    // 1. A worker with another master key: BLOB_REJECTED, the blob untouched.
    fleet.kill_worker("w-a");
    fleet
        .start_worker_with_key("w-wrong-key", 10, OTHER_MASTER_KEY)
        .await;
    let reply = fleet.simple("vault", CommandVerb::Start).await;
    assert!(reply.error().is_none(), "{reply:?}");
    let failed = fleet
        .wait_event(
            "vault",
            Duration::from_secs(20),
            "FAILED blob_rejected",
            |s| {
                s.event.epoch > epoch_before
                    && s.status() == Some((SessionStatus::Failed, ReasonCode::BlobRejected))
            },
        )
        .await;
    assert_eq!(failed.event.worker_id, "w-wrong-key");
    assert_eq!(
        fleet.blob_bytes("vault").await.as_deref(),
        Some(&original[..])
    );
    assert!(
        !fleet
            .events_of("vault")
            .iter()
            .any(|s| s.event.epoch >= failed.event.epoch && s.kind() == "qr"),
        "a rejected blob must not lead to a new link"
    );
    fleet.kill_worker("w-wrong-key");

    // 2. A tampered blob (one ciphertext bit), the right key: BLOB_REJECTED, untouched.
    let mut tampered = original.clone();
    let last = tampered.len() - 20;
    tampered[last] ^= 0x01;
    {
        use wafleet_blob::{BlobStore, SaveCondition};
        let store = fleet.blob_store();
        let current = store
            .load(&Fleet::blob_id("vault"))
            .await
            .expect("load")
            .expect("blob");
        store
            .save(
                &Fleet::blob_id("vault"),
                tampered.clone(),
                &SaveCondition::IfVersion(current.version),
            )
            .await
            .expect("tamper");
    }
    fleet.start_worker("w-b", 10).await;
    let reply = fleet.simple("vault", CommandVerb::Start).await;
    assert!(reply.error().is_none(), "{reply:?}");
    let failed2 = fleet
        .wait_event("vault", Duration::from_secs(60), "FAILED again", |s| {
            s.event.epoch > failed.event.epoch
                && s.status() == Some((SessionStatus::Failed, ReasonCode::BlobRejected))
        })
        .await;
    assert_eq!(failed2.event.worker_id, "w-b");
    assert_eq!(
        fleet.blob_bytes("vault").await.as_deref(),
        Some(&tampered[..])
    );
    // The registry says FAILED with the reason, and nobody holds the session. (The FAILED
    // event is recorded while the worker still holds the lease; its release follows.)
    let row = eventually(
        Duration::from_secs(60),
        "registry FAILED, unleased",
        || async {
            fleet
                .registry_row("vault")
                .await
                .filter(|r| r.0 == SessionStatus::Failed as i32 && r.3.is_none())
        },
    )
    .await;
    assert_eq!(row.1, ReasonCode::BlobRejected as i32);
    assert_eq!(row.3, None);
    fleet.kill_worker("w-b");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_over_the_bus_unlinks_the_phone_and_a_new_start_links_afresh() {
    let mut fleet = Fleet::start().await;
    fleet.start_worker("w-logout", 10).await;
    fleet.create_and_start("bye").await;
    fleet.link_by_qr("bye", "15550006001").await;
    assert_eq!(fleet.sim.linked_devices("15550006001").len(), 1);
    let reply = fleet.simple("bye", CommandVerb::Logout).await;
    assert!(reply.error().is_none(), "{reply:?}\n{}", fleet.logs());
    fleet
        .wait_event("bye", Duration::from_secs(20), "STOPPED logged_out", |s| {
            s.status() == Some((SessionStatus::Stopped, ReasonCode::LoggedOut))
        })
        .await;
    assert!(fleet.sim.linked_devices("15550006001").is_empty());
    let row = eventually(Duration::from_secs(10), "registry STOPPED", || async {
        fleet
            .registry_row("bye")
            .await
            .filter(|r| r.0 == SessionStatus::Stopped as i32 && r.3.is_none())
    })
    .await;
    assert_eq!(row.1, ReasonCode::LoggedOut as i32);
    // The blob keeps no identity: the next start shows a QR again.
    let epoch = row.2 as u64;
    let reply = fleet.simple("bye", CommandVerb::Start).await;
    assert!(reply.error().is_none(), "{reply:?}");
    fleet
        .wait_event("bye", Duration::from_secs(20), "a new QR", |s| {
            s.event.epoch > epoch && s.kind() == "qr"
        })
        .await;
    fleet.kill_worker("w-logout");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_purges_the_blob_and_forgets_the_session() {
    let mut fleet = Fleet::start().await;
    fleet.start_worker("w-del", 10).await;
    fleet.create_and_start("gone").await;
    fleet.link_by_qr("gone", "15550007001").await;
    assert!(fleet.blob_bytes("gone").await.is_some());
    let reply = fleet.simple("gone", CommandVerb::Delete).await;
    assert!(reply.error().is_none(), "{reply:?}\n{}", fleet.logs());
    eventually(Duration::from_secs(10), "blob purged", || async {
        fleet.blob_bytes("gone").await.is_none().then_some(())
    })
    .await;
    assert!(fleet.registry_row("gone").await.is_none());
    let again = fleet.simple("gone", CommandVerb::Start).await;
    assert_eq!(error_code(&again), Some(ErrorCode::UnknownSession));
    // The socket is closed: no live socket for the device.
    eventually(Duration::from_secs(10), "socket closed", || async {
        let live: usize = fleet.sim.counters().live_sockets.values().sum();
        (live == 0).then_some(())
    })
    .await;
    fleet.kill_worker("w-del");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_in_a_directory_are_sealed_and_follow_the_session_to_another_worker() {
    let mut fleet = Fleet::start().await;
    let dir = tempfile::tempdir().expect("blob dir");
    let dir_arg = dir.path().to_str().expect("utf-8 path").to_string();
    let key = fleet_support::MASTER_KEY;
    fleet
        .start_worker_with("w-local-1", 10, key, &["--blob-dir", &dir_arg])
        .await;
    fleet.create_and_start("local").await;
    fleet.link_by_qr("local", "15550008001").await;
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("acme.local"))
        .collect();
    assert!(!files.is_empty(), "no blob file in {dir_arg}");
    for file in &files {
        let bytes = std::fs::read(file.path()).expect("read blob");
        if bytes.starts_with(b"WFSB") {
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains("15550008001"), "the blob holds plaintext");
            assert!(!text.contains("identity"), "the blob holds plaintext");
        }
    }
    // Nothing went to S3 for this session.
    assert!(fleet.blob_bytes("local").await.is_none());
    fleet
        .start_worker_with("w-local-2", 10, key, &["--blob-dir", &dir_arg])
        .await;
    let epoch = fleet.registry_row("local").await.expect("row").2 as u64;
    fleet.kill_worker("w-local-1");
    fleet
        .wait_event(
            "local",
            Duration::from_secs(30),
            "WORKING on w-local-2",
            |s| {
                s.event.epoch > epoch
                    && s.event.worker_id == "w-local-2"
                    && s.status().map(|x| x.0) == Some(SessionStatus::Working)
            },
        )
        .await;
    assert!(!fleet
        .events_of("local")
        .iter()
        .any(|s| s.event.epoch > epoch && s.kind() == "qr"));
    fleet.kill_worker("w-local-2");
    fleet.finish().await;
}

/// A worker started with `--event-encoding json` publishes proto3 JSON events, and a
/// backend that is not Rust (the stock NATS JavaScript client, no .proto compiled) reads
/// them from the stream: the same events, in order, with the same `Nats-Msg-Id`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_events_are_read_by_a_backend_in_javascript() {
    use wafleet_bus_schema::codec::ContentType;
    use wafleet_bus_schema::stream::event_msg_id;

    let oracle =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/oracle");
    assert!(
        oracle.join("node_modules/nats/package.json").exists(),
        "the NATS JavaScript client is missing: run scripts/install-oracle.sh"
    );
    let mut fleet = Fleet::start().await;
    fleet
        .start_worker_with(
            "w-json",
            10,
            fleet_support::MASTER_KEY,
            &["--event-encoding", "json"],
        )
        .await;
    fleet.create_and_start("desk").await;
    fleet.link_by_qr("desk", "15550001091").await;
    // What the Rust backend decoded (it reads the Content-Type header).
    let seen = fleet.events_of("desk");
    let ready_at = seen
        .iter()
        .position(|s| s.kind() == "ready")
        .expect("ready event");
    let seen = &seen[..=ready_at];

    let filter = format!("wafleet.v1.{TENANT}.evt.session.desk.>");
    let (url, dir) = (fleet.nats_url.clone(), oracle.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .current_dir(dir)
            .args(["events-consumer.mjs", &url, &filter, "ready", "20000"])
            .output()
            .expect("node runs")
    })
    .await
    .expect("consumer task");
    assert!(
        output.status.success(),
        "events-consumer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), seen.len(), "{lines:#?}");
    for (line, seen) in lines.iter().zip(seen) {
        let event = &line["event"];
        assert_eq!(
            line["content_type"],
            ContentType::Json.header_value(),
            "{line}"
        );
        assert_eq!(event["tenant"], TENANT, "{line}");
        assert_eq!(event["session"], "desk", "{line}");
        assert_eq!(event["workerId"], "w-json", "{line}");
        // proto3 JSON writes 64-bit integers as strings.
        assert_eq!(event["epoch"], seen.event.epoch.to_string(), "{line}");
        assert_eq!(event["sequence"], seen.event.sequence.to_string(), "{line}");
        let subject = line["subject"].as_str().expect("subject");
        assert!(subject.ends_with(&format!(".{}", seen.kind())), "{line}");
        assert!(
            event.get(seen.kind()).is_some(),
            "payload field {}: {line}",
            seen.kind()
        );
        assert_eq!(
            line["msg_id"],
            event_msg_id(
                &Fleet::address("desk"),
                seen.event.epoch,
                seen.event.sequence
            ),
            "{line}"
        );
    }
    // The QR text is readable as it is.
    let qr = lines
        .iter()
        .find(|l| l["subject"].as_str().is_some_and(|s| s.ends_with(".qr")))
        .expect("a qr event");
    let Some(Payload::Qr(code)) = seen
        .iter()
        .find(|s| s.kind() == "qr")
        .and_then(|s| s.event.payload.clone())
    else {
        panic!("no qr event decoded in Rust");
    };
    assert_eq!(qr["event"]["qr"]["code"], code.code);
    fleet.finish().await;
}

fn message_of(seen: &fleet_support::Seen) -> Option<&wafleet_bus_schema::v1::Message> {
    match &seen.event.payload {
        Some(Payload::Message(m)) => Some(m),
        _ => None,
    }
}

/// Messages a linked session receives are bus events: a simulated phone of another account
/// sends texts, each is a `message` event, in order, and the phone gets a delivery receipt
/// for each; a text the account's own phone sends to someone else arrives as `from_me`.
/// (The worker's sink returns only once the stream acked the event, and the driver acks a
/// message only after its sink returned: `a_refused_delivery_is_not_acked_and_comes_again`
/// in `crates/session-worker/tests/messaging.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_messages_are_bus_events_in_order_with_receipts() {
    let mut fleet = Fleet::start().await;
    fleet.start_worker("w-msg", 10).await;
    fleet.create_and_start("desk").await;
    fleet.link_by_qr("desk", "15550001092").await;
    let peer = "15550001093";
    fleet.sim.add_phone(peer).expect("peer phone");
    // A message sent before the companion's prekeys reached the server is not encrypted
    // for it (as on WhatsApp): the peer tries until one arrives.
    let mut tries = 0;
    eventually(Duration::from_secs(20), "a first message event", || {
        tries += 1;
        fleet
            .sim
            .phone_send_text(peer, "15550001092", &format!("hello {tries}"))
            .expect("phone sends");
        let found = fleet
            .events_of("desk")
            .iter()
            .any(|s| message_of(s).is_some());
        async move { found.then_some(()) }
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = fleet
            .sim
            .phone_send_text(peer, "15550001092", &format!("text {i}"))
            .expect("phone sends");
        ids.push(id);
    }
    let got = eventually(Duration::from_secs(20), "20 message events", || {
        let texts: Vec<wafleet_bus_schema::v1::Message> = fleet
            .events_of("desk")
            .iter()
            .filter_map(message_of)
            .filter(|m| m.text.starts_with("text "))
            .cloned()
            .collect();
        async move { (texts.len() >= 20).then_some(texts) }
    })
    .await;
    let texts: Vec<&str> = got.iter().map(|m| m.text.as_str()).collect();
    let want: Vec<String> = (0..20).map(|i| format!("text {i}")).collect();
    assert_eq!(texts, want, "in order, once each");
    for (m, id) in got.iter().zip(&ids) {
        assert_eq!(&m.id, id);
        assert_eq!(m.chat, format!("{peer}@s.whatsapp.net"));
        assert_eq!(m.sender, format!("{peer}@s.whatsapp.net"));
        assert!(!m.from_me);
        assert_eq!(m.r#type, "text");
        assert!(m.timestamp.is_some());
    }
    // Acked after publication: the peer hears a delivery receipt for every one.
    eventually(
        Duration::from_secs(20),
        "delivery receipts for all 20",
        || {
            let receipts = fleet.sim.phone_receipts(peer).expect("receipts");
            let all = ids.iter().all(|id| {
                receipts
                    .iter()
                    .any(|r| r.kind == "delivered" && r.ids.contains(id))
            });
            async move { all.then_some(()) }
        },
    )
    .await;
    // The account's own phone writes to the peer: the companion sees it as from_me.
    let own = fleet
        .sim
        .phone_send_text("15550001092", peer, "from my phone")
        .expect("own phone sends");
    let seen = fleet
        .wait_event(
            "desk",
            Duration::from_secs(20),
            "the phone's own message",
            |s| message_of(s).is_some_and(|m| m.id == own),
        )
        .await;
    let m = message_of(&seen).expect("message");
    assert!(m.from_me);
    assert_eq!(m.chat, format!("{peer}@s.whatsapp.net"));
    assert_eq!(m.text, "from my phone");
    // None was undecryptable.
    assert!(fleet
        .events_of("desk")
        .iter()
        .all(|s| s.kind() != "message_undecryptable"));
    fleet.finish().await;
}

/// Sends a `send` command (JSON) for `session`.
async fn send(
    fleet: &Fleet,
    session: &str,
    body: serde_json::Value,
) -> wafleet_bus_schema::v1::CommandReply {
    fleet
        .command(session, CommandVerb::Send, &body.to_string())
        .await
}

fn sent_of(reply: &wafleet_bus_schema::v1::CommandReply) -> wafleet_bus_schema::v1::MessageSent {
    match &reply.outcome {
        Some(wafleet_bus_schema::v1::command_reply::Outcome::Sent(sent)) => sent.clone(),
        other => panic!("not sent: {other:?}"),
    }
}

/// The peer's phone's decrypted messages with `id`.
fn on_phone(fleet: &Fleet, phone: &str, id: &str) -> Vec<wafleet_sim::PhoneMessage> {
    fleet
        .sim
        .phone_messages(phone)
        .expect("phone messages")
        .into_iter()
        .filter(|m| m.id == id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_commands_reach_the_phone_once_per_command_id_with_typed_errors_and_across_a_failover()
{
    use serde_json::json;
    let mut fleet = Fleet::start().await;
    fleet
        .start_worker_with(
            "w-send-1",
            10,
            fleet_support::MASTER_KEY,
            &["--send-rate", "2", "--send-burst", "12"],
        )
        .await;
    fleet.create_and_start("sender").await;
    fleet.link_by_qr("sender", "15550001094").await;
    let peer = "15550001095";
    fleet.sim.add_phone(peer).expect("peer phone");

    // A text by E.164 digits: answered with the message id once the server acked it.
    let first = send(
        &fleet,
        "sender",
        json!({"commandId": "s-1", "to": peer, "text": {"body": "hello over the bus"}}),
    )
    .await;
    assert!(!first.replayed);
    let sent = sent_of(&first);
    assert!(sent.message_id.starts_with("3EB0"), "{sent:?}");
    assert_eq!(sent.chat, format!("{peer}@s.whatsapp.net"));
    assert_eq!(sent.r#type, "text");
    assert!(sent.server_timestamp.is_some());
    let id = sent.message_id.clone();
    eventually(Duration::from_secs(20), "the phone has the text", || {
        let got = on_phone(&fleet, peer, &id);
        async move { (!got.is_empty()).then_some(()) }
    })
    .await;
    let got = on_phone(&fleet, peer, &id);
    assert_eq!(got[0].text.as_deref(), Some("hello over the bus"));
    // Its message_sent event carries the command id.
    fleet
        .wait_event("sender", Duration::from_secs(10), "message_sent s-1", |s| {
            matches!(&s.event.payload, Some(Payload::MessageSent(e))
                if e.command_id == "s-1" && e.sent.as_ref().is_some_and(|m| m.message_id == id))
        })
        .await;
    // A repeat: the first reply, replayed; nothing sent again.
    let again = send(
        &fleet,
        "sender",
        json!({"commandId": "s-1", "to": peer, "text": {"body": "hello over the bus"}}),
    )
    .await;
    assert!(again.replayed);
    assert_eq!(sent_of(&again).message_id, id);

    // An edit and a revoke of it, and a reply quoting it, by user JID.
    let jid = format!("{peer}@s.whatsapp.net");
    let edit = sent_of(
        &send(
            &fleet,
            "sender",
            json!({"commandId": "s-2", "to": jid, "edit": {"targetId": id, "body": "edited"}}),
        )
        .await,
    );
    let reply = sent_of(
        &send(
            &fleet,
            "sender",
            json!({"commandId": "s-3", "to": jid,
                   "text": {"body": "a reply", "replyTo": {"id": id, "text": "hello over the bus"}}}),
        )
        .await,
    );
    let revoke = sent_of(
        &send(
            &fleet,
            "sender",
            json!({"commandId": "s-4", "to": jid, "revoke": {"targetId": id}}),
        )
        .await,
    );
    assert_eq!(
        (edit.r#type.as_str(), revoke.r#type.as_str()),
        ("edit", "revoke")
    );
    eventually(
        Duration::from_secs(20),
        "edit, reply and revoke on the phone",
        || {
            let kinds: Vec<(String, Option<String>)> = [&edit, &reply, &revoke]
                .iter()
                .filter_map(|s| on_phone(&fleet, peer, &s.message_id).pop())
                .map(|m| (m.kind, m.text))
                .collect();
            async move { (kinds.len() == 3).then_some(kinds) }
        },
    )
    .await
    .iter()
    .zip([
        ("edit", Some("edited")),
        ("text", Some("a reply")),
        ("revoke", None),
    ])
    .for_each(|((kind, text), (want_kind, want_text))| {
        assert_eq!(kind, want_kind);
        assert_eq!(text.as_deref(), want_text);
    });

    // Bad commands: a typed error each, and nothing reaches the phone.
    let before = fleet.sim.phone_messages(peer).expect("messages").len();
    let reused = send(
        &fleet,
        "sender",
        json!({"commandId": "s-1", "to": peer, "text": {"body": "another text"}}),
    )
    .await;
    assert_eq!(error_code(&reused), Some(ErrorCode::IdempotencyKeyReused));
    for (body, want) in [
        (
            json!({"commandId": "b-1", "to": "12", "text": {"body": "x"}}),
            ErrorCode::InvalidRecipient,
        ),
        (
            json!({"commandId": "b-2", "to": "", "text": {"body": "x"}}),
            ErrorCode::InvalidRecipient,
        ),
        (
            json!({"commandId": "b-3", "to": peer, "text": {"body": "x".repeat(70_000)}}),
            ErrorCode::MessageTooLarge,
        ),
        (
            json!({"commandId": "b-4", "to": peer}),
            ErrorCode::MalformedCommand,
        ),
        (
            json!({"commandId": 5, "to": peer}),
            ErrorCode::MalformedCommand,
        ),
        (
            json!({"commandId": "b-6", "to": "15559999999", "text": {"body": "x"}}),
            ErrorCode::NoSuchUser,
        ),
    ] {
        let reply = send(&fleet, "sender", body.clone()).await;
        assert_eq!(error_code(&reply), Some(want), "{body}: {reply:?}");
    }
    let unknown = send(
        &fleet,
        "nobody",
        json!({"commandId": "b-7", "to": peer, "text": {"body": "x"}}),
    )
    .await;
    assert_eq!(error_code(&unknown), Some(ErrorCode::UnknownSession));

    // The rate limit: a burst beyond the bucket is refused with a retry_after, not queued.
    let burst: Vec<_> = (0..16)
        .map(|i| {
            send(
                &fleet,
                "sender",
                json!({"commandId": format!("r-{i}"), "to": peer, "text": {"body": format!("burst {i}")}}),
            )
        })
        .collect();
    let replies = futures_util::future::join_all(burst).await;
    let limited: Vec<_> = replies
        .iter()
        .filter(|r| error_code(r) == Some(ErrorCode::RateLimited))
        .collect();
    let delivered: Vec<String> = replies
        .iter()
        .filter(|r| r.error().is_none())
        .map(|r| sent_of(r).message_id)
        .collect();
    assert!(!limited.is_empty(), "{replies:?}");
    assert_eq!(limited.len() + delivered.len(), 16, "{replies:?}");
    for r in &limited {
        let retry = r.error().and_then(|e| e.retry_after).expect("retry_after");
        assert!(retry.seconds > 0 || retry.nanos > 0);
    }
    eventually(Duration::from_secs(20), "the burst's sent messages", || {
        let all = delivered
            .iter()
            .all(|id| on_phone(&fleet, peer, id).len() == 1);
        async move { all.then_some(()) }
    })
    .await;
    let after = fleet.sim.phone_messages(peer).expect("messages").len();
    assert_eq!(
        after,
        before + delivered.len(),
        "only the sent ones arrived"
    );

    // kill -9 the holder; the next one answers a repeat of s-1 from the stored session:
    // the same message id, and still one message on the phone.
    let epoch = fleet
        .events_of("sender")
        .iter()
        .map(|s| s.event.epoch)
        .max()
        .expect("an epoch");
    fleet.kill_worker("w-send-1");
    fleet
        .start_worker_with("w-send-2", 10, fleet_support::MASTER_KEY, &[])
        .await;
    fleet
        .wait_event(
            "sender",
            Duration::from_secs(60),
            "WORKING on the next holder",
            |s| {
                s.event.epoch > epoch
                    && s.status()
                        .is_some_and(|(st, _)| st == SessionStatus::Working)
            },
        )
        .await;
    let repeat = eventually(
        Duration::from_secs(30),
        "the repeat answered by the new holder",
        || {
            let fleet = &fleet;
            async move {
                let reply = send(
                    fleet,
                    "sender",
                    json!({"commandId": "s-1", "to": peer, "text": {"body": "hello over the bus"}}),
                )
                .await;
                reply.error().is_none().then_some(reply)
            }
        },
    )
    .await;
    assert_eq!(sent_of(&repeat).message_id, id);
    let next = sent_of(
        &send(
            &fleet,
            "sender",
            json!({"commandId": "s-5", "to": peer, "text": {"body": "after the failover"}}),
        )
        .await,
    );
    eventually(
        Duration::from_secs(20),
        "the next text on the phone",
        || {
            let got = on_phone(&fleet, peer, &next.message_id);
            async move { (!got.is_empty()).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        on_phone(&fleet, peer, &id).len(),
        1,
        "s-1 is on the phone once"
    );
    // And the other direction still decrypts.
    let back = fleet
        .sim
        .phone_send_text(peer, "15550001094", "and back")
        .expect("phone sends");
    fleet
        .wait_event(
            "sender",
            Duration::from_secs(20),
            "the peer's answer",
            |s| message_of(s).is_some_and(|m| m.id == back),
        )
        .await;
    assert!(fleet
        .sim
        .phone_messages(peer)
        .expect("messages")
        .iter()
        .all(|m| m.kind != "undecryptable"));
    assert!(fleet
        .events_of("sender")
        .iter()
        .all(|s| s.kind() != "message_undecryptable"));

    // Stopped: nobody holds the session, and the coordinator says so at once.
    let stopped = fleet.simple("sender", CommandVerb::Stop).await;
    assert!(stopped.error().is_none(), "{stopped:?}");
    let refused = eventually(Duration::from_secs(20), "NOT_WORKING once stopped", || {
        let fleet = &fleet;
        async move {
            let reply = send(
                fleet,
                "sender",
                json!({"commandId": "s-6", "to": peer, "text": {"body": "while stopped"}}),
            )
            .await;
            (error_code(&reply) == Some(ErrorCode::NotWorking)).then_some(reply)
        }
    })
    .await;
    assert!(!refused.replayed);
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_session_whose_socket_goes_silent_reconnects_and_says_keepalive_timeout() {
    let mut fleet = Fleet::start().await;
    fleet
        .start_worker_with(
            "w-quiet",
            10,
            fleet_support::MASTER_KEY,
            &[
                "--keepalive-interval-ms",
                "400",
                "--keepalive-timeout-ms",
                "800",
            ],
        )
        .await;
    fleet.create_and_start("quiet").await;
    fleet.link_by_qr("quiet", "15550001096").await;
    let jid = fleet
        .events_of("quiet")
        .iter()
        .find_map(|s| match &s.event.payload {
            Some(Payload::Ready(r)) => Some(r.jid.clone()),
            _ => None,
        })
        .expect("ready");
    let device: wafleet_protocol::jid::Jid = jid.parse().expect("device jid");
    // The socket stays open on the server's side but answers nothing from now on.
    let muted_at = fleet
        .events_of("quiet")
        .iter()
        .map(|s| s.event.sequence)
        .max()
        .expect("events");
    assert_eq!(fleet.sim.mute_connections(&device), 1);
    let gone = fleet
        .wait_event(
            "quiet",
            Duration::from_secs(20),
            "disconnected KEEPALIVE_TIMEOUT",
            |s| {
                s.event.sequence > muted_at
                    && matches!(&s.event.payload, Some(Payload::Disconnected(d))
                        if d.reason == ReasonCode::KeepaliveTimeout as i32 && d.will_reconnect)
            },
        )
        .await;
    // Not left WORKING and silent: STARTING (KEEPALIVE_TIMEOUT), then WORKING again on a
    // new socket, at the same epoch.
    fleet
        .wait_event(
            "quiet",
            Duration::from_secs(10),
            "STARTING with the reason",
            |s| {
                s.event.sequence > gone.event.sequence
                    && s.status() == Some((SessionStatus::Starting, ReasonCode::KeepaliveTimeout))
            },
        )
        .await;
    let back = fleet
        .wait_event("quiet", Duration::from_secs(30), "WORKING again", |s| {
            s.event.sequence > gone.event.sequence
                && s.status()
                    .is_some_and(|(st, _)| st == SessionStatus::Working)
        })
        .await;
    assert_eq!(back.event.epoch, gone.event.epoch);
    // And it receives again (the peer's first messages may go out before it knows the
    // companion's keys: it tries until one arrives).
    let peer = "15550001097";
    fleet.sim.add_phone(peer).expect("peer");
    let mut sent = Vec::new();
    eventually(
        Duration::from_secs(20),
        "a message after the reconnect",
        || {
            sent.push(
                fleet
                    .sim
                    .phone_send_text(peer, "15550001096", &format!("still there? {}", sent.len()))
                    .expect("phone sends"),
            );
            let found = fleet
                .events_of("quiet")
                .iter()
                .any(|s| message_of(s).is_some_and(|m| sent.contains(&m.id)));
            async move { found.then_some(()) }
        },
    )
    .await;
    fleet.finish().await;
}
