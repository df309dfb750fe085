//! The linking / login state machine of one connection (protocol-notes §4, §5, §6).

use std::collections::{HashMap, VecDeque};

use prost::Message;
use rand_core::CryptoRngCore;

use super::identity::{DeviceIdentity, PreKey};
use super::pairing::{self, LinkCode, PairingCodeError};
use super::payload::{ClientProfile, PayloadError};
use super::prekeys;
use super::stream_error::{
    classify_failure, classify_stream_error, DisconnectReason, StreamErrorKind,
};
use crate::adv::{self, AdvError};
use crate::binary::{AttrValue, Content, Node};
use crate::jid::{Jid, Server};
use crate::pairing_code::PhoneNumber;
use crate::proto::ClientPayload;
use crate::qr::PairingQr;

/// `@s.whatsapp.net`, the `to` of every iq sent to the server.
pub fn server_jid() -> Jid {
    Jid::new("", Server::WhatsApp)
}

/// A string that holds a secret (the QR text carries the ADV secret; a pairing code is a
/// password): shown on purpose with [`SecretText::as_str`], never by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(String);

impl SecretText {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretText(…)")
    }
}

/// Timing and identity settings. All durations are milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// How the companion describes itself (version, browser, OS).
    pub profile: ClientProfile,
    /// Lifetime of the first QR ref (60 s).
    pub first_qr_ttl_ms: u64,
    /// Lifetime of each later QR ref (20 s).
    pub next_qr_ttl_ms: u64,
    /// Keepalive interval lower bound (20 s); the interval is drawn uniformly from
    /// `keepalive_min_ms..=keepalive_max_ms`.
    pub keepalive_min_ms: u64,
    /// Keepalive interval upper bound (30 s).
    pub keepalive_max_ms: u64,
    /// How long a ping may go unanswered before the connection is declared dead (10 s).
    pub keepalive_timeout_ms: u64,
    /// Upload prekeys when the server holds fewer than this (5).
    pub min_pre_keys: u32,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            profile: ClientProfile::default(),
            first_qr_ttl_ms: 60_000,
            next_qr_ttl_ms: 20_000,
            keepalive_min_ms: 20_000,
            keepalive_max_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            min_pre_keys: prekeys::MIN_SERVER_COUNT,
        }
    }
}

