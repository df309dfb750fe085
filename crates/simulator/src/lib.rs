//! A WhatsApp server simulator with simulated phones, on loopback, for tests and demos.
//!
//! No WhatsApp server is reachable from where wafleet is built, so this crate plays one: a
//! WebSocket endpoint (`/ws/chat`) speaking the wire protocol as the Noise responder with
//! its own certificate chain, registration (QR refs) and login, prekeys, keepalive,
//! `replaced` and `device_removed` stream errors, a companion's own logout
//! (`remove-companion-device`); and phones that link companions by QR or
//! pairing code with the real cryptography, verifying each companion's device signature.
//!
//! Structure (as tokio's mini-redis):
//! - [`server`]: the accept loop, one task per socket.
//! - `connection`: WebSocket ↔ Noise bytes ↔ nodes for one socket.
//! - `state`: accounts, devices, live sockets and counters behind a mutex; the node-level
//!   server behaviour, without I/O.
//! - `phone`: the phone's side of linking.
//! - `keys`: the key server: stored prekey uploads, bundle fetches, usync device lists.
//! - `messages`: the message server: `<message>` fan-out, per-device queues kept until acked
//!   (redelivered at each login, then `<ib><offline count>`), receipts routed to the sender
//!   device, the low-prekey notification. What reaches a phone is kept raw
//!   ([`Simulator::phone_inbox`]) and handed to the phone's Signal stack.
//! - `phone_chat`: the phones' Signal stack, a `wafleet-messaging` `Messenger` per phone with
//!   the keys the key server hands out for it. A phone decrypts what reaches it (acks and
//!   delivery receipts go back through the server) into [`Simulator::phone_messages`], keeps
//!   the receipts for what it sent ([`Simulator::phone_receipts`]), and sends texts 1:1 or
//!   to a group ([`Simulator::phone_send_text`]); its stanzas (usync, bundle fetches, `w:g2`
//!   queries, messages, receipts) go through the same server code as a companion's, as
//!   device 0's, and its companions get a device-sent copy (`from_me`).
//! - [`control`]: the HTTP control API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wafleet_sim::SimError> {
//! use wafleet_sim::{SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::default()).await?;
//! sim.add_phone("15551234567")?;
//! println!("connect to {} with root key {}", sim.ws_url(), hex::encode(sim.root_public_key()));
//! // … a companion connects and shows a QR text; the phone scans it:
//! # let qr_text = "";
//! let device = sim.scan_qr("15551234567", qr_text).await?;
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

mod connection;
pub mod control;
mod groups;
mod keys;
mod messages;
mod phone;
mod phone_chat;
pub mod server;
mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;
use wafleet_protocol::adv::AdvError;
use wafleet_protocol::binary::Node;
use wafleet_protocol::cert::{CertificateAuthority, ChainSpec};
use wafleet_protocol::jid::Jid;
use wafleet_protocol::noise::KeyPair;

use connection::ServerIdentity;
use state::{Policy, Shared};

pub use groups::{
    GroupAction, GroupAddressing, GroupCounters, GroupInfo, GroupParticipant, GroupRank,
    ParticipantOutcome, GROUP_ID_PREFIX,
};
pub use messages::{participant_hash, INBOX_LIMIT, LOW_PREKEYS, QUEUE_LIMIT};
pub use phone::{PLATFORM, REPLY_TIMEOUT};
pub use phone_chat::{PhoneMessage, PhoneReceipt};

/// How long [`Simulator::enter_pairing_code`] waits for the companion's request to reach
/// the server before it answers [`SimError::NoPendingLink`].
pub const PENDING_LINK_WAIT: Duration = Duration::from_secs(5);
pub use server::WS_PATH;

/// How to run the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// The WebSocket listener (default `127.0.0.1:0`, a free port).
    pub bind: SocketAddr,
    /// The HTTP control API listener; `None` runs no HTTP server.
    pub control_bind: Option<SocketAddr>,
    /// Lifetime of the first QR ref (60 s, as WhatsApp).
    pub first_qr_ttl: Duration,
    /// Lifetime of each later QR ref (20 s).
    pub next_qr_ttl: Duration,
    /// Refs per `pair-device` (6).
    pub qr_refs: usize,
    /// Clients older than this get `<failure reason=405>`; `None` accepts any version.
    pub min_client_version: Option<[u32; 3]>,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            control_bind: None,
            first_qr_ttl: Duration::from_secs(60),
            next_qr_ttl: Duration::from_secs(20),
            qr_refs: 6,
            min_client_version: None,
        }
    }
}

