//! Sans-IO companion messaging on top of `wafleet-protocol` (nodes, JIDs, message content)
//! and `wafleet-signal` (X3DH, the double ratchet, sender keys, padding).
//!
//! A [`Messenger`] lives for one connection and holds no persistent state: everything that
//! must survive a restart is in the caller's [`SignalState`] and one-time prekeys, lent for
//! each call as [`Keys`]. Like the protocol [`Session`](wafleet_protocol::client::Session)
//! it takes nodes, the time (ms) and randomness in, and gives nodes
//! ([`Messenger::poll_transmit`]) and events ([`Messenger::poll_event`]) out.
//!
//! # Durability contract
//!
//! The driver drains **all** events before **any** transmit. On
//! [`MessengerEvent::StateChanged`] it persists the `SignalState` and the prekeys; only then
//! may the transmits queued so far leave. So a ciphertext leaves only after the ratchet
//! state that produced it is saved, and an inbound message is acked only after the state
//! its decryption changed is saved. Beyond that, the `<ack>` and delivery `<receipt>` of an
//! inbound message are queued only when the driver calls [`Messenger::delivered`] (the
//! message is durable downstream). A redelivery of a message already decrypted (same
//! sender and id, kept in the state's recent-message cache) re-emits the same message; it
//! is never reported undecryptable.
//!
//! One module per concern:
//! - `stanza`: reading `<message>` (attributes, `<enc>` parts, chat/sender/from_me).
//! - `inbound`: decrypting and decoding an inbound message; redelivery; failures.
//! - `receipt`: acks, delivery and retry receipts; reading peers' receipts.
//! - `outbound`: sends: device lists, sessions from bundles, per-device fan-out, resends.
//! - `group`: group metadata and the sender-key parts of a group send.
//! - `usync`: the usync and prekey-bundle queries.
//! - `wire`: device-sent and sender-key-distribution wrappers, the participant hash.
//! - `state`: [`SignalState`], [`Keys`] and the Signal store adapters.

#![warn(missing_docs)]

mod error;
mod event;
pub mod group;
mod inbound;
mod outbound;
pub mod receipt;
pub mod stanza;
mod state;
pub mod usync;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};

use rand_core::CryptoRngCore;
use wafleet_protocol::binary::Node;
use wafleet_protocol::jid::Jid;

pub use error::{SendError, UndecryptableReason};
pub use event::{
    InboundKey, InboundMessage, MessengerEvent, Outgoing, Receipt, ReceiptKind, SkipReason,
    SkippedDevice, Undecryptable,
};
pub use state::{
    DeviceList, Keys, SendReference, SignalState, StateChanges, RECENT_INBOUND, RECENT_OUTBOUND,
};

use outbound::{Job, PendingIq};
use stanza::Own;

/// Prefix of the iq ids the messenger issues; results with other ids are not its own.
pub const IQ_PREFIX: &str = "m.";

/// Retry counters kept per connection (retry receipts sent, resends done) before they
/// are forgotten.
pub const RETRY_MEMORY: usize = 10_000;

/// Tunables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessengerConfig {
    /// How long a send may take, queries and server ack included.
    pub send_timeout_ms: u64,
    /// How long a usync device list is used before it is fetched again.
    pub device_cache_ttl_ms: u64,
    /// Retry receipts we send for one message before giving up on it.
    pub max_retry_receipts: u32,
    /// Retry receipts we answer (resends) per message and device.
    pub max_resends: u32,
}

impl Default for MessengerConfig {
    fn default() -> Self {
        MessengerConfig {
            send_timeout_ms: 30_000,
            device_cache_ttl_ms: 5 * 60_000,
            max_retry_receipts: 5,
            max_resends: 5,
        }
    }
}

/// How [`Messenger::send_referenced`] took a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendStart {
    /// A new message with this id.
    New(String),
    /// The reference's earlier message, sent again with its id.
    Repeated(String),
    /// The reference's earlier message, still in flight on this connection.
    InFlight(String),
}

