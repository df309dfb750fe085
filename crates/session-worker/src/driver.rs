//! The tokio driver of one session: a WebSocket, the Noise connection and the linking/login
//! state machine of `wafleet_protocol`, timers on the wall clock, reconnects, persistence.
//!
//! The loop of one connection reads WebSocket messages into
//! [`ClientConnection::receive`], decodes each frame into a node for
//! [`Session::handle_node`], calls [`Session::handle_timeout`] at
//! [`Session::poll_timeout`], then handles the session's events (persisting before
//! anything is sent) and sends what it transmits.
//!
//! Between connections the driver follows the protocol crate's
//! [`DisconnectReason::should_reconnect`]: 515 reconnects at once with the paired identity;
//! `replaced`, logged out, QR exhaustion and the account failures end the driver with a
//! [`DriverEvent::Failed`]; everything else (network loss, EOF, a stalled handshake, 503,
//! stream errors) reconnects after a jittered exponential [`Backoff`].
//!
//! A running driver is controlled through [`SessionDriver::control`]: a cloneable
//! [`DriverControl`] whose commands go over a channel into the connection loop (and get
//! their answers over a oneshot). [`DriverControl::request_pairing_code`] asks for a
//! pairing code on the socket that shows QR codes now; [`DriverControl::logout`] sends the
//! companion's `remove-companion-device`, waits for the server's answer (at most
//! [`LOGOUT_TIMEOUT`]), marks the store logged out and ends the driver with `logged_out`.
//! Commands are handled between the loop's other steps, so the ordering above (persist,
//! then send) holds for them too.
//!
//! Once logged in, each connection also has a [`Messenger`] (`wafleet_messaging`): every
//! inbound node goes to it first, and what it does not take (anything but messages,
//! receipts, its own iq results and acks, encrypt/group notifications) goes to the
//! [`Session`]. The pump handles the events of both before it sends the transmits of
//! both: on [`MessengerEvent::StateChanged`] the whole [`StoredSession`] (identity,
//! prekeys, Signal state) is saved, and a failed save ends the driver with
//! `storage_error` before anything queued after it is sent. An inbound message goes to
//! the [`Inbound`] destination (an [`InboundSink`] the driver awaits, or the event
//! channel) and only then is its `<ack>` and delivery receipt queued
//! ([`Messenger::delivered`]). [`DriverControl::send_text`] sends a text and answers once
//! the server acked it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, SinkExt, StreamExt};
use prost::Message as _;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Request};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, warn};
use wafleet_messaging::{
    Keys, Messenger, MessengerConfig, MessengerEvent, Outgoing, SendError, SendReference, SendStart,
};
use wafleet_protocol::adv::AdvError;
use wafleet_protocol::binary::Node;
use wafleet_protocol::binary::{decode, encode};
use wafleet_protocol::cert::RootKey;
use wafleet_protocol::client::{
    DeviceIdentity, DisconnectReason, Event, PairingCodeError, Session, SessionConfig, SessionError,
};
use wafleet_protocol::noise::{ClientConfig, ClientConnection, ClientEvent};
use wafleet_protocol::pairing_code::{PhoneNumber, PhoneNumberError};

use crate::backoff::Backoff;
use crate::event::{
    reason_code, reason_detail, DriverEvent, MessageEvent, ReceiptEvent, Secret, SentEvent,
    SkippedDevice, UndecryptableEvent,
};
use crate::recipient::{InvalidRecipient, Recipient};
use crate::store::{SessionStore, StoreError, StoredSession};

/// WhatsApp's WebSocket endpoint, the default server.
pub const WHATSAPP_URL: &str = "wss://web.whatsapp.com/ws/chat";

/// Consecutive 515 restarts answered at once; more go through the backoff.
const MAX_IMMEDIATE_RESTARTS: u32 = 3;

/// Linking sockets that may end without a scan (network loss while a QR is shown) before
/// the driver gives up with `qr_exhausted`.
const MAX_QR_SOCKETS: u32 = 3;

/// How long [`DriverControl::logout`] waits for the server's answer to the logout.
pub const LOGOUT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`DriverControl::send_text`] waits for the server's ack by default
/// ([`DriverConfig::send_timeout`]).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Commands queued for the connection loop before it takes them.
const COMMAND_QUEUE: usize = 16;

/// The `Origin` header WhatsApp Web sends.
pub const ORIGIN: &str = "https://web.whatsapp.com";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// At most this many further ready WebSocket messages and commands join one turn of the
/// connection loop (one save covers them; see `SessionDriver::connection`).
const GROUP_COMMIT_MAX: usize = 64;

/// Which server to connect to and which certificate root its Noise chain must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `wss://…` (or `ws://…` for a local simulator).
    pub url: String,
    /// The root key the server's certificate chain must chain up to.
    pub root: RootKey,
}

impl Default for ServerConfig {
    /// The real WhatsApp: [`WHATSAPP_URL`] with [`RootKey::WHATSAPP`].
    fn default() -> ServerConfig {
        ServerConfig {
            url: WHATSAPP_URL.to_owned(),
            root: RootKey::WHATSAPP,
        }
    }
}

/// Settings of one driven session.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// A name for logs (never a secret).
    pub label: String,
    /// The server; the real WhatsApp by default.
    pub server: ServerConfig,
    /// The state machine's timing and client profile.
    pub session: SessionConfig,
    /// Link by pairing code for this phone number (E.164 digits) instead of by QR only.
    /// Checked by [`SessionDriver::start`].
    pub phone: Option<String>,
    /// Delays between reconnects after failures.
    pub backoff: Backoff,
    /// How long connecting (TCP, TLS, WebSocket, Noise, the first server node) may take
    /// before the attempt is torn down and retried.
    pub handshake_timeout: Duration,
    /// Give up (`unreachable`) after this many consecutive failed connections; `None`
    /// retries forever. A connection that showed a QR or logged in resets the count.
    pub max_consecutive_failures: Option<u32>,
    /// Asked before every connection attempt (the first and each reconnect); `false` ends
    /// the driver with `lease_lost` instead of connecting. A fleet worker passes its lease
    /// check, so no socket is ever opened without a live lease.
    pub may_connect: Option<ConnectGate>,
    /// Where inbound messages, receipts and undecryptable messages go before they are
    /// acked ([`Inbound::Events`] by default).
    pub inbound: Inbound,
    /// How long [`DriverControl::send_text`] waits for the server's ack
    /// ([`SEND_TIMEOUT`]).
    pub send_timeout: Duration,
}

/// Where a driver hands inbound messages before it acks them to the server.
#[derive(Clone, Default)]
pub enum Inbound {
    /// As [`DriverEvent`]s on the event channel ([`SessionDriver::next_event`]); acked
    /// once queued there.
    #[default]
    Events,
    /// To this sink; acked once [`InboundSink::deliver`] returned `Ok`. A failed delivery
    /// ends the connection without the ack (the server delivers the message again on the
    /// next one); the driver reconnects after the backoff.
    Sink(Arc<dyn InboundSink>),
    /// Not taken: inbound `<message>` and `<receipt>` stanzas are neither decrypted nor
    /// acked, so the server keeps them for a later connection (`wafleet send`, `wafleet
    /// link`: they must not swallow what `wafleet listen` would print).
    Leave,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Inbound::Events => "Inbound::Events",
            Inbound::Sink(_) => "Inbound::Sink(…)",
            Inbound::Leave => "Inbound::Leave",
        })
    }
}

