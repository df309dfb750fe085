//! Sans-IO connections: frames + handshake + transport for each side.
//!
//! A runtime feeds received bytes to `receive`, sends whatever `poll_transmit` yields, reacts
//! to `poll_event`, and encrypts outgoing messages with `send`. Plaintexts after the
//! handshake are opaque here (`flag || node bytes`).
//!
//! After any error the connection is dead: every later call returns the same error.

use std::collections::VecDeque;
use std::mem;

use rand_core::CryptoRngCore;
use thiserror::Error;

use super::{
    ClientFinishInfo, Initiator, InitiatorAwaitingFinish, KeyPair, NoiseError, Responder,
    ResponderAwaitingFinish, ServerHelloInfo, Transport, TAG_LEN,
};
use crate::cert::RootKey;
use crate::frame::{FrameDecoder, FrameEncoder, FrameError, MAX_FRAME_LEN};

/// Connection errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnectionError {
    /// Framing failed (bad intro, oversize frame).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The handshake or transport cipher failed.
    #[error(transparent)]
    Noise(#[from] NoiseError),
    /// `send` before the handshake completed.
    #[error("handshake not complete")]
    HandshakeIncomplete,
    /// `finish_handshake` when the client is not waiting for its payload.
    #[error("not waiting for the client payload")]
    NotAwaitingPayload,
}

/// Takes handshake bytes off the front of the transmit queue before a frame built by `send`.
fn drain_transmit(transmit: &mut VecDeque<Vec<u8>>, frame: Vec<u8>) -> Vec<u8> {
    if transmit.is_empty() {
        return frame;
    }
    let mut out: Vec<u8> = transmit.drain(..).flatten().collect();
    out.extend_from_slice(&frame);
    out
}

fn encrypt_frame(
    transport: &mut Transport,
    encoder: &mut FrameEncoder,
    plaintext: &[u8],
) -> Result<Vec<u8>, ConnectionError> {
    let len = plaintext.len().saturating_add(TAG_LEN);
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        }
        .into());
    }
    let ct = transport.encrypt(plaintext)?;
    Ok(encoder.encode(&ct)?)
}

/// Configuration of a [`ClientConnection`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The root the server's certificate chain must chain up to.
    pub root: RootKey,
    /// The client's long-term Noise key pair (sent in `clientFinish.static`).
    pub noise_key: KeyPair,
    /// Edge routing info to send in the pre-intro, if any.
    pub routing_info: Option<Vec<u8>>,
}

impl ClientConfig {
    /// WhatsApp's root, no routing info.
    pub fn new(noise_key: KeyPair) -> Self {
        Self {
            root: RootKey::WHATSAPP,
            noise_key,
            routing_info: None,
        }
    }
}

/// Events from a [`ClientConnection`].
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The server hello and its certificate chain verified. Call
    /// [`ClientConnection::finish_handshake`] with the `ClientPayload` bytes.
    ServerHello(Box<ServerHelloInfo>),
    /// A decrypted frame from the server (`flag || node bytes`).
    Frame(Vec<u8>),
}

// One per connection, never in collections: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum ClientState {
    AwaitingServerHello(Initiator),
    AwaitingPayload(InitiatorAwaitingFinish),
    Transport(Transport),
    Failed(ConnectionError),
}

/// The client (initiator) side of a connection.
pub struct ClientConnection {
    state: ClientState,
    root: RootKey,
    noise_key: KeyPair,
    now: u64,
    encoder: FrameEncoder,
    decoder: FrameDecoder,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
}

impl std::fmt::Debug for ClientConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConnection")
            .field("handshake_complete", &self.is_handshake_complete())
            .finish_non_exhaustive()
    }
}

impl ClientConnection {
    /// Starts a connection: the intro header and `clientHello` are queued for
    /// [`poll_transmit`](Self::poll_transmit). The ephemeral key comes from `rng`; `now`
    /// (unix seconds) is used to check the certificates' validity.
    pub fn new(
        config: ClientConfig,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, ConnectionError> {
        Self::with_ephemeral(config, now, KeyPair::generate(rng))
    }

    /// [`new`](Self::new) with an explicit ephemeral key pair.
    pub fn with_ephemeral(
        config: ClientConfig,
        now: u64,
        ephemeral: KeyPair,
    ) -> Result<Self, ConnectionError> {
        let mut encoder = FrameEncoder::client(config.routing_info.as_deref())?;
        let (initiator, hello) = Initiator::start(ephemeral);
        let first = encoder.encode(&hello)?;
        Ok(Self {
            state: ClientState::AwaitingServerHello(initiator),
            root: config.root,
            noise_key: config.noise_key,
            now,
            encoder,
            decoder: FrameDecoder::client(),
            transmit: VecDeque::from([first]),
            events: VecDeque::new(),
        })
    }

    /// Whether the transport is established (after [`finish_handshake`](Self::finish_handshake)).
    pub fn is_handshake_complete(&self) -> bool {
        matches!(self.state, ClientState::Transport(_))
    }

    /// Feeds bytes received from the server (any chunking).
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        if let ClientState::Failed(e) = &self.state {
            return Err(e.clone());
        }
        self.decoder.push(bytes);
        self.process()
    }