/// What the session reports. Times are unix milliseconds, on the caller's clock.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Show this QR until `expires_at`. `seq` counts from 0; `remaining` refs follow.
    Qr {
        /// The QR text (contains the ADV secret).
        text: SecretText,
        /// When this QR stops being valid.
        expires_at: u64,
        /// 0 for the first QR of the connection.
        seq: u32,
        /// How many more refs the server gave.
        remaining: u32,
    },
    /// Show this pairing code (`XXXX-XXXX`) to the user, who types it on the phone. Valid
    /// while the QR socket lives (`expires_at`).
    PairingCode {
        /// The code, `XXXX-XXXX`.
        code: SecretText,
        /// The end of the QR socket's life.
        expires_at: u64,
    },
    /// Pairing-code linking failed (server error or a bad `primary_hello`); QR linking
    /// continues.
    PairingCodeFailed {
        /// What went wrong.
        reason: String,
    },
    /// `pair-success` verified and countersigned. Persist `identity`; the server follows with
    /// `<stream:error code=515>` ([`Event::Restart`]).
    Paired {
        /// Our device JID.
        jid: Jid,
        /// Our LID, if given.
        lid: Option<Jid>,
        /// The primary's platform name.
        platform: Option<String>,
        /// The business name, if any.
        business_name: Option<String>,
        /// The updated identity, to persist.
        identity: Box<DeviceIdentity>,
    },
    /// `pair-success` was refused (a 401 `hmac-mismatch` / `signature-mismatch` or 500 reply
    /// was sent).
    AuthFailure(AdvError),
    /// `<stream:error code=515>`: close this socket and reconnect now (login payload once
    /// paired). Terminal for this session.
    Restart,
    /// Logged in (`<success>`).
    Ready {
        /// Our device JID.
        jid: Jid,
        /// Our LID, if known.
        lid: Option<Jid>,
    },
    /// New one-time prekeys (private halves) and the identity with the advanced prekey
    /// counter. Persist both, then call [`Session::confirm_pre_keys_persisted`]: only then is
    /// the upload node released to [`Session::poll_transmit`], so keys the server hands out
    /// always exist locally.
    PreKeysGenerated {
        /// The new keys.
        keys: Vec<PreKey>,
        /// The identity with `next_pre_key_id` / `pre_keys_uploaded` updated.
        identity: Box<DeviceIdentity>,
    },
    /// `<ib><edge_routing><routing_info>`: store it and pass it as
    /// `noise::ClientConfig::routing_info` on the next connection.
    RoutingInfo(Vec<u8>),
    /// `<ib><offline count=N>`: the offline queue was delivered.
    OfflineDelivered {
        /// The `count` attribute.
        count: u32,
    },
    /// The server confirmed [`Session::logout`]: this device is unlinked from the account.
    /// Mark the stored identity logged out (never log in with it again).
    /// [`Event::Disconnected`] with [`DisconnectReason::LoggedOut`] follows at once.
    LoggedOut,
    /// The server refused [`Session::logout`] (an error iq); the session stays logged in.
    LogoutFailed {
        /// The server's error code and text.
        reason: String,
    },
    /// The connection is over. Terminal; see [`DisconnectReason::should_reconnect`].
    Disconnected(DisconnectReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Handshake done; waiting for `pair-device` (registration) or `success` (login).
    Connected,
    /// Showing QR codes.
    Linking,
    /// `pair-success` handled; waiting for 515.
    Paired,
    /// `success` received.
    Ready,
    /// A terminal event was emitted.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    CompanionHello,
    CompanionFinish,
    PreKeyCount,
    PreKeyUpload,
    Ping,
    Passive,
    Logout,
}

struct QrRotation {
    refs: VecDeque<String>,
    expires_at: u64,
    seq: u32,
}

#[derive(Default)]
struct Keepalive {
    next_ping_at: Option<u64>,
    pending: Option<(String, u64)>,
}

/// Errors of the caller-driven requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A pairing-code request was refused.
    #[error(transparent)]
    PairingCode(#[from] PairingCodeError),
    /// No prekey upload is waiting for confirmation.
    #[error("no prekey upload is waiting for persistence confirmation")]
    NoPendingUpload,
    /// Logging out needs a logged-in session (after `<success>`).
    #[error("not logged in: a logout needs a logged-in session")]
    NotLoggedIn,
    /// A logout was already sent on this connection and awaits the server's answer.
    #[error("a logout is already waiting for the server's answer")]
    LogoutPending,
}

