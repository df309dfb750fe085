//! The sample permissions config in docs/BUS.md, on a real nats-server 2.15.1 started with
//! it: a tenant reaches its own sessions and events and nothing else, a session user one
//! session, a worker only its own internal subjects.
//!
//! Needs the server binary in `WAFLEET_NATS_SERVER` (`scripts/services.sh up` prints it;
//! `scripts/test.sh` sets it). Skips, saying so, only when that is unset.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer::pull};
use async_nats::{ConnectOptions, Event};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use wafleet_bus_schema::nats::{decode_command_message, event_publication};
use wafleet_bus_schema::subject::{ALL_COMMANDS, COORDINATOR_QUEUE_GROUP};
use wafleet_bus_schema::time::timestamp;
use wafleet_bus_schema::{
    decode_event, decode_reply, encode, v1, ContentType, EventStreamConfig, EVENT_STREAM,
};

/// A nats-server process with the BUS.md config, killed and cleaned up on drop.
struct Server {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The config block of the "NATS permissions" section of docs/BUS.md.
fn documented_config() -> String {
    let doc = include_str!("../../../docs/BUS.md");
    let section = doc
        .split("## NATS permissions")
        .nth(1)
        .expect("BUS.md has a NATS permissions section");
    let block = section
        .split("```")
        .nth(1)
        .expect("the section has a config block");
    block.to_string()
}

fn start_server(binary: &str) -> Server {
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("wafleet-nats-permissions-{run}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = documented_config().replace(
        "store_dir: \"/var/lib/nats\"",
        &format!("store_dir: {:?}", dir.join("js")),
    );
    let config = format!("listen: \"127.0.0.1:{port}\"\n{config}");
    let config_path = dir.join("nats.conf");
    std::fs::write(&config_path, config).expect("write config");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {binary}: {e}"));
    let server = Server {
        child,
        dir,
        url: format!("nats://127.0.0.1:{port}"),
    };
    // Readiness wait, not a speed check: a loaded machine may take a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// Connects as `user`; server errors (permission violations) go to the returned channel.
async fn connect(
    server: &Server,
    user: &str,
    inbox_prefix: Option<&str>,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (errors_tx, errors_rx) = mpsc::unbounded_channel();
    let mut options = ConnectOptions::new()
        .user_and_password(user.to_string(), "change-me".to_string())
        .event_callback(move |event| {
            let errors_tx = errors_tx.clone();
            async move {
                if let Event::ServerError(e) = event {
                    let _ = errors_tx.send(e.to_string());
                }
            }
        });
    if let Some(prefix) = inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    let client = options
        .connect(&server.url)
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    (client, errors_rx)
}

/// Waits for a permissions violation naming `subject`.
async fn expect_violation(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let wait = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(error) = errors.recv().await {
            if error.contains("Permissions Violation") && error.contains(subject) {
                return;
            }
        }
        panic!("error channel closed");
    });
    wait.await
        .unwrap_or_else(|_| panic!("no permissions violation for {subject}"));
}

fn start_command(id: &str) -> Vec<u8> {
    encode(
        &v1::StartSession {
            command_id: id.into(),
        },
        ContentType::Protobuf,
    )
    .expect("encode")
}

