//! Test support: a real companion over a real WebSocket.
//!
//! [`Companion::connect`] drives `wafleet_protocol::client::Session` and
//! `noise::ClientConnection` on a tokio task against the simulator's URL, forwarding every
//! session event to the test. It stands in for the product's session-worker driver, which
//! is written elsewhere; it does only what a driver must (shovel bytes, fire timers,
//! confirm prekeys once "persisted").

#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use wafleet_protocol::binary::{self, Content, Node};
use wafleet_protocol::cert::RootKey;
use wafleet_protocol::client::{DeviceIdentity, Event, Session, SessionConfig};
use wafleet_protocol::noise::{ClientConfig, ClientConnection, ClientEvent};
use wafleet_protocol::pairing_code::PhoneNumber;
use wafleet_protocol::proto::AdvSignedDeviceIdentity;
use wafleet_sim::{SimConfig, Simulator};

/// How long a test waits for one expected step before failing.
pub const STEP: Duration = Duration::from_secs(20);

/// What the companion reports.
#[derive(Debug)]
pub enum Step {
    /// A session event.
    Event(Event),
    /// The socket ended.
    Ended(Ended),
    /// The driver failed (noise, codec, WebSocket error).
    Failed(String),
}

enum Command {
    RequestPairingCode(PhoneNumber),
    /// Send this node as is (its reply comes back through [`Companion::request`]).
    Raw(Node),
    Close,
}

/// The id prefix of iqs sent with [`Companion::request`]: their replies bypass the session.
const RAW_ID_PREFIX: &str = "raw-";

/// How a socket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The server sent a WebSocket close frame.
    ServerClosed,
    /// The connection dropped without a close frame.
    Dropped,
    /// The session ended (restart, stream error, failure) and the driver hung up.
    HungUp,
}

/// A companion connected to the simulator.
pub struct Companion {
    steps: mpsc::UnboundedReceiver<Step>,
    commands: mpsc::UnboundedSender<Command>,
    replies: mpsc::UnboundedReceiver<Node>,
    messages: mpsc::UnboundedReceiver<Node>,
    next_raw: u32,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Companion {
    /// Connects with `identity` (registration when unpaired, login when paired).
    pub async fn connect(sim: &Simulator, identity: DeviceIdentity) -> Companion {
        Companion::connect_with(sim, identity, SessionConfig::default()).await
    }

    /// [`Companion::connect`] with a session configuration.
    pub async fn connect_with(
        sim: &Simulator,
        identity: DeviceIdentity,
        config: SessionConfig,
    ) -> Companion {
        Companion::start(sim, identity, config, false).await
    }

    /// A companion that corrupts its device signature in `pair-device-sign` (one bit of
    /// `deviceSignature` flipped), as a broken client would.
    pub async fn connect_forging_signature(sim: &Simulator, identity: DeviceIdentity) -> Companion {
        Companion::start(sim, identity, SessionConfig::default(), true).await
    }

    /// A companion pinned to `root` instead of the simulator's root key.
    pub async fn connect_pinned(
        sim: &Simulator,
        identity: DeviceIdentity,
        root: RootKey,
    ) -> Companion {
        Companion::spawn(sim, identity, SessionConfig::default(), false, root).await
    }

    async fn start(
        sim: &Simulator,
        identity: DeviceIdentity,
        config: SessionConfig,
        forge: bool,
    ) -> Companion {
        let root = RootKey::custom(sim.root_public_key());
        Companion::spawn(sim, identity, config, forge, root).await
    }

    async fn spawn(
        sim: &Simulator,
        identity: DeviceIdentity,
        config: SessionConfig,
        forge: bool,
        root: RootKey,
    ) -> Companion {
        let (ws, _) = tokio_tungstenite::connect_async(sim.ws_url())
            .await
            .expect("WebSocket connects to the simulator");
        let (step_tx, steps) = mpsc::unbounded_channel();
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (reply_tx, replies) = mpsc::unbounded_channel();
        let (message_tx, messages) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let result = drive(
                ws,
                root,
                identity,
                config,
                forge,
                command_rx,
                Outputs {
                    steps: step_tx.clone(),
                    replies: reply_tx,
                    messages: message_tx,
                },
            )
            .await;
            if let Err(e) = result {
                let _ = step_tx.send(Step::Failed(e));
            }
        });
        Companion {
            steps,
            commands,
            replies,
            messages,
            next_raw: 0,
        }
    }

    /// The next step, failing the test after [`STEP`].
    pub async fn next(&mut self) -> Step {
        match tokio::time::timeout(STEP, self.steps.recv()).await {
            Ok(Some(step)) => step,
            Ok(None) => panic!("companion driver ended without a step"),
            Err(_) => panic!("no companion step within {STEP:?}"),
        }
    }

    /// The next session event, skipping none; panics on a close or failure.
    pub async fn event(&mut self) -> Event {
        match self.next().await {
            Step::Event(e) => e,
            other => panic!("expected a session event, got {other:?}"),
        }
    }

    /// Skips events until `pick` returns `Some`; panics on close or failure.
    pub async fn wait_for<T>(&mut self, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        loop {
            match self.next().await {
                Step::Event(e) => {
                    if let Some(v) = pick(&e) {
                        return v;
                    }
                }
                other => panic!("companion ended while waiting: {other:?}"),
            }
        }
    }

    /// Skips events until the socket ends; returns how, and the events seen on the way.
    pub async fn until_closed(&mut self) -> (Ended, Vec<Event>) {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Step::Event(e) => seen.push(e),
                Step::Ended(how) => return (how, seen),
                Step::Failed(e) => panic!("companion driver failed: {e}"),
            }
        }
    }

    /// The first QR text.
    pub async fn first_qr(&mut self) -> String {
        self.wait_for(|e| match e {
            Event::Qr { text, .. } => Some(text.as_str().to_owned()),
            _ => None,
        })
        .await
    }

    /// Asks the session for a pairing code for `phone`.
    pub fn request_pairing_code(&self, phone: &str) {
        let phone = PhoneNumber::parse(phone).expect("test phone number");
        self.commands
            .send(Command::RequestPairingCode(phone))
            .expect("driver running");
    }

    /// Sends `iq` (its `id` replaced by a fresh one) on the logged-in socket, beside the
    /// session, and returns the server's reply (an iq, or the `<ack>` of a `<message>` or
    /// `<receipt>`), failing the test after [`STEP`].
    pub async fn request(&mut self, mut iq: Node) -> Node {
        self.next_raw += 1;
        let id = format!("{RAW_ID_PREFIX}{}", self.next_raw);
        iq.attrs.retain(|(k, _)| k != "id");
        let iq = iq.attr("id", id.clone());
        self.commands
            .send(Command::Raw(iq))
            .expect("driver running");
        let reply = tokio::time::timeout(STEP, self.replies.recv())
            .await
            .unwrap_or_else(|_| panic!("no reply to {id} within {STEP:?}"))
            .expect("driver running");
        assert_eq!(reply.attr_str("id"), Some(id.as_str()), "reply to our iq");
        reply
    }

    /// The next `<message>` stanza the server delivered (the session acks it; a test
    /// decrypts it itself), failing the test after [`STEP`].
    pub async fn next_message(&mut self) -> Node {
        tokio::time::timeout(STEP, self.messages.recv())
            .await
            .unwrap_or_else(|_| panic!("no <message> within {STEP:?}"))
            .expect("driver running")
    }

    /// Closes the socket from the companion's side.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