/// Takes inbound messaging events ([`DriverEvent::Message`], [`DriverEvent::Undecryptable`],
/// [`DriverEvent::Receipt`]) and makes them durable downstream (printed and flushed, published
/// with a broker ack, …) before the driver acks them to the server.
#[async_trait::async_trait]
pub trait InboundSink: Send + Sync {
    /// Delivers one event; `Ok` once it is durable. The driver waits for it: nothing else
    /// of that connection happens meanwhile.
    async fn deliver(&self, event: &DriverEvent) -> Result<(), SinkError>;
}

/// A sink could not take an event (it stays un-acked on the server).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("inbound sink: {0}")]
pub struct SinkError(pub String);

/// A check the driver makes before it opens a socket (see [`DriverConfig::may_connect`]).
#[derive(Clone)]
pub struct ConnectGate(Arc<dyn Fn() -> bool + Send + Sync>);

impl ConnectGate {
    /// A gate that asks `check`.
    pub fn new(check: impl Fn() -> bool + Send + Sync + 'static) -> ConnectGate {
        ConnectGate(Arc::new(check))
    }

    /// Whether a connection may be opened now.
    pub fn allows(&self) -> bool {
        (self.0)()
    }
}

impl std::fmt::Debug for ConnectGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectGate(…)")
    }
}

impl Default for DriverConfig {
    fn default() -> DriverConfig {
        DriverConfig {
            label: "session".to_owned(),
            server: ServerConfig::default(),
            session: SessionConfig::default(),
            phone: None,
            backoff: Backoff::default(),
            handshake_timeout: Duration::from_secs(20),
            max_consecutive_failures: None,
            may_connect: None,
            inbound: Inbound::Events,
            send_timeout: SEND_TIMEOUT,
        }
    }
}

/// Errors that stop a driver before it connects.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The configured phone number is not E.164 digits.
    #[error("invalid phone number: {0}")]
    InvalidPhone(#[from] PhoneNumberError),
    /// The stored session could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server URL is not a `ws://` or `wss://` URL.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The TLS configuration could not be built.
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// How a driver ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverExit {
    /// [`SessionDriver::stop`] was called (or the handle dropped).
    Stopped,
    /// It stopped for good; the same as the last [`DriverEvent::Failed`].
    Failed {
        /// The reason code.
        reason: String,
        /// A human-readable account.
        detail: String,
    },
}

/// A running session: its events, and a way to stop it.
#[derive(Debug)]
pub struct SessionDriver {
    events: mpsc::UnboundedReceiver<DriverEvent>,
    stop: watch::Sender<bool>,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<DriverExit>,
}

/// A pairing code issued on the driver's current linking socket
/// ([`DriverControl::request_pairing_code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingCodeIssued {
    /// The code, `XXXX-XXXX`.
    pub code: Secret,
    /// When it stops being valid (unix ms; the end of the QR socket).
    pub expires_at: u64,
}

/// A message the server accepted ([`DriverControl::send_text`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// The message id (WhatsApp's `3EB0…` format).
    pub id: String,
    /// The recipient (user or group JID).
    pub chat: String,
    /// The server's time of the message (unix ms), when its ack gave one.
    pub server_timestamp: Option<u64>,
    /// Addressed devices the message was not encrypted for (they will not get it).
    pub skipped: Vec<SkippedDevice>,
}

/// Why a [`DriverControl`] command was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The phone number is not E.164 digits (checked before anything is sent).
    #[error("invalid phone number: {0}")]
    InvalidPhone(#[from] PhoneNumberError),
    /// The driver is not showing QR codes on a linking socket now: already paired or
    /// logged in, or between connections.
    #[error("not linking: a pairing code needs a socket that shows QR codes")]
    NotLinking,
    /// A pairing code was already issued on this socket for a different phone number.
    #[error("a pairing code for another phone number was already issued on this socket")]
    PairingCodeForOtherPhone,
    /// The pairing-code request failed (refused by the server); QR linking goes on.
    #[error("pairing code failed: {0}")]
    PairingCodeFailed(String),
    /// Logout needs a linked device; this one is still linking.
    #[error("not logged in: the device is not linked")]
    NotLoggedIn,
    /// The device is linked but not logged in on a live connection now (connecting or
    /// reconnecting); try again.
    #[error("not connected: the linked device is not logged in on a live connection now")]
    NotConnected,
    /// The server refused the logout; the session stays logged in.
    #[error("logout refused by the server: {0}")]
    LogoutFailed(String),
    /// The server did not answer in time: a logout within [`LOGOUT_TIMEOUT`] (the session
    /// stays up; a late confirmation still logs out and ends the driver), or a sent message
    /// within [`DriverConfig::send_timeout`] (it may still arrive).
    #[error("the server did not answer in time")]
    Timeout,
    /// The recipient is not E.164 digits, a user JID or a group JID (checked before
    /// anything is sent).
    #[error(transparent)]
    InvalidRecipient(#[from] InvalidRecipient),
    /// The recipient has no WhatsApp account (no devices).
    #[error("no such user: {0}")]
    NoSuchUser(String),
    /// The message could not be sent (encryption, a server error); nothing was acked.
    #[error("send failed: {0}")]
    SendFailed(String),
    /// The connection ended before the answer came.
    #[error("the connection ended before the server answered")]
    ConnectionLost,
    /// The server removed the device, but marking the store logged out failed. The driver
    /// ends with `logged_out` all the same.
    #[error("logged out, but the store could not be marked: {0}")]
    Storage(String),
    /// The driver has ended.
    #[error("the driver has ended")]
    Ended,
    /// The send's reference (command id) named another message before.
    #[error("the reference {0:?} was used for another message")]
    ReferenceReused(String),
}

/// A command for the connection loop, with the channel for its answer.
enum Command {
    PairingCode {
        phone: PhoneNumber,
        reply: oneshot::Sender<Result<PairingCodeIssued, ControlError>>,
    },
    Logout {
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    Send {
        to: Recipient,
        content: Outgoing,
        reference: Option<SendReference>,
        reply: oneshot::Sender<Result<SentMessage, ControlError>>,
    },
}

/// Controls a running [`SessionDriver`] from elsewhere (e.g. bus commands); cheap to clone.
/// Every command fails with [`ControlError::Ended`] once the driver ended.
#[derive(Clone)]
pub struct DriverControl {
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for DriverControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverControl")
            .field("ended", &self.commands.is_closed())
            .finish()
    }
}

impl DriverControl {
    /// Asks for a pairing code for `phone` (E.164, `+` and separators allowed) on the
    /// socket that shows QR codes now. The code is also reported as
    /// [`DriverEvent::PairingCode`]. Asking again on the same socket for the same number
    /// returns the same code; for another number it is
    /// [`ControlError::PairingCodeForOtherPhone`].
    pub async fn request_pairing_code(
        &self,
        phone: &str,
    ) -> Result<PairingCodeIssued, ControlError> {
        let phone = PhoneNumber::parse(phone)?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::PairingCode { phone, reply }).await?;
        answer.await.map_err(|_| ControlError::Ended)?
    }

    /// Logs the device out: sends `remove-companion-device`, waits for the server's answer
    /// (at most [`LOGOUT_TIMEOUT`]), marks the store logged out and ends the driver with
    /// [`DriverEvent::Failed`] `logged_out` (no reconnect). Returns once the store is
    /// marked. [`ControlError::NotLoggedIn`] while still linking.
    pub async fn logout(&self) -> Result<(), ControlError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Logout { reply }).await?;
        answer.await.map_err(|_| ControlError::Ended)?
    }

    /// Sends `text` to `to`: E.164 digits (`+` and separators allowed) for that number's
    /// account, a user JID (`…@s.whatsapp.net`, `…@lid`) or a group JID (`…@g.us`).
    /// Returns once the server acked the message. [`ControlError::InvalidRecipient`]
    /// before anything is sent; [`ControlError::NotConnected`] unless logged in on a live
    /// connection now; [`ControlError::NoSuchUser`], [`ControlError::Timeout`] (no ack
    /// within [`DriverConfig::send_timeout`]), [`ControlError::ConnectionLost`] (the
    /// connection ended before the ack: the message may or may not have gone out).
    pub async fn send_text(&self, to: &str, text: &str) -> Result<SentMessage, ControlError> {
        self.send_message(to, Outgoing::text(text), None).await
    }

    /// Sends `content` to `to` as [`DriverControl::send_text`] does, under an optional
    /// `reference` (a command id and a digest of the request): a reference seen among the
    /// session's recent sends (kept in the stored session, so also after a restart or on
    /// another worker) is the same message again, with the same id
    /// ([`Messenger::send_referenced`]), and a reference with another digest is
    /// [`ControlError::ReferenceReused`].
    pub async fn send_message(
        &self,
        to: &str,
        content: Outgoing,
        reference: Option<SendReference>,
    ) -> Result<SentMessage, ControlError> {
        let to = Recipient::parse(to)?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::Send {
            to,
            content,
            reference,
            reply,
        })
        .await?;
        answer.await.map_err(|_| ControlError::Ended)?
    }

    async fn send(&self, command: Command) -> Result<(), ControlError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| ControlError::Ended)
    }
}