/// How a phone misbehaves in `pair-success`, to test a companion's checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tamper {
    /// Honest.
    #[default]
    None,
    /// The device identity's HMAC is keyed with a wrong ADV secret (companion: 401
    /// `hmac-mismatch`).
    Hmac,
    /// The account signature does not verify (companion: 401 `signature-mismatch`).
    AccountSignature,
}

/// A simulated phone (the primary device of an account).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneInfo {
    /// E.164 digits.
    pub phone: String,
    /// `<phone>@s.whatsapp.net`.
    pub jid: Jid,
    /// The account's LID, `<lid>@lid`.
    pub lid: Jid,
    /// The account signing (identity) public key.
    pub account_public: [u8; 32],
}

impl PhoneInfo {
    /// The JSON form of the control API.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "phone": self.phone,
            "jid": self.jid.to_string(),
            "lid": self.lid.to_string(),
            "account_public": hex::encode(self.account_public),
        })
    }
}

/// What the simulator observed. Maps are keyed by device JID (`<phone>:<device>@s.whatsapp.net`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Logged-in sockets per device now.
    pub live_sockets: HashMap<String, usize>,
    /// `<conflict type=replaced>` stream errors sent in total.
    pub replaced_sent: u64,
    /// Prekey upload iqs accepted per device.
    pub prekey_uploads: HashMap<String, u64>,
    /// One-time prekeys stored per (linked) device.
    pub prekeys_stored: HashMap<String, usize>,
    /// `pair-device-sign` device signatures that verified.
    pub device_signatures_ok: u64,
    /// `pair-device-sign` device signatures that did not verify.
    pub device_signatures_bad: u64,
    /// `pair-success` stanzas the companion refused with an error iq (e.g. 401
    /// `hmac-mismatch`).
    pub pair_success_rejected: u64,
    /// The most logged-in sockets one device had at once, over the whole run.
    pub max_live_sockets_per_device: usize,
    /// Successful logins per device, over the whole run.
    #[serde(default)]
    pub logins: HashMap<String, u64>,
    /// Groups: created, messages fanned out, notifications sent and acked.
    #[serde(default)]
    pub groups: GroupCounters,
    /// Message copies delivered to a device (live, queued or to a phone's inbox).
    #[serde(default)]
    pub messages_routed: u64,
    /// Message copies that found their device offline and waited in its queue.
    #[serde(default)]
    pub messages_queued: u64,
    /// Queued messages a device acknowledged (`<ack class=message>` or a receipt).
    #[serde(default)]
    pub messages_acked: u64,
    /// Addressed JIDs that were no device of the chat's or the sender's account.
    #[serde(default)]
    pub messages_refused: u64,
    /// Receipts routed to a message's sender.
    #[serde(default)]
    pub receipts_routed: u64,
    /// Routed receipts their device acknowledged (`<ack class=receipt>`).
    #[serde(default)]
    pub receipts_acked: u64,
    /// Stanzas sent again (`offline`) at a login because they were not acknowledged.
    #[serde(default)]
    pub redelivered: u64,
    /// Stanzas dropped from a full offline queue.
    #[serde(default)]
    pub queue_dropped: u64,
    /// Low-prekey notifications (`<notification type=encrypt><count/>`) sent.
    #[serde(default)]
    pub prekey_low_sent: u64,
    /// Stanzas waiting for their device's acknowledgement now, per device.
    #[serde(default)]
    pub queued_now: HashMap<String, usize>,
    /// Routed `<enc>` copies by type (`pkmsg`, `msg`, `skmsg`, …).
    #[serde(default)]
    pub encs_routed: HashMap<String, u64>,
}

