//! `wafleet demo`: the fleet end to end on real services (the README's first command,
//! through `scripts/demo.sh`, which starts NATS, checks PostgreSQL and starts S3).
//!
//! 1. starts the WhatsApp simulator in this process, a coordinator and two workers as
//!    child processes (`wafleet coordinator`, `wafleet worker`), on the services named
//!    by `WAFLEET_NATS_URL`, `WAFLEET_PG_URL` and `WAFLEET_S3_ENDPOINT`;
//! 2. creates and starts session `support-desk` over the bus, draws its QR in the
//!    terminal and lets a simulated phone scan it; prints every event;
//! 3. a customer's simulated phone writes (a `message` event), the backend answers with
//!    a `send` command (answered with the message id; `message_sent`), the customer's
//!    phone shows and reads it (a `read` receipt event);
//! 4. kills the worker holding the session with SIGKILL and shows the session back on
//!    the other worker, WORKING, with no QR, and a message each way still decrypting.
//!
//! Each step checks what it shows; the demo exits non-zero if the product misbehaves.
//! It uses a PostgreSQL schema and an S3 prefix of its own and removes the schema at the
//! end.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures_util::StreamExt;
use wafleet_bus_schema::codec::{decode_reply, encode, ContentType};
use wafleet_bus_schema::nats::{content_type_of, decode_event_message};
use wafleet_bus_schema::v1::{self, session_event::Payload, SessionStatus};
use wafleet_bus_schema::{CommandVerb, SessionAddress, CONTENT_TYPE_HEADER};
use wafleet_session_worker::qr::QrImage;
use wafleet_sim::{SimConfig, Simulator};

const TENANT: &str = "demo";
const SESSION: &str = "support-desk";
const PHONE: &str = "15550001111";
/// A customer writing to the account.
const CUSTOMER: &str = "15550002222";
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process, killed on drop.
struct Proc {
    name: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            format!(
                "{name} is not set: run the demo with `bash scripts/demo.sh` (it starts NATS and \
             S3 and checks PostgreSQL), or `eval \"$(bash scripts/services.sh up)\"` first"
            )
        })
}

fn random_hex(bytes: usize) -> String {
    use rand_core::RngCore;
    let mut buf = vec![0u8; bytes];
    rand_core::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Prints a child's stderr lines that matter (warnings and errors) with its name.
fn spawn(name: &str, args: &[String], envs: &[(&str, String)]) -> Result<Proc, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut command = Command::new(exe);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("WAFLEET_LOG", "warn")
        .env("RUST_LOG", "warn");
    for (k, v) in envs {
        command.env(k, v);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    if let Some(err) = child.stderr.take() {
        let label = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                println!("  ({label}) {line}");
            }
        });
    }
    Ok(Proc {
        name: name.to_string(),
        child,
    })
}

fn describe(event: &v1::SessionEvent) -> String {
    let what = match &event.payload {
        Some(Payload::Status(s)) => format!(
            "status {:?}{}{}",
            SessionStatus::try_from(s.status).unwrap_or(SessionStatus::Unspecified),
            match v1::ReasonCode::try_from(s.reason) {
                Ok(v1::ReasonCode::Unspecified) | Err(_) => String::new(),
                Ok(r) => format!(" ({r:?})"),
            },
            if s.message.is_empty() {
                String::new()
            } else {
                format!(": {}", s.message)
            }
        ),
        Some(Payload::Qr(q)) => format!(
            "qr #{} ({} more refs after it)",
            q.sequence, q.refs_remaining
        ),
        Some(Payload::PairingCode(_)) => "pairing_code".into(),
        Some(Payload::Ready(r)) => format!("ready jid={} lid={}", r.jid, r.lid),
        Some(Payload::Disconnected(d)) => format!(
            "disconnected {:?} will_reconnect={}",
            v1::ReasonCode::try_from(d.reason).unwrap_or(v1::ReasonCode::Unspecified),
            d.will_reconnect
        ),
        Some(Payload::Message(m)) => format!(
            "message {} from {}{} ({}): {:?}",
            m.id,
            m.sender,
            if m.from_me { " (from me)" } else { "" },
            m.r#type,
            m.text
        ),
        Some(Payload::Receipt(r)) => format!("receipt {} of {:?} by {}", r.r#type, r.ids, r.sender),
        Some(Payload::MessageUndecryptable(u)) => {
            format!(
                "message_undecryptable {} from {}: {}",
                u.id, u.sender, u.reason
            )
        }
        Some(Payload::MessageSent(sent)) => {
            let s = sent.sent.clone().unwrap_or_default();
            format!(
                "message_sent {} to {} (command {})",
                s.message_id, s.chat, sent.command_id
            )
        }
        None => "(empty)".into(),
    };
    format!(
        "[event] {}/{} epoch={} seq={} worker={}  {what}",
        event.tenant, event.session, event.epoch, event.sequence, event.worker_id
    )
}

/// Runs the fleet demo.
pub fn run(draw_qr: bool) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(demo(draw_qr))
}

