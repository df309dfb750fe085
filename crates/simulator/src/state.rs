//! The simulator's shared state: accounts (phones), linked devices, live sockets and
//! counters, behind one mutex ([`Shared`]).
//!
//! Everything a socket receives after the Noise handshake goes through
//! [`State::on_client_payload`] and [`State::on_node`], which change the state and return
//! what to send ([`Outbound`]). No I/O happens here, so the server's node-level behaviour is
//! tested without sockets (see the tests at the bottom).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prost::Message;
use rand_core::{OsRng, RngCore};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use wafleet_protocol::binary::{AttrValue, Content, Node};
use wafleet_protocol::client::{DeviceIdentity, PreKey};
use wafleet_protocol::jid::{Jid, Server};
use wafleet_protocol::noise::{ClientFinishInfo, KeyPair};
use wafleet_protocol::proto::ClientPayload;

use crate::keys::{parse_prekey, KeyBundle};
use crate::messages::{Messaging, LOW_PREKEYS};
use crate::phone_chat::PhoneChat;
use crate::{Counters, PhoneInfo, SimError, Tamper};

/// Identifies one WebSocket connection for the whole run.
pub(crate) type SocketId = u64;

/// What a connection task must do on its socket.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Encrypt and send this node.
    Node(Node),
    /// Send the node (if any), then close the WebSocket.
    Close(Option<Node>),
    /// Drop the connection at once: no stream error, no close frame.
    Abort,
    /// Keep the connection open but answer nothing from now on (a half-open socket, a
    /// stalled proxy): what arrives is dropped, nothing is sent.
    Mute,
}

/// `@s.whatsapp.net`, the sender of every server stanza.
pub(crate) fn server_jid() -> Jid {
    Jid::new("", Server::WhatsApp)
}

/// Unix seconds now (the `t` attribute of `success` / `pair-success`).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The QR timing and version policy the state applies.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub first_qr_ttl: Duration,
    pub next_qr_ttl: Duration,
    pub qr_refs: usize,
    pub min_client_version: Option<[u32; 3]>,
}

/// A simulated phone: the primary device of one account.
pub(crate) struct Account {
    pub phone: String,
    pub lid_user: String,
    /// The account (identity) key pair: signs device identities; its public half is the
    /// primary's identity key in pairing-code linking.
    pub key: KeyPair,
    pub raw_id: u32,
    pub next_device_id: u16,
    pub tamper: Tamper,
    /// The phone's (device 0's) record in the key server.
    pub primary: Device,
    /// The phone's Signal identity (its identity key is the account key, as on WhatsApp)
    /// and the private halves of its one-time prekeys, for its own Signal stack.
    pub signal: DeviceIdentity,
    pub pre_keys: Vec<PreKey>,
    /// What was delivered to the phone, oldest first.
    pub inbox: VecDeque<Node>,
    /// The push name its companions announced (`<presence name>`), sent as `notify`.
    pub push_name: Option<String>,
    /// Its Signal stack: the messenger, and what it decrypted.
    pub chat: PhoneChat,
}

impl Account {
    pub fn info(&self) -> PhoneInfo {
        PhoneInfo {
            phone: self.phone.clone(),
            jid: Jid::new(self.phone.clone(), Server::WhatsApp),
            lid: Jid::new(self.lid_user.clone(), Server::Lid),
            account_public: self.key.public,
        }
    }
}

/// A linked companion device.
pub(crate) struct Device {
    pub lid: Jid,
    /// One-time prekeys the device uploaded and nobody fetched yet: id → public key
    /// (handed out lowest id first).
    pub prekeys: BTreeMap<u32, [u8; 32]>,
    /// Registration id, identity key and signed prekey of the last upload, for bundle
    /// fetches and the `<digest>` query.
    pub bundle: Option<KeyBundle>,
    /// The low-prekey notification was sent and no upload refilled the store since.
    pub low_prekeys_notified: bool,
}

impl Device {
    /// A device with no keys yet.
    pub fn new(lid: Jid) -> Device {
        Device {
            lid,
            prekeys: BTreeMap::new(),
            bundle: None,
            low_prekeys_notified: false,
        }
    }
}

/// A phone waiting for the companion's answer to one of its stanzas.
pub(crate) struct PendingReply {
    /// The iq id the answer carries (`pair-success`), or `None` for `companion_finish`.
    pub iq_id: Option<String>,
    pub reply: oneshot::Sender<Node>,
}

/// A pairing-code request (`companion_hello`) on a registration socket.
pub(crate) struct LinkRequest {
    pub phone: String,
    pub wrapped_companion_ephemeral: Vec<u8>,
    pub reference: String,
}

/// A socket that registered (an unpaired companion showing QR codes).
pub(crate) struct Registration {
    pub refs: Vec<String>,
    pub started: Instant,
    pub noise_public: [u8; 32],
    pub identity_public: [u8; 32],
    pub link: Option<LinkRequest>,
    pub pending: Vec<PendingReply>,
}

impl Registration {
    /// The index of the ref shown at `now`, if any is still valid.
    fn ref_index(&self, policy: &Policy, now: Instant) -> Option<usize> {
        let elapsed = now.saturating_duration_since(self.started);
        let index = if elapsed < policy.first_qr_ttl {
            0
        } else if policy.next_qr_ttl.is_zero() {
            return None;
        } else {
            let later =
                (elapsed - policy.first_qr_ttl).as_millis() / policy.next_qr_ttl.as_millis();
            1 + usize::try_from(later).unwrap_or(usize::MAX)
        };
        (index < self.refs.len()).then_some(index)
    }

    /// When the last ref expires (the server closes the socket then).
    pub fn expires_at(&self, policy: &Policy) -> Instant {
        let later = u32::try_from(self.refs.len().saturating_sub(1)).unwrap_or(u32::MAX);
        self.started + policy.first_qr_ttl + policy.next_qr_ttl * later
    }
}

/// What a socket is.
pub(crate) enum Role {
    /// Noise handshake not complete yet.
    Handshaking,
    /// Registration (linking) socket.
    Registration(Box<Registration>),
    /// Logged in as this device (JID string).
    Device(String),
}

pub(crate) struct SocketEntry {
    pub role: Role,
    pub tx: mpsc::UnboundedSender<Outbound>,
}