impl SessionDriver {
    /// Checks the configuration (phone number, URL), loads the stored session (or makes a
    /// fresh identity, saved at pairing) and starts the driver on the current tokio
    /// runtime (it panics outside one, as `tokio::spawn` does). Nothing connects before
    /// these checks pass.
    pub fn start(
        config: DriverConfig,
        store: Arc<dyn SessionStore>,
    ) -> Result<SessionDriver, DriverError> {
        let phone = config
            .phone
            .as_deref()
            .map(PhoneNumber::parse)
            .transpose()?;
        let request = ws_request(&config.server.url)?;
        let connector = if config.server.url.starts_with("wss://") {
            Connector::Rustls(Arc::new(tls_config()?))
        } else {
            Connector::Plain
        };
        let mut rng = StdRng::from_entropy();
        let stored = match store.load()? {
            Some(stored) => stored,
            None => StoredSession::new(DeviceIdentity::generate(&mut rng)),
        };
        let (event_tx, events) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let runner = Runner {
            config,
            store,
            stored,
            phone,
            request,
            connector,
            rng,
            events: event_tx,
            stop: stop_rx,
            commands: command_rx,
            routing_info: None,
            healthy: false,
            qr_remaining: None,
            after_send: Vec::new(),
            link_code: None,
            logout: None,
            messenger: None,
            sends: HashMap::new(),
            unsaved: false,
        };
        let task = tokio::spawn(runner.run());
        Ok(SessionDriver {
            events,
            stop,
            commands,
            task,
        })
    }

    /// A handle that controls this driver while it runs (pairing code, logout).
    pub fn control(&self) -> DriverControl {
        DriverControl {
            commands: self.commands.clone(),
        }
    }

    /// The next event; `None` once the driver ended and every event was taken.
    pub async fn next_event(&mut self) -> Option<DriverEvent> {
        self.events.recv().await
    }

    /// Asks the driver to close its connection and stop.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops the driver (if still running) and waits for it to end.
    pub async fn finish(self) -> DriverExit {
        self.stop();
        self.join().await
    }

    /// Stops the driver and waits for it to end, but no later than `by`: then its task is
    /// aborted, which drops the socket at once (the TCP connection closes without a
    /// WebSocket close frame) even if the driver was waiting for a blob save. A save that
    /// runs on a blocking thread then finishes on its own; the store must refuse to write
    /// what it may no longer write (the fleet store checks the lease again).
    pub async fn finish_by(self, by: tokio::time::Instant) -> DriverExit {
        self.stop();
        let mut task = self.task;
        match tokio::time::timeout_at(by, &mut task).await {
            Ok(Ok(exit)) => exit,
            Ok(Err(e)) => DriverExit::Failed {
                reason: "internal_error".into(),
                detail: format!("driver task ended abnormally: {e}"),
            },
            Err(_) => {
                task.abort();
                let _ = task.await;
                DriverExit::Stopped
            }
        }
    }

    /// Waits for the driver to end by itself (a terminal failure) or by [`SessionDriver::stop`].
    pub async fn join(self) -> DriverExit {
        match self.task.await {
            Ok(exit) => exit,
            Err(e) => DriverExit::Failed {
                reason: "internal_error".into(),
                detail: format!("driver task ended abnormally: {e}"),
            },
        }
    }
}

fn ws_request(url: &str) -> Result<Request<()>, DriverError> {
    let invalid = |reason: String| DriverError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        return Err(invalid("must start with ws:// or wss://".into()));
    }
    let mut request = url
        .into_client_request()
        .map_err(|e| invalid(e.to_string()))?;
    request
        .headers_mut()
        .insert("Origin", HeaderValue::from_static(ORIGIN));
    Ok(request)
}

fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Unix milliseconds on the wall clock.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The `reason` code of an ADV verification failure.
fn auth_failure_code(e: &AdvError) -> &'static str {
    match e {
        AdvError::HmacMismatch => "hmac_mismatch",
        AdvError::SignatureMismatch => "signature_mismatch",
        _ => "invalid_device_identity",
    }
}

/// How one connection ended.
enum Outcome {
    /// The caller asked to stop.
    Stopped,
    /// 515: reconnect now.
    Restart,
    /// The session ended with a reason from the protocol.
    Closed(DisconnectReason),
    /// The transport failed (network, EOF, Noise, a stalled handshake): reconnect later.
    Lost {
        reason: &'static str,
        detail: String,
    },
    /// Something that retrying cannot fix (storage): stop.
    Fatal {
        reason: &'static str,
        detail: String,
    },
    /// The server confirmed our logout: stop with `logged_out`.
    LoggedOut { detail: String },
}

/// The pairing-code request of the current connection.
struct LinkCodeState {
    /// The number's digits.
    phone: String,
    /// The code, once the session made it.
    issued: Option<PairingCodeIssued>,
    /// Why the request failed, if it did.
    failed: Option<String>,
    /// Control callers waiting for the code.
    waiters: Vec<oneshot::Sender<Result<PairingCodeIssued, ControlError>>>,
}

/// A message sent on the current connection and not acked by the server yet.
struct PendingSend {
    /// The recipient.
    chat: String,
    /// When the callers get [`ControlError::Timeout`].
    deadline: tokio::time::Instant,
    /// The callers waiting (a repeated request joins the first).
    replies: Vec<oneshot::Sender<Result<SentMessage, ControlError>>>,
}

impl PendingSend {
    fn answer(self, result: Result<SentMessage, ControlError>) {
        for reply in self.replies {
            // A caller that gave up waiting is no longer interested.
            let _ = reply.send(result.clone());
        }
    }
}

/// A logout sent on the current connection and not answered yet.
struct LogoutState {
    /// When the waiters get [`ControlError::Timeout`] (`None`: nobody waits).
    deadline: Option<tokio::time::Instant>,
    waiters: Vec<oneshot::Sender<Result<(), ControlError>>>,
}

impl LogoutState {
    fn answer(&mut self, result: Result<(), ControlError>) {
        self.deadline = None;
        for waiter in self.waiters.drain(..) {
            // A caller that gave up waiting is no longer interested.
            let _ = waiter.send(result.clone());
        }
    }
}