/// Where the driver reports: session steps, replies to [`Companion::request`], and a copy
/// of each `<message>` for [`Companion::next_message`].
struct Outputs {
    steps: mpsc::UnboundedSender<Step>,
    replies: mpsc::UnboundedSender<Node>,
    messages: mpsc::UnboundedSender<Node>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn drive(
    mut ws: Ws,
    root: RootKey,
    identity: DeviceIdentity,
    config: SessionConfig,
    forge: bool,
    mut commands: mpsc::UnboundedReceiver<Command>,
    outputs: Outputs,
) -> Result<(), String> {
    let Outputs {
        steps,
        replies,
        messages,
    } = outputs;
    let mut rng = StdRng::from_entropy();
    let mut client_config = ClientConfig::new(identity.noise_key.clone());
    client_config.root = root;
    let mut conn = ClientConnection::new(client_config, now_ms() / 1000, &mut rng)
        .map_err(|e| e.to_string())?;
    let mut session = Session::new(identity, config, &mut rng);
    while let Some(bytes) = conn.poll_transmit() {
        ws.send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| e.to_string())?;
    }
    loop {
        let deadline = session.poll_timeout().map(|at| {
            tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()))
        });
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    conn.receive(&bytes).map_err(|e| e.to_string())?;
                    while let Some(event) = conn.poll_event() {
                        match event {
                            ClientEvent::ServerHello(_) => {
                                let payload = session
                                    .client_payload()
                                    .map_err(|e| e.to_string())?
                                    .encode_to_vec();
                                conn.finish_handshake(&payload).map_err(|e| e.to_string())?;
                            }
                            ClientEvent::Frame(plaintext) => {
                                let node = binary::decode(&plaintext).map_err(|e| e.to_string())?;
                                let raw = (node.tag == "iq" || node.tag == "ack")
                                    && node.attr_str("id").is_some_and(|id| id.starts_with(RAW_ID_PREFIX));
                                if raw {
                                    let _ = replies.send(node);
                                } else {
                                    if node.tag == "message" {
                                        let _ = messages.send(node.clone());
                                    }
                                    session.handle_node(node, now_ms(), &mut rng);
                                }
                            }
                        }
                    }
                }
                Some(Ok(Message::Close(_))) => {
                    let _ = steps.send(Step::Ended(Ended::ServerClosed));
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    let _ = steps.send(Step::Ended(Ended::Dropped));
                    return Ok(());
                }
            },
            command = commands.recv() => match command {
                Some(Command::RequestPairingCode(phone)) => {
                    session
                        .request_pairing_code(&phone, now_ms(), &mut rng)
                        .map_err(|e| e.to_string())?;
                }
                Some(Command::Raw(node)) => {
                    let plaintext = binary::encode(&node).map_err(|e| e.to_string())?;
                    let wire = conn.send(&plaintext).map_err(|e| e.to_string())?;
                    ws.send(Message::Binary(wire.into()))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Some(Command::Close) | None => {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
            },
            () = sleep_until(deadline) => session.handle_timeout(now_ms(), &mut rng),
        }
        // Handshake bytes first, then the session's nodes, then its events.
        while let Some(bytes) = conn.poll_transmit() {
            ws.send(Message::Binary(bytes.into()))
                .await
                .map_err(|e| e.to_string())?;
        }
        loop {
            while let Some(mut node) = session.poll_transmit() {
                if forge {
                    forge_device_signature(&mut node);
                }
                let plaintext = binary::encode(&node).map_err(|e| e.to_string())?;
                let wire = conn.send(&plaintext).map_err(|e| e.to_string())?;
                ws.send(Message::Binary(wire.into()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let mut confirmed = false;
            while let Some(event) = session.poll_event() {
                if matches!(event, Event::PreKeysGenerated { .. }) {
                    // The test "persists" instantly; this releases the upload.
                    session
                        .confirm_pre_keys_persisted()
                        .map_err(|e| e.to_string())?;
                    confirmed = true;
                }
                let _ = steps.send(Step::Event(event));
            }
            if !confirmed {
                break;
            }
        }
        if session.is_closed() {
            // Restart or disconnect: a driver hangs up (and reconnects if it wants to).
            let _ = ws.close(None).await;
            let _ = steps.send(Step::Ended(Ended::HungUp));
            return Ok(());
        }
    }
}

/// Flips one bit of the device signature inside `<pair-device-sign><device-identity>`.
fn forge_device_signature(node: &mut Node) {
    let Content::Nodes(children) = &mut node.content else {
        return;
    };
    for sign in children.iter_mut().filter(|c| c.tag == "pair-device-sign") {
        let Content::Nodes(identities) = &mut sign.content else {
            continue;
        };
        for identity in identities.iter_mut() {
            if let Content::Bytes(bytes) = &mut identity.content {
                let mut signed =
                    AdvSignedDeviceIdentity::decode(bytes.as_slice()).expect("our own identity");
                if let Some(sig) = signed.device_signature.as_mut() {
                    sig[0] ^= 1;
                }
                *bytes = signed.encode_to_vec();
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A simulator with default settings and one phone.
pub async fn simulator_with_phone(phone: &str) -> Simulator {
    simulator_with(SimConfig::default(), phone).await
}

/// A simulator with `config` and one phone.
pub async fn simulator_with(config: SimConfig, phone: &str) -> Simulator {
    let sim = Simulator::start(config).await.expect("simulator starts");
    sim.add_phone(phone).expect("phone added");
    sim
}

/// A fresh unpaired identity.
pub fn fresh_identity() -> DeviceIdentity {
    DeviceIdentity::generate(&mut StdRng::from_entropy())
}

/// Links a fresh companion by QR; returns the paired identity (after the 515).
pub async fn link_by_qr(sim: &Simulator, phone: &str) -> DeviceIdentity {
    let mut companion = Companion::connect(sim, fresh_identity()).await;
    let qr = companion.first_qr().await;
    let (scan, identity) = tokio::join!(sim.scan_qr(phone, &qr), async {
        let identity = companion
            .wait_for(|e| match e {
                Event::Paired { identity, .. } => Some((**identity).clone()),
                _ => None,
            })
            .await;
        assert!(matches!(companion.event().await, Event::Restart));
        identity
    });
    let jid = scan.expect("phone links the companion");
    assert_eq!(identity.jid().as_ref(), Some(&jid));
    identity
}

/// Polls the simulator's counters until `check` holds, failing after [`STEP`].
pub async fn eventually(
    sim: &Simulator,
    what: &str,
    check: impl Fn(&wafleet_sim::Counters) -> bool,
) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let counters = sim.counters();
        if check(&counters) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached; counters {counters:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.1 client for the control API: one request per connection. Returns the
/// status and the JSON body.
pub async fn http(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.strip_prefix("http://").expect("http URL");
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .expect("control API reachable");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("response read");
    let text = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let json = serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON body, got {body:?}"));
    (status, json)
}