#[derive(Default)]
pub(crate) struct CounterState {
    pub replaced_sent: u64,
    pub prekey_uploads: HashMap<String, u64>,
    pub device_signatures_ok: u64,
    pub device_signatures_bad: u64,
    pub pair_success_rejected: u64,
    pub max_live_sockets_per_device: usize,
    pub logins: HashMap<String, u64>,
}

/// Everything the simulator knows.
pub(crate) struct State {
    pub policy: Policy,
    pub phones: HashMap<String, Account>,
    pub devices: HashMap<String, Device>,
    pub sockets: BTreeMap<SocketId, SocketEntry>,
    pub counters: CounterState,
    pub groups: crate::groups::Groups,
    /// LID user → phone digits.
    pub lids: HashMap<String, String>,
    /// Offline queues, who sent which message, message counters.
    pub messaging: Messaging,
    /// Stanzas delivered to phones, waiting for their messengers ([`State::run_phones`]).
    pub phone_work: VecDeque<(String, Node)>,
    /// [`State::run_phones`] is running.
    pub running_phones: bool,
    next_socket: SocketId,
    next_iq: u64,
}

/// The state behind its mutex, shared by the connection tasks, the phones and the control
/// API. The lock is never held across an `.await`.
#[derive(Clone)]
pub(crate) struct Shared(Arc<Mutex<State>>);

impl Shared {
    pub fn new(policy: Policy) -> Shared {
        Shared(Arc::new(Mutex::new(State::new(policy))))
    }

