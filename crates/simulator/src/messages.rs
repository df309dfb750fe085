//! The simulator as a message server: `<message>` routing, per-device offline queues,
//! receipts and the low-prekey notification.
//!
//! Node shapes, as WhatsApp sends them and Baileys 7 reads them (`messages-send.js`
//! `relayMessage`, `messages-recv.js` `handleMessage`/`handleReceipt`,
//! `decode-wa-message.js`):
//!
//! - A companion sends `<message to=<user> id type><participants><to jid=<device>><enc
//!   v type/></to>…</participants>[<device-identity/>]</message>` (or one `<enc>` directly,
//!   for one device: `to` is then that device). Each addressed device that belongs to the
//!   destination user or to the sender's own account (not the sending device) gets
//!   `<message from=<sender device> id t type [category] [recipient] [notify]
//!   sender_lid|sender_pn><enc/>[<device-identity/>]</message>` in the addressing the sender
//!   used (`to` a phone-number user: `from` is the sender's phone-number device and
//!   `sender_lid` its LID; `to` a LID: the other way round). Copies for the sender's own
//!   devices carry `recipient=<to>` (Baileys reads them as `fromMe` in that chat).
//!   `device-identity` goes along with `pkmsg` encs only. Other addressed JIDs are ignored
//!   and counted as refused. The sender gets `<ack class=message id from=<to> t>`, with the
//!   server's `phash` when the sender's `phash` names other devices.
//! - Every stanza for a device ([`State::deliver`]) stays in that device's queue, in order,
//!   until the device acknowledges it: a message by `<ack class=message>` or by any
//!   `<receipt>` for its id (a delivery receipt is Baileys' only acknowledgement of a
//!   message it decrypted), a receipt or notification by `<ack class=receipt|notification>`.
//!   A logged-in device gets it at once; at each login the whole queue is sent again
//!   (`offline="1"`), then `<ib><offline count=N/>`.
//! - A `<receipt id to [type] [recipient]><list><item id/>…</list>` is routed to the device
//!   that sent message `id` (the server remembers), falling back to the `to` device, as
//!   `<receipt from=<receipt sender's user> participant=<its device> id t [type]
//!   [recipient]>` with the same children (`list`, a retry's `retry`/`registration`/`keys`),
//!   and answered with `<ack class=receipt id>`. (Baileys finds the message a retry receipt
//!   asks for by that `from` and resends it to `participant` alone.)
//! - Phones (device 0) are always online: what is delivered to a phone lands in its inbox
//!   (`Simulator::phone_inbox`), already acknowledged.

use std::collections::{HashMap, VecDeque};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};
use wafleet_protocol::binary::{AttrValue, Node};
use wafleet_protocol::jid::{Jid, Server};

use crate::state::{server_jid, unix_now, Outbound, SocketId, State};

/// Stanzas kept per device until it acknowledges them; the oldest is dropped beyond this.
pub const QUEUE_LIMIT: usize = 20_000;
/// Stanzas kept in a phone's inbox; the oldest is dropped beyond this.
pub const INBOX_LIMIT: usize = 20_000;
/// Message ids whose sender the server remembers (for routing receipts).
pub(crate) const SENT_MEMORY: usize = 100_000;
/// Below this many one-time prekeys the server tells a companion to upload more
/// (Baileys' and whatsmeow's `MIN_PREKEY_COUNT`, 5).
pub const LOW_PREKEYS: usize = 5;

/// One device of one account, whatever the addressing it was named in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DeviceRef {
    /// The account's phone number (E.164 digits).
    pub phone: String,
    /// 0 for the phone, the companion's device id otherwise.
    pub device: u16,
}

impl DeviceRef {
    /// The key of a companion in [`State::devices`] (`<phone>:<device>@s.whatsapp.net`).
    pub fn key(&self) -> String {
        self.pn().to_string()
    }

    /// The phone-number device JID (no `:0` for the phone).
    pub fn pn(&self) -> Jid {
        with_device(Jid::new(self.phone.clone(), Server::WhatsApp), self.device)
    }
}

fn with_device(jid: Jid, device: u16) -> Jid {
    if device == 0 {
        jid
    } else {
        jid.with_device(device)
    }
}

/// A stanza waiting in a device's queue for the device's acknowledgement.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    /// `message`, `receipt` or `notification`: the `class` of the ack that removes it.
    class: String,
    id: String,
    from: Option<Jid>,
    kind: Option<String>,
    node: Node,
}

impl Queued {
    fn of(node: Node) -> Queued {
        Queued {
            class: node.tag.to_string(),
            id: node.attr_str("id").unwrap_or_default().to_owned(),
            from: attr_jid(&node, "from"),
            kind: node.attr_str("type").map(str::to_owned),
            node,
        }
    }
}

/// Who sent a message id, to route its receipts.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    sender: DeviceRef,
    /// The message was LID-addressed (`to` a `@lid` user).
    lid: bool,
}

/// The message server's state inside [`State`].
#[derive(Default)]
pub(crate) struct Messaging {
    /// Per companion device (key as in [`State::devices`]): stanzas not acknowledged yet.
    pub queues: HashMap<String, VecDeque<Queued>>,
    sent: HashMap<String, Sent>,
    sent_order: VecDeque<String>,
    pub counters: MessageCounters,
}

/// Message counters, reported in [`crate::Counters`].
#[derive(Debug, Clone, Default)]
pub(crate) struct MessageCounters {
    pub messages_routed: u64,
    pub messages_queued: u64,
    pub messages_acked: u64,
    pub messages_refused: u64,
    pub receipts_routed: u64,
    pub receipts_acked: u64,
    pub queue_dropped: u64,
    pub redelivered: u64,
    pub prekey_low_sent: u64,
    pub encs_routed: HashMap<String, u64>,
}

impl Messaging {
    fn remember(&mut self, id: &str, sent: Sent) {
        if self.sent.insert(id.to_owned(), sent).is_none() {
            self.sent_order.push_back(id.to_owned());
            while self.sent_order.len() > SENT_MEMORY {
                if let Some(old) = self.sent_order.pop_front() {
                    self.sent.remove(&old);
                }
            }
        }
    }
}

/// An attribute as a JID, whether it came as a JID or as a string.
pub(crate) fn attr_jid(node: &Node, key: &str) -> Option<Jid> {
    match node.get_attr(key)? {
        AttrValue::Jid(j) => Some(j.clone()),
        AttrValue::Str(s) => s.parse().ok(),
    }
}