type Events = Arc<Mutex<Vec<v1::SessionEvent>>>;

async fn wait_for(
    events: &Events,
    what: &str,
    pred: impl Fn(&v1::SessionEvent) -> bool,
) -> Result<v1::SessionEvent, String> {
    wait_for_within(events, STEP_TIMEOUT, pred)
        .await?
        .ok_or_else(|| format!("no {what} within {STEP_TIMEOUT:?}"))
}

async fn command(
    nats: &async_nats::Client,
    verb: CommandVerb,
    message: &impl wafleet_bus_schema::BusMessage,
) -> Result<v1::CommandReply, String> {
    let address = SessionAddress::new(TENANT, SESSION).map_err(|e| e.to_string())?;
    let subject = address.command_subject(verb).to_string();
    let payload = encode(message, ContentType::Json).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE_HEADER, ContentType::Json.header_value());
        let request = async_nats::Request::new()
            .payload(payload.clone().into())
            .headers(headers)
            .timeout(Some(Duration::from_secs(5)));
        match nats.send_request(subject.clone(), request).await {
            Ok(reply) => {
                let reply = decode_reply(&reply.payload, content_type_of(reply.headers.as_ref()))
                    .map_err(|e| format!("unreadable reply: {e}"))?;
                println!(
                    "[reply] {} -> {}",
                    subject,
                    serde_json::to_string(&reply).unwrap_or_default()
                );
                if let Some(error) = reply.error() {
                    return Err(format!("{verb:?} refused: {}", error.message));
                }
                return Ok(reply);
            }
            // No coordinator leads yet (it is starting): try again.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => return Err(format!("no reply to {subject}: {e}")),
        }
    }
}

/// The customer's phone sends `text` to the account until it arrives as a `message` event
/// at `epoch` or later (its first message may go out before it knows the companion's
/// keys, as on WhatsApp); returns the message id.
async fn customer_says(
    sim: &Simulator,
    events: &Events,
    text: &str,
    epoch: u64,
) -> Result<String, String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut sent = Vec::new();
    loop {
        sent.push(
            sim.phone_send_text(CUSTOMER, PHONE, text)
                .map_err(|e| format!("the customer's phone: {e}"))?,
        );
        let arrived = wait_for_within(events, Duration::from_secs(2), |e| {
            e.epoch >= epoch
                && matches!(&e.payload, Some(Payload::Message(m)) if sent.contains(&m.id))
        })
        .await?;
        if let Some(Payload::Message(m)) = arrived.and_then(|e| e.payload) {
            println!(
                "== the customer's message {} is on the bus (message event above)",
                m.id
            );
            return Ok(m.id);
        }
        if Instant::now() > deadline {
            return Err(format!("the customer's message never arrived: {text:?}"));
        }
    }
}

/// Sends `text` to the customer with a `send` command (a reply to `quote`, if given),
/// then waits until the customer's phone shows it; returns the message id.
async fn send_text(
    nats: &async_nats::Client,
    sim: &Simulator,
    command_id: &str,
    text: &str,
    quote: Option<&str>,
) -> Result<String, String> {
    println!("== the backend sends a `send` command: {text:?}");
    let reply = command(
        nats,
        CommandVerb::Send,
        &v1::SendMessage {
            command_id: command_id.to_string(),
            to: CUSTOMER.to_string(),
            content: Some(v1::send_message::Content::Text(v1::SendText {
                body: text.to_string(),
                reply_to: quote.map(|id| v1::QuotedMessage {
                    id: id.to_string(),
                    ..Default::default()
                }),
            })),
        },
    )
    .await?;
    let Some(v1::command_reply::Outcome::Sent(sent)) = reply.outcome else {
        return Err("the send command was not answered with a message id".into());
    };
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let shown = sim
            .phone_messages(CUSTOMER)
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|m| m.id == sent.message_id);
        if let Some(m) = shown {
            println!(
                "== the customer's phone shows {}: {:?}",
                m.id,
                m.text.unwrap_or_default()
            );
            return Ok(sent.message_id);
        }
        if Instant::now() > deadline {
            return Err(format!("{} never reached the customer", sent.message_id));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`wait_for`] for at most `within`, `None` when nothing matched.