    /// Locks the state. A panic while holding the lock cannot leave it half-updated in a way
    /// that matters to a test simulator, so a poisoned lock is taken over.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn bytes_of(node: Option<&Node>) -> Option<Vec<u8>> {
    match &node?.content {
        Content::Bytes(b) => Some(b.clone()),
        Content::Str(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

fn text_of(node: Option<&Node>) -> Option<String> {
    bytes_of(node).and_then(|b| String::from_utf8(b).ok())
}

/// `<iq type=result id=… from=@s.whatsapp.net>` answering `request`.
pub(crate) fn result_for(request: &Node) -> Node {
    Node::new("iq")
        .attr("from", server_jid())
        .attr("type", "result")
        .attr("id", request.attr_str("id").unwrap_or_default().to_owned())
}

/// `<iq type=error …><error code text/></iq>` answering `request`.
pub(crate) fn error_for(request: &Node, code: u16, text: &'static str) -> Node {
    Node::new("iq")
        .attr("from", server_jid())
        .attr("type", "error")
        .attr("id", request.attr_str("id").unwrap_or_default().to_owned())
        .children([Node::new("error")
            .attr("code", code.to_string())
            .attr("text", text)])
}

fn failure(reason: u16) -> Node {
    Node::new("failure").attr("reason", reason.to_string())
}

/// `Browser (OS)`: a non-empty name, a space, and a non-empty parenthesised OS at the end.
pub(crate) fn valid_platform_display(display: &str) -> bool {
    let Some(inner) = display.strip_suffix(')') else {
        return false;
    };
    let Some((browser, os)) = inner.split_once(" (") else {
        return false;
    };
    !browser.trim().is_empty()
        && !os.trim().is_empty()
        && !os.contains(['(', ')'])
        && !browser.contains(['(', ')'])
}

fn random_digits(len: usize) -> String {
    let mut s = String::with_capacity(len);
    s.push(char::from(b'1' + (OsRng.next_u32() % 9) as u8));
    while s.len() < len {
        s.push(char::from(b'0' + (OsRng.next_u32() % 10) as u8));
    }
    s
}

impl State {
    pub fn new(policy: Policy) -> State {
        State {
            policy,
            phones: HashMap::new(),
            devices: HashMap::new(),
            sockets: BTreeMap::new(),
            counters: CounterState::default(),
            groups: crate::groups::Groups::default(),
            lids: HashMap::new(),
            messaging: Messaging::default(),
            phone_work: VecDeque::new(),
            running_phones: false,
            next_socket: 1,
            next_iq: 1,
        }
    }

    /// A fresh iq id for a stanza the server or a phone sends.
    pub fn next_iq_id(&mut self) -> String {
        let id = format!("sim-{}", self.next_iq);
        self.next_iq += 1;
        id
    }

    /// Registers a new socket (handshake not done yet).
    pub fn open_socket(&mut self, tx: mpsc::UnboundedSender<Outbound>) -> SocketId {
        let id = self.next_socket;
        self.next_socket += 1;
        self.sockets.insert(
            id,
            SocketEntry {
                role: Role::Handshaking,
                tx,
            },
        );
        id
    }

    /// Forgets a socket (closed by either side). Phones waiting on it see their reply
    /// channel close.
    pub fn socket_closed(&mut self, id: SocketId) {
        if self.sockets.remove(&id).is_some() {
            debug!(socket = id, "socket closed");
        }
    }

    /// Takes a socket out of the live set and tells its task to send `out` and stop.
    pub fn end_socket(&mut self, id: SocketId, out: Outbound) {
        if let Some(entry) = self.sockets.remove(&id) {
            // The task may already be gone; then there is nothing left to close.
            let _ = entry.tx.send(out);
        }
    }

    /// Sends a node on a live socket; `false` if the socket is gone.
    pub fn send(&self, id: SocketId, node: Node) -> bool {
        self.sockets
            .get(&id)
            .is_some_and(|entry| entry.tx.send(Outbound::Node(node)).is_ok())
    }

    /// Creates a phone (account) for E.164 digits.
    pub fn add_phone(&mut self, phone: &str) -> Result<PhoneInfo, SimError> {
        let number = wafleet_protocol::pairing_code::PhoneNumber::parse(phone)?;
        let digits = number.digits().to_owned();
        if digits != phone {
            return Err(SimError::PhoneNotDigits(phone.to_owned()));
        }
        if self.phones.contains_key(&digits) {
            return Err(SimError::PhoneExists(digits));
        }
        let mut lid_user = random_digits(15);
        while self.lids.contains_key(&lid_user) {
            lid_user = random_digits(15);
        }
        let key = KeyPair::generate(&mut OsRng);
        let (signal, pre_keys, primary) = crate::keys::phone_keys(&digits, &lid_user, &key);
        let account = Account {
            phone: digits.clone(),
            lid_user: lid_user.clone(),
            key,
            raw_id: OsRng.next_u32(),
            next_device_id: 1,
            tamper: Tamper::None,
            primary,
            signal,
            pre_keys,
            inbox: VecDeque::new(),
            push_name: None,
            chat: PhoneChat::new(&digits, &lid_user),
        };
        let info = account.info();
        info!(phone = %digits, "phone added");
        self.lids.insert(lid_user, digits.clone());
        self.phones.insert(digits, account);
        Ok(info)
    }

    /// The account for `phone`.
    pub fn phone(&mut self, phone: &str) -> Result<&mut Account, SimError> {
        self.phones
            .get_mut(phone)
            .ok_or_else(|| SimError::UnknownPhone(phone.to_owned()))
    }

    /// Live sockets per device JID.
    pub fn live_sockets(&self) -> HashMap<String, usize> {
        let mut live = HashMap::new();
        for entry in self.sockets.values() {
            if let Role::Device(jid) = &entry.role {
                *live.entry(jid.clone()).or_insert(0) += 1;
            }
        }
        live
    }

    pub(crate) fn sockets_of(&self, device: &str) -> Vec<SocketId> {
        self.sockets
            .iter()
            .filter(|(_, e)| matches!(&e.role, Role::Device(jid) if jid == device))
            .map(|(id, _)| *id)
            .collect()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        Counters {
            live_sockets: self.live_sockets(),
            replaced_sent: self.counters.replaced_sent,
            prekey_uploads: self.counters.prekey_uploads.clone(),
            prekeys_stored: self
                .devices
                .iter()
                .map(|(jid, d)| (jid.clone(), d.prekeys.len()))
                .collect(),
            device_signatures_ok: self.counters.device_signatures_ok,
            device_signatures_bad: self.counters.device_signatures_bad,
            pair_success_rejected: self.counters.pair_success_rejected,
            max_live_sockets_per_device: self.counters.max_live_sockets_per_device,
            logins: self.counters.logins.clone(),
            groups: self.groups.counters(),
            messages_routed: self.messaging.counters.messages_routed,
            messages_queued: self.messaging.counters.messages_queued,
            messages_acked: self.messaging.counters.messages_acked,
            messages_refused: self.messaging.counters.messages_refused,
            receipts_routed: self.messaging.counters.receipts_routed,
            receipts_acked: self.messaging.counters.receipts_acked,
            redelivered: self.messaging.counters.redelivered,
            queue_dropped: self.messaging.counters.queue_dropped,
            prekey_low_sent: self.messaging.counters.prekey_low_sent,
            encs_routed: self.messaging.counters.encs_routed.clone(),
            queued_now: self
                .messaging
                .queues
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(k, q)| (k.clone(), q.len()))
                .collect(),
        }
    }

    /// Closes every socket of `device` without a stream error; returns how many.
    pub fn drop_connections(&mut self, device: &str) -> usize {
        let ids = self.sockets_of(device);
        for id in &ids {
            self.end_socket(*id, Outbound::Abort);
        }
        ids.len()
    }

    /// Mutes the live sockets of `device` ([`Outbound::Mute`]); returns how many.
    pub fn mute_connections(&mut self, device: &str) -> usize {
        let ids = self.sockets_of(device);
        for id in &ids {
            if let Some(socket) = self.sockets.get(id) {
                let _ = socket.tx.send(Outbound::Mute);
            }
        }
        ids.len()
    }

    /// Unlinks `device`: `401 device_removed` to its live sockets, and later logins fail.
    pub fn unlink(&mut self, device: &str) -> Result<usize, SimError> {
        self.remove_device(device, None)
    }

    /// The device JIDs linked to `phone` (the phone's "linked devices" list), sorted.
    pub fn devices_of(&self, phone: &str) -> Vec<String> {
        let mut jids: Vec<String> = self
            .devices
            .keys()
            .filter(|jid| {
                jid.parse::<Jid>()
                    .is_ok_and(|j| j.user == phone && j.server == Server::WhatsApp)
            })
            .cloned()
            .collect();
        jids.sort();
        jids
    }

    /// Forgets `device` and ends its live sockets but `except` with `401 device_removed`
    /// (the caller ends `except` itself); returns how many sockets were ended.
    fn remove_device(&mut self, device: &str, except: Option<SocketId>) -> Result<usize, SimError> {
        if self.devices.remove(device).is_none() {
            return Err(SimError::UnknownDevice(device.to_owned()));
        }
        if let Ok(jid) = device.parse::<Jid>() {
            self.devices_changed(&jid.user);
        }
        self.counters.prekey_uploads.remove(device);
        self.messaging.queues.remove(device);
        let ids: Vec<SocketId> = self
            .sockets_of(device)
            .into_iter()
            .filter(|id| Some(*id) != except)
            .collect();
        for id in &ids {
            let error = Node::new("stream:error")
                .attr("code", "401")
                .children([Node::new("conflict").attr("type", "device_removed")]);
            self.end_socket(*id, Outbound::Close(Some(error)));
        }
        info!(device, sockets = ids.len(), "device unlinked");
        Ok(ids.len())
    }

    /// The socket's registration, if it is a registration socket.
    pub fn registration(&mut self, id: SocketId) -> Option<&mut Registration> {
        match &mut self.sockets.get_mut(&id)?.role {
            Role::Registration(r) => Some(r),
            _ => None,
        }
    }

    /// The registration socket currently showing QR ref `reference`.
    ///
    /// The companion starts its QR timer when `pair-device` arrives, a little after the
    /// server started its own, so a ref stays acceptable for a short grace after the
    /// server moved on (a second, or half a ref's lifetime if that is shorter).
    pub fn socket_showing(&self, reference: &str, now: Instant) -> Option<SocketId> {
        let grace = (self.policy.next_qr_ttl / 2).min(Duration::from_secs(1));
        let earlier = now.checked_sub(grace).unwrap_or(now);
        self.sockets.iter().find_map(|(id, e)| match &e.role {
            Role::Registration(r) => [now, earlier]
                .into_iter()
                .filter_map(|t| r.ref_index(&self.policy, t))
                .any(|i| r.refs[i] == reference)
                .then_some(*id),
            _ => None,
        })
    }

    /// The most recent registration socket with a pairing-code request for `phone`.
    pub fn socket_linking(&self, phone: &str) -> Option<SocketId> {
        self.sockets.iter().rev().find_map(|(id, e)| match &e.role {
            Role::Registration(r) => r.link.as_ref().filter(|l| l.phone == phone).map(|_| *id),
            _ => None,
        })
    }

    /// The handshake finished: decide between registration and login. Returns what to send
    /// (pair-device, success or failure).
    pub fn on_client_payload(
        &mut self,
        id: SocketId,
        client: &ClientFinishInfo,
        now: Instant,
    ) -> Vec<Outbound> {
        let payload = match ClientPayload::decode(client.client_payload.as_slice()) {
            Ok(p) => p,
            Err(_) => {
                warn!(socket = id, "undecodable ClientPayload");
                self.socket_closed(id);
                return vec![Outbound::Close(Some(failure(400)))];
            }
        };
        if let Some(min) = self.policy.min_client_version {
            let version = payload
                .user_agent
                .as_ref()
                .and_then(|ua| ua.app_version.as_ref())
                .map(|v| {
                    [
                        v.primary.unwrap_or(0),
                        v.secondary.unwrap_or(0),
                        v.tertiary.unwrap_or(0),
                    ]
                })
                .unwrap_or([0, 0, 0]);
            if version < min {
                info!(socket = id, ?version, ?min, "client too old: failure 405");
                self.socket_closed(id);
                return vec![Outbound::Close(Some(failure(405)))];
            }
        }
        match (payload.username, payload.device) {
            (Some(user), device) => self.login(id, user, device.unwrap_or(0)),
            (None, _) => self.register(id, client, &payload, now),
        }
    }

    fn login(&mut self, id: SocketId, user: u64, device: u32) -> Vec<Outbound> {
        let jid = u16::try_from(device)
            .ok()
            .filter(|d| *d != 0)
            .map(|d| Jid::new(user.to_string(), Server::WhatsApp).with_device(d));
        let Some((jid, lid)) = jid.and_then(|jid| {
            let key = jid.to_string();
            self.devices.get(&key).map(|d| (key, d.lid.clone()))
        }) else {
            info!(
                socket = id,
                user, device, "login of an unknown device: failure 401"
            );
            self.socket_closed(id);
            return vec![Outbound::Close(Some(failure(401)))];
        };
        if let Some(entry) = self.sockets.get_mut(&id) {
            entry.role = Role::Device(jid.clone());
        }
        *self.counters.logins.entry(jid.clone()).or_default() += 1;
        // Both sockets are logged in at this instant: that is what the high-water mark
        // records, before the older one is told it was replaced (WhatsApp keeps one).
        let logged_in = self.sockets_of(&jid);
        self.counters.max_live_sockets_per_device = self
            .counters
            .max_live_sockets_per_device
            .max(logged_in.len());
        for older in logged_in.into_iter().filter(|s| *s != id) {
            let error = Node::new("stream:error")
                .children([Node::new("conflict").attr("type", "replaced")]);
            self.end_socket(older, Outbound::Close(Some(error)));
            self.counters.replaced_sent += 1;
            info!(device = %jid, socket = older, "older socket replaced");
        }
        info!(device = %jid, socket = id, "logged in");
        let mut out = vec![Outbound::Node(
            Node::new("success")
                .attr("t", unix_now().to_string())
                .attr("props", "1")
                .attr("lid", lid),
        )];
        out.extend(self.offline_delivery(&jid));
        out
    }

    fn register(
        &mut self,
        id: SocketId,
        client: &ClientFinishInfo,
        payload: &ClientPayload,
        now: Instant,
    ) -> Vec<Outbound> {
        let identity = payload
            .device_pairing_data
            .as_ref()
            .and_then(|d| d.e_ident.as_deref())
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        let Some(identity_public) = identity else {
            info!(
                socket = id,
                "registration without an identity key: failure 400"
            );
            self.socket_closed(id);
            return vec![Outbound::Close(Some(failure(400)))];
        };
        let refs: Vec<String> = (0..self.policy.qr_refs.max(1))
            .map(|_| {
                let mut raw = [0u8; 18];
                OsRng.fill_bytes(&mut raw);
                format!("2@{}", hex::encode(raw))
            })
            .collect();
        let node = Node::new("iq")
            .attr("from", server_jid())
            .attr("type", "set")
            .attr("id", self.next_iq_id())
            .children([Node::new("pair-device").children(
                refs.iter()
                    .map(|r| Node::new("ref").bytes(r.as_bytes().to_vec())),
            )]);
        if let Some(entry) = self.sockets.get_mut(&id) {
            entry.role = Role::Registration(Box::new(Registration {
                refs,
                started: now,
                noise_public: client.client_static,
                identity_public,
                link: None,
                pending: Vec::new(),
            }));
        }
        info!(socket = id, "registration socket: pair-device sent");
        vec![Outbound::Node(node)]
    }

    /// Handles one node from a socket after the handshake, then lets the phones handle
    /// what it delivered to them.
    pub fn on_node(&mut self, id: SocketId, node: Node) -> Vec<Outbound> {
        let out = self.handle_node(id, node);
        self.run_phones();
        out
    }

    fn handle_node(&mut self, id: SocketId, node: Node) -> Vec<Outbound> {
        if State::is_group_message(&node) {
            return self.group_message(id, node);
        }
        if State::is_group_receipt(&node) {
            return self.group_receipt(id, &node);
        }
        self.observe_group_ack(id, &node);
        match &*node.tag {
            "iq" => {}
            "message" => return self.on_message(id, &node),
            "receipt" => return self.on_receipt(id, &node),
            "ack" => return self.on_ack(id, &node),
            "presence" => return self.on_presence(id, &node),
            _ => {
                // ib (unified_session) and the like need no answer here.
                debug!(socket = id, tag = %node.tag, "stanza ignored");
                return Vec::new();
            }
        }
        let ty = node.attr_str("type").unwrap_or_default().to_owned();
        if ty == "result" || ty == "error" {
            self.deliver_reply(id, node);
            return Vec::new();
        }
        let xmlns = node.attr_str("xmlns").unwrap_or_default().to_owned();
        match (xmlns.as_str(), ty.as_str()) {
            ("w:p", "get") => vec![Outbound::Node(result_for(&node))],
            ("encrypt", "get") if node.child_by_tag("key").is_some() => {
                if self.device_of(id).is_none() {
                    return vec![Outbound::Node(error_for(&node, 401, "not-authorized"))];
                }
                self.bundle_fetch(id, &node)
            }
            ("encrypt", "get") => self.prekey_query(id, &node),
            ("usync", "get") => {
                if self.device_of(id).is_none() {
                    return vec![Outbound::Node(error_for(&node, 401, "not-authorized"))];
                }
                self.usync(id, &node)
            }
            ("encrypt", "set") => self.prekey_upload(id, &node),
            ("w:g2", _) => self.group_iq(id, &node),
            ("md", "set") if node.child_by_tag("link_code_companion_reg").is_some() => {
                self.link_code_stage(id, &node)
            }
            ("md", "set") if node.child_by_tag("remove-companion-device").is_some() => {
                self.remove_companion(id, &node)
            }
            _ => {
                debug!(socket = id, xmlns = %xmlns, "iq answered with an empty result");
                vec![Outbound::Node(result_for(&node))]
            }
        }
    }

    /// A companion's answer to a phone's stanza (`pair-success`).
    fn deliver_reply(&mut self, id: SocketId, node: Node) {
        let iq_id = node.attr_str("id").map(str::to_owned);
        let Some(reg) = self.registration(id) else {
            return;
        };
        let position = reg
            .pending
            .iter()
            .position(|p| p.iq_id.is_some() && p.iq_id == iq_id);
        if let Some(position) = position {
            let pending = reg.pending.remove(position);
            // The phone may have given up (timeout); then nobody is listening.
            let _ = pending.reply.send(node);
        }
    }

    pub(crate) fn device_of(&self, id: SocketId) -> Option<String> {
        match &self.sockets.get(&id)?.role {
            Role::Device(jid) => Some(jid.clone()),
            _ => None,
        }
    }

    fn prekey_query(&mut self, id: SocketId, node: &Node) -> Vec<Outbound> {
        let Some(device) = self.device_of(id) else {
            return vec![Outbound::Node(error_for(node, 401, "not-authorized"))];
        };
        if node.child_by_tag("digest").is_some() {
            return vec![Outbound::Node(self.digest(&device, node))];
        }
        if node.child_by_tag("count").is_none() {
            return vec![Outbound::Node(result_for(node))];
        }
        let count = self.devices.get(&device).map_or(0, |d| d.prekeys.len());
        vec![Outbound::Node(result_for(node).children([
            Node::new("count").attr("value", count.to_string()),
        ]))]
    }

    /// `<digest>`: the stored key bundle and prekey ids (no hash: nothing here checks it).
    fn digest(&self, device: &str, node: &Node) -> Node {
        let Some((record, bundle)) = self
            .devices
            .get(device)
            .and_then(|d| Some((d, d.bundle.as_ref()?)))
        else {
            return error_for(node, 404, "item-not-found");
        };
        let mut ids: Vec<u32> = record.prekeys.keys().copied().collect();
        ids.sort_unstable();
        let list = Node::new("list").children(
            ids.into_iter()
                .map(|i| Node::new("id").bytes(i.to_be_bytes()[1..].to_vec())),
        );
        let mut children = bundle.nodes();
        children.push(list);
        result_for(node).children([Node::new("digest").children(children)])
    }

    fn prekey_upload(&mut self, id: SocketId, node: &Node) -> Vec<Outbound> {
        let Some(device) = self.device_of(id) else {
            return vec![Outbound::Node(error_for(node, 401, "not-authorized"))];
        };
        let Some(list) = node.child_by_tag("list") else {
            return vec![Outbound::Node(error_for(node, 400, "bad-request"))];
        };
        let parsed = list
            .children_by_tag("key")
            .map(parse_prekey)
            .collect::<Result<Vec<_>, _>>()
            .and_then(|keys| Ok((keys, KeyBundle::parse(node)?)));
        let (keys, bundle) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                warn!(socket = id, %device, error = %e, "malformed prekey upload refused");
                return vec![Outbound::Node(error_for(node, 400, "bad-request"))];
            }
        };
        let Some(record) = self.devices.get_mut(&device) else {
            return vec![Outbound::Node(error_for(node, 401, "not-authorized"))];
        };
        let received = keys.len();
        record.prekeys.extend(keys);
        if record.prekeys.len() >= LOW_PREKEYS {
            record.low_prekeys_notified = false;
        }
        if bundle.is_some() {
            record.bundle = bundle;
        }
        *self
            .counters
            .prekey_uploads
            .entry(device.clone())
            .or_insert(0) += 1;
        info!(%device, received, stored = record.prekeys.len(), "prekeys uploaded");
        vec![Outbound::Node(result_for(node))]
    }