/// Simulator errors.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A listener could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A phone number is not valid E.164.
    #[error(transparent)]
    BadPhone(#[from] wafleet_protocol::pairing_code::PhoneNumberError),
    /// A phone number has separators or a `+`: the API takes bare digits.
    #[error("phone number must be bare E.164 digits, e.g. 15551234567; got {0:?}")]
    PhoneNotDigits(String),
    /// The phone already exists.
    #[error("phone {0} already exists")]
    PhoneExists(String),
    /// No phone with that number.
    #[error("no phone {0}; add it first")]
    UnknownPhone(String),
    /// The QR text is not a WhatsApp linking QR.
    #[error("not a linking QR: {0}")]
    BadQr(#[from] wafleet_protocol::qr::QrError),
    /// No connected companion is showing this QR ref now (expired, or never issued).
    #[error("no companion is showing this QR now (expired or unknown ref)")]
    NoSuchRef,
    /// The QR's keys are not those of the socket that holds its ref.
    #[error("the QR's keys do not match the companion holding its ref")]
    QrMismatch,
    /// The pairing code is malformed.
    #[error(transparent)]
    BadPairingCode(#[from] wafleet_protocol::pairing_code::PairingCodeError),
    /// No companion asked for a pairing code for this number.
    #[error("no companion is waiting for a pairing code for {0}")]
    NoPendingLink(String),
    /// The key bundle of `companion_finish` did not open (wrong code) or names other keys.
    #[error("the companion's key bundle does not open with this code")]
    KeyBundle,
    /// `companion_finish` lacks a field.
    #[error("companion_finish lacks {0}")]
    BadCompanionFinish(&'static str),
    /// The companion refused `pair-success` (e.g. code 401, text `hmac-mismatch`).
    #[error("companion refused pair-success: {code} {text}")]
    CompanionRejected {
        /// The error code.
        code: String,
        /// The error text.
        text: String,
    },
    /// The companion's device signature (or its `pair-device-sign`) is invalid.
    #[error("companion device identity refused: {0}")]
    DeviceSignature(AdvError),
    /// The companion's socket closed before it answered.
    #[error("the companion's socket closed")]
    SocketClosed,
    /// The companion did not answer in time.
    #[error("the companion did not answer within {}s", REPLY_TIMEOUT.as_secs())]
    Timeout,
    /// No such linked device.
    #[error("no linked device {0}")]
    UnknownDevice(String),
    /// A device JID did not parse.
    #[error("bad device JID: {0}")]
    BadJid(String),
    /// No such group.
    #[error("no group {0}")]
    UnknownGroup(String),
    /// The group request is malformed (e.g. an empty subject).
    #[error("bad group request: {0}")]
    BadGroupRequest(String),
    /// The acting account may not do this (not a member, or not an admin).
    #[error("not allowed in group {0}")]
    GroupForbidden(String),
    /// A phone's send names no user or group (bare digits, a user JID or a group JID).
    #[error("invalid recipient {0:?}: give bare digits, a user JID or a group JID")]
    InvalidRecipient(String),
    /// A phone's send names a user without an account here.
    #[error("no such user {0}")]
    NoSuchUser(String),
    /// A phone's send failed (the server refused it, no device could be encrypted for, …).
    #[error("send failed: {0}")]
    SendFailed(String),
}

impl SimError {
    /// The HTTP status and stable error code of the control API.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            SimError::Bind { .. } => (500, "bind"),
            SimError::BadPhone(_) | SimError::PhoneNotDigits(_) => (400, "bad_phone"),
            SimError::PhoneExists(_) => (409, "phone_exists"),
            SimError::UnknownPhone(_) => (404, "unknown_phone"),
            SimError::BadQr(_) => (400, "bad_qr"),
            SimError::NoSuchRef => (404, "no_such_ref"),
            SimError::QrMismatch => (409, "qr_mismatch"),
            SimError::BadPairingCode(_) => (400, "bad_pairing_code"),
            SimError::NoPendingLink(_) => (404, "no_pending_link"),
            SimError::KeyBundle => (422, "key_bundle"),
            SimError::BadCompanionFinish(_) => (502, "bad_companion_finish"),
            SimError::CompanionRejected { .. } => (409, "companion_rejected"),
            SimError::DeviceSignature(_) => (422, "device_signature"),
            SimError::SocketClosed => (410, "socket_closed"),
            SimError::Timeout => (504, "timeout"),
            SimError::UnknownDevice(_) => (404, "unknown_device"),
            SimError::BadJid(_) => (400, "bad_jid"),
            SimError::UnknownGroup(_) => (404, "unknown_group"),
            SimError::BadGroupRequest(_) => (400, "bad_group_request"),
            SimError::GroupForbidden(_) => (403, "group_forbidden"),
            SimError::InvalidRecipient(_) => (400, "invalid_recipient"),
            SimError::NoSuchUser(_) => (404, "no_such_user"),
            SimError::SendFailed(_) => (502, "send_failed"),
        }
    }
}

struct Inner {
    shared: Shared,
    ws_addr: SocketAddr,
    control_addr: Option<SocketAddr>,
    root: [u8; 32],
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A running simulator; cheap to clone (all clones drive the same one).
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("ws", &self.inner.ws_addr)
            .field("control", &self.inner.control_addr)
            .finish_non_exhaustive()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, SimError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })
}