struct Runner {
    config: DriverConfig,
    store: Arc<dyn SessionStore>,
    stored: StoredSession,
    phone: Option<PhoneNumber>,
    request: Request<()>,
    connector: Connector,
    rng: StdRng,
    events: mpsc::UnboundedSender<DriverEvent>,
    stop: watch::Receiver<bool>,
    commands: mpsc::Receiver<Command>,
    /// Edge routing info from the last connection, sent in the next pre-intro.
    routing_info: Option<Vec<u8>>,
    /// Whether the current connection got as far as a QR or a login.
    healthy: bool,
    /// How many QRs follow the one shown now on this connection (`None`: none shown, or
    /// paired since).
    qr_remaining: Option<u32>,
    /// Events to report once the nodes queued with them are on the wire (a pairing code
    /// after its `companion_hello`, the prekey upload).
    after_send: Vec<DriverEvent>,
    /// The pairing-code request of this connection, if any.
    link_code: Option<LinkCodeState>,
    /// The logout of this connection awaiting the server, if any.
    logout: Option<LogoutState>,
    /// The messenger of this connection, from the login (`<success>`) on.
    messenger: Option<Messenger>,
    /// Messages sent on this connection awaiting the server's ack, by id.
    sends: HashMap<String, PendingSend>,
    /// The stored session changed (Signal state, prekeys) and is not saved yet: nothing
    /// may be sent before it is.
    unsaved: bool,
}

impl Runner {
    fn emit(&self, event: DriverEvent) {
        // A caller that dropped its receiver no longer wants events; the driver goes on
        // until stopped.
        let _ = self.events.send(event);
    }

    fn fail(&self, reason: &str, detail: String) -> DriverExit {
        warn!(session = %self.config.label, reason, %detail, "session driver stopped");
        self.emit(DriverEvent::Failed {
            reason: reason.to_owned(),
            detail: detail.clone(),
        });
        DriverExit::Failed {
            reason: reason.to_owned(),
            detail,
        }
    }