    /// `<remove-companion-device jid reason>` from a logged-in companion (its logout): the
    /// device is removed as a phone-side unlink removes it (its other sockets get `401
    /// device_removed`, later logins fail 401), and this socket gets the result iq and is
    /// closed. A companion may only remove itself.
    fn remove_companion(&mut self, id: SocketId, node: &Node) -> Vec<Outbound> {
        let Some(device) = self.device_of(id) else {
            return vec![Outbound::Node(error_for(node, 401, "not-authorized"))];
        };
        let target =
            node.child_by_tag("remove-companion-device")
                .and_then(|r| match r.get_attr("jid")? {
                    AttrValue::Jid(j) => Some(j.to_string()),
                    AttrValue::Str(s) => s.parse::<Jid>().ok().map(|j| j.to_string()),
                });
        let Some(target) = target else {
            return vec![Outbound::Node(error_for(node, 400, "bad-request"))];
        };
        if target != device {
            warn!(socket = id, %device, %target, "companion tried to remove another device: 403");
            return vec![Outbound::Node(error_for(node, 403, "forbidden"))];
        }
        if self.remove_device(&device, Some(id)).is_err() {
            return vec![Outbound::Node(error_for(node, 404, "item-not-found"))];
        }
        // Out of the live set now; the connection task closes it after the result.
        self.socket_closed(id);
        info!(%device, socket = id, "companion logged out");
        vec![Outbound::Close(Some(result_for(node)))]
    }