/// Baileys' `generateParticipantHashV2`: `2:` and the first 6 base64 characters of the
/// SHA-256 of the sorted JID strings concatenated.
pub fn participant_hash(jids: &[String]) -> String {
    let mut sorted = jids.to_vec();
    sorted.sort();
    let digest = Sha256::digest(sorted.concat().as_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
    format!("2:{}", &b64[..6])
}

fn same_user(a: &Jid, b: &Jid) -> bool {
    a.user == b.user && a.server == b.server
}

impl State {
    /// The account (phone digits) of a phone-number or LID user JID.
    pub(crate) fn account_of(&self, jid: &Jid) -> Option<String> {
        match jid.server {
            Server::WhatsApp => self
                .phones
                .contains_key(&jid.user)
                .then(|| jid.user.clone()),
            Server::Lid => self.lids.get(&jid.user).cloned(),
            _ => None,
        }
    }

    /// The device a JID names (phone-number or LID; no device = the phone), if it exists.
    pub(crate) fn resolve_device(&self, jid: &Jid) -> Option<DeviceRef> {
        let phone = self.account_of(jid)?;
        let device = jid.device.unwrap_or(0);
        let d = DeviceRef { phone, device };
        (device == 0 || self.devices.contains_key(&d.key())).then_some(d)
    }

    /// `device`'s JID in phone-number (`lid == false`) or LID addressing.
    pub(crate) fn address(&self, device: &DeviceRef, lid: bool) -> Jid {
        match self.phones.get(&device.phone) {
            Some(account) if lid => with_device(
                Jid::new(account.lid_user.clone(), Server::Lid),
                device.device,
            ),
            _ => device.pn(),
        }
    }

    /// The devices of `user`'s account (the phone, then its companions by id), in `user`'s
    /// addressing (`@lid` or `@s.whatsapp.net`); empty for an unknown user.
    pub fn account_devices(&self, user: &Jid) -> Vec<Jid> {
        let Some(phone) = self.account_of(user) else {
            return Vec::new();
        };
        let lid = user.server == Server::Lid;
        let mut ids: Vec<u16> = vec![0];
        ids.extend(
            self.devices_of(&phone)
                .iter()
                .filter_map(|d| d.parse::<Jid>().ok()?.device),
        );
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|device| {
                self.address(
                    &DeviceRef {
                        phone: phone.clone(),
                        device,
                    },
                    lid,
                )
            })
            .collect()
    }

    /// Delivers a stanza (`<message>`, `<receipt>`, `<notification>`) to one device: a
    /// companion gets it now if it is logged in, and keeps it queued until it acknowledges
    /// it (see the module docs); a phone gets it in its inbox. `false` if `device` names no
    /// device here.
    #[allow(dead_code, reason = "the delivery entry point for groups (groups.rs)")]
    pub fn deliver(&mut self, device: &Jid, node: Node) -> bool {
        let Some(target) = self.resolve_device(device) else {
            debug!(%device, "delivery to an unknown device dropped");
            return false;
        };
        self.deliver_to(&target, node);
        true
    }

    pub(crate) fn deliver_to(&mut self, target: &DeviceRef, node: Node) {
        if target.device == 0 {
            if let Some(account) = self.phones.get_mut(&target.phone) {
                if account.inbox.len() >= INBOX_LIMIT {
                    account.inbox.pop_front();
                }
                debug!(phone = %target.phone, tag = %node.tag, "stanza in the phone's inbox");
                account.inbox.push_back(node.clone());
                self.phone_received(&target.phone, node);
            }
            return;
        }
        let key = target.key();
        let sockets = self.sockets_of(&key);
        let queue = self.messaging.queues.entry(key.clone()).or_default();
        if queue.len() >= QUEUE_LIMIT {
            queue.pop_front();
            self.messaging.counters.queue_dropped += 1;
            warn!(device = %key, "offline queue full: oldest stanza dropped");
        }
        queue.push_back(Queued::of(node.clone()));
        if sockets.is_empty() {
            if node.tag == "message" {
                self.messaging.counters.messages_queued += 1;
            }
            debug!(device = %key, tag = %node.tag, "device offline: stanza queued");
        }
        for socket in sockets {
            self.send(socket, node.clone());
        }
    }

    /// What a device gets right after `<success>`: every stanza still unacknowledged, in
    /// order and marked `offline`, then `<ib><offline count=N/>`.
    pub(crate) fn offline_delivery(&mut self, device: &str) -> Vec<Outbound> {
        let queued: Vec<Node> = self
            .messaging
            .queues
            .get(device)
            .map(|q| {
                q.iter()
                    .map(|e| e.node.clone().attr("offline", "1"))
                    .collect()
            })
            .unwrap_or_default();
        let count = queued.len();
        self.messaging.counters.redelivered += count as u64;
        if count > 0 {
            info!(device, count, "offline queue delivered");
        }
        let mut out: Vec<Outbound> = queued.into_iter().map(Outbound::Node).collect();
        out.push(Outbound::Node(Node::new("ib").children([
            Node::new("offline").attr("count", count.to_string()),
        ])));
        out
    }

    /// Removes the first stanza of `device`'s queue that `class`/`id` acknowledges: from
    /// `peer` (when given; same user, and same device when `peer` names one) and of type
    /// `kind` (no type matches no type: an ack carries its stanza's type); failing that,
    /// the first of that class and id.
    fn acknowledge(
        &mut self,
        device: &str,
        class: &str,
        id: &str,
        peer: Option<&Jid>,
        kind: Option<&str>,
    ) -> bool {
        let Some(queue) = self.messaging.queues.get_mut(device) else {
            return false;
        };
        let strict = queue.iter().position(|e| {
            e.class == class
                && e.id == id
                && peer.is_none_or(|p| {
                    e.from.as_ref().is_some_and(|f| {
                        same_user(f, p) && (p.device.is_none() || p.device == f.device)
                    })
                })
                && e.kind.as_deref() == kind
        });
        let position = strict.or_else(|| queue.iter().position(|e| e.class == class && e.id == id));
        match position {
            Some(i) => {
                queue.remove(i);
                true
            }
            None => false,
        }
    }

    /// The logged-in device behind a socket.
    fn sender_of(&self, id: SocketId) -> Option<DeviceRef> {
        let jid: Jid = self.device_of(id)?.parse().ok()?;
        self.resolve_device(&jid)
    }

    /// `<message>` from a socket.
    pub(crate) fn on_message(&mut self, id: SocketId, node: &Node) -> Vec<Outbound> {
        let Some(sender) = self.sender_of(id) else {
            warn!(
                socket = id,
                "message from a socket that is not logged in: ignored"
            );
            return Vec::new();
        };
        self.route_message(&sender, node)
            .map(Outbound::Node)
            .into_iter()
            .collect()
    }

    /// Routes a message `sender` sent; returns the server's ack for the sender.
    pub(crate) fn route_message(&mut self, sender: &DeviceRef, node: &Node) -> Option<Node> {
        let msg_id = node.attr_str("id").filter(|s| !s.is_empty())?.to_owned();
        let Some(to) = attr_jid(node, "to") else {
            warn!(sender = %sender.key(), id = %msg_id, "message without a valid `to`: 400");
            return Some(message_ack(&msg_id, None).attr("error", "400"));
        };
        let t = unix_now();
        let lid = to.server == Server::Lid;
        // Who is addressed, and with which encs.
        let mut targets: Vec<(Jid, Vec<Node>)> = Vec::new();
        let participants = node.child_by_tag("participants");
        if let Some(participants) = participants {
            for entry in participants.children_by_tag("to") {
                let Some(jid) = attr_jid(entry, "jid") else {
                    continue;
                };
                let encs: Vec<Node> = entry.children_by_tag("enc").cloned().collect();
                targets.push((jid, encs));
            }
        } else {
            let encs: Vec<Node> = node.children_by_tag("enc").cloned().collect();
            if !encs.is_empty() {
                targets.push((to.clone(), encs));
            }
        }
        let destination = self.account_of(&to);
        let chat = to.to_non_ad();
        let device_identity = node.child_by_tag("device-identity").cloned();
        let mut routed = 0u64;
        for (jid, encs) in targets {
            let target = self.resolve_device(&jid).filter(|d| {
                (Some(&d.phone) == destination.as_ref() || d.phone == sender.phone) && d != sender
            });
            let Some(target) = target else {
                self.messaging.counters.messages_refused += 1;
                debug!(sender = %sender.key(), %jid, id = %msg_id, "addressed JID is no device of the chat: ignored");
                continue;
            };
            if encs.is_empty() {
                continue;
            }
            let mut out = Node::new("message")
                .attr("from", self.address(sender, lid))
                .attr("id", msg_id.clone())
                .attr("t", t.to_string())
                .attr("type", node.attr_str("type").unwrap_or("text").to_owned());
            for key in ["category", "edit"] {
                if let Some(v) = node.attr_str(key) {
                    out = out.attr(key, v.to_owned());
                }
            }
            if target.phone == sender.phone {
                let recipient = attr_jid(node, "recipient").unwrap_or_else(|| chat.clone());
                if !same_user(&recipient, &self.address(sender, lid)) {
                    out = out.attr("recipient", recipient);
                }
            }
            if let Some(name) = self
                .phones
                .get(&sender.phone)
                .and_then(|a| a.push_name.clone())
            {
                out = out.attr("notify", name);
            }
            out = out.attr(
                if lid { "sender_pn" } else { "sender_lid" },
                self.address(sender, !lid),
            );
            for e in &encs {
                let kind = e.attr_str("type").unwrap_or("?").to_owned();
                *self.messaging.counters.encs_routed.entry(kind).or_default() += 1;
            }
            let pkmsg = encs.iter().any(|e| e.attr_str("type") == Some("pkmsg"));
            let mut children = encs;
            if pkmsg {
                children.extend(device_identity.clone());
            }
            self.deliver_to(&target, out.children(children));
            routed += 1;
        }
        self.messaging.counters.messages_routed += routed;
        self.messaging.remember(
            &msg_id,
            Sent {
                sender: sender.clone(),
                lid,
            },
        );
        info!(sender = %sender.key(), %to, id = %msg_id, devices = routed, "message routed");
        let mut ack = message_ack(&msg_id, Some(to.clone())).attr("t", t.to_string());
        if participants.is_some() && to.is_user() {
            let ours = self.expected_participants(sender, &to);
            if let Some(theirs) = node.attr_str("phash") {
                let expected = participant_hash(&ours);
                if theirs != expected {
                    debug!(id = %msg_id, theirs, expected, "participant hash differs");
                    ack = ack.attr("phash", expected);
                }
            }
        }
        Some(ack)
    }

    /// The devices a 1:1 message to `to` must reach: `to`'s account and the sender's own
    /// other devices, as strings in `to`'s addressing.
    fn expected_participants(&self, sender: &DeviceRef, to: &Jid) -> Vec<String> {
        let lid = to.server == Server::Lid;
        let mut all = self.account_devices(&to.to_non_ad());
        let own = self.address(
            &DeviceRef {
                phone: sender.phone.clone(),
                device: 0,
            },
            lid,
        );
        if self.account_of(to).as_deref() != Some(sender.phone.as_str()) {
            all.extend(self.account_devices(&own));
        }
        let me = self.address(sender, lid);
        all.into_iter()
            .filter(|j| *j != me)
            .map(|j| j.to_string())
            .collect()
    }

    /// `<receipt>` from a socket.
    pub(crate) fn on_receipt(&mut self, id: SocketId, node: &Node) -> Vec<Outbound> {
        let Some(sender) = self.sender_of(id) else {
            warn!(
                socket = id,
                "receipt from a socket that is not logged in: ignored"
            );
            return Vec::new();
        };
        self.route_receipt(&sender, node)
            .map(Outbound::Node)
            .into_iter()
            .collect()
    }

    /// Routes a receipt `from` sent: it acknowledges the messages it names in `from`'s queue
    /// and goes to their sender. Returns the server's ack.
    pub(crate) fn route_receipt(&mut self, from: &DeviceRef, node: &Node) -> Option<Node> {
        let first = node.attr_str("id").filter(|s| !s.is_empty())?.to_owned();
        let mut ids = vec![first.clone()];
        if let Some(list) = node.child_by_tag("list") {
            ids.extend(
                list.children_by_tag("item")
                    .filter_map(|i| i.attr_str("id").map(str::to_owned)),
            );
        }
        let to = attr_jid(node, "to");
        let key = from.key();
        for mid in &ids {
            if self.acknowledge(&key, "message", mid, to.as_ref(), None) {
                self.messaging.counters.messages_acked += 1;
            }
        }
        let kind = node.attr_str("type").map(str::to_owned);
        let remembered = self.messaging.sent.get(&first).cloned();
        let (target, lid) = match remembered {
            Some(sent) => (Some(sent.sender), sent.lid),
            None => {
                let fallback = to.as_ref().and_then(|j| self.resolve_device(j));
                (
                    fallback,
                    to.as_ref().is_some_and(|j| j.server == Server::Lid),
                )
            }
        };
        match target.filter(|t| t != from) {
            Some(target) => {
                let t = node
                    .attr_str("t")
                    .map(str::to_owned)
                    .unwrap_or_else(|| unix_now().to_string());
                // As WhatsApp: `from` is the chat (the receipt sender's user), `participant`
                // the sending device. Baileys keys its sent messages by chat and resends a
                // retried one to `participant` alone.
                let device = self.address(from, lid);
                // A group's receipt comes from the group (`to` of the receipt).
                let chat = to
                    .as_ref()
                    .filter(|j| j.is_group())
                    .cloned()
                    .unwrap_or_else(|| device.to_non_ad());
                let mut out = Node::new("receipt")
                    .attr("from", chat)
                    .attr("id", first.clone())
                    .attr("t", t);
                if from.device != 0 || to.as_ref().is_some_and(Jid::is_group) {
                    out = out.attr("participant", device);
                }
                if let Some(kind) = &kind {
                    out = out.attr("type", kind.clone());
                }
                if let Some(v) = node.get_attr("recipient") {
                    out = out.attr("recipient", v.clone());
                }
                let out = match node.child_nodes() {
                    [] => out,
                    children => out.children(children.to_vec()),
                };
                debug!(from = %key, to = %target.key(), id = %first, ?kind, "receipt routed");
                self.deliver_to(&target, out);
                self.messaging.counters.receipts_routed += 1;
            }
            None => debug!(from = %key, id = %first, "receipt for an unknown message: not routed"),
        }
        let mut ack = Node::new("ack").attr("id", first).attr("class", "receipt");
        if let Some(to) = to {
            ack = ack.attr("from", to);
        }
        if let Some(kind) = kind {
            ack = ack.attr("type", kind);
        }
        Some(ack)
    }

    /// `<ack class=… id to>` from a device: the stanza it names leaves the device's queue.
    pub(crate) fn on_ack(&mut self, id: SocketId, node: &Node) -> Vec<Outbound> {
        let Some(device) = self.device_of(id) else {
            return Vec::new();
        };
        let (Some(class), Some(mid)) = (node.attr_str("class"), node.attr_str("id")) else {
            return Vec::new();
        };
        let peer = attr_jid(node, "to");
        let kind = node.attr_str("type");
        if self.acknowledge(&device, class, mid, peer.as_ref(), kind) {
            match class {
                "message" => self.messaging.counters.messages_acked += 1,
                "receipt" => self.messaging.counters.receipts_acked += 1,
                _ => {}
            }
        }
        Vec::new()
    }

    /// `<presence name=…>`: remember the account's push name (the `notify` of its messages).
    pub(crate) fn on_presence(&mut self, id: SocketId, node: &Node) -> Vec<Outbound> {
        let name = node.attr_str("name").filter(|n| !n.is_empty());
        if let (Some(sender), Some(name)) = (self.sender_of(id), name) {
            if let Some(account) = self.phones.get_mut(&sender.phone) {
                account.push_name = Some(name.to_owned());
            }
        }
        Vec::new()
    }

    /// Tells `device` its one-time prekeys run low:
    /// `<notification from=@s.whatsapp.net id t type=encrypt><count value=N/></notification>`.
    pub(crate) fn prekeys_low(&mut self, device: &DeviceRef, count: usize) {
        let id = self.next_iq_id();
        let node = Node::new("notification")
            .attr("from", server_jid())
            .attr("id", id)
            .attr("t", unix_now().to_string())
            .attr("type", "encrypt")
            .children([Node::new("count").attr("value", count.to_string())]);
        info!(device = %device.key(), count, "prekeys low: notification sent");
        self.messaging.counters.prekey_low_sent += 1;
        self.deliver_to(device, node);
    }
}