impl Simulator {
    /// Binds the listeners, generates the root / intermediate / leaf chain and starts
    /// serving.
    pub async fn start(config: SimConfig) -> Result<Simulator, SimError> {
        let ca = CertificateAuthority::generate(&mut OsRng);
        let static_key = KeyPair::generate(&mut OsRng);
        let now = state::unix_now();
        let cert_chain = ca
            .issue(
                &ChainSpec::new(1, now.saturating_sub(86_400), now + 365 * 86_400),
                &static_key.public,
                &mut OsRng,
            )
            .to_bytes();
        let identity = Arc::new(ServerIdentity {
            static_key,
            cert_chain,
        });
        let shared = Shared::new(Policy {
            first_qr_ttl: config.first_qr_ttl,
            next_qr_ttl: config.next_qr_ttl,
            qr_refs: config.qr_refs,
            min_client_version: config.min_client_version,
        });
        let listener = bind(config.bind).await?;
        let ws_addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.bind,
            source,
        })?;
        let control = match config.control_bind {
            Some(addr) => {
                let listener = bind(addr).await?;
                let local = listener
                    .local_addr()
                    .map_err(|source| SimError::Bind { addr, source })?;
                Some((listener, local))
            }
            None => None,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(server::accept_loop(
            listener,
            shared.clone(),
            identity,
            shutdown_rx.clone(),
        ))];
        let sim = Simulator {
            inner: Arc::new(Inner {
                shared,
                ws_addr,
                control_addr: control.as_ref().map(|(_, addr)| *addr),
                root: *ca.root_key().as_bytes(),
                shutdown,
                tasks: Mutex::new(Vec::new()),
            }),
        };
        if let Some((listener, _)) = control {
            let router = control::router(sim.clone());
            let mut stop = shutdown_rx;
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stop.changed().await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "control API stopped");
                }
            }));
        }
        *sim.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        info!(ws = %sim.ws_url(), control = ?sim.control_url(), "simulator started");
        Ok(sim)
    }

    /// `ws://127.0.0.1:PORT/ws/chat`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.inner.ws_addr, WS_PATH)
    }

    /// `http://127.0.0.1:PORT`, if the control API runs.
    pub fn control_url(&self) -> Option<String> {
        self.inner.control_addr.map(|a| format!("http://{a}"))
    }

    /// The root public key clients must pin (`cert::RootKey::custom`, Baileys'
    /// `WA_CERT_DETAILS.PUBLIC_KEY`).
    pub fn root_public_key(&self) -> [u8; 32] {
        self.inner.root
    }

    /// Creates a phone for an E.164 number given as bare digits.
    pub fn add_phone(&self, phone_digits: &str) -> Result<PhoneInfo, SimError> {
        self.inner.shared.lock().add_phone(phone_digits)
    }

    /// The phone scans a companion's QR text. Resolves with the new device's JID once the
    /// companion's `pair-device-sign` verified, or with an error (bad QR, no such ref, the
    /// companion refused, bad device signature, timeout).
    pub async fn scan_qr(&self, phone_digits: &str, qr_text: &str) -> Result<Jid, SimError> {
        phone::scan_qr(&self.inner.shared, phone_digits, qr_text).await
    }

    /// The phone's user types a pairing code (`XXXX-XXXX` or 8 characters) shown by the
    /// companion that asked for a code for this number.
    ///
    /// A companion shows its code as soon as it sends the request, so a fast caller can type
    /// it before the server has the request: as a person would, the phone keeps trying for
    /// [`PENDING_LINK_WAIT`] before it gives up with [`SimError::NoPendingLink`].
    pub async fn enter_pairing_code(
        &self,
        phone_digits: &str,
        code: &str,
    ) -> Result<Jid, SimError> {
        let deadline = tokio::time::Instant::now() + PENDING_LINK_WAIT;
        loop {
            match phone::enter_pairing_code(&self.inner.shared, phone_digits, code).await {
                Err(SimError::NoPendingLink(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
    }

    /// Unlinks a device: its live sockets get `<stream:error code=401><conflict
    /// type=device_removed/>` and later logins fail with 401.
    pub async fn unlink(&self, device: &Jid) -> Result<(), SimError> {
        self.inner
            .shared
            .lock()
            .unlink(&device.to_string())
            .map(|_| ())
    }

    /// The devices linked to a phone now (its "linked devices" list), sorted. A device
    /// leaves it when the phone unlinks it or the companion logs out.
    pub fn linked_devices(&self, phone_digits: &str) -> Vec<Jid> {
        self.inner
            .shared
            .lock()
            .devices_of(phone_digits)
            .iter()
            .filter_map(|jid| jid.parse().ok())
            .collect()
    }

    /// Sets how `phone_digits` signs the device identities it issues.
    pub fn set_tamper(&self, phone_digits: &str, tamper: Tamper) -> Result<(), SimError> {
        self.inner.shared.lock().phone(phone_digits)?.tamper = tamper;
        Ok(())
    }

    /// Turns every live socket of `device` into a black hole: it stays open, but nothing
    /// the client sends is answered (not even a keepalive ping) and nothing is delivered on
    /// it. Later sockets are normal. Returns how many were muted.
    pub fn mute_connections(&self, device: &Jid) -> usize {
        self.inner
            .shared
            .lock()
            .mute_connections(&device.to_string())
    }

    /// Closes every live socket of `device` abruptly (no stream error); returns how many.
    pub fn drop_connections(&self, device: &Jid) -> usize {
        self.inner
            .shared
            .lock()
            .drop_connections(&device.to_string())
    }

    /// What was delivered to `phone_digits`'s phone (device 0), oldest first: the raw
    /// `<message>`/`<receipt>`/`<notification>` stanzas as the server sent them (before the
    /// phone decrypted them: see [`Simulator::phone_messages`]).
    pub fn phone_inbox(&self, phone_digits: &str) -> Result<Vec<Node>, SimError> {
        Ok(self
            .inner
            .shared
            .lock()
            .phone(phone_digits)?
            .inbox
            .iter()
            .cloned()
            .collect())
    }

    /// `phone_digits`'s phone sends a text to `to`: bare digits or a user JID
    /// (`…@s.whatsapp.net`, `…@lid`) for a 1:1 chat, a group JID (`…@g.us`) for a group.
    /// Resolves with the message id once the server acked it. The phone encrypts with its
    /// own Signal stack for every device of the chat and, wrapped as a `DeviceSentMessage`,
    /// for its account's companions (which see it as `from_me`).
    pub fn phone_send_text(
        &self,
        phone_digits: &str,
        to: &str,
        text: &str,
    ) -> Result<String, SimError> {
        self.inner
            .shared
            .lock()
            .phone_send_text(phone_digits, to, text)
    }

    /// `phone_digits`'s phone reads the messages `ids` (the user opens the chat): a `read`
    /// receipt for each goes to its sender. Returns how many of them the phone has.
    pub fn phone_read(&self, phone_digits: &str, ids: &[String]) -> Result<usize, SimError> {
        self.inner.shared.lock().phone_read(phone_digits, ids)
    }

    /// What `phone_digits`'s phone decrypted (or could not), oldest first: 1:1 and group
    /// messages from other accounts, and its own companions' messages (`from_me`).
    pub fn phone_messages(&self, phone_digits: &str) -> Result<Vec<PhoneMessage>, SimError> {
        let mut state = self.inner.shared.lock();
        Ok(state
            .phone(phone_digits)?
            .chat
            .messages
            .iter()
            .cloned()
            .collect())
    }

    /// The receipts `phone_digits`'s phone got for the messages it sent, oldest first.
    pub fn phone_receipts(&self, phone_digits: &str) -> Result<Vec<PhoneReceipt>, SimError> {
        let mut state = self.inner.shared.lock();
        Ok(state
            .phone(phone_digits)?
            .chat
            .receipts
            .iter()
            .cloned()
            .collect())
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.inner.shared.lock().counters()
    }

    /// Stops accepting, ends every connection and waits for the tasks.
    pub async fn shutdown(self) {
        let _ = self.inner.shutdown.send(true);
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }
}