    fn stop_requested(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    async fn run(mut self) -> DriverExit {
        let mut failures: u32 = 0;
        let mut restarts: u32 = 0;
        let mut qr_sockets: u32 = 0;
        loop {
            if self.stop_requested() {
                return DriverExit::Stopped;
            }
            if let Some(gate) = &self.config.may_connect {
                if !gate.allows() {
                    return self.fail("lease_lost", "no live lease: not connecting".to_string());
                }
            }
            self.healthy = false;
            self.qr_remaining = None;
            self.after_send.clear();
            self.link_code = None;
            self.logout = None;
            self.messenger = None;
            let outcome = match self.connection().await {
                // The server closed the socket while the last QR was up: the refs ran out
                // on its clock before ours.
                Outcome::Lost { reason, detail } if self.qr_remaining == Some(0) => {
                    debug!(session = %self.config.label, reason, %detail, "connection ended during the last QR");
                    Outcome::Closed(DisconnectReason::QrExhausted)
                }
                // QR sockets that keep ending unscanned must not show QRs forever.
                Outcome::Lost { reason, detail } if self.qr_remaining.is_some() => {
                    qr_sockets += 1;
                    if qr_sockets >= MAX_QR_SOCKETS {
                        debug!(session = %self.config.label, reason, %detail, qr_sockets, "QR sockets used up");
                        Outcome::Closed(DisconnectReason::QrExhausted)
                    } else {
                        Outcome::Lost { reason, detail }
                    }
                }
                outcome => outcome,
            };
            if self.healthy {
                failures = 0;
            }
            if !matches!(outcome, Outcome::Restart) {
                restarts = 0;
            }
            let (reason, detail) = match outcome {
                Outcome::Stopped => return DriverExit::Stopped,
                Outcome::Restart if restarts < MAX_IMMEDIATE_RESTARTS => {
                    info!(session = %self.config.label, "restart requested (515), reconnecting");
                    self.emit(DriverEvent::Disconnected {
                        reason: "restart_required".into(),
                        will_reconnect: true,
                    });
                    restarts += 1;
                    failures = 0;
                    continue;
                }
                // A server that asks for nothing but restarts gets the backoff.
                Outcome::Restart => (
                    "restart_required",
                    format!("{restarts} restarts in a row without a session"),
                ),
                Outcome::Fatal { reason, detail } => return self.fail(reason, detail),
                Outcome::LoggedOut { detail } => {
                    self.emit(DriverEvent::Disconnected {
                        reason: "logged_out".into(),
                        will_reconnect: false,
                    });
                    return self.fail("logged_out", detail);
                }
                Outcome::Closed(reason) if !reason.should_reconnect() => {
                    let code = reason_code(&reason);
                    self.emit(DriverEvent::Disconnected {
                        reason: code.into(),
                        will_reconnect: false,
                    });
                    return self.fail(code, reason_detail(&reason));
                }
                Outcome::Closed(reason) => (reason_code(&reason), reason_detail(&reason)),
                Outcome::Lost { reason, detail } => (reason, detail),
            };
            failures = failures.saturating_add(1);
            let give_up =
                matches!(self.config.max_consecutive_failures, Some(max) if failures >= max);
            self.emit(DriverEvent::Disconnected {
                reason: reason.into(),
                will_reconnect: !give_up,
            });
            if give_up {
                return self.fail(
                    "unreachable",
                    format!("{failures} consecutive failed connections; last: {reason}: {detail}"),
                );
            }
            let delay = self.config.backoff.delay(failures - 1, &mut self.rng);
            info!(session = %self.config.label, reason, %detail, ?delay, "connection lost, reconnecting");
            let mut stop = self.stop.clone();
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    _ = stopped(&mut stop) => return DriverExit::Stopped,
                    Some(command) = self.commands.recv() => self.refuse_offline(command),
                }
            }
        }
    }

    /// Answers a command that arrived between connections.
    fn refuse_offline(&self, command: Command) {
        match command {
            Command::PairingCode { reply, .. } => {
                let _ = reply.send(Err(ControlError::NotLinking));
            }
            Command::Logout { reply } => {
                let _ = reply.send(Err(self.not_logged_in()));
            }
            Command::Send { reply, .. } => {
                let _ = reply.send(Err(self.not_logged_in()));
            }
        }
    }

    /// Why a logout cannot be sent now.
    fn not_logged_in(&self) -> ControlError {
        if self.stored.identity.is_paired() {
            ControlError::NotConnected
        } else {
            ControlError::NotLoggedIn
        }
    }

    /// A control command on a live connection. What it queues on the session is sent by
    /// the next [`Runner::pump`], after the session's pending events.
    fn on_command(&mut self, command: Command, session: &mut Session) {
        match command {
            Command::PairingCode { phone, reply } => {
                if let Some(answer) = self.pairing_code(phone, session) {
                    let _ = reply.send(answer);
                } else if let Some(link) = &mut self.link_code {
                    link.waiters.push(reply);
                }
            }
            Command::Logout { reply } => match session.logout() {
                Ok(()) | Err(SessionError::LogoutPending) => {
                    info!(session = %self.config.label, "logout requested");
                    let logout = self.logout.get_or_insert_with(|| LogoutState {
                        deadline: None,
                        waiters: Vec::new(),
                    });
                    if logout.deadline.is_none() {
                        logout.deadline = Some(tokio::time::Instant::now() + LOGOUT_TIMEOUT);
                    }
                    logout.waiters.push(reply);
                }
                Err(_) => {
                    let _ = reply.send(Err(self.not_logged_in()));
                }
            },
            Command::Send {
                to,
                content,
                reference,
                reply,
            } => self.send_message(to, content, reference, reply),
        }
    }

    /// Starts a send on the messenger; the answer comes with its `Sent` / `SendFailed`.
    fn send_message(
        &mut self,
        to: Recipient,
        content: Outgoing,
        reference: Option<SendReference>,
        reply: oneshot::Sender<Result<SentMessage, ControlError>>,
    ) {
        let Some(messenger) = &mut self.messenger else {
            let _ = reply.send(Err(self.not_logged_in()));
            return;
        };
        let chat = to.jid().to_string();
        let mut keys = Keys {
            identity: &self.stored.identity,
            pre_keys: &mut self.stored.pre_keys,
            signal: &mut self.stored.signal,
        };
        let started = match reference {
            Some(reference) => messenger.send_referenced(
                to.into_jid(),
                content,
                reference,
                &mut keys,
                unix_ms(),
                &mut self.rng,
            ),
            None => messenger
                .send(to.into_jid(), content, &mut keys, unix_ms(), &mut self.rng)
                .map(SendStart::New),
        };
        match started {
            Ok(start) => {
                let id = start.id().to_owned();
                debug!(session = %self.config.label, %id, %chat, ?start, "sending a message");
                if let Some(pending) = self.sends.get_mut(&id) {
                    pending.replies.push(reply);
                    return;
                }
                self.sends.insert(
                    id,
                    PendingSend {
                        chat,
                        // A backstop: the messenger fails the send at `send_timeout` itself.
                        deadline: tokio::time::Instant::now()
                            + self.config.send_timeout
                            + Duration::from_secs(1),
                        replies: vec![reply],
                    },
                );
            }
            Err(e) => {
                warn!(session = %self.config.label, %chat, error = %e, "send refused");
                let _ = reply.send(Err(send_error(e, &chat)));
            }
        }
    }

    /// The earliest deadline of a pending send.
    fn send_deadline(&self) -> Option<tokio::time::Instant> {
        self.sends.values().map(|s| s.deadline).min()
    }

    fn check_send_deadlines(&mut self) {
        let now = tokio::time::Instant::now();
        let expired: Vec<String> = self
            .sends
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(send) = self.sends.remove(&id) {
                warn!(session = %self.config.label, %id, chat = %send.chat, "no server ack in time");
                send.answer(Err(ControlError::Timeout));
            }
        }
    }

    /// The answer to a pairing-code command, or `None` if the code is on its way (the
    /// caller then waits in [`LinkCodeState::waiters`]).
    fn pairing_code(
        &mut self,
        phone: PhoneNumber,
        session: &mut Session,
    ) -> Option<Result<PairingCodeIssued, ControlError>> {
        if self.qr_remaining.is_none() {
            return Some(Err(ControlError::NotLinking));
        }
        if let Some(link) = &self.link_code {
            return if link.phone != phone.digits() {
                Some(Err(ControlError::PairingCodeForOtherPhone))
            } else if let Some(reason) = &link.failed {
                Some(Err(ControlError::PairingCodeFailed(reason.clone())))
            } else {
                // The same code again; `None` while it is still being made.
                link.issued.clone().map(Ok)
            };
        }
        match request_code(session, &phone, &mut self.rng) {
            Ok(()) => {
                self.link_code = Some(LinkCodeState {
                    phone: phone.digits().to_owned(),
                    issued: None,
                    failed: None,
                    waiters: Vec::new(),
                });
                None
            }
            Err(SessionError::PairingCode(PairingCodeError::NotLinking)) => {
                Some(Err(ControlError::NotLinking))
            }
            Err(e) => Some(Err(ControlError::PairingCodeFailed(e.to_string()))),
        }
    }

    /// Gives the waiting pairing-code callers their answer, once there is one.
    fn answer_code_waiters(&mut self) {
        let Some(link) = &mut self.link_code else {
            return;
        };
        let answer = match (&link.issued, &link.failed) {
            (_, Some(reason)) => Err(ControlError::PairingCodeFailed(reason.clone())),
            (Some(issued), None) => Ok(issued.clone()),
            (None, None) => return,
        };
        for waiter in link.waiters.drain(..) {
            let _ = waiter.send(answer.clone());
        }
    }

    /// The connection ended: callers still waiting on it get [`ControlError::ConnectionLost`].
    fn connection_ended(&mut self) {
        if let Some(link) = &mut self.link_code {
            for waiter in link.waiters.drain(..) {
                let _ = waiter.send(Err(ControlError::ConnectionLost));
            }
        }
        if let Some(logout) = &mut self.logout {
            logout.answer(Err(ControlError::ConnectionLost));
        }
        for (_, send) in self.sends.drain() {
            send.answer(Err(ControlError::ConnectionLost));
        }
        if let Some(mut messenger) = self.messenger.take() {
            // Its waiting sends were answered above; un-acked inbound messages come again.
            messenger.shutdown();
        }
    }

    /// When the logout waiters time out, if anyone waits.
    fn logout_deadline(&self) -> Option<tokio::time::Instant> {
        self.logout.as_ref().and_then(|l| l.deadline)
    }

    fn check_logout_deadline(&mut self) {
        if let Some(logout) = &mut self.logout {
            if logout
                .deadline
                .is_some_and(|d| d <= tokio::time::Instant::now())
            {
                warn!(session = %self.config.label, "logout unanswered");
                logout.answer(Err(ControlError::Timeout));
            }
        }
    }

    /// Connects and runs one connection to its end.
    async fn connection(&mut self) -> Outcome {
        let mut stop = self.stop.clone();
        let timeout = self.config.handshake_timeout;
        let opened = tokio::select! {
            r = tokio::time::timeout(timeout, self.open()) => r,
            _ = stopped(&mut stop) => return Outcome::Stopped,
        };
        let (mut ws, mut conn, mut session, first) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(lost)) => return lost,
            Err(_) => {
                return Outcome::Lost {
                    reason: "handshake_timeout",
                    detail: format!("no server reply within {timeout:?}"),
                }
            }
        };
        let outcome = 'run: {
            self.handle_frames(&mut session, first);
            loop {
                if let Some(outcome) = self.pump(&mut ws, &mut conn, &mut session).await {
                    break 'run outcome;
                }
                let now = tokio::time::Instant::now();
                let deadlines = [self.logout_deadline(), self.send_deadline()]
                    .into_iter()
                    .flatten()
                    .map(|d| d.saturating_duration_since(now));
                let protocol_timers = [
                    session.poll_timeout(),
                    self.messenger.as_ref().and_then(Messenger::poll_timeout),
                ];
                let now_ms = unix_ms();
                let sleep = protocol_timers
                    .into_iter()
                    .flatten()
                    .map(|at| Duration::from_millis(at.saturating_sub(now_ms)))
                    .chain(deadlines)
                    .min();
                tokio::select! {
                    _ = stopped(&mut stop) => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                        return Outcome::Stopped;
                    }
                    Some(command) = self.commands.recv() => self.on_command(command, &mut session),
                    _ = sleep_for(sleep) => {
                        let now = unix_ms();
                        session.handle_timeout(now, &mut self.rng);
                        if let Some(messenger) = &mut self.messenger {
                            messenger.handle_timeout(now);
                        }
                        self.check_logout_deadline();
                        self.check_send_deadlines();
                    }
                    message = ws.next() => {
                        if let Some(outcome) = self.on_ws_message(message, &mut conn, &mut session) {
                            break 'run outcome;
                        }
                    }
                }
                // Group commit: what else is ready now joins this turn, so under load one
                // save (and one flush) covers many messages instead of one each. The
                // order of frames and commands is kept, and nothing queued is sent before
                // the save that covers it (`pump`).
                for _ in 0..GROUP_COMMIT_MAX {
                    if let Ok(command) = self.commands.try_recv() {
                        self.on_command(command, &mut session);
                    } else if let Some(message) = ws.next().now_or_never() {
                        if let Some(outcome) = self.on_ws_message(message, &mut conn, &mut session)
                        {
                            break 'run outcome;
                        }
                    } else {
                        break;
                    }
                }
            }
        };
        self.connection_ended();
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        outcome
    }

    /// One WebSocket message: frames decrypted and routed; the connection's end if it
    /// ended.
    fn on_ws_message(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
        conn: &mut ClientConnection,
        session: &mut Session,
    ) -> Option<Outcome> {
        match message {
            Some(Ok(Message::Binary(bytes))) => {
                if let Err(e) = conn.receive(&bytes) {
                    return Some(Outcome::Lost {
                        reason: "noise_error",
                        detail: e.to_string(),
                    });
                }
                let frames = drain_frames(conn);
                self.handle_frames(session, frames);
                None
            }
            Some(Ok(Message::Close(frame))) => Some(Outcome::Lost {
                reason: "connection_closed",
                detail: format!("server closed the WebSocket: {frame:?}"),
            }),
            Some(Ok(Message::Text(_))) => {
                warn!(session = %self.config.label, "ignoring a text WebSocket message");
                None
            }
            Some(Ok(_)) => None, // ping/pong (answered by tungstenite), raw frames
            Some(Err(e)) => Some(Outcome::Lost {
                reason: "connection_lost",
                detail: e.to_string(),
            }),
            None => Some(Outcome::Lost {
                reason: "connection_closed",
                detail: "end of stream".into(),
            }),
        }
    }

    /// TCP/TLS/WebSocket connect, the Noise handshake with the session's payload, and the
    /// first server frames (bounded by the caller's handshake timeout).
    async fn open(&mut self) -> Result<(Ws, ClientConnection, Session, Vec<Vec<u8>>), Outcome> {
        let lost = |reason: &'static str| {
            move |e: &dyn std::fmt::Display| Outcome::Lost {
                reason,
                detail: e.to_string(),
            }
        };
        let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            self.request.clone(),
            None,
            true,
            Some(self.connector.clone()),
        )
        .await
        .map_err(|e| lost("connect_failed")(&e))?;
        debug!(session = %self.config.label, url = %self.config.server.url, "WebSocket open");
        let now_s = unix_ms() / 1000;
        let identity = self.stored.identity.clone();
        let mut conn = ClientConnection::new(
            ClientConfig {
                root: self.config.server.root,
                noise_key: identity.noise_key.clone(),
                routing_info: self.routing_info.clone(),
            },
            now_s,
            &mut self.rng,
        )
        .map_err(|e| lost("noise_error")(&e))?;
        let session = Session::new(identity, self.config.session.clone(), &mut self.rng);
        send_transmits(&mut ws, &mut conn)
            .await
            .map_err(|e| lost("connection_lost")(&e))?;
        let mut hello = false;
        let mut frames = Vec::new();
        while frames.is_empty() {
            let bytes = match ws.next().await {
                Some(Ok(Message::Binary(bytes))) => bytes,
                Some(Ok(Message::Close(frame))) => {
                    return Err(Outcome::Lost {
                        reason: "connection_closed",
                        detail: format!(
                            "server closed the WebSocket during the handshake: {frame:?}"
                        ),
                    })
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(lost("connection_lost")(&e)),
                None => {
                    return Err(Outcome::Lost {
                        reason: "connection_closed",
                        detail: "end of stream during the handshake".into(),
                    })
                }
            };
            conn.receive(&bytes).map_err(|e| lost("noise_error")(&e))?;
            if !hello {
                if let Some(ClientEvent::ServerHello(_)) = conn.poll_event() {
                    hello = true;
                    let payload = session
                        .client_payload()
                        .map_err(|e| Outcome::Fatal {
                            reason: "invalid_identity",
                            detail: e.to_string(),
                        })?
                        .encode_to_vec();
                    conn.finish_handshake(&payload)
                        .map_err(|e| lost("noise_error")(&e))?;
                    send_transmits(&mut ws, &mut conn)
                        .await
                        .map_err(|e| lost("connection_lost")(&e))?;
                    debug!(session = %self.config.label, paired = self.stored.identity.is_paired(), "Noise handshake done");
                }
            }
            frames = drain_frames(&mut conn);
        }
        Ok((ws, conn, session, frames))
    }

    /// Decodes frames and routes the nodes ([`Runner::route`]). A frame that does not
    /// decode is logged and skipped (the connection's cipher state is intact).
    ///
    /// While a pairing code is in play the phone's `primary_hello` costs a PBKDF2 derivation
    /// (131,072 rounds): those frames are handled off the runtime's other tasks, as the code
    /// request is, so one session's linking never stalls the worker's other sessions and
    /// heartbeats.
    fn handle_frames(&mut self, session: &mut Session, frames: Vec<Vec<u8>>) {
        let heavy = self.link_code.is_some();
        let handle = || {
            for frame in frames {
                match decode(&frame) {
                    Ok(node) => self.route(node, session),
                    Err(e) => {
                        warn!(session = %self.config.label, error = %e, len = frame.len(), "skipping an undecodable server node")
                    }
                }
            }
        };
        if heavy {
            cpu_heavy(handle)
        } else {
            handle()
        }
    }

    /// One server node: to the messenger first (once logged in), what it hands back to the
    /// session. The messenger is made when the session handles `<success>`, so no message
    /// after the login reaches the session (which would ack it unread).
    fn route(&mut self, node: Node, session: &mut Session) {
        let now = unix_ms();
        if matches!(self.config.inbound, Inbound::Leave)
            && matches!(&*node.tag, "message" | "receipt")
        {
            debug!(session = %self.config.label, tag = %node.tag, "inbound stanza left on the server");
            return;
        }
        let node = match &mut self.messenger {
            Some(messenger) => {
                let mut keys = Keys {
                    identity: &self.stored.identity,
                    pre_keys: &mut self.stored.pre_keys,
                    signal: &mut self.stored.signal,
                };
                match messenger.handle_node(node, &mut keys, now, &mut self.rng) {
                    Some(rest) => rest,
                    None => return,
                }
            }
            None => node,
        };
        let login = node.tag == "success";
        session.handle_node(node, now, &mut self.rng);
        if login && self.messenger.is_none() && !session.is_closed() {
            if let Some(jid) = session.identity().jid() {
                let config = MessengerConfig {
                    send_timeout_ms: u64::try_from(self.config.send_timeout.as_millis())
                        .unwrap_or(u64::MAX),
                    ..MessengerConfig::default()
                };
                self.messenger = Some(Messenger::with_config(
                    jid,
                    session.identity().lid(),
                    config,
                ));
            }
        }
    }

    /// Handles the events of the session and the messenger (persisting first, delivering
    /// inbound messages), saves the stored session if it changed, then sends what both
    /// transmit; repeats until nothing is left. Returns the connection's end, if reached.
    async fn pump(
        &mut self,
        ws: &mut Ws,
        conn: &mut ClientConnection,
        session: &mut Session,
    ) -> Option<Outcome> {
        loop {
            let mut progressed = false;
            let mut end = None;
            while let Some(event) = session.poll_event() {
                progressed = true;
                match self.on_event(event, session).await {
                    Ok(None) => {}
                    Ok(Some(outcome)) => {
                        end = Some(outcome);
                        break;
                    }
                    // Not persisted: nothing queued after the event may be sent.
                    Err(fatal) => return Some(fatal),
                }
            }
            while let Some(event) = self.messenger.as_mut().and_then(Messenger::poll_event) {
                progressed = true;
                if let Err(outcome) = self.on_messenger_event(event).await {
                    // Not persisted or not delivered: nothing queued after it may be sent.
                    return Some(outcome);
                }
            }
            if self.unsaved {
                if let Err(fatal) = self.save_changes().await {
                    return Some(fatal);
                }
            }
            loop {
                let node = match session.poll_transmit() {
                    Some(node) => node,
                    None => match self.messenger.as_mut().and_then(Messenger::poll_transmit) {
                        Some(node) => node,
                        None => break,
                    },
                };
                progressed = true;
                let bytes = match encode(&node) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        warn!(session = %self.config.label, error = %e, tag = %node.tag, "cannot encode an outgoing node");
                        continue;
                    }
                };
                let wire = match conn.send(&bytes) {
                    Ok(wire) => wire,
                    Err(e) => {
                        return Some(Outcome::Lost {
                            reason: "noise_error",
                            detail: e.to_string(),
                        })
                    }
                };
                if let Err(e) = ws.feed(Message::Binary(wire.into())).await {
                    return Some(Outcome::Lost {
                        reason: "connection_lost",
                        detail: e.to_string(),
                    });
                }
            }
            if let Err(e) = ws.flush().await {
                return Some(Outcome::Lost {
                    reason: "connection_lost",
                    detail: e.to_string(),
                });
            }
            for event in std::mem::take(&mut self.after_send) {
                self.emit(event);
            }
            self.answer_code_waiters();
            if end.is_some() {
                return end;
            }
            if !progressed {
                return None;
            }
        }
    }

    /// Hands an inbound messaging event to its destination ([`DriverConfig::inbound`]).
    /// `Err` ends the connection: the event was not taken, so it must not be acked.
    async fn deliver(&self, event: DriverEvent) -> Result<(), Outcome> {
        match &self.config.inbound {
            Inbound::Sink(sink) => sink.deliver(&event).await.map_err(|e| {
                warn!(session = %self.config.label, error = %e, "inbound sink failed; reconnecting without the ack");
                Outcome::Lost {
                    reason: "sink_error",
                    detail: e.to_string(),
                }
            }),
            Inbound::Events | Inbound::Leave => {
                self.emit(event);
                Ok(())
            }
        }
    }

    /// One messenger event. `Err` ends the connection (or, for a failed save, the driver).
    async fn on_messenger_event(&mut self, event: MessengerEvent) -> Result<(), Outcome> {
        match event {
            MessengerEvent::StateChanged => {
                // Saved once the events drained, before any transmit (see `pump`).
                self.unsaved = true;
            }
            MessengerEvent::Message(message) => {
                let event = MessageEvent {
                    push_name: message.push_name.clone(),
                    ..MessageEvent::new(
                        message.id.clone(),
                        message.chat.to_string(),
                        message.sender.to_non_ad().to_string(),
                        message.from_me,
                        message.timestamp.saturating_mul(1000),
                        &message.content,
                    )
                };
                debug!(session = %self.config.label, id = %message.id, chat = %event.chat, kind = %event.kind, redelivered = message.redelivered, "message");
                self.deliver(DriverEvent::Message(Box::new(event))).await?;
                if let Some(messenger) = &mut self.messenger {
                    messenger.delivered(&message.key);
                }
            }
            MessengerEvent::Undecryptable(failed) => {
                warn!(session = %self.config.label, id = %failed.id, sender = %failed.sender, reason = failed.reason.name(), "undecryptable message");
                let event = UndecryptableEvent {
                    id: failed.id.clone(),
                    chat: failed.chat.to_string(),
                    sender: failed.sender.to_non_ad().to_string(),
                    from_me: failed.from_me,
                    timestamp: failed.timestamp.saturating_mul(1000),
                    reason: failed.reason.name().to_owned(),
                };
                self.deliver(DriverEvent::Undecryptable(event)).await?;
                if let Some(messenger) = &mut self.messenger {
                    messenger.delivered(&failed.key);
                }
            }
            MessengerEvent::Receipt(receipt) => {
                for id in &receipt.ids {
                    let event = ReceiptEvent {
                        id: id.clone(),
                        chat: receipt.chat.to_string(),
                        sender: receipt.sender.to_non_ad().to_string(),
                        kind: receipt.kind.name().to_owned(),
                        timestamp: receipt.timestamp.unwrap_or(0).saturating_mul(1000),
                    };
                    self.deliver(DriverEvent::Receipt(event)).await?;
                }
            }
            MessengerEvent::Sent {
                id,
                server_timestamp,
                skipped,
            } => {
                let skipped: Vec<SkippedDevice> =
                    skipped.iter().map(SkippedDevice::from_messenger).collect();
                let server_timestamp = server_timestamp.map(|t| t.saturating_mul(1000));
                let chat = self
                    .sends
                    .get(&id)
                    .map(|s| s.chat.clone())
                    .unwrap_or_default();
                debug!(session = %self.config.label, %id, %chat, "server acked a sent message");
                if let Some(send) = self.sends.remove(&id) {
                    send.answer(Ok(SentMessage {
                        id: id.clone(),
                        chat: chat.clone(),
                        server_timestamp,
                        skipped: skipped.clone(),
                    }));
                }
                self.emit(DriverEvent::MessageSent(SentEvent {
                    id,
                    chat,
                    timestamp: server_timestamp,
                    skipped,
                }));
            }
            MessengerEvent::SendFailed { id, error } => {
                warn!(session = %self.config.label, %id, %error, "send failed");
                if let Some(send) = self.sends.remove(&id) {
                    let chat = send.chat.clone();
                    send.answer(Err(send_error(error, &chat)));
                }
            }
        }
        Ok(())
    }

    /// Saves what the messenger changed since the last save: one record appended to the
    /// store's journal when it keeps one with room, else the whole session.
    async fn save_changes(&mut self) -> Result<(), Outcome> {
        let changes = self.stored.signal.take_changes();
        if changes.is_empty() {
            self.unsaved = false;
            return Ok(());
        }
        let store = Arc::clone(&self.store);
        let result = tokio::task::spawn_blocking(move || store.append(&changes)).await;
        match result {
            Ok(Ok(true)) => {
                self.unsaved = false;
                Ok(())
            }
            // The changes taken are in the whole session too.
            Ok(Ok(false)) => self.save().await,
            Ok(Err(e)) => Err(Outcome::Fatal {
                reason: "storage_error",
                detail: e.to_string(),
            }),
            Err(e) => Err(Outcome::Fatal {
                reason: "storage_error",
                detail: format!("save task failed: {e}"),
            }),
        }
    }

    /// Saves the whole session.
    async fn save(&mut self) -> Result<(), Outcome> {
        // Everything changed so far is in the snapshot.
        drop(self.stored.signal.take_changes());
        let store = Arc::clone(&self.store);
        let snapshot = self.stored.clone();
        let result = tokio::task::spawn_blocking(move || store.save(&snapshot)).await;
        match result {
            Ok(Ok(())) => {
                self.unsaved = false;
                Ok(())
            }
            Ok(Err(e)) => Err(Outcome::Fatal {
                reason: "storage_error",
                detail: e.to_string(),
            }),
            Err(e) => Err(Outcome::Fatal {
                reason: "storage_error",
                detail: format!("save task failed: {e}"),
            }),
        }
    }

    /// One session event. `Ok(Some(_))` ends the connection; `Err` is a fatal failure.
    async fn on_event(
        &mut self,
        event: Event,
        session: &mut Session,
    ) -> Result<Option<Outcome>, Outcome> {
        match event {
            Event::Qr {
                text,
                expires_at,
                seq,
                remaining,
            } => {
                self.healthy = true;
                self.qr_remaining = Some(remaining);
                debug!(session = %self.config.label, seq, remaining, "QR");
                self.emit(DriverEvent::Qr {
                    code: Secret::new(text.into_string()),
                    expires_at,
                    seq,
                    remaining,
                });
                let phone = self.phone.as_ref().filter(|_| self.link_code.is_none());
                if let Some(phone) = phone {
                    let result = request_code(session, phone, &mut self.rng);
                    let failed = result.as_ref().err().map(ToString::to_string);
                    self.link_code = Some(LinkCodeState {
                        phone: phone.digits().to_owned(),
                        issued: None,
                        failed: failed.clone(),
                        waiters: Vec::new(),
                    });
                    if let Some(reason) = failed {
                        self.emit(DriverEvent::PairingCodeFailed { reason });
                    }
                }
            }
            Event::PairingCode { code, expires_at } => {
                debug!(session = %self.config.label, "pairing code");
                let code = Secret::new(code.into_string());
                if let Some(link) = &mut self.link_code {
                    link.issued = Some(PairingCodeIssued {
                        code: code.clone(),
                        expires_at,
                    });
                }
                // Shown (and given to control callers) once the request carrying it has
                // been sent (see `pump`).
                self.after_send
                    .push(DriverEvent::PairingCode { code, expires_at });
            }
            Event::PairingCodeFailed { reason } => {
                warn!(session = %self.config.label, %reason, "pairing code failed");
                if let Some(link) = &mut self.link_code {
                    link.failed = Some(reason.clone());
                }
                self.emit(DriverEvent::PairingCodeFailed { reason });
            }
            Event::Paired {
                jid, lid, identity, ..
            } => {
                self.qr_remaining = None;
                self.stored.identity = *identity;
                self.save().await?;
                info!(session = %self.config.label, %jid, "paired and saved");
                self.emit(DriverEvent::Paired {
                    jid: jid.to_string(),
                    lid: lid.map(|l| l.to_string()),
                });
            }
            Event::AuthFailure(e) => {
                warn!(session = %self.config.label, error = %e, "pair-success refused");
                self.emit(DriverEvent::AuthFailure {
                    reason: auth_failure_code(&e).into(),
                    detail: e.to_string(),
                });
            }
            Event::Restart => return Ok(Some(Outcome::Restart)),
            Event::Ready { jid, lid } => {
                self.healthy = true;
                if self.stored.identity != *session.identity() {
                    self.stored.identity = session.identity().clone();
                    self.save().await?;
                }
                info!(session = %self.config.label, %jid, "ready");
                self.emit(DriverEvent::Ready {
                    jid: jid.to_string(),
                    lid: lid.map(|l| l.to_string()),
                });
            }
            Event::PreKeysGenerated { keys, identity } => {
                let count = keys.len();
                self.stored.identity = *identity;
                self.stored.pre_keys.extend(keys);
                self.save().await?;
                match session.confirm_pre_keys_persisted() {
                    Ok(()) => self.after_send.push(DriverEvent::PreKeysUploaded { count }),
                    Err(e) => {
                        warn!(session = %self.config.label, error = %e, "prekey confirmation refused")
                    }
                }
                debug!(session = %self.config.label, count, "prekeys saved, uploading");
            }
            Event::RoutingInfo(info) => self.routing_info = Some(info),
            Event::OfflineDelivered { count } => {
                debug!(session = %self.config.label, count, "offline queue delivered")
            }
            Event::LoggedOut => {
                info!(session = %self.config.label, "logged out on request");
                let store = Arc::clone(&self.store);
                let marked = tokio::task::spawn_blocking(move || store.mark_logged_out()).await;
                let result = match marked {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("mark task failed: {e}")),
                };
                let detail = match &result {
                    Ok(()) => "the device was logged out on request".to_owned(),
                    Err(e) => {
                        warn!(session = %self.config.label, error = %e, "cannot mark the store logged out");
                        format!(
                            "the device was logged out on request; marking the store failed: {e}"
                        )
                    }
                };
                let answer = result.map_err(ControlError::Storage);
                if let Some(logout) = &mut self.logout {
                    logout.answer(answer);
                }
                return Ok(Some(Outcome::LoggedOut { detail }));
            }
            Event::LogoutFailed { reason } => {
                warn!(session = %self.config.label, %reason, "logout refused");
                if let Some(mut logout) = self.logout.take() {
                    logout.answer(Err(ControlError::LogoutFailed(reason)));
                }
            }
            Event::Disconnected(reason) => return Ok(Some(Outcome::Closed(reason))),
        }
        Ok(None)
    }
}