/// `<ack class=message id [from]>`.
fn message_ack(id: &str, from: Option<Jid>) -> Node {
    let ack = Node::new("ack")
        .attr("class", "message")
        .attr("id", id.to_owned());
    match from {
        Some(from) => ack.attr("from", from),
        None => ack,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use prost::Message as _;
    use tokio::sync::mpsc;
    use wafleet_protocol::binary::Content;
    use wafleet_protocol::noise::ClientFinishInfo;
    use wafleet_protocol::proto::ClientPayload;

    use super::*;
    use crate::state::{Device, Policy};

    const A: &str = "15551110001";
    const B: &str = "15552220002";
    const C: &str = "15553330003";

    fn state() -> State {
        let mut state = State::new(Policy {
            first_qr_ttl: Duration::from_secs(60),
            next_qr_ttl: Duration::from_secs(20),
            qr_refs: 6,
            min_client_version: None,
        });
        for phone in [A, B, C] {
            state.add_phone(phone).expect("phone");
        }
        state
    }

    fn pn(phone: &str, device: u16) -> Jid {
        with_device(Jid::new(phone, Server::WhatsApp), device)
    }

    fn lid_of(state: &State, phone: &str, device: u16) -> Jid {
        with_device(
            Jid::new(state.phones[phone].lid_user.clone(), Server::Lid),
            device,
        )
    }

    /// Links companion `device` of `phone` (as the phone would).
    fn link(state: &mut State, phone: &str, device: u16) {
        let lid = lid_of(state, phone, device);
        state
            .devices
            .insert(pn(phone, device).to_string(), Device::new(lid));
    }

    struct Socket {
        id: SocketId,
        rx: mpsc::UnboundedReceiver<Outbound>,
    }

    impl Socket {
        /// Everything sent on the socket since the last call, but the phones' retry
        /// receipts (see [`phone_retry`]).
        fn received(&mut self) -> Vec<Node> {
            let mut nodes = Vec::new();
            while let Ok(out) = self.rx.try_recv() {
                if let Outbound::Node(n) | Outbound::Close(Some(n)) = out {
                    if !phone_retry(&n) {
                        nodes.push(n);
                    }
                }
            }
            nodes
        }
    }

    /// Logs companion `device` of `phone` in on a new socket: the socket and what the login
    /// answered (`success`, the offline queue, `ib/offline`).
    fn login(state: &mut State, phone: &str, device: u16) -> (Socket, Vec<Node>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = state.open_socket(tx);
        let payload = ClientPayload {
            username: Some(phone.parse().expect("digits")),
            device: Some(u32::from(device)),
            ..Default::default()
        };
        let client = ClientFinishInfo {
            client_static: [1; 32],
            client_payload: payload.encode_to_vec(),
            handshake_hash: [0; 32],
        };
        let out = state.on_client_payload(id, &client, std::time::Instant::now());
        let nodes = out
            .into_iter()
            .map(|o| match o {
                Outbound::Node(n) => n,
                other => panic!("login refused: {other:?}"),
            })
            .collect::<Vec<_>>();
        assert_eq!(nodes[0].tag, "success", "{nodes:?}");
        (Socket { id, rx }, nodes[1..].to_vec())
    }

    /// A phone's retry receipt: the routing tests send made-up ciphertexts, which the phones
    /// (they decrypt with their own Signal stack) ask to have resent.
    pub(crate) fn phone_retry(node: &Node) -> bool {
        node.tag == "receipt"
            && node.attr_str("type") == Some("retry")
            && attr_jid(node, "participant")
                .or_else(|| attr_jid(node, "from"))
                .is_some_and(|j| j.device.unwrap_or(0) == 0)
    }

    fn nodes(out: Vec<Outbound>) -> Vec<Node> {
        out.into_iter()
            .map(|o| match o {
                Outbound::Node(n) => n,
                other => panic!("expected nodes, got {other:?}"),
            })
            .collect()
    }

    fn enc(kind: &'static str, body: u8) -> Node {
        Node::new("enc")
            .attr("v", "2")
            .attr("type", kind)
            .bytes(vec![body; 8])
    }

    fn to(jid: Jid, enc: Node) -> Node {
        Node::new("to").attr("jid", jid).children([enc])
    }

    fn message(id: &str, to: Jid, participants: Vec<Node>) -> Node {
        Node::new("message")
            .attr("id", id.to_owned())
            .attr("to", to)
            .attr("type", "text")
            .children([
                Node::new("participants").children(participants),
                Node::new("device-identity").bytes(vec![9; 4]),
            ])
    }

    fn jid_attr(node: &Node, key: &str) -> Option<String> {
        node.get_attr(key).map(|v| v.to_string())
    }

    /// The `ib/offline` count closing a login's delivery.
    fn offline_count(delivered: &[Node]) -> Option<&str> {
        let last = delivered.last()?;
        (last.tag == "ib")
            .then(|| last.child_by_tag("offline")?.attr_str("count"))
            .flatten()
    }

    #[test]
    fn a_message_reaches_each_addressed_device_and_the_sender_gets_an_ack() {
        let mut state = state();
        link(&mut state, A, 1);
        link(&mut state, B, 1);
        link(&mut state, B, 2);
        link(&mut state, C, 1);
        let (mut alice, offline) = login(&mut state, A, 1);
        assert_eq!(offline_count(&offline), Some("0"));
        let (mut bob, _) = login(&mut state, B, 1);
        let phash = participant_hash(&[
            pn(A, 0).to_string(),
            pn(B, 0).to_string(),
            pn(B, 1).to_string(),
            pn(B, 2).to_string(),
        ]);
        let stanza = message(
            "M1",
            pn(B, 0),
            vec![
                to(pn(B, 0), enc("pkmsg", 1)),
                to(pn(B, 1), enc("msg", 2)),
                to(pn(B, 2), enc("pkmsg", 3)),
                to(pn(A, 0), enc("pkmsg", 4)),
                // Not devices of the chat: another user's, the sender itself, unknown.
                to(pn(C, 1), enc("msg", 5)),
                to(pn(A, 1), enc("msg", 6)),
                to(pn(B, 9), enc("msg", 7)),
            ],
        )
        .attr("phash", phash);
        let ack = nodes(state.on_node(alice.id, stanza));
        let [ack] = &ack[..] else {
            panic!("one ack: {ack:?}")
        };
        assert_eq!(ack.tag, "ack");
        assert_eq!(ack.attr_str("class"), Some("message"));
        assert_eq!(ack.attr_str("id"), Some("M1"));
        assert_eq!(jid_attr(ack, "from"), Some(pn(B, 0).to_string()));
        assert!(ack.attr_str("t").is_some());
        assert_eq!(ack.attr_str("phash"), None, "the sender's phash was right");
        assert!(alice.received().is_empty(), "the sender gets no copy");

        // Bob's live companion: from Alice's companion, its msg enc, no device-identity.
        let got = bob.received();
        let [m] = &got[..] else {
            panic!("one message for bob:1: {got:?}")
        };
        assert_eq!(m.tag, "message");
        assert_eq!(jid_attr(m, "from"), Some(pn(A, 1).to_string()));
        assert_eq!(m.attr_str("id"), Some("M1"));
        assert_eq!(m.attr_str("type"), Some("text"));
        assert!(m.attr_str("t").is_some());
        assert_eq!(m.get_attr("recipient"), None);
        assert_eq!(
            jid_attr(m, "sender_lid"),
            Some(lid_of(&state, A, 1).to_string())
        );
        assert_eq!(m.child_nodes().len(), 1);
        assert_eq!(m.child_nodes()[0].attr_str("type"), Some("msg"));
        assert_eq!(m.child_nodes()[0].content, Content::Bytes(vec![2; 8]));

        // Bob's phone: the pkmsg with the device identity.
        let inbox = &state.phones[B].inbox;
        assert_eq!(inbox.len(), 1);
        let tags: Vec<&str> = inbox[0].child_nodes().iter().map(|n| &*n.tag).collect();
        assert_eq!(tags, ["enc", "device-identity"]);
        // Alice's own phone: the copy names the chat as `recipient`.
        let own = &state.phones[A].inbox;
        assert_eq!(own.len(), 1);
        assert_eq!(jid_attr(&own[0], "recipient"), Some(pn(B, 0).to_string()));
        assert_eq!(jid_attr(&own[0], "from"), Some(pn(A, 1).to_string()));
        assert!(state.phones[C].inbox.is_empty());

        let c = state.counters();
        assert_eq!(c.messages_routed, 4);
        assert_eq!(c.messages_queued, 1, "bob:2 is offline");
        assert_eq!(c.messages_refused, 3);
        assert_eq!(c.encs_routed.get("pkmsg"), Some(&3));
        assert_eq!(c.encs_routed.get("msg"), Some(&1));
        assert_eq!(c.queued_now.get(&pn(B, 2).to_string()), Some(&1));
        assert_eq!(c.queued_now.get(&pn(C, 1).to_string()), None);
    }

    #[test]
    fn a_wrong_phash_is_answered_with_the_servers() {
        let mut state = state();
        link(&mut state, A, 1);
        link(&mut state, B, 1);
        let (alice, _) = login(&mut state, A, 1);
        let stanza =
            message("M1", pn(B, 0), vec![to(pn(B, 0), enc("msg", 1))]).attr("phash", "2:AAAAAA");
        let ack = nodes(state.on_node(alice.id, stanza));
        let expected = participant_hash(&[
            pn(A, 0).to_string(),
            pn(B, 0).to_string(),
            pn(B, 1).to_string(),
        ]);
        assert_eq!(ack[0].attr_str("phash"), Some(expected.as_str()));
    }

    #[test]
    fn participant_hash_is_baileys_v2() {
        // Baileys: '2:' + base64(sha256(sorted.join(''))).slice(0, 6).
        let digest = Sha256::digest(b"1@s.whatsapp.net2:3@s.whatsapp.net");
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        assert_eq!(
            participant_hash(&["2:3@s.whatsapp.net".into(), "1@s.whatsapp.net".into()]),
            format!("2:{}", &b64[..6])
        );
    }

    #[test]
    fn an_offline_device_gets_its_queue_at_each_login_until_it_acks() {
        let mut state = state();
        link(&mut state, A, 1);
        link(&mut state, B, 1);
        let (alice, _) = login(&mut state, A, 1);
        for id in ["M1", "M2", "M3"] {
            state.on_node(
                alice.id,
                message(id, pn(B, 0), vec![to(pn(B, 1), enc("msg", 1))]),
            );
        }
        let queued_ids = |delivered: &[Node]| -> Vec<String> {
            delivered
                .iter()
                .filter(|n| n.tag == "message")
                .map(|n| {
                    assert_eq!(n.attr_str("offline"), Some("1"), "{n:?}");
                    n.attr_str("id").unwrap_or_default().to_owned()
                })
                .collect()
        };
        // First login: all three, in order, then the count.
        let (bob, delivered) = login(&mut state, B, 1);
        assert_eq!(queued_ids(&delivered), ["M1", "M2", "M3"]);
        assert_eq!(offline_count(&delivered), Some("3"));
        // Bob acks M2 (<ack>) and M1 (a delivery receipt), then drops: M3 comes again.
        state.on_node(
            bob.id,
            Node::new("ack")
                .attr("class", "message")
                .attr("id", "M2")
                .attr("to", pn(A, 1)),
        );
        state.on_node(
            bob.id,
            Node::new("receipt").attr("id", "M1").attr("to", pn(A, 1)),
        );
        state.socket_closed(bob.id);
        let (bob, delivered) = login(&mut state, B, 1);
        assert_eq!(queued_ids(&delivered), ["M3"]);
        assert_eq!(offline_count(&delivered), Some("1"));
        // A message arriving while online is sent at once, and queued until acked too.
        let mut bob = bob;
        state.on_node(
            alice.id,
            message("M4", pn(B, 0), vec![to(pn(B, 1), enc("msg", 1))]),
        );
        let live = bob.received();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].attr_str("offline"), None);
        state.on_node(
            bob.id,
            Node::new("ack").attr("class", "message").attr("id", "M3"),
        );
        state.on_node(
            bob.id,
            Node::new("ack").attr("class", "message").attr("id", "M4"),
        );
        state.socket_closed(bob.id);
        let (_bob, delivered) = login(&mut state, B, 1);
        assert_eq!(queued_ids(&delivered), Vec::<String>::new());
        assert_eq!(offline_count(&delivered), Some("0"));
        let c = state.counters();
        assert_eq!(c.messages_acked, 4);
        assert_eq!(c.messages_queued, 3);
        assert_eq!(c.redelivered, 4);
        // Bob's queue is empty; Alice's holds Bob's delivery receipt until she acks it.
        let queued: Vec<(&str, usize)> =
            c.queued_now.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!(queued, [(pn(A, 1).to_string().as_str(), 1)], "{c:?}");
    }

    #[test]
    fn receipts_go_to_the_sender_device_with_their_list_and_wait_for_its_ack() {
        let mut state = state();
        link(&mut state, A, 1);
        link(&mut state, A, 2);
        link(&mut state, B, 1);
        let (alice, _) = login(&mut state, A, 1);
        let (mut bob, _) = login(&mut state, B, 1);
        for id in ["M1", "M2"] {
            state.on_node(
                alice.id,
                message(id, pn(B, 0), vec![to(pn(B, 1), enc("msg", 1))]),
            );
        }
        bob.received();
        // Alice's companion goes offline; Bob reads both in one receipt.
        state.socket_closed(alice.id);
        let read = Node::new("receipt")
            .attr("id", "M1")
            .attr("to", pn(A, 1))
            .attr("type", "read")
            .attr("t", "1700000000")
            .children([Node::new("list").children([Node::new("item").attr("id", "M2")])]);
        let ack = nodes(state.on_node(bob.id, read));
        assert_eq!(ack[0].tag, "ack");
        assert_eq!(ack[0].attr_str("class"), Some("receipt"));
        assert_eq!(ack[0].attr_str("id"), Some("M1"));
        assert_eq!(ack[0].attr_str("type"), Some("read"));
        // A delivery receipt for M1, too (a second receipt with the same id).
        state.on_node(
            bob.id,
            Node::new("receipt").attr("id", "M1").attr("to", pn(A, 1)),
        );
        let c = state.counters();
        assert_eq!(c.receipts_routed, 2);
        assert_eq!(c.queued_now.get(&pn(A, 1).to_string()), Some(&2));
        assert_eq!(
            c.queued_now.get(&pn(A, 2).to_string()),
            None,
            "only the sender device gets the receipts"
        );

        let (mut alice, delivered) = login(&mut state, A, 1);
        assert_eq!(offline_count(&delivered), Some("2"));
        let receipts: Vec<&Node> = delivered.iter().filter(|n| n.tag == "receipt").collect();
        assert_eq!(receipts.len(), 2);
        let r = receipts[0];
        assert_eq!(jid_attr(r, "from"), Some(pn(B, 0).to_string()));
        assert_eq!(jid_attr(r, "participant"), Some(pn(B, 1).to_string()));
        assert_eq!(r.attr_str("id"), Some("M1"));
        assert_eq!(r.attr_str("type"), Some("read"));
        assert_eq!(r.attr_str("t"), Some("1700000000"));
        assert_eq!(r.attr_str("offline"), Some("1"));
        let items: Vec<&str> = r
            .child_by_tag("list")
            .map(|l| {
                l.children_by_tag("item")
                    .filter_map(|i| i.attr_str("id"))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(items, ["M2"]);
        assert_eq!(receipts[1].attr_str("type"), None, "the delivery receipt");

        // Alice acks the delivery receipt (as Baileys: to = its from, its participant, no
        // type): the read one stays queued.
        state.on_node(
            alice.id,
            Node::new("ack")
                .attr("class", "receipt")
                .attr("id", "M1")
                .attr("to", pn(B, 0))
                .attr("participant", pn(B, 1)),
        );
        let c = state.counters();
        assert_eq!(c.receipts_acked, 1);
        assert_eq!(c.queued_now.get(&pn(A, 1).to_string()), Some(&1));
        alice.received();
        state.socket_closed(alice.id);
        let (_alice, delivered) = login(&mut state, A, 1);
        let again: Vec<&Node> = delivered.iter().filter(|n| n.tag == "receipt").collect();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attr_str("type"), Some("read"));
    }

    #[test]
    fn a_retry_receipt_reaches_the_sender_with_its_keys() {
        let mut state = state();
        link(&mut state, A, 1);
        link(&mut state, B, 1);
        let (mut alice, _) = login(&mut state, A, 1);
        let (bob, _) = login(&mut state, B, 1);
        state.on_node(
            alice.id,
            message("R1", pn(B, 0), vec![to(pn(B, 1), enc("msg", 1))]),
        );
        // Bob could not decrypt: a retry receipt with its registration and a fresh bundle,
        // then a nack (Baileys: ack with error 500).
        let retry = Node::new("receipt")
            .attr("id", "R1")
            .attr("type", "retry")
            .attr("to", pn(A, 1))
            .children([
                Node::new("retry")
                    .attr("count", "1")
                    .attr("id", "R1")
                    .attr("v", "1"),
                Node::new("registration").bytes(vec![0, 0, 0, 7]),
                Node::new("keys").children([Node::new("type").bytes(vec![5])]),
            ]);
        let ack = nodes(state.on_node(bob.id, retry));
        assert_eq!(ack[0].attr_str("type"), Some("retry"));
        state.on_node(
            bob.id,
            Node::new("ack")
                .attr("class", "message")
                .attr("id", "R1")
                .attr("to", pn(A, 1))
                .attr("error", "500"),
        );
        let got = alice.received();
        let [r] = &got[..] else {
            panic!("one retry receipt: {got:?}")
        };
        assert_eq!(r.tag, "receipt");
        assert_eq!(r.attr_str("type"), Some("retry"));
        assert_eq!(jid_attr(r, "from"), Some(pn(B, 0).to_string()));
        assert_eq!(jid_attr(r, "participant"), Some(pn(B, 1).to_string()));
        let tags: Vec<&str> = r.child_nodes().iter().map(|n| &*n.tag).collect();
        assert_eq!(tags, ["retry", "registration", "keys"]);
        let c = state.counters();
        assert_eq!(c.receipts_routed, 1);
        assert!(
            !c.queued_now.contains_key(&pn(B, 1).to_string()),
            "the retry receipt acknowledged R1 for bob: {c:?}"
        );
    }

    #[test]
    fn a_group_receipt_comes_from_the_group_with_the_device_as_participant() {
        let mut state = state();
        link(&mut state, A, 1);
        link(&mut state, B, 1);
        let (mut alice, _) = login(&mut state, A, 1);
        let (bob, _) = login(&mut state, B, 1);
        let sender = DeviceRef {
            phone: A.to_owned(),
            device: 1,
        };
        state.messaging.remember("G1", Sent { sender, lid: false });
        let group = Jid::new("120363000000000001", Server::Group);
        state.on_node(
            bob.id,
            Node::new("receipt")
                .attr("id", "G1")
                .attr("to", group.clone())
                .attr("participant", pn(A, 1)),
        );
        let got = alice.received();
        assert_eq!(jid_attr(&got[0], "from"), Some(group.to_string()));
        assert_eq!(jid_attr(&got[0], "participant"), Some(pn(B, 1).to_string()));
    }

    #[test]
    fn a_lid_addressed_message_comes_from_the_senders_lid() {
        let mut state = state();
        link(&mut state, A, 1);
        link(&mut state, A, 3);
        link(&mut state, B, 1);
        let (alice, _) = login(&mut state, A, 1);
        let (mut bob, _) = login(&mut state, B, 1);
        let (mut alice3, _) = login(&mut state, A, 3);
        let bob_lid = lid_of(&state, B, 0);
        state.on_node(
            alice.id,
            message(
                "L1",
                bob_lid.clone(),
                vec![
                    to(lid_of(&state, B, 1), enc("msg", 1)),
                    to(lid_of(&state, A, 3), enc("msg", 2)),
                ],
            ),
        );
        let got = bob.received();
        assert_eq!(
            jid_attr(&got[0], "from"),
            Some(lid_of(&state, A, 1).to_string())
        );
        assert_eq!(jid_attr(&got[0], "sender_pn"), Some(pn(A, 1).to_string()));
        let own = alice3.received();
        assert_eq!(jid_attr(&own[0], "recipient"), Some(bob_lid.to_string()));
        // Bob's delivery receipt reaches Alice's companion from Bob's LID device.
        let mut alice = alice;
        state.on_node(
            bob.id,
            Node::new("receipt")
                .attr("id", "L1")
                .attr("to", lid_of(&state, A, 1)),
        );
        let receipt = alice.received();
        assert_eq!(
            jid_attr(&receipt[0], "from"),
            Some(lid_of(&state, B, 0).to_string())
        );
        assert_eq!(
            jid_attr(&receipt[0], "participant"),
            Some(lid_of(&state, B, 1).to_string())
        );
    }

    #[test]
    fn a_companion_whose_prekeys_run_low_is_told_once_per_refill() {
        let mut state = state();
        link(&mut state, A, 1);
        link(&mut state, B, 1);
        let (mut alice, _) = login(&mut state, A, 1);
        let (bob, _) = login(&mut state, B, 1);
        let key = |id: u32| {
            Node::new("key").children([
                Node::new("id").bytes(id.to_be_bytes()[1..].to_vec()),
                Node::new("value").bytes(vec![id as u8; 32]),
            ])
        };
        let upload = |ids: std::ops::RangeInclusive<u32>| {
            Node::new("iq")
                .attr("id", "u")
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
                    Node::new("list").children(ids.map(key)),
                ])
        };
        state.on_node(alice.id, upload(1..=6));
        alice.received();
        let fetch = || {
            Node::new("iq")
                .attr("id", "f")
                .attr("xmlns", "encrypt")
                .attr("type", "get")
                .children([Node::new("key").children([Node::new("user").attr("jid", pn(A, 1))])])
        };
        let low = |nodes: Vec<Node>| -> Vec<String> {
            nodes
                .iter()
                .filter(|n| n.tag == "notification" && n.attr_str("type") == Some("encrypt"))
                .map(|n| {
                    assert_eq!(jid_attr(n, "from"), Some(server_jid().to_string()));
                    n.child_by_tag("count")
                        .and_then(|c| c.attr_str("value"))
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        };
        state.on_node(bob.id, fetch()); // 5 left
        assert!(low(alice.received()).is_empty());
        state.on_node(bob.id, fetch()); // 4 left: below 5
        assert_eq!(low(alice.received()), ["4"]);
        state.on_node(bob.id, fetch()); // 3 left: already told
        assert!(low(alice.received()).is_empty());
        // An upload that refills the store re-arms it.
        state.on_node(alice.id, upload(100..=110));
        alice.received();
        for _ in 0..10 {
            state.on_node(bob.id, fetch());
        }
        assert_eq!(low(alice.received()), ["4"]);
        assert_eq!(state.counters().prekey_low_sent, 2);
    }

    #[test]
    fn a_phone_has_signal_keys_others_can_start_a_session_with() {
        use wafleet_signal::{
            encrypt, padding, process_prekey_bundle, IdentityKeyPair, InMemoryIdentityStore,
            PreKeyBundle, ProtocolAddress, PublicKey, SessionRecord,
        };
        let mut state = state();
        link(&mut state, A, 1);
        let (mut alice, _) = login(&mut state, A, 1);
        let account_public = state.phones[B].key.public;
        assert_eq!(state.phones[B].primary.prekeys.len(), 812);

        // Alice fetches Bob's phone by its LID (as Baileys 7 does).
        let fetch = Node::new("iq")
            .attr("id", "f")
            .attr("xmlns", "encrypt")
            .attr("type", "get")
            .children([
                Node::new("key").children([Node::new("user").attr("jid", lid_of(&state, B, 0))])
            ]);
        let reply = nodes(state.on_node(alice.id, fetch));
        let user = reply[0]
            .child_by_tag("list")
            .and_then(|l| l.child_by_tag("user"))
            .expect("<user>");
        assert!(user.child_by_tag("error").is_none(), "{user:?}");
        let bytes = |n: &Node, tag: &str| -> Vec<u8> {
            n.child_by_tag(tag)
                .and_then(Node::content_bytes)
                .unwrap_or_else(|| panic!("<{tag}>"))
                .to_vec()
        };
        let id3 = |n: &Node| {
            let b = bytes(n, "id");
            u32::from_be_bytes([0, b[0], b[1], b[2]])
        };
        assert_eq!(
            bytes(user, "identity"),
            account_public,
            "identity = account key"
        );
        let skey = user.child_by_tag("skey").expect("<skey>");
        let key = user.child_by_tag("key").expect("a one-time prekey");
        let bundle = PreKeyBundle {
            registration_id: u32::from_be_bytes(
                bytes(user, "registration").try_into().expect("4 bytes"),
            ),
            identity_key: PublicKey::from_raw(&bytes(user, "identity")).expect("key"),
            signed_pre_key_id: id3(skey),
            signed_pre_key: PublicKey::from_raw(&bytes(skey, "value")).expect("key"),
            signed_pre_key_signature: bytes(skey, "signature"),
            pre_key: Some((
                id3(key),
                PublicKey::from_raw(&bytes(key, "value")).expect("key"),
            )),
        };
        assert_eq!(bundle.verify_signature(), Ok(()));

        // Alice's side: a session from the bundle, a pkmsg to Bob's phone.
        let mut rng = rand::rngs::OsRng;
        let alice_store = InMemoryIdentityStore::new(IdentityKeyPair::generate(&mut rng), 42);
        let bob_address = ProtocolAddress::new(state.phones[B].lid_user.clone() + "_1", 0);
        let setup = process_prekey_bundle(
            &SessionRecord::new(),
            &bob_address,
            &alice_store,
            &bundle,
            &mut rng,
        )
        .expect("session");
        let (_, ciphertext) = encrypt(
            &setup.record,
            &bob_address,
            &alice_store,
            &padding::pad_with(
                &wafleet_protocol::message::encode_text("hello phone", None),
                3,
            ),
        )
        .expect("encrypt");
        assert_eq!(ciphertext.enc_type(), "pkmsg");
        let enc = Node::new("enc")
            .attr("v", "2")
            .attr("type", "pkmsg")
            .bytes(ciphertext.serialize().to_vec());
        state.on_node(alice.id, message("P1", pn(B, 0), vec![to(pn(B, 0), enc)]));

        // Bob's phone decrypts it with its own Signal stack, consuming the one-time prekey,
        // and its delivery receipt reaches Alice's companion.
        let phone = &state.phones[B];
        let got: Vec<_> = phone.chat.messages.iter().collect();
        let [m] = &got[..] else {
            panic!("one decrypted message: {got:?}")
        };
        assert_eq!(m.text.as_deref(), Some("hello phone"), "{m:?}");
        assert_eq!((m.id.as_str(), m.from_me), ("P1", false));
        assert_eq!(m.sender, pn(A, 1));
        assert_eq!(m.chat, pn(A, 0));
        assert!(!phone.pre_keys.iter().any(|k| k.id == id3(key)));
        let receipts = alice.received();
        assert!(
            receipts
                .iter()
                .any(|r| r.tag == "receipt" && r.attr_str("id") == Some("P1")),
            "{receipts:?}"
        );
    }

    #[test]
    fn usync_lists_devices_and_lid_of_phone_number_and_lid_users() {
        let mut state = state();
        link(&mut state, A, 1);
        link(&mut state, B, 4);
        let (alice, _) = login(&mut state, A, 1);
        let usync = |users: Vec<Node>, protocols: Vec<Node>| {
            Node::new("iq")
                .attr("id", "s")
                .attr("xmlns", "usync")
                .attr("type", "get")
                .children([Node::new("usync").attr("context", "message").children([
                    Node::new("query").children(protocols),
                    Node::new("list").children(users),
                ])])
        };
        let user = |jid: Jid| Node::new("user").attr("jid", jid);
        let reply = nodes(state.on_node(
            alice.id,
            usync(
                vec![
                    user(pn(B, 0)),
                    user(lid_of(&state, B, 0)),
                    user(pn("15550000000", 0)),
                ],
                vec![Node::new("devices").attr("version", "2"), Node::new("lid")],
            ),
        ));
        let list: Vec<Node> = reply[0]
            .child_by_tag("usync")
            .and_then(|u| u.child_by_tag("list"))
            .expect("list")
            .child_nodes()
            .to_vec();
        assert_eq!(list.len(), 3);
        let devices = |u: &Node| -> Vec<(String, Option<String>)> {
            u.child_by_tag("devices")
                .and_then(|d| d.child_by_tag("device-list"))
                .expect("device-list")
                .child_nodes()
                .iter()
                .map(|d| {
                    (
                        d.attr_str("id").unwrap_or_default().to_owned(),
                        d.attr_str("key-index").map(str::to_owned),
                    )
                })
                .collect()
        };
        let expected = vec![
            ("0".to_owned(), None),
            ("4".to_owned(), Some("4".to_owned())),
        ];
        assert_eq!(devices(&list[0]), expected);
        assert_eq!(
            list[0]
                .child_by_tag("lid")
                .and_then(|l| l.get_attr("val"))
                .map(|v| v.to_string()),
            Some(lid_of(&state, B, 0).to_string())
        );
        assert_eq!(
            jid_attr(&list[1], "jid"),
            Some(lid_of(&state, B, 0).to_string())
        );
        assert_eq!(devices(&list[1]), expected);
        assert!(list[1].child_by_tag("lid").is_none());
        assert!(devices(&list[2]).is_empty());
        assert!(list[2].child_by_tag("lid").is_none());

        // A lid-only query (Baileys' PN → LID lookup).
        let reply = nodes(state.on_node(
            alice.id,
            usync(vec![user(pn(B, 0))], vec![Node::new("lid")]),
        ));
        let u = reply[0]
            .child_by_tag("usync")
            .and_then(|u| u.child_by_tag("list"))
            .and_then(|l| l.child_by_tag("user"))
            .expect("user");
        assert!(u.child_by_tag("devices").is_none());
        assert!(u.child_by_tag("lid").is_some());
    }
}
