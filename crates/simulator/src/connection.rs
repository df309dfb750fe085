//! One WebSocket connection: WebSocket messages ↔ [`ServerConnection`] bytes ↔ nodes.
//!
//! The task reads binary messages, pushes them through the Noise responder, decodes frames
//! into nodes and hands them to the [`State`](crate::state::State); what the state (or a
//! phone, through the socket's channel) wants sent comes back as [`Outbound`]. A
//! registration socket is closed when its last QR ref expires.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand_core::OsRng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};
use wafleet_protocol::binary::{self, Node};
use wafleet_protocol::noise::{KeyPair, ServerConnection, ServerEvent};

use crate::state::{Outbound, Shared, SocketId};

/// How long the server waits for a client to hang up after a terminal stanza
/// (`stream:error`, `failure`) before it closes the socket itself.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The server's Noise identity: its static key and the certificate chain for it.
pub(crate) struct ServerIdentity {
    pub static_key: KeyPair,
    pub cert_chain: Vec<u8>,
}

/// Why a connection ended (logged; the socket is gone either way).
#[derive(Debug, thiserror::Error)]
enum ConnectionEnd {
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("noise: {0}")]
    Noise(#[from] wafleet_protocol::noise::ConnectionError),
    #[error("undecodable node: {0}")]
    Decode(#[from] binary::DecodeError),
    #[error("unencodable node: {0}")]
    Encode(#[from] binary::EncodeError),
    #[error("text message on a binary protocol")]
    TextMessage,
}

/// What the loop does after handling something.
enum Flow {
    Continue,
    Stop,
}

struct Connection {
    id: SocketId,
    ws: WebSocketStream<TcpStream>,
    noise: ServerConnection,
    shared: Shared,
    /// A black hole ([`Outbound::Mute`]): the socket stays open, what arrives is read and
    /// dropped, nothing is sent.
    muted: bool,
}

/// Runs one accepted WebSocket until either side ends it or the simulator shuts down.
pub(crate) async fn run(
    ws: WebSocketStream<TcpStream>,
    shared: Shared,
    identity: Arc<ServerIdentity>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = shared.lock().open_socket(tx);
    debug!(socket = id, "socket opened");
    let noise = ServerConnection::new(
        identity.static_key.clone(),
        identity.cert_chain.clone(),
        &mut OsRng,
    );
    let mut conn = Connection {
        id,
        ws,
        noise,
        shared: shared.clone(),
        muted: false,
    };
    let mut expiry: Option<tokio::time::Instant> = None;
    let result: Result<(), ConnectionEnd> = async {
        loop {
            let flow = tokio::select! {
                message = conn.ws.next() => match message {
                    Some(Ok(message)) => conn.on_message(message, &mut expiry).await?,
                    Some(Err(e)) => return Err(e.into()),
                    None => Flow::Stop,
                },
                out = rx.recv() => match out {
                    Some(out) => conn.apply(out).await?,
                    None => Flow::Stop,
                },
                () = sleep_until(expiry) => {
                    info!(socket = id, "all QR refs expired: closing");
                    conn.shared.lock().socket_closed(id);
                    conn.apply(Outbound::Close(None)).await?
                }
                _ = shutdown.changed() => Flow::Stop,
            };
            if let Flow::Stop = flow {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        // A peer hanging up mid-message is normal for a test server; log and forget.
        warn!(socket = id, error = %e, "connection ended with an error");
    }
    shared.lock().socket_closed(id);
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Connection {
    async fn on_message(
        &mut self,
        message: Message,
        expiry: &mut Option<tokio::time::Instant>,
    ) -> Result<Flow, ConnectionEnd> {
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Close(_) => return Ok(Flow::Stop),
            Message::Text(_) => return Err(ConnectionEnd::TextMessage),
            // Pings are answered by tungstenite; pongs and raw frames need nothing.
            _ => return Ok(Flow::Continue),
        };
        if self.muted {
            return Ok(Flow::Continue);
        }
        self.noise.receive(&bytes)?;
        while let Some(out) = self.noise.poll_transmit() {
            self.ws.send(Message::Binary(out.into())).await?;
        }
        while let Some(event) = self.noise.poll_event() {
            let outbound = match event {
                ServerEvent::HandshakeComplete { client, .. } => {
                    let mut state = self.shared.lock();
                    let outbound = state.on_client_payload(self.id, &client, Instant::now());
                    let policy = state.policy.clone();
                    if let Some(reg) = state.registration(self.id) {
                        *expiry = Some(reg.expires_at(&policy).into());
                    }
                    outbound
                }
                ServerEvent::Frame(plaintext) => {
                    let node = binary::decode(&plaintext)?;
                    debug!(socket = self.id, tag = %node.tag, "node received");
                    self.shared.lock().on_node(self.id, node)
                }
            };
            for out in outbound {
                if let Flow::Stop = self.apply(out).await? {
                    return Ok(Flow::Stop);
                }
            }
        }
        Ok(Flow::Continue)
    }

    async fn send_node(&mut self, node: &Node) -> Result<(), ConnectionEnd> {
        let plaintext = binary::encode(node)?;
        let wire = self.noise.send(&plaintext)?;
        self.ws.send(Message::Binary(wire.into())).await?;
        Ok(())
    }

    /// After a terminal stanza, gives the client [`CLOSE_GRACE`] to read it and hang up
    /// first, as clients expect (Baileys handles a close that overtakes the stanza as a
    /// plain lost connection). What it sends meanwhile is not processed.
    async fn linger(&mut self) {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(message)) = self.ws.next().await {
                if let Message::Close(_) = message {
                    break;
                }
            }
        })
        .await;
    }

    async fn apply(&mut self, out: Outbound) -> Result<Flow, ConnectionEnd> {
        match out {
            Outbound::Node(_) if self.muted => Ok(Flow::Continue),
            Outbound::Node(node) => {
                self.send_node(&node).await?;
                Ok(Flow::Continue)
            }
            Outbound::Mute => {
                info!(
                    socket = self.id,
                    "muted: the socket stays open and answers nothing"
                );
                self.muted = true;
                Ok(Flow::Continue)
            }
            Outbound::Close(node) => {
                if let Some(node) = node {
                    self.send_node(&node).await?;
                    self.linger().await;
                }
                // The peer may be gone already; closing is best effort.
                let _ = self.ws.close(None).await;
                Ok(Flow::Stop)
            }
            Outbound::Abort => Ok(Flow::Stop),
        }
    }
}