/// The control error of a failed send.
fn send_error(error: SendError, chat: &str) -> ControlError {
    match error {
        SendError::InvalidRecipient(reason) => ControlError::InvalidRecipient(InvalidRecipient {
            input: chat.to_owned(),
            reason,
        }),
        SendError::NoSuchUser(user) => ControlError::NoSuchUser(user),
        SendError::Timeout => ControlError::Timeout,
        SendError::Disconnected => ControlError::ConnectionLost,
        SendError::ReferenceReused(key) => ControlError::ReferenceReused(key),
        other => ControlError::SendFailed(other.to_string()),
    }
}

/// Requests a pairing code on `session`. The code's key derivation (PBKDF2, 131,072
/// rounds) is CPU work: it is kept off the runtime's other tasks where the runtime allows.
fn request_code(
    session: &mut Session,
    phone: &PhoneNumber,
    rng: &mut StdRng,
) -> Result<(), SessionError> {
    cpu_heavy(|| session.request_pairing_code(phone, unix_ms(), rng))
}

/// Runs CPU-heavy work (PBKDF2) with `block_in_place` on a multi-thread runtime, so the
/// runtime moves its other tasks to another thread meanwhile; inline on other runtimes.
fn cpu_heavy<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

fn drain_frames(conn: &mut ClientConnection) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while let Some(event) = conn.poll_event() {
        if let ClientEvent::Frame(frame) = event {
            frames.push(frame);
        }
    }
    frames
}