fn status_event(tenant: &str, session: &str, sequence: u64) -> v1::SessionEvent {
    v1::SessionEvent {
        tenant: tenant.into(),
        session: session.into(),
        epoch: 1,
        sequence,
        timestamp: Some(timestamp(SystemTime::now())),
        worker_id: "worker-0".into(),
        payload: Some(v1::session_event::Payload::Status(
            v1::SessionStatusChanged {
                status: v1::SessionStatus::Starting as i32,
                reason: v1::ReasonCode::Requested as i32,
                message: String::new(),
            },
        )),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_documented_permissions_isolate_tenants_sessions_and_workers() {
    let binary = match std::env::var("WAFLEET_NATS_SERVER") {
        Ok(b) if !b.is_empty() => b,
        _ => {
            eprintln!(
                "SKIPPED: WAFLEET_NATS_SERVER is unset; run `eval \"$(bash scripts/services.sh up)\"` \
                 (scripts/test.sh does) to test the documented permissions on a real server"
            );
            return;
        }
    };
    let server = start_server(&binary);

    // The coordinator: makes the stream, answers every command it receives.
    let (coordinator, _) = connect(&server, "coordinator", None).await;
    let mut stream_config = EventStreamConfig::default().to_nats();
    stream_config.storage = jetstream::stream::StorageType::Memory;
    jetstream::new(coordinator.clone())
        .create_stream(stream_config)
        .await
        .expect("the coordinator creates the event stream");
    let mut commands = coordinator
        .queue_subscribe(ALL_COMMANDS, COORDINATOR_QUEUE_GROUP.into())
        .await
        .expect("subscribe to commands");
    coordinator.flush().await.expect("flush");
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let responder = coordinator.clone();
    tokio::spawn(async move {
        while let Some(message) = commands.next().await {
            // A `send` is the session holder's (the coordinator stays silent while a worker
            // holds the session).
            if message.subject.ends_with(".send") {
                continue;
            }
            let command = decode_command_message(&message).expect("a valid command");
            let _ = seen_tx.send(message.subject.to_string());
            if let Some(reply) = message.reply {
                let answer = v1::CommandReply::with_error(
                    command.command_id(),
                    v1::ErrorCode::UnknownSession,
                    "test coordinator",
                );
                let payload = encode(&answer, ContentType::Protobuf).expect("encode");
                responder
                    .publish(reply, payload.into())
                    .await
                    .expect("reply");
            }
        }
    });

    // Tenant acme reaches its own sessions...
    let (acme, mut acme_errors) = connect(&server, "acme", Some("_INBOX.acme")).await;
    let reply = acme
        .request(
            "wafleet.v1.acme.cmd.session.support-1.start",
            start_command("c-1").into(),
        )
        .await
        .expect("acme gets a reply for its own session");
    let reply = decode_reply(&reply.payload, None).expect("a reply");
    assert_eq!(reply.command_id, "c-1");
    assert_eq!(
        seen_rx.recv().await.as_deref(),
        Some("wafleet.v1.acme.cmd.session.support-1.start")
    );
    // ...and not another tenant's.
    acme.publish(
        "wafleet.v1.globex.cmd.session.sales.start",
        start_command("c-2").into(),
    )
    .await
    .expect("publish");
    expect_violation(
        &mut acme_errors,
        "wafleet.v1.globex.cmd.session.sales.start",
    )
    .await;

    // A session user reaches its one session only.
    let (one_session, mut one_session_errors) =
        connect(&server, "acme-support-1", Some("_INBOX.acme-support-1")).await;
    let reply = one_session
        .request(
            "wafleet.v1.acme.cmd.session.support-1.start",
            start_command("c-3").into(),
        )
        .await
        .expect("the session user gets a reply for its session");
    assert_eq!(
        decode_reply(&reply.payload, None)
            .expect("reply")
            .command_id,
        "c-3"
    );
    assert_eq!(
        seen_rx.recv().await.as_deref(),
        Some("wafleet.v1.acme.cmd.session.support-1.start")
    );
    one_session
        .publish(
            "wafleet.v1.acme.cmd.session.support-2.start",
            start_command("c-4").into(),
        )
        .await
        .expect("publish");
    expect_violation(
        &mut one_session_errors,
        "wafleet.v1.acme.cmd.session.support-2.start",
    )
    .await;

    // The worker publishes events of any tenant into the stream, but only its own internal
    // subjects.
    let (worker, mut worker_errors) = connect(&server, "worker-0", None).await;
    // It answers the sends of a session it holds, straight to the backend...
    let mut sends = worker
        .subscribe("wafleet.v1.acme.cmd.session.support-1.send")
        .await
        .expect("subscribe to a session's sends");
    worker.flush().await.expect("flush");
    let sender = worker.clone();
    tokio::spawn(async move {
        if let Some(message) = sends.next().await {
            let answer =
                v1::CommandReply::with_error("s-1", v1::ErrorCode::NotWorking, "test worker");
            let payload = encode(&answer, ContentType::Protobuf).expect("encode");
            if let Some(reply) = message.reply {
                sender.publish(reply, payload.into()).await.expect("reply");
            }
        }
    });
    let reply = acme
        .request("wafleet.v1.acme.cmd.session.support-1.send", "{}".into())
        .await
        .expect("acme gets the worker's answer to a send");
    let reply = decode_reply(&reply.payload, None).expect("a reply");
    assert_eq!(
        reply.error().map(|e| e.message.as_str()),
        Some("test worker")
    );
    // ...but cannot listen to the coordinator's verbs.
    let _start = worker
        .subscribe("wafleet.v1.acme.cmd.session.support-1.start")
        .await
        .expect("subscribe call");
    expect_violation(
        &mut worker_errors,
        "wafleet.v1.acme.cmd.session.support-1.start",
    )
    .await;
    let worker_js = jetstream::new(worker.clone());
    for event in [
        status_event("acme", "support-1", 1),
        status_event("globex", "sales", 1),
    ] {
        let publication = event_publication(&event, ContentType::Protobuf).expect("valid");
        worker_js
            .publish_with_headers(
                publication.subject.to_string(),
                publication.headers,
                publication.payload.into(),
            )
            .await
            .expect("publish event")
            .await
            .expect("stored");
    }
    worker
        .publish("wafleet.v1._sys.worker.worker-0.heartbeat", "".into())
        .await
        .expect("publish");
    worker
        .publish("wafleet.v1._sys.worker.worker-1.heartbeat", "".into())
        .await
        .expect("publish");
    expect_violation(
        &mut worker_errors,
        "wafleet.v1._sys.worker.worker-1.heartbeat",
    )
    .await;

    // acme cannot make its consumer read globex's events...
    let acme_js = jetstream::new(acme.clone());
    let stolen = acme_js
        .create_consumer_on_stream(
            pull::Config {
                durable_name: Some("acme".into()),
                filter_subject: "wafleet.v1.globex.evt.>".into(),
                ..Default::default()
            },
            EVENT_STREAM,
        )
        .await;
    assert!(
        stolen.is_err(),
        "acme created a consumer on globex's events"
    );
    expect_violation(
        &mut acme_errors,
        "$JS.API.CONSUMER.CREATE.WAFLEET_EVENTS.acme.wafleet.v1.globex.evt.>",
    )
    .await;

    // ...but reads its own: exactly the one acme event.
    let consumer = acme_js
        .create_consumer_on_stream(
            pull::Config {
                durable_name: Some("acme".into()),
                filter_subject: "wafleet.v1.acme.evt.>".into(),
                ..Default::default()
            },
            EVENT_STREAM,
        )
        .await
        .expect("acme creates its consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    let mut events = Vec::new();
    while let Some(message) = batch.next().await {
        let message = message.expect("a message");
        let event = decode_event(
            message.subject.as_str(),
            &message.payload,
            wafleet_bus_schema::nats::content_type_of(message.headers.as_ref()),
        )
        .expect("a valid event");
        message.ack().await.expect("ack");
        events.push((event.tenant, event.session));
    }
    assert_eq!(events, [("acme".to_string(), "support-1".to_string())]);
}