impl SendStart {
    /// The message id.
    pub fn id(&self) -> &str {
        match self {
            SendStart::New(id) | SendStart::Repeated(id) | SendStart::InFlight(id) => id,
        }
    }
}

/// Companion messaging for one connection. See the crate docs.
#[derive(Debug)]
pub struct Messenger {
    own: Own,
    config: MessengerConfig,
    transmits: VecDeque<Node>,
    events: VecDeque<MessengerEvent>,
    next_iq: u64,
    /// iq id → what it is for.
    iqs: HashMap<String, PendingIq>,
    /// Sends and resends in flight, by job key.
    jobs: BTreeMap<String, Job>,
    /// Inbound stanzas waiting for [`Messenger::delivered`]: the ack and receipt to queue.
    awaiting_delivery: HashMap<InboundKey, Vec<Node>>,
    /// Retry receipts sent, by (message id, sending device).
    retries_sent: HashMap<(String, String), u32>,
    /// Resends done, by (message id, device).
    resends: HashMap<(String, String), u32>,
}

impl Messenger {
    /// A messenger for our device JID (`user:device@s.whatsapp.net`) and our LID.
    pub fn new(own: Jid, lid: Option<Jid>) -> Messenger {
        Messenger::with_config(own, lid, MessengerConfig::default())
    }

    /// [`Messenger::new`] with tunables.
    pub fn with_config(own: Jid, lid: Option<Jid>, config: MessengerConfig) -> Messenger {
        Messenger {
            own: Own { jid: own, lid },
            config,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_iq: 1,
            iqs: HashMap::new(),
            jobs: BTreeMap::new(),
            awaiting_delivery: HashMap::new(),
            retries_sent: HashMap::new(),
            resends: HashMap::new(),
        }
    }

    /// Our device JID.
    pub fn own_jid(&self) -> &Jid {
        &self.own.jid
    }

    /// Handles a server node. Takes `<message>`, `<receipt>`, `<ack class=message>` for
    /// messages it sent and `<iq>` results for queries it issued (ids prefixed
    /// [`IQ_PREFIX`]); anything else is handed back for the protocol session (a
    /// `<notification>` after the messenger looked at it, see `observe_notification`).
    pub fn handle_node(
        &mut self,
        node: Node,
        keys: &mut Keys<'_>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Option<Node> {
        match &*node.tag {
            "message" => {
                self.handle_message(&node, keys, rng);
                None
            }
            "receipt" => {
                self.handle_receipt(&node, keys, now_ms, rng);
                None
            }
            "ack" if node.attr_str("class") == Some("message") => self.handle_ack(node),
            "iq" => {
                let id = node.attr_str("id").unwrap_or_default();
                if self.iqs.contains_key(id) {
                    self.handle_iq_result(&node, keys, now_ms, rng);
                    None
                } else {
                    Some(node)
                }
            }
            "notification" => {
                self.observe_notification(&node, keys);
                Some(node)
            }
            _ => Some(node),
        }
    }

    /// Notifications stay with the protocol session (it acks them); two of them change
    /// what the messenger keeps: `type=devices` (a user's device list changed: its cached
    /// list is dropped) and `type=w:gp2` with `<remove>`/`<leave>` (someone left a group:
    /// our sender key for it is rotated, so the next message gets a new one that only the
    /// remaining members receive).
    fn observe_notification(&mut self, node: &Node, keys: &mut Keys<'_>) {
        let Ok(Some(from)) = stanza::jid_attr(node, "from") else {
            return;
        };
        let changed = match node.attr_str("type") {
            Some("devices") if from.is_user() => keys
                .signal
                .remove_device_list(&from.to_non_ad().to_string()),
            Some("w:gp2") if from.is_group() => {
                let left = node
                    .child_nodes()
                    .iter()
                    .any(|c| c.tag == "remove" || c.tag == "leave");
                left && group::rotate_sender_key(keys, &from, &self.own.jid)
            }
            _ => false,
        };
        if changed {
            self.events.push_back(MessengerEvent::StateChanged);
        }
    }