async fn wait_for_within(
    events: &Events,
    within: Duration,
    pred: impl Fn(&v1::SessionEvent) -> bool,
) -> Result<Option<v1::SessionEvent>, String> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = events
            .lock()
            .map_err(|_| "event list poisoned".to_string())?
            .iter()
            .find(|e| pred(e))
            .cloned()
        {
            return Ok(Some(found));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn demo(draw_qr: bool) -> Result<(), String> {
    let nats_url = env("WAFLEET_NATS_URL")?;
    let pg_url = env("WAFLEET_PG_URL")?;
    env("WAFLEET_S3_ENDPOINT")?;
    let run_id = random_hex(4);
    let schema = format!("wafleet_demo_{run_id}");
    let (pg, connection) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("PostgreSQL {pg_url}: {e}"))?;
    tokio::spawn(connection);
    pg.batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .map_err(|e| format!("create schema {schema}: {e}"))?;
    let result = run_fleet(&nats_url, &pg_url, &schema, &run_id, draw_qr).await;
    if let Err(e) = pg
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
    {
        println!("(could not drop schema {schema}: {e})");
    }
    result
}

async fn run_fleet(
    nats_url: &str,
    pg_url: &str,
    schema: &str,
    run_id: &str,
    draw_qr: bool,
) -> Result<(), String> {
    let sim = Simulator::start(SimConfig::default())
        .await
        .map_err(|e| format!("simulator: {e}"))?;
    sim.add_phone(PHONE).map_err(|e| e.to_string())?;
    println!("== simulator: {} (a phone {PHONE})", sim.ws_url());
    let nats = async_nats::connect(nats_url)
        .await
        .map_err(|e| format!("NATS {nats_url}: {e}"))?;
    let events: Events = Arc::default();
    let mut subscription = nats
        .subscribe(format!("wafleet.v1.{TENANT}.evt.session.{SESSION}.*"))
        .await
        .map_err(|e| e.to_string())?;
    let sink = Arc::clone(&events);
    let printer = tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            match decode_event_message(&message) {
                Ok(event) => {
                    println!("{}", describe(&event));
                    if let Ok(mut list) = sink.lock() {
                        list.push(event);
                    }
                }
                Err(e) => println!("[event] INVALID on {}: {e}", message.subject),
            }
        }
    });

    let coordinator = spawn(
        "coordinator",
        &[
            "coordinator",
            "--nats-url",
            nats_url,
            "--pg-url",
            pg_url,
            "--pg-schema",
            schema,
            "--heartbeat-interval",
            "0.5",
            "--missed-heartbeats",
            "4",
            "--lease-ttl",
            "10",
        ]
        .map(String::from),
        &[],
    )?;
    println!("== coordinator started (pid {})", coordinator.child.id());
    let master_key = random_hex(32);
    let prefix = format!("demo-{run_id}/");
    let worker_env = [
        ("WAFLEET_MASTER_KEY", master_key),
        ("WAFLEET_S3_PREFIX", prefix.clone()),
    ];
    let mut workers = Vec::new();
    for name in ["worker-a", "worker-b"] {
        let worker_id = format!("{name}-{run_id}");
        let proc = spawn(
            &worker_id,
            &[
                "worker",
                "--worker-id",
                &worker_id,
                "--nats",
                nats_url,
                "--server",
                &sim.ws_url(),
                "--root-key",
                &hex::encode(sim.root_public_key()),
                "--heartbeat-ms",
                "500",
                "--renew-ms",
                "2000",
                "--http",
                "127.0.0.1:0",
            ]
            .map(String::from),
            &worker_env,
        )?;
        println!("== {worker_id} started (pid {})", proc.child.id());
        workers.push(proc);
    }
    println!("== blobs in S3 under {prefix}, sealed with a fresh master key");
    let id = |verb: &str| format!("demo-{run_id}-{verb}");

    command(
        &nats,
        CommandVerb::Create,
        &v1::CreateSession {
            command_id: id("create"),
            metadata: [("team".to_string(), "support".to_string())].into(),
        },
    )
    .await?;
    command(
        &nats,
        CommandVerb::Start,
        &v1::StartSession {
            command_id: id("start"),
        },
    )
    .await?;
    let qr = wait_for(&events, "QR event", |e| {
        matches!(e.payload, Some(Payload::Qr(_)))
    })
    .await?;
    let Some(Payload::Qr(code)) = &qr.payload else {
        return Err("QR event without a code".into());
    };
    if draw_qr {
        let image = QrImage::new(&code.code).map_err(|e| e.to_string())?;
        println!("{}", image.to_terminal());
    }
    println!("== the simulated phone {PHONE} scans the QR");
    sim.scan_qr(PHONE, &code.code)
        .await
        .map_err(|e| format!("scan: {e}"))?;
    let working = wait_for(&events, "WORKING", |e| {
        matches!(&e.payload, Some(Payload::Status(s)) if s.status == SessionStatus::Working as i32)
    })
    .await?;
    let holder = working.worker_id.clone();
    println!(
        "== {SESSION} is WORKING on {holder} at epoch {}",
        working.epoch
    );
    sim.add_phone(CUSTOMER).map_err(|e| e.to_string())?;
    println!("== a customer ({CUSTOMER}) writes to the account from a simulated phone");
    let question = customer_says(&sim, &events, "Hi! Where is my order #4711?", 0).await?;
    let id = |verb: &str| format!("demo-{run_id}-{verb}");
    let answer = send_text(
        &nats,
        &sim,
        &id("send-1"),
        "It ships today. Thanks for waiting!",
        Some(&question),
    )
    .await?;
    sim.phone_read(CUSTOMER, std::slice::from_ref(&answer))
        .map_err(|e| e.to_string())?;
    wait_for(&events, "a read receipt", |e| {
        matches!(&e.payload, Some(Payload::Receipt(r)) if r.r#type == "read" && r.ids.contains(&answer))
    })
    .await?;
    println!("== the customer read the answer: the read receipt is a bus event (above)");

    let Some(index) = workers.iter().position(|w| w.name == holder) else {
        return Err(format!("the session is on an unknown worker {holder}"));
    };
    let mut victim = workers.remove(index);
    let killed = Instant::now();
    victim.child.kill().map_err(|e| format!("kill: {e}"))?;
    let _ = victim.child.wait();
    println!("== killed {holder} with SIGKILL; waiting for the fleet to move the session");
    let back = wait_for(&events, "WORKING on the other worker", |e| {
        e.epoch > working.epoch
            && e.worker_id != holder
            && matches!(&e.payload, Some(Payload::Status(s)) if s.status == SessionStatus::Working as i32)
    })
    .await?;
    let qr_after = events
        .lock()
        .map_err(|_| "event list poisoned".to_string())?
        .iter()
        .filter(|e| e.epoch > working.epoch && matches!(e.payload, Some(Payload::Qr(_))))
        .count();
    if qr_after > 0 {
        return Err(format!(
            "{qr_after} QR events after the failover: the session had to be linked again"
        ));
    }
    let counters = sim.counters();
    println!(
        "== {SESSION} is WORKING again on {} at epoch {}, {:.1} s after the kill, with no QR",
        back.worker_id,
        back.epoch,
        killed.elapsed().as_secs_f64()
    );
    println!(
        "== the simulator saw at most {} live socket(s) per device and sent {} `replaced`",
        counters.max_live_sockets_per_device, counters.replaced_sent
    );
    if counters.max_live_sockets_per_device > 1 || counters.replaced_sent > 0 {
        return Err("two sockets for one device".into());
    }
    println!("== after the failover, both directions still decrypt");
    customer_says(&sim, &events, "Great, thank you!", back.epoch).await?;
    send_text(&nats, &sim, &id("send-2"), "You're welcome!", None).await?;
    let undecryptable = events
        .lock()
        .map_err(|_| "event list poisoned".to_string())?
        .iter()
        .filter(|e| matches!(e.payload, Some(Payload::MessageUndecryptable(_))))
        .count();
    let on_phone = sim
        .phone_messages(CUSTOMER)
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|m| m.kind == "undecryptable")
        .count();
    if undecryptable + on_phone > 0 {
        return Err(format!(
            "{undecryptable} undecryptable on the bus, {on_phone} on the customer's phone"
        ));
    }
    command(
        &nats,
        CommandVerb::Stop,
        &v1::StopSession {
            command_id: id("stop"),
        },
    )
    .await?;
    wait_for(&events, "STOPPED", |e| {
        matches!(&e.payload, Some(Payload::Status(s)) if s.status == SessionStatus::Stopped as i32)
    })
    .await?;
    printer.abort();
    drop(workers);
    drop(coordinator);
    drop(victim);
    sim.shutdown().await;
    println!("== done");
    Ok(())
}