    fn link_code_stage(&mut self, id: SocketId, node: &Node) -> Vec<Outbound> {
        let Some(reg) = node.child_by_tag("link_code_companion_reg") else {
            return vec![Outbound::Node(error_for(node, 400, "bad-request"))];
        };
        match reg.attr_str("stage") {
            Some("companion_hello") => self.companion_hello(id, node, reg),
            Some("companion_finish") => {
                let Some(registration) = self.registration(id) else {
                    return vec![Outbound::Node(error_for(node, 400, "bad-request"))];
                };
                let position = registration.pending.iter().position(|p| p.iq_id.is_none());
                match position {
                    Some(position) => {
                        let pending = registration.pending.remove(position);
                        let _ = pending.reply.send(node.clone());
                        vec![Outbound::Node(result_for(node))]
                    }
                    None => vec![Outbound::Node(error_for(node, 400, "bad-request"))],
                }
            }
            _ => vec![Outbound::Node(error_for(node, 400, "bad-request"))],
        }
    }

    fn companion_hello(&mut self, id: SocketId, node: &Node, reg: &Node) -> Vec<Outbound> {
        let shown = text_of(reg.child_by_tag("companion_platform_display")).unwrap_or_default();
        if !valid_platform_display(&shown) {
            info!(socket = id, platform = %shown, "companion_hello with a bad platform display: 400");
            return vec![Outbound::Node(error_for(node, 400, "bad-request"))];
        }
        let phone = match reg.get_attr("jid") {
            Some(AttrValue::Jid(j)) => Some(j.user.clone()),
            Some(AttrValue::Str(s)) => s.parse::<Jid>().ok().map(|j| j.user),
            None => None,
        };
        let Some(phone) = phone.filter(|p| self.phones.contains_key(p)) else {
            return vec![Outbound::Node(error_for(node, 404, "item-not-found"))];
        };
        let wrapped =
            bytes_of(reg.child_by_tag("link_code_pairing_wrapped_companion_ephemeral_pub"))
                .filter(|b| b.len() == wafleet_protocol::pairing_code::WRAPPED_EPHEMERAL_LEN);
        let Some(wrapped) = wrapped else {
            return vec![Outbound::Node(error_for(node, 400, "bad-request"))];
        };
        let mut raw = [0u8; 16];
        OsRng.fill_bytes(&mut raw);
        let reference = hex::encode(raw);
        let Some(registration) = self.registration(id) else {
            return vec![Outbound::Node(error_for(node, 400, "bad-request"))];
        };
        registration.link = Some(LinkRequest {
            phone,
            wrapped_companion_ephemeral: wrapped,
            reference: reference.clone(),
        });
        info!(socket = id, "pairing-code request registered");
        vec![Outbound::Node(
            result_for(node).children([Node::new("link_code_companion_reg")
                .children([Node::new("link_code_pairing_ref").bytes(reference.into_bytes())])]),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            first_qr_ttl: Duration::from_secs(60),
            next_qr_ttl: Duration::from_secs(20),
            qr_refs: 6,
            min_client_version: Some([2, 3000, 1]),
        }
    }

    fn payload(p: &ClientPayload) -> ClientFinishInfo {
        ClientFinishInfo {
            client_static: [7; 32],
            client_payload: p.encode_to_vec(),
            handshake_hash: [0; 32],
        }
    }

    fn with_version(mut p: ClientPayload, v: [u32; 3]) -> ClientPayload {
        use wafleet_protocol::proto::client_payload::{user_agent, UserAgent};
        p.user_agent = Some(UserAgent {
            app_version: Some(user_agent::AppVersion {
                primary: Some(v[0]),
                secondary: Some(v[1]),
                tertiary: Some(v[2]),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    }

    fn registration_payload() -> ClientPayload {
        with_version(
            ClientPayload {
                device_pairing_data: Some(
                    wafleet_protocol::proto::client_payload::DevicePairingRegistrationData {
                        e_ident: Some(vec![9; 32]),
                        ..Default::default()
                    },
                ),
                ..Default::default()
            },
            [2, 3000, 5],
        )
    }

    fn socket(state: &mut State) -> (SocketId, mpsc::UnboundedReceiver<Outbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (state.open_socket(tx), rx)
    }

    fn node_of(out: &[Outbound]) -> &Node {
        match out {
            [Outbound::Node(n)] | [Outbound::Close(Some(n))] => n,
            other => panic!("expected one node, got {other:?}"),
        }
    }

    #[test]
    fn registration_gets_refs_that_rotate_and_expire() {
        let mut state = State::new(policy());
        let (id, _rx) = socket(&mut state);
        let t0 = Instant::now();
        let out = state.on_client_payload(id, &payload(&registration_payload()), t0);
        let pair_device = node_of(&out);
        let refs: Vec<String> = pair_device
            .child_by_tag("pair-device")
            .expect("pair-device")
            .children_by_tag("ref")
            .map(|r| text_of(Some(r)).expect("ref text"))
            .collect();
        assert_eq!(refs.len(), 6);
        assert_eq!(pair_device.attr_str("type"), Some("set"));
        assert_eq!(state.socket_showing(&refs[0], t0), Some(id));
        assert_eq!(state.socket_showing(&refs[1], t0), None);
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(state.socket_showing(&refs[0], t1), None);
        assert_eq!(state.socket_showing(&refs[1], t1), Some(id));
        let t5 = t0 + Duration::from_secs(60 + 4 * 20 + 1);
        assert_eq!(state.socket_showing(&refs[5], t5), Some(id));
        let end = t0 + Duration::from_secs(160);
        let policy = state.policy.clone();
        assert_eq!(
            state.registration(id).map(|r| r.expires_at(&policy)),
            Some(end)
        );
        // A short grace covers the companion's later start of its timer.
        assert_eq!(
            state.socket_showing(&refs[5], end + Duration::from_millis(500)),
            Some(id)
        );
        assert_eq!(
            state.socket_showing(&refs[4], t0 + Duration::from_millis(140_900)),
            Some(id)
        );
        assert_eq!(
            state.socket_showing(&refs[5], end + Duration::from_millis(1001)),
            None
        );
        assert_eq!(
            state.socket_showing(&refs[4], t0 + Duration::from_millis(141_001)),
            None
        );
    }

    #[test]
    fn old_client_gets_405_and_unknown_device_401() {
        let mut state = State::new(policy());
        let (id, _rx) = socket(&mut state);
        let old = with_version(registration_payload(), [2, 2999, 9]);
        let out = state.on_client_payload(id, &payload(&old), Instant::now());
        assert!(
            matches!(&out[..], [Outbound::Close(Some(n))] if n.tag == "failure" && n.attr_str("reason") == Some("405"))
        );

        let (id, _rx) = socket(&mut state);
        let login = with_version(
            ClientPayload {
                username: Some(15551234567),
                device: Some(3),
                ..Default::default()
            },
            [2, 3000, 1],
        );
        let out = state.on_client_payload(id, &payload(&login), Instant::now());
        assert!(
            matches!(&out[..], [Outbound::Close(Some(n))] if n.tag == "failure" && n.attr_str("reason") == Some("401"))
        );
        assert!(state.sockets.is_empty());
    }

    fn linked(state: &mut State) -> String {
        state.add_phone("15551234567").expect("phone");
        let jid = "15551234567:1@s.whatsapp.net".to_owned();
        state.devices.insert(
            jid.clone(),
            Device::new(Jid::new("123", Server::Lid).with_device(1)),
        );
        jid
    }

    /// A login of 15551234567:`device` on a new socket: the socket and what the server sent.
    fn try_login(
        state: &mut State,
        device: u32,
    ) -> (SocketId, mpsc::UnboundedReceiver<Outbound>, Vec<Outbound>) {
        let (id, rx) = socket(state);
        let p = with_version(
            ClientPayload {
                username: Some(15551234567),
                device: Some(device),
                ..Default::default()
            },
            [2, 3000, 1],
        );
        let out = state.on_client_payload(id, &payload(&p), Instant::now());
        (id, rx, out)
    }

    fn login(state: &mut State) -> (SocketId, mpsc::UnboundedReceiver<Outbound>) {
        let (id, rx, out) = try_login(state, 1);
        match &out[..] {
            [Outbound::Node(success), Outbound::Node(offline)] => {
                assert_eq!(success.tag, "success");
                assert_eq!(offline.tag, "ib", "the (empty) offline queue follows");
            }
            other => panic!("expected success and ib/offline, got {other:?}"),
        }
        (id, rx)
    }

    #[test]
    fn second_login_replaces_the_first_and_prekeys_are_counted() {
        let mut state = State::new(policy());
        let jid = linked(&mut state);
        let (first, mut first_rx) = login(&mut state);
        let (second, _rx) = login(&mut state);
        match first_rx.try_recv() {
            Ok(Outbound::Close(Some(n))) => {
                assert_eq!(n.tag, "stream:error");
                assert_eq!(
                    n.child_by_tag("conflict").and_then(|c| c.attr_str("type")),
                    Some("replaced")
                );
            }
            other => panic!("older socket not replaced: {other:?}"),
        }
        assert!(!state.sockets.contains_key(&first));
        let c = state.counters();
        assert_eq!(c.replaced_sent, 1);
        assert_eq!(c.live_sockets.get(&jid), Some(&1));
        assert_eq!(c.max_live_sockets_per_device, 2);

        let upload = Node::new("iq")
            .attr("id", "u1")
            .attr("xmlns", "encrypt")
            .attr("type", "set")
            .children([
                Node::new("registration").bytes(vec![0, 0, 0, 1]),
                Node::new("type").bytes(vec![5]),
                Node::new("identity").bytes(vec![7; 32]),
                Node::new("skey").children([
                    Node::new("id").bytes(vec![0, 0, 1]),
                    Node::new("value").bytes(vec![8; 32]),
                    Node::new("signature").bytes(vec![9; 64]),
                ]),
                Node::new("list").children((1u32..=3).map(|i| {
                    Node::new("key").children([
                        Node::new("id").bytes(i.to_be_bytes()[1..].to_vec()),
                        Node::new("value").bytes(vec![i as u8; 32]),
                    ])
                })),
            ]);
        let out = state.on_node(second, upload);
        assert_eq!(node_of(&out).attr_str("type"), Some("result"));
        let count = Node::new("iq")
            .attr("id", "c1")
            .attr("xmlns", "encrypt")
            .attr("type", "get")
            .children([Node::new("count")]);
        let out = state.on_node(second, count.clone());
        assert_eq!(
            node_of(&out)
                .child_by_tag("count")
                .and_then(|c| c.attr_str("value")),
            Some("3")
        );
        let digest = Node::new("iq")
            .attr("id", "d1")
            .attr("xmlns", "encrypt")
            .attr("type", "get")
            .children([Node::new("digest")]);
        let out = state.on_node(second, digest);
        let ids = node_of(&out)
            .child_by_tag("digest")
            .and_then(|d| d.child_by_tag("list"))
            .map(|l| l.child_nodes().len());
        assert_eq!(ids, Some(3));
        // A malformed upload (short value) stores nothing.
        let bad = Node::new("iq")
            .attr("id", "u2")
            .attr("xmlns", "encrypt")
            .attr("type", "set")
            .children([Node::new("list").children([Node::new("key").children([
                Node::new("id").bytes(vec![0, 0, 9]),
                Node::new("value").bytes(vec![1; 31]),
            ])])]);
        let out = state.on_node(second, bad);
        assert_eq!(node_of(&out).attr_str("type"), Some("error"));
        let c = state.counters();
        assert_eq!(c.prekeys_stored.get(&jid), Some(&3));
        assert_eq!(c.prekey_uploads.get(&jid), Some(&1));
    }

    #[test]
    fn unlink_sends_device_removed_and_forgets_the_device() {
        let mut state = State::new(policy());
        let jid = linked(&mut state);
        let (_id, mut rx) = login(&mut state);
        assert_eq!(state.unlink(&jid).expect("linked"), 1);
        match rx.try_recv() {
            Ok(Outbound::Close(Some(n))) => {
                assert_eq!(n.attr_str("code"), Some("401"));
                assert_eq!(
                    n.child_by_tag("conflict").and_then(|c| c.attr_str("type")),
                    Some("device_removed")
                );
            }
            other => panic!("no device_removed: {other:?}"),
        }
        assert!(matches!(
            state.unlink(&jid),
            Err(SimError::UnknownDevice(_))
        ));
        let (_id, _rx, out) = try_login(&mut state, 1);
        assert_eq!(node_of(&out).attr_str("reason"), Some("401"));
    }

    fn remove_companion(jid: &str) -> Node {
        Node::new("iq")
            .attr("id", "rm1")
            .attr("xmlns", "md")
            .attr("type", "set")
            .children([Node::new("remove-companion-device")
                .attr("jid", jid.parse::<Jid>().expect("jid"))
                .attr("reason", "user_initiated")])
    }

    #[test]
    fn companion_logout_removes_the_device_like_an_unlink() {
        let mut state = State::new(policy());
        let jid = linked(&mut state);
        let (id, _rx) = login(&mut state);
        state.counters.prekey_uploads.insert(jid.clone(), 1);
        assert_eq!(state.devices_of("15551234567"), vec![jid.clone()]);
        assert_eq!(state.counters().live_sockets.get(&jid), Some(&1));

        // Another device's JID is refused and changes nothing.
        let out = state.on_node(id, remove_companion("15551234567:9@s.whatsapp.net"));
        assert_eq!(node_of(&out).attr_str("type"), Some("error"));
        assert_eq!(
            node_of(&out)
                .child_by_tag("error")
                .and_then(|e| e.attr_str("code")),
            Some("403")
        );
        assert_eq!(state.devices_of("15551234567"), vec![jid.clone()]);

        let out = state.on_node(id, remove_companion(&jid));
        match &out[..] {
            [Outbound::Close(Some(n))] => {
                assert_eq!(n.attr_str("type"), Some("result"));
                assert_eq!(n.attr_str("id"), Some("rm1"));
            }
            other => panic!("expected the result and a close, got {other:?}"),
        }
        assert!(state.devices_of("15551234567").is_empty());
        assert!(!state.sockets.contains_key(&id));
        let c = state.counters();
        assert!(c.live_sockets.is_empty(), "{c:?}");
        assert!(c.prekey_uploads.is_empty());
        assert!(c.prekeys_stored.is_empty());
        assert_eq!(c.replaced_sent, 0);
        // Later logins with that identity fail 401.
        let (_again, _rx, out) = try_login(&mut state, 1);
        assert_eq!(node_of(&out).attr_str("reason"), Some("401"));
        assert!(matches!(
            state.unlink(&jid),
            Err(SimError::UnknownDevice(_))
        ));
    }

    #[test]
    fn remove_companion_device_needs_a_logged_in_socket() {
        let mut state = State::new(policy());
        let jid = linked(&mut state);
        let (id, _rx) = socket(&mut state);
        state.on_client_payload(id, &payload(&registration_payload()), Instant::now());
        let out = state.on_node(id, remove_companion(&jid));
        assert_eq!(
            node_of(&out)
                .child_by_tag("error")
                .and_then(|e| e.attr_str("code")),
            Some("401")
        );
        assert_eq!(state.devices_of("15551234567"), vec![jid]);
        assert!(state.sockets.contains_key(&id));
    }

    #[test]
    fn platform_display_must_be_browser_and_os() {
        assert!(valid_platform_display("Chrome (Linux)"));
        assert!(valid_platform_display("Chrome (Mac OS)"));
        assert!(!valid_platform_display("Chrome"));
        assert!(!valid_platform_display("Chrome ()"));
        assert!(!valid_platform_display(" (Linux)"));
        assert!(!valid_platform_display("Chrome (Linux) x"));
    }

    #[test]
    fn companion_hello_with_bad_display_is_refused_with_400() {
        let mut state = State::new(policy());
        state.add_phone("15551234567").expect("phone");
        let (id, _rx) = socket(&mut state);
        state.on_client_payload(id, &payload(&registration_payload()), Instant::now());
        let hello = |display: &'static str| {
            Node::new("iq")
                .attr("id", "h1")
                .attr("xmlns", "md")
                .attr("type", "set")
                .children([Node::new("link_code_companion_reg")
                    .attr("jid", Jid::new("15551234567", Server::WhatsApp))
                    .attr("stage", "companion_hello")
                    .children([
                        Node::new("link_code_pairing_wrapped_companion_ephemeral_pub")
                            .bytes(vec![1; 80]),
                        Node::new("companion_platform_display").text(display),
                    ])])
        };
        let out = state.on_node(id, hello("Chrome"));
        let error = node_of(&out).child_by_tag("error").expect("error child");
        assert_eq!(error.attr_str("code"), Some("400"));
        assert!(state.socket_linking("15551234567").is_none());
        let out = state.on_node(id, hello("Chrome (Linux)"));
        let reference = node_of(&out)
            .child_by_tag("link_code_companion_reg")
            .and_then(|r| text_of(r.child_by_tag("link_code_pairing_ref")));
        assert!(reference.is_some());
        assert_eq!(state.socket_linking("15551234567"), Some(id));
    }

    #[test]
    fn bundle_fetch_and_usync_need_a_logged_in_socket() {
        let mut state = State::new(policy());
        linked(&mut state);
        let (id, _rx) = socket(&mut state);
        let user = || Node::new("user").attr("jid", "15551234567:1@s.whatsapp.net");
        let fetch = Node::new("iq")
            .attr("id", "k1")
            .attr("xmlns", "encrypt")
            .attr("type", "get")
            .children([Node::new("key").children([user()])]);
        let usync = Node::new("iq")
            .attr("id", "s1")
            .attr("xmlns", "usync")
            .attr("type", "get")
            .children([Node::new("usync").children([
                Node::new("query").children([Node::new("devices").attr("version", "2")]),
                Node::new("list").children([user()]),
            ])]);
        for request in [fetch, usync] {
            let out = state.on_node(id, request);
            let reply = node_of(&out);
            assert_eq!(reply.attr_str("type"), Some("error"));
            assert_eq!(
                reply.child_by_tag("error").and_then(|e| e.attr_str("code")),
                Some("401")
            );
        }
    }
}