    fn process(&mut self) -> Result<(), ConnectionError> {
        let r = self.process_inner();
        if let Err(e) = &r {
            self.state = ClientState::Failed(e.clone());
        }
        r
    }

    fn process_inner(&mut self) -> Result<(), ConnectionError> {
        loop {
            if matches!(self.state, ClientState::AwaitingPayload(_)) {
                // Frames stay buffered until the payload is sent and the transport exists.
                return Ok(());
            }
            let Some(frame) = self.decoder.next_frame()? else {
                return Ok(());
            };
            match mem::replace(
                &mut self.state,
                ClientState::Failed(ConnectionError::HandshakeIncomplete),
            ) {
                ClientState::AwaitingServerHello(init) => {
                    let (next, info) = init.read_server_hello(&frame, &self.root, self.now)?;
                    self.state = ClientState::AwaitingPayload(next);
                    self.events
                        .push_back(ClientEvent::ServerHello(Box::new(info)));
                }
                ClientState::Transport(mut t) => {
                    let pt = t.decrypt(&frame)?;
                    self.state = ClientState::Transport(t);
                    self.events.push_back(ClientEvent::Frame(pt));
                }
                s @ (ClientState::AwaitingPayload(_) | ClientState::Failed(_)) => {
                    self.state = s;
                    return Ok(());
                }
            }
        }
    }

    /// Sends the `ClientPayload` bytes (registration or login) in `clientFinish` and
    /// switches to the transport. Call after [`ClientEvent::ServerHello`].
    pub fn finish_handshake(&mut self, client_payload: &[u8]) -> Result<(), ConnectionError> {
        let awaiting = match mem::replace(
            &mut self.state,
            ClientState::Failed(ConnectionError::NotAwaitingPayload),
        ) {
            ClientState::AwaitingPayload(a) => a,
            ClientState::Failed(e) => {
                self.state = ClientState::Failed(e.clone());
                return Err(e);
            }
            other => {
                self.state = other;
                return Err(ConnectionError::NotAwaitingPayload);
            }
        };
        let result = awaiting
            .finish(&self.noise_key, client_payload)
            .map_err(ConnectionError::from)
            .and_then(|done| Ok((self.encoder.encode(&done.message)?, done.transport)));
        match result {
            Ok((bytes, transport)) => {
                self.transmit.push_back(bytes);
                self.state = ClientState::Transport(transport);
                // Frames that arrived while waiting for the payload.
                self.process()
            }
            Err(e) => {
                self.state = ClientState::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// Encrypts and frames one message. The returned wire bytes start with any handshake
    /// bytes not yet taken with [`poll_transmit`](Self::poll_transmit), so order is kept.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ConnectionError> {
        match &mut self.state {
            ClientState::Transport(t) => {
                let frame = encrypt_frame(t, &mut self.encoder, plaintext)?;
                Ok(drain_transmit(&mut self.transmit, frame))
            }
            ClientState::Failed(e) => Err(e.clone()),
            _ => Err(ConnectionError::HandshakeIncomplete),
        }
    }

    /// The next bytes to send to the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }
}

/// Events from a [`ServerConnection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// The handshake completed; the transport is ready.
    HandshakeComplete {
        /// The client's static key and decrypted `ClientPayload` bytes.
        client: ClientFinishInfo,
        /// Routing info from the client's edge-routing pre-intro, if it sent one.
        routing_info: Option<Vec<u8>>,
    },
    /// A decrypted frame from the client (`flag || node bytes`).
    Frame(Vec<u8>),
}

#[allow(clippy::large_enum_variant)]
enum ServerState {
    AwaitingHello(Responder),
    AwaitingFinish(ResponderAwaitingFinish),
    Transport(Transport),
    Failed(ConnectionError),
}

/// The server (responder) side of a connection, for the simulator.
///
/// The responder does not look inside the certificate chain bytes it is given, so a fuzz
/// target can pass any bytes (e.g. an empty vector) and a fixed ephemeral key.
///
/// ```
/// use rand::{rngs::StdRng, SeedableRng};
/// use wafleet_protocol::cert::{CertificateAuthority, ChainSpec};
/// use wafleet_protocol::noise::{
///     ClientConfig, ClientConnection, ClientEvent, KeyPair, ServerConnection, ServerEvent,
/// };
///
/// let mut rng = StdRng::seed_from_u64(1);
/// let now = 1_700_000_000;
/// // Simulator side: a CA, a static key and a chain certifying it.
/// let ca = CertificateAuthority::generate(&mut rng);
/// let server_key = KeyPair::generate(&mut rng);
/// let chain = ca
///     .issue(&ChainSpec::new(1, now - 60, now + 86_400), &server_key.public, &mut rng)
///     .to_bytes();
/// let mut server = ServerConnection::new(server_key, chain, &mut rng);
///
/// // Client side, pinned to the simulator's root.
/// let mut config = ClientConfig::new(KeyPair::generate(&mut rng));
/// config.root = ca.root_key();
/// let mut client = ClientConnection::new(config, now, &mut rng).unwrap();
///
/// // Shovel bytes until both sides are done.
/// while let Some(bytes) = client.poll_transmit() {
///     server.receive(&bytes).unwrap();
/// }
/// while let Some(bytes) = server.poll_transmit() {
///     client.receive(&bytes).unwrap();
/// }
/// assert!(matches!(client.poll_event(), Some(ClientEvent::ServerHello(_))));
/// client.finish_handshake(b"ClientPayload bytes").unwrap();
/// while let Some(bytes) = client.poll_transmit() {
///     server.receive(&bytes).unwrap();
/// }
/// let Some(ServerEvent::HandshakeComplete { client: info, .. }) = server.poll_event() else {
///     panic!("handshake did not complete");
/// };
/// assert_eq!(info.client_payload, b"ClientPayload bytes");
///
/// // Transport: plaintext is `flag || node bytes`, opaque here.
/// let wire = server.send(b"\x00node").unwrap();
/// client.receive(&wire).unwrap();
/// assert_eq!(client.poll_event(), Some(ClientEvent::Frame(b"\x00node".to_vec())));
/// ```
pub struct ServerConnection {
    state: ServerState,
    encoder: FrameEncoder,
    decoder: FrameDecoder,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<ServerEvent>,
}

impl std::fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConnection")
            .field("handshake_complete", &self.is_handshake_complete())
            .finish_non_exhaustive()
    }
}