/// The companion side of one connection, after the Noise handshake: feed it the decoded
/// server nodes ([`Session::handle_node`]) and timeouts ([`Session::handle_timeout`] at
/// [`Session::poll_timeout`]); send what [`Session::poll_transmit`] yields and act on
/// [`Session::poll_event`].
///
/// All times are unix milliseconds from the caller's clock. A session ends with a terminal
/// event ([`Event::Restart`] or [`Event::Disconnected`]); after it, inputs are ignored and
/// the caller builds a new session (with the identity from [`Session::identity`]) on a new
/// socket.
pub struct Session {
    identity: DeviceIdentity,
    config: SessionConfig,
    phase: Phase,
    transmits: VecDeque<Node>,
    events: VecDeque<Event>,
    id_prefix: String,
    id_counter: u64,
    pending: HashMap<String, Pending>,
    qr: Option<QrRotation>,
    link: Option<LinkCode>,
    keepalive: Keepalive,
    held_upload: Option<Node>,
    server_offset_ms: i64,
    /// A `remove-companion-device` iq was sent and not answered yet.
    logging_out: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("identity", &self.identity)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

fn content_bytes(node: Option<&Node>) -> Option<Vec<u8>> {
    match &node?.content {
        Content::Bytes(b) => Some(b.clone()),
        Content::Str(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

fn attr_jid(node: &Node, key: &str) -> Option<Jid> {
    match node.get_attr(key)? {
        AttrValue::Jid(j) => Some(j.clone()),
        AttrValue::Str(s) => s.parse().ok(),
    }
}

impl Session {
    /// A session for a freshly handshaken connection. `rng` seeds the message-id prefix.
    pub fn new(
        identity: DeviceIdentity,
        config: SessionConfig,
        rng: &mut impl CryptoRngCore,
    ) -> Session {
        let id_prefix = format!("{}.{}", rng.next_u32() % 100_000, rng.next_u32() % 100_000);
        Session {
            identity,
            config,
            phase: Phase::Connected,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            id_prefix,
            id_counter: 0,
            pending: HashMap::new(),
            qr: None,
            link: None,
            keepalive: Keepalive::default(),
            held_upload: None,
            server_offset_ms: 0,
            logging_out: false,
        }
    }

    /// The `ClientPayload` for the Noise client finish: login if the identity is paired,
    /// registration otherwise. Encode with `prost::Message::encode_to_vec`.
    pub fn client_payload(&self) -> Result<ClientPayload, PayloadError> {
        self.config.profile.payload(&self.identity)
    }

    /// The current identity (updated at `pair-success`, `success` and prekey generation).
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// Server clock minus the caller's clock, in ms, from the `t` attribute (unix seconds)
    /// of `pair-success` / `success`; 0 until one arrived.
    pub fn server_time_offset_ms(&self) -> i64 {
        self.server_offset_ms
    }

    /// Whether a terminal event was emitted.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The next node to send.
    pub fn poll_transmit(&mut self) -> Option<Node> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] must next be called (unix ms), if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.phase == Phase::Closed {
            return None;
        }
        [
            self.qr.as_ref().map(|q| q.expires_at),
            self.keepalive.next_ping_at,
            self.keepalive.pending.as_ref().map(|p| p.1),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Advances timers to `now`: QR rotation and exhaustion, keepalive pings and their
    /// deadline.
    pub fn handle_timeout(&mut self, now: u64, rng: &mut impl CryptoRngCore) {
        if self.phase == Phase::Closed {
            return;
        }
        if let Some(qr) = &mut self.qr {
            if qr.expires_at <= now {
                match qr.refs.pop_front() {
                    Some(reference) => {
                        qr.seq += 1;
                        qr.expires_at = now + self.config.next_qr_ttl_ms;
                        let (seq, expires_at, remaining) =
                            (qr.seq, qr.expires_at, qr.refs.len() as u32);
                        self.emit_qr(reference, expires_at, seq, remaining);
                    }
                    None => {
                        self.close(DisconnectReason::QrExhausted);
                        return;
                    }
                }
            }
        }
        if let Some((_, deadline)) = &self.keepalive.pending {
            if *deadline <= now {
                self.close(DisconnectReason::KeepaliveTimeout);
                return;
            }
        }
        if matches!(self.keepalive.next_ping_at, Some(t) if t <= now) {
            self.keepalive.next_ping_at = None;
            let id = self.send_iq(
                Pending::Ping,
                Node::new("iq")
                    .attr("xmlns", "w:p")
                    .attr("type", "get")
                    .children([Node::new("ping")]),
            );
            self.keepalive.pending = Some((id, now + self.config.keepalive_timeout_ms));
        }
        let _ = rng;
    }

    /// Handles one decoded server node.
    pub fn handle_node(&mut self, node: Node, now: u64, rng: &mut impl CryptoRngCore) {
        if self.phase == Phase::Closed {
            return;
        }
        match &*node.tag {
            "iq" => self.handle_iq(&node, now, rng),
            "success" => self.handle_success(&node, now, rng),
            "stream:error" => match classify_stream_error(&node) {
                StreamErrorKind::Restart => {
                    self.events.push_back(Event::Restart);
                    self.phase = Phase::Closed;
                }
                StreamErrorKind::Disconnect(reason) => self.close(reason),
            },
            "failure" => self.close(classify_failure(&node)),
            "xmlstreamend" => self.close(DisconnectReason::StreamEnd),
            "notification" => {
                self.ack(&node);
                if node.attr_str("type") == Some("link_code_companion_reg") {
                    self.handle_primary_hello(&node, rng);
                }
            }
            "message" | "receipt" | "call" => self.ack(&node),
            "ib" => self.handle_ib(&node),
            _ => {}
        }
    }

    /// `<ib>` (info broadcast) children, as Baileys handles them.
    fn handle_ib(&mut self, node: &Node) {
        for child in node.child_nodes() {
            match &*child.tag {
                "offline_preview" => self.transmits.push_back(
                    Node::new("ib").children([Node::new("offline_batch").attr("count", "100")]),
                ),
                "offline" => {
                    let count = child
                        .attr_str("count")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    self.events.push_back(Event::OfflineDelivered { count });
                }
                "edge_routing" => {
                    let info = child
                        .child_by_tag("routing_info")
                        .and_then(Node::content_bytes);
                    if let Some(info) = info {
                        self.events.push_back(Event::RoutingInfo(info.to_vec()));
                    }
                }
                _ => {}
            }
        }
    }

    /// Requests a pairing code for `phone` (protocol-notes §5). Allowed once per connection,
    /// after the first QR ([`Event::Qr`]) and before pairing; the code arrives as
    /// [`Event::PairingCode`] and stays valid across QR rotations.
    pub fn request_pairing_code(
        &mut self,
        phone: &PhoneNumber,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), SessionError> {
        if self.link.is_some() {
            return Err(PairingCodeError::AlreadyRequested.into());
        }
        if self.phase != Phase::Linking {
            return Err(PairingCodeError::NotLinking.into());
        }
        let (link, node) =
            pairing::companion_hello(phone, &self.identity, &self.config.profile, rng);
        let expires_at = self
            .qr
            .as_ref()
            .map(|q| q.expires_at + q.refs.len() as u64 * self.config.next_qr_ttl_ms)
            .unwrap_or(now);
        self.events.push_back(Event::PairingCode {
            code: SecretText(link.code.display()),
            expires_at,
        });
        self.link = Some(link);
        self.send_iq(Pending::CompanionHello, node);
        Ok(())
    }

    /// Logs this device out (whatsmeow `Logout`, Baileys `logout`): queues
    /// `<iq xmlns=md type=set><remove-companion-device jid=<own device JID>
    /// reason=user_initiated/></iq>`. Allowed once per connection, while logged in
    /// ([`Event::Ready`]). The server's answer arrives as [`Event::LoggedOut`] (then
    /// [`Event::Disconnected`] with [`DisconnectReason::LoggedOut`]) or
    /// [`Event::LogoutFailed`]. No timer runs here: the caller bounds the wait.
    pub fn logout(&mut self) -> Result<(), SessionError> {
        if self.logging_out {
            return Err(SessionError::LogoutPending);
        }
        let jid = match (self.phase, self.identity.jid()) {
            (Phase::Ready, Some(jid)) => jid,
            _ => return Err(SessionError::NotLoggedIn),
        };
        self.logging_out = true;
        self.send_iq(
            Pending::Logout,
            Node::new("iq")
                .attr("xmlns", "md")
                .attr("type", "set")
                .children([Node::new("remove-companion-device")
                    .attr("jid", jid)
                    .attr("reason", "user_initiated")]),
        );
        Ok(())
    }

    /// Releases the prekey upload held since [`Event::PreKeysGenerated`]; call once the keys
    /// and identity are stored.
    pub fn confirm_pre_keys_persisted(&mut self) -> Result<(), SessionError> {
        let node = self
            .held_upload
            .take()
            .ok_or(SessionError::NoPendingUpload)?;
        self.transmits.push_back(node);
        Ok(())
    }

    fn next_id(&mut self) -> String {
        self.id_counter += 1;
        format!("{}-{}", self.id_prefix, self.id_counter)
    }

    /// Adds `id` and `to=@s.whatsapp.net`, queues the iq and remembers what it was.
    fn send_iq(&mut self, kind: Pending, mut node: Node) -> String {
        let id = self.next_id();
        node.attrs
            .insert(0, ("id".into(), AttrValue::from(id.clone())));
        node.attrs
            .insert(1, ("to".into(), AttrValue::Jid(server_jid())));
        self.pending.insert(id.clone(), kind);
        self.transmits.push_back(node);
        id
    }

    fn close(&mut self, reason: DisconnectReason) {
        // A server that ends the socket with "logged out" while our logout is pending has
        // done what was asked, answer or not.
        if self.logging_out && reason.is_logged_out() {
            self.logging_out = false;
            self.events.push_back(Event::LoggedOut);
        }
        self.events.push_back(Event::Disconnected(reason));
        self.phase = Phase::Closed;
        self.qr = None;
        self.keepalive = Keepalive::default();
    }

    fn emit_qr(&mut self, reference: String, expires_at: u64, seq: u32, remaining: u32) {
        let text = PairingQr {
            reference,
            noise_public: self.identity.noise_key.public,
            identity_public: self.identity.identity_key.public,
            adv_secret: self.identity.adv_secret,
            client_type: self.config.profile.client_type(),
        }
        .to_text();
        self.events.push_back(Event::Qr {
            text: SecretText(text),
            expires_at,
            seq,
            remaining,
        });
    }

    fn result_to(&mut self, id: &str) -> Node {
        Node::new("iq")
            .attr("to", server_jid())
            .attr("type", "result")
            .attr("id", id.to_owned())
    }

    fn ack(&mut self, node: &Node) {
        let (Some(id), Some(from)) = (node.attr_str("id"), node.get_attr("from")) else {
            return;
        };
        let mut ack = Node::new("ack")
            .attr("id", id.to_owned())
            .attr("to", from.clone())
            .attr("class", node.tag.clone());
        for key in ["participant", "recipient", "type"] {
            if let Some(v) = node.get_attr(key) {
                ack = ack.attr(key, v.clone());
            }
        }
        if node.tag == "message" {
            if let Some(me) = self.identity.jid() {
                ack = ack.attr("from", me);
            }
        }
        self.transmits.push_back(ack);
    }

    fn handle_iq(&mut self, node: &Node, now: u64, rng: &mut impl CryptoRngCore) {
        let id = node.attr_str("id").unwrap_or_default().to_owned();
        if node.child_by_tag("pair-success").is_some() {
            return self.handle_pair_success(node, &id, now, rng);
        }
        match node.attr_str("type") {
            Some("set") if node.child_by_tag("pair-device").is_some() => {
                self.handle_pair_device(node, &id, now)
            }
            Some("get") if node.attr_str("xmlns") == Some("urn:xmpp:ping") => {
                let reply = self.result_to(&id);
                self.transmits.push_back(reply);
            }
            Some(ty @ ("result" | "error")) => {
                if let Some(kind) = self.pending.remove(&id) {
                    self.handle_response(kind, node, ty == "result", now, rng);
                }
            }
            _ => {}
        }
    }

    fn handle_pair_device(&mut self, node: &Node, id: &str, now: u64) {
        let reply = self.result_to(id);
        self.transmits.push_back(reply);
        if self.identity.is_paired() || self.phase != Phase::Connected {
            return;
        }
        let mut refs: VecDeque<String> = node
            .child_by_tag("pair-device")
            .into_iter()
            .flat_map(|p| p.children_by_tag("ref"))
            .filter_map(|r| content_bytes(Some(r)))
            .filter_map(|b| String::from_utf8(b).ok())
            .collect();
        let Some(first) = refs.pop_front() else {
            return;
        };
        let expires_at = now + self.config.first_qr_ttl_ms;
        let remaining = refs.len() as u32;
        self.qr = Some(QrRotation {
            refs,
            expires_at,
            seq: 0,
        });
        self.phase = Phase::Linking;
        self.emit_qr(first, expires_at, 0, remaining);
    }

    fn handle_pair_success(
        &mut self,
        node: &Node,
        id: &str,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        if self.phase != Phase::Linking && self.phase != Phase::Connected {
            return;
        }
        self.update_server_offset(node, now);
        let ps = node.child_by_tag("pair-success");
        let device = ps.and_then(|p| p.child_by_tag("device"));
        let jid = device.and_then(|d| attr_jid(d, "jid"));
        let lid = device.and_then(|d| attr_jid(d, "lid"));
        let platform = ps
            .and_then(|p| p.child_by_tag("platform"))
            .and_then(|n| n.attr_str("name"))
            .map(str::to_owned);
        let business_name = ps
            .and_then(|p| p.child_by_tag("biz"))
            .and_then(|n| n.attr_str("name"))
            .map(str::to_owned);
        let result = match (
            content_bytes(ps.and_then(|p| p.child_by_tag("device-identity"))),
            jid,
        ) {
            (Some(bytes), Some(jid)) => adv::countersign(
                &bytes,
                &self.identity.adv_secret,
                &self.identity.identity_key.private,
                rng,
            )
            .map(|c| (c, jid)),
            (None, _) => Err(AdvError::Field("device-identity")),
            (_, None) => Err(AdvError::Field("device jid")),
        };
        match result {
            Err(e) => {
                let (code, text) = match e.reply_text() {
                    Some(text) => ("401", text),
                    None => ("500", "internal-error"),
                };
                self.transmits.push_back(
                    Node::new("iq")
                        .attr("to", server_jid())
                        .attr("type", "error")
                        .attr("id", id.to_owned())
                        .children([Node::new("error").attr("code", code).attr("text", text)]),
                );
                self.events.push_back(Event::AuthFailure(e));
            }
            Ok((signed, jid)) => {
                let reply = self
                    .result_to(id)
                    .children([Node::new("pair-device-sign").children([Node::new(
                        "device-identity",
                    )
                    .attr("key-index", signed.key_index.to_string())
                    .bytes(signed.reply)])]);
                self.transmits.push_back(reply);
                self.send_unified_session(now);
                self.identity.jid = Some(jid.to_string());
                self.identity.lid = lid.as_ref().map(Jid::to_string);
                self.identity.platform = platform.clone();
                self.identity.business_name = business_name.clone();
                self.identity.account = Some(signed.account.encode_to_vec());
                self.qr = None;
                self.link = None;
                self.phase = Phase::Paired;
                self.events.push_back(Event::Paired {
                    jid,
                    lid,
                    platform,
                    business_name,
                    identity: Box::new(self.identity.clone()),
                });
            }
        }
    }

    fn handle_success(&mut self, node: &Node, now: u64, rng: &mut impl CryptoRngCore) {
        let Some(jid) = self.identity.jid() else {
            return;
        };
        if self.phase != Phase::Connected {
            return;
        }
        if let Some(lid) = attr_jid(node, "lid") {
            self.identity.lid = Some(lid.to_string());
        }
        self.phase = Phase::Ready;
        self.send_iq(
            Pending::Passive,
            Node::new("iq")
                .attr("xmlns", "passive")
                .attr("type", "set")
                .children([Node::new("active")]),
        );
        self.send_iq(
            Pending::PreKeyCount,
            Node::new("iq")
                .attr("xmlns", "encrypt")
                .attr("type", "get")
                .children([Node::new("count")]),
        );
        self.update_server_offset(node, now);
        self.send_unified_session(now);
        self.schedule_ping(now, rng);
        let lid = self.identity.lid();
        self.events.push_back(Event::Ready { jid, lid });
    }

    fn update_server_offset(&mut self, node: &Node, now: u64) {
        if let Some(t) = node.attr_str("t").and_then(|t| t.parse::<i64>().ok()) {
            self.server_offset_ms = t
                .saturating_mul(1000)
                .saturating_sub(i64::try_from(now).unwrap_or(i64::MAX));
        }
    }

    /// `<ib><unified_session id=…/></ib>` (Baileys `sendUnifiedSession`): the id is
    /// `(server now + 3 days) mod 1 week`, in ms.
    fn send_unified_session(&mut self, now: u64) {
        const DAY_MS: i64 = 86_400_000;
        let server_now = i64::try_from(now)
            .unwrap_or(i64::MAX)
            .saturating_add(self.server_offset_ms);
        let id = server_now.saturating_add(3 * DAY_MS).rem_euclid(7 * DAY_MS);
        self.transmits.push_back(
            Node::new("ib").children([Node::new("unified_session").attr("id", id.to_string())]),
        );
    }

    fn schedule_ping(&mut self, now: u64, rng: &mut impl CryptoRngCore) {
        let min = self.config.keepalive_min_ms;
        let span = self.config.keepalive_max_ms.saturating_sub(min);
        let jitter = if span == 0 {
            0
        } else {
            rng.next_u64() % (span + 1)
        };
        self.keepalive.next_ping_at = Some(now + min + jitter);
    }

    fn handle_response(
        &mut self,
        kind: Pending,
        node: &Node,
        ok: bool,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        match kind {
            Pending::Ping => {
                self.keepalive.pending = None;
                self.schedule_ping(now, rng);
            }
            Pending::PreKeyCount if ok => {
                let count = node
                    .child_by_tag("count")
                    .and_then(|c| c.attr_str("value"))
                    .and_then(|v| v.parse::<u32>().ok());
                if let Some(count) = count {
                    if count < self.config.min_pre_keys {
                        self.generate_upload(rng);
                    }
                }
            }
            Pending::CompanionHello => {
                let reference = node
                    .child_by_tag("link_code_companion_reg")
                    .and_then(|r| content_bytes(r.child_by_tag("link_code_pairing_ref")));
                match (ok, reference, self.link.as_mut()) {
                    (true, Some(reference), Some(link)) => link.reference = Some(reference),
                    _ => self
                        .pairing_failed(format!("companion_hello refused: {}", error_text(node))),
                }
            }
            Pending::Logout => {
                self.logging_out = false;
                if ok {
                    self.events.push_back(Event::LoggedOut);
                    self.close(DisconnectReason::LoggedOut);
                } else {
                    self.events.push_back(Event::LogoutFailed {
                        reason: error_text(node),
                    });
                }
            }
            Pending::CompanionFinish if !ok => {
                self.pairing_failed(format!("companion_finish refused: {}", error_text(node)))
            }
            _ => {}
        }
    }

    fn pairing_failed(&mut self, reason: String) {
        self.events.push_back(Event::PairingCodeFailed { reason });
    }

    fn generate_upload(&mut self, rng: &mut impl CryptoRngCore) {
        if self.held_upload.is_some() {
            return;
        }
        let count = if self.identity.pre_keys_uploaded {
            prekeys::LATER_UPLOAD_COUNT
        } else {
            prekeys::FIRST_UPLOAD_COUNT
        };
        let (keys, next) = prekeys::generate(self.identity.next_pre_key_id, count, rng);
        self.identity.next_pre_key_id = next;
        self.identity.pre_keys_uploaded = true;
        let id = self.next_id();
        let node = prekeys::upload_node(id.clone(), &self.identity, &keys);
        self.pending.insert(id, Pending::PreKeyUpload);
        self.held_upload = Some(node);
        self.events.push_back(Event::PreKeysGenerated {
            keys,
            identity: Box::new(self.identity.clone()),
        });
    }

    fn handle_primary_hello(&mut self, node: &Node, rng: &mut impl CryptoRngCore) {
        if self.phase != Phase::Linking {
            return;
        }
        let Some(link) = self.link.as_mut() else {
            return;
        };
        if link.finished {
            return;
        }
        match pairing::primary_hello(link, node, &self.identity, rng) {
            Ok(None) => {}
            Ok(Some((adv_secret, finish))) => {
                link.finished = true;
                self.identity.adv_secret = adv_secret;
                self.send_iq(Pending::CompanionFinish, finish);
            }
            Err(e) => self.pairing_failed(e.to_string()),
        }
    }
}

fn error_text(node: &Node) -> String {
    node.child_by_tag("error")
        .map(|e| {
            format!(
                "{} {}",
                e.attr_str("code").unwrap_or("?"),
                e.attr_str("text").unwrap_or("")
            )
        })
        .unwrap_or_else(|| "no result".to_owned())
}