async fn send_transmits(
    ws: &mut Ws,
    conn: &mut ClientConnection,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    while let Some(bytes) = conn.poll_transmit() {
        ws.feed(Message::Binary(bytes.into())).await?;
    }
    ws.flush().await
}

/// Resolves once a stop is requested or the driver's handle is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn sleep_for(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FsSessionStore;
    use crate::store::SessionName;

    #[test]
    fn an_invalid_phone_is_refused_before_anything_happens() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(FsSessionStore::new(
            tmp.path(),
            &SessionName::parse("s").unwrap(),
        ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        for bad in ["12ab", "0123456789", "123", "+1 555 CALL NOW"] {
            let config = DriverConfig {
                phone: Some(bad.into()),
                // A server nobody listens on: a connection attempt would fail differently.
                server: ServerConfig {
                    url: "ws://127.0.0.1:9".into(),
                    root: RootKey::WHATSAPP,
                },
                ..DriverConfig::default()
            };
            match SessionDriver::start(config, store.clone()) {
                Err(DriverError::InvalidPhone(_)) => {}
                other => panic!("{bad}: expected InvalidPhone, got {other:?}"),
            }
        }
        // Nothing was written.
        assert!(!tmp.path().join("s").exists());
    }

    #[test]
    fn only_websocket_urls_are_accepted_and_origin_is_sent() {
        for bad in ["http://x", "web.whatsapp.com", ""] {
            assert!(
                matches!(ws_request(bad), Err(DriverError::InvalidUrl { .. })),
                "{bad}"
            );
        }
        let request = ws_request(WHATSAPP_URL).unwrap();
        assert_eq!(request.headers()["Origin"], ORIGIN);
        assert_eq!(request.uri().host(), Some("web.whatsapp.com"));
    }

    #[test]
    fn the_default_server_is_whatsapp_with_its_root() {
        let server = ServerConfig::default();
        assert_eq!(server.url, "wss://web.whatsapp.com/ws/chat");
        assert_eq!(server.root, RootKey::WHATSAPP);
        assert!(tls_config().is_ok());
    }
}
