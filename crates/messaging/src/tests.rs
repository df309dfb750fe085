//! Messengers talking through a small in-test router that plays the server: usync device
//! lists, prekey bundles (one-time prekeys handed out once), group metadata, message
//! fan-out to each addressed device, server acks, receipts routed back.

use std::collections::{HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::SeedableRng;
use wafleet_protocol::binary::Node;
use wafleet_protocol::client::prekeys;
use wafleet_protocol::client::{DeviceIdentity, PreKey};
use wafleet_protocol::jid::{Jid, Server};
use wafleet_protocol::message::MessageContent;

use crate::stanza::{content_bytes, jid_attr};
use crate::*;

pub(crate) fn jid(s: &str) -> Jid {
    s.parse().unwrap()
}

/// One device: its persistent parts (identity, prekeys, state) and its messenger.
pub(crate) struct Device {
    pub jid: Jid,
    pub identity: DeviceIdentity,
    pub pre_keys: Vec<PreKey>,
    pub signal: SignalState,
    pub messenger: Messenger,
    /// What was persisted at the last `StateChanged` (prekeys, state as JSON).
    pub saved: (Vec<PreKey>, String),
    /// What a journal would hold: the state as created, with the changes taken at each
    /// `StateChanged` applied (through JSON). Checked equal to the live state each time.
    pub replica: (Vec<PreKey>, SignalState),
    /// Events other than `StateChanged`, in order.
    pub events: Vec<MessengerEvent>,
    pub state_changes: usize,
    /// Call `delivered` for each message / undecryptable event at once.
    pub auto_deliver: bool,
    /// Everything this device sent.
    pub sent: Vec<Node>,
    /// Nodes the messenger handed back.
    pub unhandled: Vec<Node>,
}

impl Device {
    pub fn messages(&self) -> Vec<&InboundMessage> {
        self.events
            .iter()
            .filter_map(|e| match e {
                MessengerEvent::Message(m) => Some(&**m),
                _ => None,
            })
            .collect()
    }

    pub fn texts(&self) -> Vec<String> {
        self.messages()
            .iter()
            .filter_map(|m| match &m.content {
                MessageContent::Text { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn undecryptable(&self) -> Vec<&Undecryptable> {
        self.events
            .iter()
            .filter_map(|e| match e {
                MessengerEvent::Undecryptable(u) => Some(&**u),
                _ => None,
            })
            .collect()
    }

    pub fn sent_tagged(&self, tag: &str) -> Vec<&Node> {
        self.sent.iter().filter(|n| n.tag == tag).collect()
    }
}

/// How to spoil the next message the router delivers.
#[derive(Debug, Clone)]
pub(crate) enum Spoil {
    /// Flip a byte in the middle of the first `enc`.
    FlipByte,
    /// Cut the first `enc` to 5 bytes.
    Truncate,
    /// Add `to=<jid>`.
    AddressTo(Jid),
    /// Drop the `pkmsg`/`msg` parts (keep only `skmsg`).
    DropDirectParts,
}

pub(crate) struct Net {
    pub devices: Vec<Device>,
    /// One-time prekeys the server still holds, by device JID.
    server_prekeys: HashMap<String, VecDeque<(u32, [u8; 32])>>,
    pub groups: HashMap<String, Vec<Jid>>,
    pub rng: StdRng,
    pub now: u64,
    queue: VecDeque<(usize, Node)>,
    /// Message stanzas delivered, by destination.
    pub delivered: Vec<(usize, Node)>,
    /// Acks the clients sent the server.
    pub acks: Vec<(usize, Node)>,
    /// Spoils for the next deliveries, one each.
    pub spoil: VecDeque<Spoil>,
    pub drop_server_acks: bool,
    pub ack_error: Option<String>,
    /// Message stanzas the server received, by sender.
    pub relayed: Vec<(usize, Node)>,
    /// Devices (JID strings) the server has no bundle for: they have not uploaded keys.
    pub no_bundle: Vec<String>,
}

fn norm(j: &Jid) -> (String, Server, u16) {
    (j.user.clone(), j.server.clone(), j.device.unwrap_or(0))
}

impl Net {
    pub fn new(seed: u64) -> Net {
        Net {
            devices: Vec::new(),
            server_prekeys: HashMap::new(),
            groups: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
            now: 1_700_000_000_000,
            queue: VecDeque::new(),
            delivered: Vec::new(),
            acks: Vec::new(),
            spoil: VecDeque::new(),
            drop_server_acks: false,
            ack_error: None,
            relayed: Vec::new(),
            no_bundle: Vec::new(),
        }
    }

    /// Registers a device (`user:dev@s.whatsapp.net`, or `user@…` for the phone).
    pub fn add(&mut self, device: &str) -> usize {
        let jid = jid(device);
        let mut identity = DeviceIdentity::generate(&mut self.rng);
        identity.jid = Some(device.to_owned());
        identity.account = Some(vec![0x0a, 0x01, 0x00]);
        let (pre_keys, next) = prekeys::generate(1, 20, &mut self.rng);
        identity.next_pre_key_id = next;
        self.server_prekeys.insert(
            jid.to_string(),
            pre_keys.iter().map(|k| (k.id, k.key_pair.public)).collect(),
        );
        let lid = None;
        self.devices.push(Device {
            messenger: Messenger::new(jid.clone(), lid),
            jid,
            identity,
            pre_keys: pre_keys.clone(),
            signal: SignalState::default(),
            saved: (pre_keys.clone(), "{}".into()),
            replica: (pre_keys, SignalState::default()),
            events: Vec::new(),
            state_changes: 0,
            auto_deliver: true,
            sent: Vec::new(),
            unhandled: Vec::new(),
        });
        self.devices.len() - 1
    }

    fn index_of(&self, j: &Jid) -> Option<usize> {
        let want = norm(j);
        self.devices.iter().position(|d| norm(&d.jid) == want)
    }

    fn devices_of(&self, user: &Jid) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.devices.len())
            .filter(|&i| {
                let d = &self.devices[i].jid;
                d.user == user.user && d.server == user.server
            })
            .collect();
        v.sort_by_key(|&i| self.devices[i].jid.device.unwrap_or(0));
        v
    }

    pub fn send(&mut self, from: usize, to: &str, text: &str) -> Result<String, SendError> {
        let now = self.now;
        let Net { devices, rng, .. } = self;
        let d = &mut devices[from];
        let mut keys = Keys {
            identity: &d.identity,
            pre_keys: &mut d.pre_keys,
            signal: &mut d.signal,
        };
        let r = d
            .messenger
            .send(jid(to), Outgoing::text(text), &mut keys, now, rng);
        self.pump();
        r
    }

    /// [`Messenger::send_referenced`] of a text under `key` / `digest`.
    pub fn send_ref(
        &mut self,
        from: usize,
        to: &str,
        text: &str,
        key: &str,
        digest: &str,
    ) -> Result<crate::SendStart, SendError> {
        let now = self.now;
        let Net { devices, rng, .. } = self;
        let d = &mut devices[from];
        let mut keys = Keys {
            identity: &d.identity,
            pre_keys: &mut d.pre_keys,
            signal: &mut d.signal,
        };
        let reference = crate::SendReference {
            key: key.into(),
            digest: digest.into(),
        };
        let r = d.messenger.send_referenced(
            jid(to),
            Outgoing::text(text),
            reference,
            &mut keys,
            now,
            rng,
        );
        self.pump();
        r
    }

    /// Hands a node to a device's messenger.
    pub fn inject(&mut self, to: usize, node: Node) {
        let now = self.now;
        let Net { devices, rng, .. } = self;
        let d = &mut devices[to];
        let mut keys = Keys {
            identity: &d.identity,
            pre_keys: &mut d.pre_keys,
            signal: &mut d.signal,
        };
        if let Some(back) = d.messenger.handle_node(node, &mut keys, now, rng) {
            d.unhandled.push(back);
        }
    }

    /// Runs until nothing moves: each device's events, then its transmits, then deliveries.
    pub fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.devices.len() {
                let mut out = Vec::new();
                {
                    let d = &mut self.devices[i];
                    while let Some(ev) = d.messenger.poll_event() {
                        moved = true;
                        match &ev {
                            MessengerEvent::StateChanged => {
                                d.state_changes += 1;
                                d.saved = (
                                    d.pre_keys.clone(),
                                    serde_json::to_string(&d.signal).unwrap(),
                                );
                                let changes = d.signal.take_changes();
                                let json = serde_json::to_string(&changes).unwrap();
                                let changes: StateChanges = serde_json::from_str(&json).unwrap();
                                let (pre_keys, state) = &mut d.replica;
                                pre_keys.retain(|k| !changes.pre_keys_used().contains(&k.id));
                                state.apply(changes);
                                assert!(
                                    *state == d.signal && *pre_keys == d.pre_keys,
                                    "{}: the changes taken do not rebuild the state",
                                    d.jid
                                );
                                continue;
                            }
                            MessengerEvent::Message(m) if d.auto_deliver => {
                                d.messenger.delivered(&m.key)
                            }
                            MessengerEvent::Undecryptable(u) if d.auto_deliver => {
                                d.messenger.delivered(&u.key)
                            }
                            _ => {}
                        }
                        d.events.push(ev);
                    }
                    while let Some(node) = d.messenger.poll_transmit() {
                        moved = true;
                        d.sent.push(node.clone());
                        out.push(node);
                    }
                }
                for node in out {
                    self.server(i, node);
                }
            }
            while let Some((to, node)) = self.queue.pop_front() {
                moved = true;
                if node.tag == "message" {
                    self.delivered.push((to, node.clone()));
                }
                self.inject(to, node);
            }
            if !moved {
                return;
            }
        }
        panic!("router did not settle");
    }

    fn result_for(request: &Node) -> Node {
        Node::new("iq")
            .attr("from", jid("@s.whatsapp.net"))
            .attr("type", "result")
            .attr("id", request.attr_str("id").unwrap_or_default().to_owned())
    }

    fn server(&mut self, from: usize, node: Node) {
        match &*node.tag {
            "iq" => self.server_iq(from, &node),
            "message" => self.server_message(from, node),
            "receipt" => self.server_receipt(from, &node),
            "ack" => self.acks.push((from, node)),
            _ => {}
        }
    }

    fn server_iq(&mut self, from: usize, node: &Node) {
        let reply = match node.attr_str("xmlns") {
            Some("usync") => {
                let list = node
                    .child_by_tag("usync")
                    .and_then(|u| u.child_by_tag("list"))
                    .unwrap();
                let users = list.children_by_tag("user").map(|u| {
                    let user = jid_attr(u, "jid").unwrap().unwrap();
                    let devices = self.devices_of(&user).into_iter().map(|i| {
                        let d = self.devices[i].jid.device.unwrap_or(0);
                        let n = Node::new("device").attr("id", d.to_string());
                        if d == 0 {
                            n
                        } else {
                            n.attr("key-index", "1")
                        }
                    });
                    Node::new("user")
                        .attr("jid", user.clone())
                        .children([Node::new("devices").children([
                            Node::new("device-list").children(devices.collect::<Vec<_>>())
                        ])])
                });
                let users: Vec<Node> = users.collect();
                Self::result_for(node)
                    .children([Node::new("usync").children([Node::new("list").children(users)])])
            }
            Some("encrypt") => {
                let key = node.child_by_tag("key").unwrap();
                let mut out = Vec::new();
                for u in key.children_by_tag("user") {
                    let device = jid_attr(u, "jid").unwrap().unwrap();
                    let known = self
                        .index_of(&device)
                        .filter(|&i| !self.no_bundle.contains(&self.devices[i].jid.to_string()));
                    let Some(i) = known else {
                        out.push(
                            Node::new("user")
                                .attr("jid", device)
                                .children([Node::new("error")
                                    .attr("code", "404")
                                    .attr("text", "item-not-found")]),
                        );
                        continue;
                    };
                    let id = &self.devices[i].identity;
                    let spk = &id.signed_pre_key;
                    let mut children = vec![
                        Node::new("registration").bytes(id.registration_id.to_be_bytes().to_vec()),
                        Node::new("type").bytes(vec![5]),
                        Node::new("identity").bytes(id.identity_key.public.to_vec()),
                        Node::new("skey").children([
                            Node::new("id").bytes(prekeys::id_bytes(spk.id).to_vec()),
                            Node::new("value").bytes(spk.key_pair.public.to_vec()),
                            Node::new("signature").bytes(spk.signature.clone()),
                        ]),
                    ];
                    let key = self
                        .server_prekeys
                        .get_mut(&self.devices[i].jid.to_string())
                        .and_then(VecDeque::pop_front);
                    if let Some((kid, public)) = key {
                        children.push(Node::new("key").children([
                            Node::new("id").bytes(prekeys::id_bytes(kid).to_vec()),
                            Node::new("value").bytes(public.to_vec()),
                        ]));
                    }
                    out.push(Node::new("user").attr("jid", device).children(children));
                }
                Self::result_for(node).children([Node::new("list").children(out)])
            }
            Some("w:g2") => {
                let group = jid_attr(node, "to").unwrap().unwrap();
                match self.groups.get(&group.to_string()) {
                    Some(members) => Self::result_for(node).children([Node::new("group")
                        .attr("id", group.user.clone())
                        .children(
                            members
                                .iter()
                                .map(|m| Node::new("participant").attr("jid", m.clone())),
                        )]),
                    None => Node::new("iq")
                        .attr("type", "error")
                        .attr("id", node.attr_str("id").unwrap().to_owned())
                        .children([Node::new("error")
                            .attr("code", "404")
                            .attr("text", "item-not-found")]),
                }
            }
            _ => return,
        };
        self.queue.push_back((from, reply));
    }

    fn spoil(&mut self, mut node: Node) -> Node {
        let Some(spoil) = self.spoil.pop_front() else {
            return node;
        };
        match spoil {
            Spoil::AddressTo(j) => node = node.attr("to", j),

            Spoil::DropDirectParts => {
                if let wafleet_protocol::binary::Content::Nodes(children) = &mut node.content {
                    children.retain(|c| c.attr_str("type") == Some("skmsg"));
                }
            }
            Spoil::FlipByte | Spoil::Truncate => {
                if let wafleet_protocol::binary::Content::Nodes(children) = &mut node.content {
                    if let Some(enc) = children.iter_mut().find(|c| c.tag == "enc") {
                        if let wafleet_protocol::binary::Content::Bytes(b) = &mut enc.content {
                            if matches!(spoil, Spoil::Truncate) {
                                b.truncate(5);
                            } else {
                                let mid = b.len() / 2;
                                b[mid] ^= 0x40;
                            }
                        }
                    }
                }
            }
        }
        node
    }

    fn stanza(&self, from: &Jid, id: &str, kind: &str, encs: Vec<Node>) -> Node {
        Node::new("message")
            .attr("from", from.clone())
            .attr("id", id.to_owned())
            .attr("t", (self.now / 1000).to_string())
            .attr("type", kind.to_owned())
            .attr("notify", "Someone")
            .children(encs)
    }

    fn server_message(&mut self, from: usize, node: Node) {
        self.relayed.push((from, node.clone()));
        let sender = self.devices[from].jid.clone();
        let id = node.attr_str("id").unwrap().to_owned();
        let kind = node.attr_str("type").unwrap_or("text").to_owned();
        let to = jid_attr(&node, "to").unwrap().unwrap();
        let mut out: Vec<(usize, Node)> = Vec::new();
        if to.is_group() {
            let direct = |n: &Node| -> Vec<(Jid, Node)> {
                n.child_by_tag("participants")
                    .map(|p| {
                        p.children_by_tag("to")
                            .map(|t| {
                                (
                                    jid_attr(t, "jid").unwrap().unwrap(),
                                    t.child_nodes()[0].clone(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            if let Some(target) = jid_attr(&node, "participant").unwrap() {
                let encs: Vec<Node> = node.children_by_tag("enc").cloned().collect();
                let m = self
                    .stanza(&to, &id, &kind, encs)
                    .attr("participant", sender.clone());
                out.push((self.index_of(&target).unwrap(), m));
            } else {
                let direct = direct(&node);
                let skmsg = node.child_by_tag("enc").cloned();
                let members = self
                    .groups
                    .get(&to.to_string())
                    .cloned()
                    .unwrap_or_default();
                for user in members {
                    for i in self.devices_of(&user) {
                        if i == from {
                            continue;
                        }
                        let dj = &self.devices[i].jid;
                        let mut encs: Vec<Node> = direct
                            .iter()
                            .filter(|(j, _)| norm(j) == norm(dj))
                            .map(|(_, e)| e.clone())
                            .collect();
                        encs.extend(skmsg.clone());
                        let m = self
                            .stanza(&to, &id, &kind, encs)
                            .attr("participant", sender.clone());
                        out.push((i, m));
                    }
                }
            }
        } else if to.device.is_some() || node.child_by_tag("participants").is_none() {
            let encs: Vec<Node> = node.children_by_tag("enc").cloned().collect();
            let mut m = self.stanza(&sender, &id, &kind, encs);
            if let Some(r) = node.get_attr("recipient") {
                m = m.attr("recipient", r.clone());
            }
            out.push((self.index_of(&to).unwrap(), m));
        } else {
            for t in node
                .child_by_tag("participants")
                .unwrap()
                .children_by_tag("to")
            {
                let dest = jid_attr(t, "jid").unwrap().unwrap();
                let mut m = self.stanza(&sender, &id, &kind, t.child_nodes().to_vec());
                if dest.user == sender.user {
                    m = m.attr("recipient", to.clone());
                }
                if let Some(i) = self.index_of(&dest) {
                    out.push((i, m));
                }
            }
        }
        for (i, m) in out {
            let m = self.spoil(m);
            self.queue.push_back((i, m));
        }
        if !self.drop_server_acks {
            let mut ack = Node::new("ack")
                .attr("class", "message")
                .attr("id", id)
                .attr("from", to)
                .attr("t", (self.now / 1000).to_string());
            if let Some(e) = &self.ack_error {
                ack = ack.attr("error", e.clone());
            }
            self.queue.push_back((from, ack));
        }
    }

    fn server_receipt(&mut self, from: usize, node: &Node) {
        let me = self.devices[from].jid.clone();
        let to = jid_attr(node, "to").unwrap().unwrap();
        let mut r = Node::new("receipt")
            .attr("id", node.attr_str("id").unwrap().to_owned())
            .attr("t", (self.now / 1000).to_string());
        let target = if to.is_group() {
            r = r.attr("from", to.clone()).attr("participant", me);
            jid_attr(node, "participant").unwrap().unwrap()
        } else {
            r = r.attr("from", me);
            if let Some(rc) = node.get_attr("recipient") {
                r = r.attr("recipient", rc.clone());
            }
            to
        };
        if let Some(t) = node.attr_str("type") {
            r = r.attr("type", t.to_owned());
        }
        r = r.content(node.content.clone());
        if let Some(i) = self.index_of(&target) {
            self.queue.push_back((i, r));
        }
    }

    /// The enc types of the message stanzas delivered to `to`.
    pub fn enc_types_to(&self, to: usize) -> Vec<String> {
        self.delivered
            .iter()
            .filter(|(i, _)| *i == to)
            .flat_map(|(_, n)| {
                n.children_by_tag("enc")
                    .map(|e| e.attr_str("type").unwrap().to_owned())
            })
            .collect()
    }
}

#[allow(dead_code)]
pub(crate) fn enc_bytes(n: &Node) -> Option<Vec<u8>> {
    content_bytes(n)
}

mod direct;
mod groups;