impl ServerConnection {
    /// A server connection with the static key pair, the serialized `CertChain` certifying
    /// it (e.g. from [`crate::cert::CertificateAuthority::issue`]), and an ephemeral key from
    /// `rng`.
    pub fn new(static_key: KeyPair, cert_chain: Vec<u8>, rng: &mut impl CryptoRngCore) -> Self {
        Self::with_ephemeral(static_key, cert_chain, KeyPair::generate(rng))
    }

    /// [`new`](Self::new) with an explicit ephemeral key pair.
    pub fn with_ephemeral(static_key: KeyPair, cert_chain: Vec<u8>, ephemeral: KeyPair) -> Self {
        Self {
            state: ServerState::AwaitingHello(Responder::new(static_key, ephemeral, cert_chain)),
            encoder: FrameEncoder::server(),
            decoder: FrameDecoder::server(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Caps incoming frame lengths (default and maximum: [`MAX_FRAME_LEN`]).
    pub fn with_max_frame_len(mut self, max: usize) -> Self {
        self.decoder = self.decoder.with_max_frame_len(max);
        self
    }

    /// Whether the transport is established.
    pub fn is_handshake_complete(&self) -> bool {
        matches!(self.state, ServerState::Transport(_))
    }

    /// Feeds bytes received from the client (any chunking, starting with the intro).
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        if let ServerState::Failed(e) = &self.state {
            return Err(e.clone());
        }
        self.decoder.push(bytes);
        let r = self.process();
        if let Err(e) = &r {
            self.state = ServerState::Failed(e.clone());
        }
        r
    }

    fn process(&mut self) -> Result<(), ConnectionError> {
        while let Some(frame) = self.decoder.next_frame()? {
            match mem::replace(
                &mut self.state,
                ServerState::Failed(ConnectionError::HandshakeIncomplete),
            ) {
                ServerState::AwaitingHello(r) => {
                    let (next, hello) = r.read_client_hello(&frame)?;
                    self.transmit.push_back(self.encoder.encode(&hello)?);
                    self.state = ServerState::AwaitingFinish(next);
                }
                ServerState::AwaitingFinish(r) => {
                    let (client, transport) = r.read_client_finish(&frame)?;
                    self.state = ServerState::Transport(transport);
                    self.events.push_back(ServerEvent::HandshakeComplete {
                        client,
                        routing_info: self.decoder.routing_info().map(<[u8]>::to_vec),
                    });
                }
                ServerState::Transport(mut t) => {
                    let pt = t.decrypt(&frame)?;
                    self.state = ServerState::Transport(t);
                    self.events.push_back(ServerEvent::Frame(pt));
                }
                ServerState::Failed(e) => {
                    self.state = ServerState::Failed(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Encrypts and frames one message. The returned wire bytes start with any handshake
    /// bytes not yet taken with [`poll_transmit`](Self::poll_transmit), so order is kept.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ConnectionError> {
        match &mut self.state {
            ServerState::Transport(t) => {
                let frame = encrypt_frame(t, &mut self.encoder, plaintext)?;
                Ok(drain_transmit(&mut self.transmit, frame))
            }
            ServerState::Failed(e) => Err(e.clone()),
            _ => Err(ConnectionError::HandshakeIncomplete),
        }
    }

    /// The next bytes to send to the client.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }
}