    /// The connection is gone: every send still waiting fails with
    /// [`SendError::Disconnected`] (a resend to a device is dropped). Inbound messages not
    /// yet [`delivered`](Messenger::delivered) are forgotten: the server delivers them again.
    pub fn shutdown(&mut self) {
        let keys: Vec<String> = self.jobs.keys().cloned().collect();
        for key in keys {
            self.fail_job(&key, SendError::Disconnected);
        }
        self.awaiting_delivery.clear();
        self.transmits.clear();
    }

    /// Starts a send to a user (all its devices, and our other devices with a device-sent
    /// copy) or a group. Returns the message id (WhatsApp's `3EB0…` format) at once;
    /// [`MessengerEvent::Sent`] or [`MessengerEvent::SendFailed`] follows.
    pub fn send(
        &mut self,
        to: Jid,
        content: Outgoing,
        keys: &mut Keys<'_>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<String, SendError> {
        self.start_send(to, content, None, keys, now_ms, rng)
    }

    /// [`Messenger::send`] under the caller's `reference` (a command id and a digest of the
    /// request). A reference seen before among the recent sends
    /// ([`RECENT_OUTBOUND`], persisted) is not a new message:
    /// - with another digest it is refused ([`SendError::ReferenceReused`]);
    /// - while its send is in flight, its id is returned ([`SendStart::InFlight`]): the
    ///   `Sent` / `SendFailed` of that send answers both;
    /// - else the same message is sent again with the same id ([`SendStart::Repeated`]):
    ///   the first try may or may not have reached the server (a restart cut it short),
    ///   and recipients keep one message per id. Its `Sent` / `SendFailed` follows.
    pub fn send_referenced(
        &mut self,
        to: Jid,
        content: Outgoing,
        reference: SendReference,
        keys: &mut Keys<'_>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<SendStart, SendError> {
        if let Some(recent) = keys.signal.find_outbound_by_reference(&reference.key) {
            if recent.reference.as_ref() != Some(&reference) {
                return Err(SendError::ReferenceReused(reference.key));
            }
            let recent = recent.clone();
            if self.jobs.contains_key(&recent.id) {
                return Ok(SendStart::InFlight(recent.id));
            }
            let id = self.start_repeat(recent, keys, now_ms, rng)?;
            return Ok(SendStart::Repeated(id));
        }
        self.start_send(to, content, Some(reference), keys, now_ms, rng)
            .map(SendStart::New)
    }

    /// The driver made this inbound message (or undecryptable event) durable downstream:
    /// queue its `<ack>` and delivery `<receipt>`. Unknown keys are ignored.
    pub fn delivered(&mut self, key: &InboundKey) {
        if let Some(nodes) = self.awaiting_delivery.remove(key) {
            self.transmits.extend(nodes);
        }
    }

    /// The next node to send (after draining the events, see the crate docs).
    pub fn poll_transmit(&mut self) -> Option<Node> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<MessengerEvent> {
        self.events.pop_front()
    }

    /// When [`Messenger::handle_timeout`] should be called next (ms), if anything waits.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.jobs.values().map(|j| j.deadline).min()
    }

    /// Fails the sends whose deadline passed.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let expired: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.deadline <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.fail_job(&key, SendError::Timeout);
        }
    }

    /// Number of inbound stanzas waiting for [`Messenger::delivered`].
    pub fn awaiting_delivery(&self) -> usize {
        self.awaiting_delivery.len()
    }

    fn next_iq_id(&mut self) -> String {
        let id = format!("{IQ_PREFIX}{}", self.next_iq);
        self.next_iq += 1;
        id
    }
}
