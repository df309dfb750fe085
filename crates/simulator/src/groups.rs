//! Groups: the `w:g2` iqs (create, participating list, metadata, leave, add / remove /
//! promote / demote participants), the `<notification type=w:gp2>` every member device gets
//! when a group changes, and group `<message>` fan-out with the participant hash.
//!
//! Node shapes follow what Baileys 7 parses (`extractGroupMetadata`,
//! `handleGroupNotification`, `decodeMessageNode` / `decryptMessageNode`):
//!
//! - A group is `<group id=120363… subject s_t s_o creation creator addressing_mode=pn
//!   size><participant jid [type=admin|superadmin]/>…</group>`; the id is the newer
//!   WhatsApp form (`120363` and twelve digits, no creator phone in it).
//! - Groups here are phone-number addressed (`addressing_mode=pn`): participants are
//!   `<phone>@s.whatsapp.net` and a message's author is the sending device's PN JID. A
//!   `<to jid>` or `<participant jid>` given as a LID is mapped to its account.
//! - A sender's `<message to=<group>@g.us id type [phash]><participants><to jid=dev><enc
//!   type=pkmsg|msg/></to>…</participants><enc type=skmsg/>[<device-identity/>]</message>`
//!   reaches every member device but the sending one as `<message from=<group>@g.us
//!   participant=<sender device> id t type addressing_mode=pn>` with that device's own
//!   `enc` first (it carries the sender key distribution, which the `skmsg` after it needs:
//!   Baileys decrypts the encs in order) and the `skmsg`. The sender gets `<ack
//!   class=message id from=<group> t>`.
//! - `phash`: the participant hash over the member devices the message must reach (every
//!   device of every member but the sending device, as whatsmeow's `GetUserDevices`
//!   lists them), computed as the 1:1 router does (Baileys' `generateParticipantHashV2`).
//!   When a client's `phash` matches none of the renderings of that list clients use
//!   (Baileys', whatsmeow's `participantListHashV2` over `user.agent:device@server` or
//!   over its older `String()` form), the ack carries the server's `phash`, as WhatsApp
//!   tells a sender that its participant list is stale. Baileys 7 sends no `phash` on
//!   group messages and ignores one in an ack.
//! - `t`, ids and the creation time are Unix seconds of the server's clock.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use base64::Engine;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};
use wafleet_protocol::binary::{AttrValue, Content, Node};
use wafleet_protocol::jid::{Jid, Server};

use crate::messages::DeviceRef;
use crate::state::{unix_now, Outbound, Role, SocketId, State};
use crate::{SimError, Simulator};

/// The first digits of every group id this server issues (WhatsApp's newer group ids).
pub const GROUP_ID_PREFIX: &str = "120363";

/// A participant's rank in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupRank {
    /// A plain member (no `type` attribute on the wire).
    Member,
    /// `type=admin`.
    Admin,
    /// `type=superadmin`: the creator.
    SuperAdmin,
}

impl GroupRank {
    fn wire(self) -> Option<&'static str> {
        match self {
            GroupRank::Member => None,
            GroupRank::Admin => Some("admin"),
            GroupRank::SuperAdmin => Some("superadmin"),
        }
    }

    fn is_admin(self) -> bool {
        self != GroupRank::Member
    }
}

/// How a group names its members: by phone number (`addressing_mode=pn`) or by LID
/// (`addressing_mode=lid`, as WhatsApp creates groups today; the phone number goes along
/// as `phone_number` / `participant_pn`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupAddressing {
    /// `<phone>@s.whatsapp.net`.
    #[default]
    Pn,
    /// `<lid>@lid`.
    Lid,
}

impl GroupAddressing {
    fn wire(self) -> &'static str {
        match self {
            GroupAddressing::Pn => "pn",
            GroupAddressing::Lid => "lid",
        }
    }

    fn is_lid(self) -> bool {
        self == GroupAddressing::Lid
    }
}

/// A change to a group's participants (the child tag of the `w:g2` iq and of the
/// notification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupAction {
    /// `<add>`.
    Add,
    /// `<remove>`.
    Remove,
    /// `<promote>` to admin.
    Promote,
    /// `<demote>` to member.
    Demote,
}

impl GroupAction {
    /// The wire tag.
    pub fn tag(self) -> &'static str {
        match self {
            GroupAction::Add => "add",
            GroupAction::Remove => "remove",
            GroupAction::Promote => "promote",
            GroupAction::Demote => "demote",
        }
    }

    fn from_tag(tag: &str) -> Option<GroupAction> {
        match tag {
            "add" => Some(GroupAction::Add),
            "remove" => Some(GroupAction::Remove),
            "promote" => Some(GroupAction::Promote),
            "demote" => Some(GroupAction::Demote),
            _ => None,
        }
    }
}

/// A participant of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupParticipant {
    /// `<phone>@s.whatsapp.net`.
    pub jid: Jid,
    /// Its rank.
    pub rank: GroupRank,
}

/// A group as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// `120363…@g.us`.
    pub jid: Jid,
    /// The subject (name).
    pub subject: String,
    /// Unix seconds.
    pub creation: u64,
    /// The creator, `<phone>@s.whatsapp.net`.
    pub owner: Jid,
    /// The participants, ordered by phone number.
    pub participants: Vec<GroupParticipant>,
    /// How the group names its members on the wire.
    pub addressing: GroupAddressing,
}

impl GroupInfo {
    /// The JSON form of the control API.
    pub fn to_json(&self) -> Value {
        json!({
            "jid": self.jid.to_string(),
            "subject": self.subject,
            "creation": self.creation,
            "owner": self.owner.to_string(),
            "addressing_mode": self.addressing,
            "participants": self.participants.iter().map(|p| json!({
                "jid": p.jid.to_string(),
                "rank": p.rank,
            })).collect::<Vec<_>>(),
        })
    }
}

/// One participant's outcome of a participant change: `200`, or WhatsApp's error code
/// (`404` no such account / not a member, `409` already a member, `403` not allowed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantOutcome {
    /// The participant as asked for.
    pub jid: String,
    /// `200` or the error code.
    pub status: u16,
}

/// What the simulator observed of groups (part of [`Counters`](crate::Counters)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCounters {
    /// Groups created (by a companion's iq or the API).
    pub created: u64,
    /// Group `<message>` stanzas accepted and fanned out.
    pub messages: u64,
    /// Group `<message>` stanzas refused (unknown group, sender not a member, malformed).
    pub messages_refused: u64,
    /// Group message stanzas handed to member devices.
    pub deliveries: u64,
    /// Members' receipts for group messages routed to the message's sender.
    #[serde(default)]
    pub receipts_routed: u64,
    /// Member devices a group message could not be handed to (no route to the device).
    pub undeliverable: u64,
    /// Group messages whose `phash` did not match the server's member device list.
    pub phash_mismatches: u64,
    /// `w:gp2` notifications handed to member devices.
    pub notifications_sent: u64,
    /// `w:gp2` notifications a device acked.
    pub notifications_acked: u64,
}

/// One group.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// The user part of the group JID.
    id: String,
    subject: String,
    creation: u64,
    /// The creator's phone digits.
    creator: String,
    /// Members by phone digits.
    members: BTreeMap<String, GroupRank>,
    addressing: GroupAddressing,
}

impl Group {
    fn jid(&self) -> Jid {
        Jid::new(self.id.clone(), Server::Group)
    }
}

/// All groups, and the `w:gp2` notifications not acked yet.
#[derive(Default)]
pub(crate) struct Groups {
    by_id: BTreeMap<String, Group>,
    counters: GroupCounters,
    /// (device JID, notification id) sent and not acked.
    unacked: HashSet<(String, String)>,
    next_notification: u64,
    /// (group id, message id) → the sending device, to route the members' receipts.
    sent: HashMap<(String, String), Jid>,
    sent_order: VecDeque<(String, String)>,
    /// The addressing of groups created from now on.
    pub default_addressing: GroupAddressing,
}

/// Group message ids whose sender the server remembers (for routing receipts).
const SENT_MEMORY: usize = 100_000;

impl Groups {
    fn remember(&mut self, key: (String, String), sender: Jid) {
        if self.sent.insert(key.clone(), sender).is_none() {
            self.sent_order.push_back(key);
            while self.sent_order.len() > SENT_MEMORY {
                if let Some(old) = self.sent_order.pop_front() {
                    self.sent.remove(&old);
                }
            }
        }
    }

    /// Whether a group with this id (the user part of its JID) exists.
    pub fn exists(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> GroupCounters {
        self.counters.clone()
    }
}

/// Why a group request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// 400 bad-request.
    BadRequest,
    /// 403 forbidden: not a member, or not an admin.
    Forbidden,
    /// 404 item-not-found: no such group.
    NotFound,
}

impl Refusal {
    fn code_text(self) -> (u16, &'static str) {
        match self {
            Refusal::BadRequest => (400, "bad-request"),
            Refusal::Forbidden => (403, "forbidden"),
            Refusal::NotFound => (404, "item-not-found"),
        }
    }

    fn into_sim_error(self, group: &str) -> SimError {
        match self {
            Refusal::BadRequest => SimError::BadGroupRequest(group.to_owned()),
            Refusal::Forbidden => SimError::GroupForbidden(group.to_owned()),
            Refusal::NotFound => SimError::UnknownGroup(group.to_owned()),
        }
    }
}

/// The server's participant hash of a device list, as the 1:1 router computes it
/// ([`crate::participant_hash`], Baileys' `generateParticipantHashV2`) over
/// `user[:device]@server` strings.
pub(crate) fn server_phash(devices: &[Jid]) -> String {
    let names: Vec<String> = devices
        .iter()
        .map(|d| plain_device(d).to_string())
        .collect();
    crate::messages::participant_hash(&names)
}

/// whatsmeow's renderings of the same hash (`participantListHashV2`: `2:` and the unpadded
/// base64 of the first six digest bytes), over its newer `user.agent:device@server`
/// strings and over its older `String()` form.
fn whatsmeow_phashes(devices: &[Jid]) -> [String; 2] {
    let hash = |mut names: Vec<String>| {
        names.sort();
        let digest = Sha256::digest(names.concat().as_bytes());
        format!(
            "2:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(&digest[..6])
        )
    };
    let ad = devices
        .iter()
        .map(|d| {
            format!(
                "{}.{}:{}@{}",
                d.user,
                d.agent.unwrap_or(0),
                d.device.unwrap_or(0),
                d.server
            )
        })
        .collect();
    let plain = devices
        .iter()
        .map(|d| plain_device(d).to_string())
        .collect();
    [hash(ad), hash(plain)]
}

/// Whether a client's `phash` names the same device list as `devices`, in any of the
/// renderings clients use.
fn phash_matches(client: &str, devices: &[Jid]) -> bool {
    client == server_phash(devices) || whatsmeow_phashes(devices).iter().any(|h| h == client)
}

/// A device JID with device 0 written as the plain user JID.
fn plain_device(jid: &Jid) -> Jid {
    let mut jid = jid.clone();
    if jid.device == Some(0) {
        jid.device = None;
    }
    jid
}

/// An attribute that is a JID, on the wire as a JID or as a string.
fn jid_attr(node: &Node, key: &str) -> Option<Jid> {
    match node.get_attr(key)? {
        AttrValue::Jid(j) => Some(j.clone()),
        AttrValue::Str(s) => s.parse().ok(),
    }
}

fn pn(phone: &str) -> Jid {
    Jid::new(phone, Server::WhatsApp)
}

fn group_error(request: &Node, from: AttrValue, refusal: Refusal) -> Node {
    let (code, text) = refusal.code_text();
    Node::new("iq")
        .attr("from", from)
        .attr("type", "error")
        .attr("id", request.attr_str("id").unwrap_or_default().to_owned())
        .children([Node::new("error")
            .attr("code", code.to_string())
            .attr("text", text)])
}

/// The `from` of an answer to a `w:g2` iq: the iq's `to` (`@g.us` or the group).
fn iq_from(request: &Node) -> AttrValue {
    request
        .get_attr("to")
        .cloned()
        .unwrap_or_else(|| AttrValue::Jid(Jid::new("", Server::Group)))
}

fn group_result(request: &Node, from: AttrValue) -> Node {
    Node::new("iq")
        .attr("from", from)
        .attr("type", "result")
        .attr("id", request.attr_str("id").unwrap_or_default().to_owned())
}

impl State {
    /// The device a socket is logged in as.
    fn group_socket_device(&self, id: SocketId) -> Option<Jid> {
        match &self.sockets.get(&id)?.role {
            Role::Device(jid) => jid.parse().ok(),
            _ => None,
        }
    }

    /// A device JID (PN or LID) in the canonical PN form: `phone:N@s.whatsapp.net`, or
    /// `phone@s.whatsapp.net` for the phone (device 0).
    fn canonical_device(&self, jid: &Jid) -> Option<Jid> {
        let phone = self.account_of(jid)?;
        Some(match jid.device.filter(|d| *d != 0) {
            Some(device) => pn(&phone).with_device(device),
            None => pn(&phone),
        })
    }

    /// The devices of an account: the phone (no device) and its linked companions.
    fn phone_devices(&self, phone: &str) -> Vec<Jid> {
        self.account_devices(&pn(phone))
    }

    /// Every device of every member of `group`.
    fn member_devices(&self, group: &Group) -> Vec<Jid> {
        group
            .members
            .keys()
            .flat_map(|phone| self.phone_devices(phone))
            .collect()
    }

    /// An account's user JID in an addressing.
    fn user_in(&self, phone: &str, addressing: GroupAddressing) -> Jid {
        self.address(
            &DeviceRef {
                phone: phone.to_owned(),
                device: 0,
            },
            addressing.is_lid(),
        )
    }

    /// A device (any addressing) in an addressing.
    fn device_in(&self, device: &Jid, addressing: GroupAddressing) -> Jid {
        match self.resolve_device(device) {
            Some(d) => self.address(&d, addressing.is_lid()),
            None => device.clone(),
        }
    }

    /// `<participant jid [phone_number]/>` for an account in a group's addressing.
    fn participant_node(&self, phone: &str, addressing: GroupAddressing) -> Node {
        let node = Node::new("participant").attr("jid", self.user_in(phone, addressing));
        if addressing.is_lid() {
            node.attr("phone_number", pn(phone))
        } else {
            node
        }
    }

    fn group_node(&self, group: &Group) -> Node {
        let creator = self.user_in(&group.creator, group.addressing);
        let mut node = Node::new("group")
            .attr("id", group.id.clone())
            .attr("subject", group.subject.clone())
            .attr("s_t", group.creation.to_string())
            .attr("s_o", creator.clone());
        if group.addressing.is_lid() {
            node = node.attr("s_o_pn", pn(&group.creator));
        }
        node = node
            .attr("creation", group.creation.to_string())
            .attr("creator", creator);
        if group.addressing.is_lid() {
            node = node.attr("creator_pn", pn(&group.creator));
        }
        node.attr("addressing_mode", group.addressing.wire())
            .attr("size", group.members.len().to_string())
            .children(group.members.iter().map(|(phone, rank)| {
                let participant = self.participant_node(phone, group.addressing);
                match rank.wire() {
                    Some(ty) => participant.attr("type", ty),
                    None => participant,
                }
            }))
    }

    fn group_info(&self, group: &Group) -> GroupInfo {
        GroupInfo {
            jid: group.jid(),
            subject: group.subject.clone(),
            creation: group.creation,
            owner: pn(&group.creator),
            participants: group
                .members
                .iter()
                .map(|(phone, rank)| GroupParticipant {
                    jid: pn(phone),
                    rank: *rank,
                })
                .collect(),
            addressing: group.addressing,
        }
    }

    fn new_group_id(&self) -> String {
        loop {
            let mut id = String::from(GROUP_ID_PREFIX);
            while id.len() < GROUP_ID_PREFIX.len() + 12 {
                id.push(char::from(b'0' + (OsRng.next_u32() % 10) as u8));
            }
            if !self.groups.by_id.contains_key(&id) {
                return id;
            }
        }
    }

    /// Sends a `w:gp2` notification with `child` from `group` to every device of
    /// `recipients` (phone digits) but `actor`.
    fn notify_group(
        &mut self,
        group: &Jid,
        addressing: GroupAddressing,
        author: &str,
        actor: &Jid,
        recipients: &BTreeSet<String>,
        child: Node,
    ) {
        self.groups.next_notification += 1;
        let id = format!("{}{}", unix_now(), self.groups.next_notification);
        let mut notification = Node::new("notification")
            .attr("from", group.clone())
            .attr("type", "w:gp2")
            .attr("id", id.clone())
            .attr("participant", self.user_in(author, addressing));
        if addressing.is_lid() {
            notification = notification.attr("participant_pn", pn(author));
        }
        let notification = notification
            .attr("t", unix_now().to_string())
            .children([child]);
        let devices: Vec<Jid> = recipients
            .iter()
            .flat_map(|phone| self.phone_devices(phone))
            .filter(|d| d != actor)
            .collect();
        for device in devices {
            if self.deliver(&device, notification.clone()) {
                self.groups.counters.notifications_sent += 1;
                // A phone's inbox needs no ack; a companion must ack.
                if device.device.is_some_and(|d| d != 0) {
                    self.groups.unacked.insert((device.to_string(), id.clone()));
                }
            } else {
                debug!(%device, %group, "w:gp2 notification not delivered: no route");
            }
        }
    }

    /// Creates a group. `actor` is the acting device (a companion, or the phone for the
    /// API); its account becomes the superadmin. Returns the group id and the outcome for
    /// each invited JID (unknown accounts get 404 and are left out).
    fn create_group_as(
        &mut self,
        actor: &Jid,
        subject: &str,
        invited: &[Jid],
        addressing: GroupAddressing,
    ) -> Result<(String, Vec<ParticipantOutcome>), Refusal> {
        let creator = self.account_of(actor).ok_or(Refusal::Forbidden)?;
        if subject.trim().is_empty() {
            return Err(Refusal::BadRequest);
        }
        let mut members = BTreeMap::new();
        members.insert(creator.clone(), GroupRank::SuperAdmin);
        let mut outcomes = Vec::new();
        for jid in invited {
            match self.account_of(jid) {
                Some(phone) => {
                    members.entry(phone).or_insert(GroupRank::Member);
                }
                None => outcomes.push(ParticipantOutcome {
                    jid: jid.to_string(),
                    status: 404,
                }),
            }
        }
        let id = self.new_group_id();
        let group = Group {
            id: id.clone(),
            subject: subject.to_owned(),
            creation: unix_now(),
            creator: creator.clone(),
            members,
            addressing,
        };
        let recipients: BTreeSet<String> = group.members.keys().cloned().collect();
        let node = Node::new("create").children([self.group_node(&group)]);
        let jid = group.jid();
        info!(group = %jid, creator = %creator, members = group.members.len(), "group created");
        self.groups.by_id.insert(id.clone(), group);
        self.groups.counters.created += 1;
        self.notify_group(&jid, addressing, &creator, actor, &recipients, node);
        Ok((id, outcomes))
    }

    /// Adds, removes, promotes or demotes participants as `actor` (an admin's device).
    fn update_group_as(
        &mut self,
        actor: &Jid,
        group_id: &str,
        action: GroupAction,
        targets: &[Jid],
    ) -> Result<Vec<ParticipantOutcome>, Refusal> {
        let author = self.account_of(actor).ok_or(Refusal::Forbidden)?;
        let resolved: Vec<(Jid, Option<String>)> = targets
            .iter()
            .map(|j| (j.clone(), self.account_of(j)))
            .collect();
        let group = self
            .groups
            .by_id
            .get_mut(group_id)
            .ok_or(Refusal::NotFound)?;
        let actor_rank = group.members.get(&author).copied();
        // Leaving (removing oneself) needs no admin rights.
        let only_self = action == GroupAction::Remove
            && resolved.iter().all(|(_, p)| p.as_deref() == Some(&author));
        match actor_rank {
            Some(rank) if rank.is_admin() || only_self => {}
            _ => return Err(Refusal::Forbidden),
        }
        let mut outcomes = Vec::with_capacity(resolved.len());
        let mut changed = Vec::new();
        let mut recipients: BTreeSet<String> = group.members.keys().cloned().collect();
        for (jid, phone) in resolved {
            let status = match (action, phone) {
                (_, None) => 404,
                (GroupAction::Add, Some(phone)) => {
                    if group.members.contains_key(&phone) {
                        409
                    } else {
                        group.members.insert(phone.clone(), GroupRank::Member);
                        recipients.insert(phone.clone());
                        changed.push(phone);
                        200
                    }
                }
                (_, Some(phone)) => match group.members.get(&phone).copied() {
                    None => 404,
                    Some(GroupRank::SuperAdmin) if phone != author => 403,
                    Some(GroupRank::SuperAdmin) if action == GroupAction::Demote => 403,
                    Some(_) => {
                        match action {
                            GroupAction::Remove => {
                                group.members.remove(&phone);
                            }
                            GroupAction::Promote => {
                                group
                                    .members
                                    .entry(phone.clone())
                                    .and_modify(|r| *r = (*r).max(GroupRank::Admin));
                            }
                            GroupAction::Demote => {
                                group.members.insert(phone.clone(), GroupRank::Member);
                            }
                            GroupAction::Add => {}
                        }
                        changed.push(phone);
                        200
                    }
                },
            };
            outcomes.push(ParticipantOutcome {
                jid: jid.to_string(),
                status,
            });
        }
        let jid = group.jid();
        let addressing = group.addressing;
        let ranks: Vec<(String, Option<&'static str>)> = changed
            .iter()
            .map(|phone| {
                let rank = group.members.get(phone).and_then(|r| r.wire());
                (
                    phone.clone(),
                    rank.filter(|_| action != GroupAction::Remove),
                )
            })
            .collect();
        info!(group = %jid, action = action.tag(), changed = changed.len(), "group participants changed");
        if !ranks.is_empty() {
            let nodes: Vec<Node> = ranks
                .iter()
                .map(|(phone, rank)| {
                    let p = self.participant_node(phone, addressing);
                    match rank {
                        Some(ty) => p.attr("type", *ty),
                        None => p,
                    }
                })
                .collect();
            let child = Node::new(action.tag()).children(nodes);
            self.notify_group(&jid, addressing, &author, actor, &recipients, child);
        }
        Ok(outcomes)
    }

    /// A `w:g2` iq from a socket.
    pub(crate) fn group_iq(&mut self, id: SocketId, node: &Node) -> Vec<Outbound> {
        let reply = match self.group_socket_device(id) {
            Some(device) => self.answer_group_iq(&device, node),
            None => Node::new("iq")
                .attr("from", iq_from(node))
                .attr("type", "error")
                .attr("id", node.attr_str("id").unwrap_or_default().to_owned())
                .children([Node::new("error")
                    .attr("code", "401")
                    .attr("text", "not-authorized")]),
        };
        vec![Outbound::Node(reply)]
    }

    /// The answer to a `w:g2` iq `device` sent (a logged-in companion, or a phone through
    /// its in-process socket).
    pub(crate) fn answer_group_iq(&mut self, device: &Jid, node: &Node) -> Node {
        let from = iq_from(node);
        match self.group_request(device, node, from.clone()) {
            Ok(reply) => reply,
            Err(refusal) => {
                debug!(%device, ?refusal, "w:g2 request refused");
                group_error(node, from, refusal)
            }
        }
    }

    fn group_request(
        &mut self,
        device: &Jid,
        node: &Node,
        from: AttrValue,
    ) -> Result<Node, Refusal> {
        let ty = node.attr_str("type").unwrap_or_default();
        let target = jid_attr(node, "to").filter(|j| j.server == Server::Group);
        let child = node.child_nodes().first().ok_or(Refusal::BadRequest)?;
        let group_id = target
            .as_ref()
            .map(|j| j.user.clone())
            .filter(|u| !u.is_empty());
        match (ty, child.tag.as_ref(), group_id) {
            ("set", "create", None) => {
                let subject = child.attr_str("subject").ok_or(Refusal::BadRequest)?;
                let invited: Vec<Jid> = child
                    .children_by_tag("participant")
                    .map(|p| jid_attr(p, "jid").ok_or(Refusal::BadRequest))
                    .collect::<Result<_, _>>()?;
                let addressing = self.groups.default_addressing;
                let (id, failed) = self.create_group_as(device, subject, &invited, addressing)?;
                let group = self.groups.by_id.get(&id).ok_or(Refusal::NotFound)?;
                let mut group_node = self.group_node(group);
                if let Content::Nodes(children) = &mut group_node.content {
                    children.extend(failed.iter().map(|o| {
                        Node::new("participant")
                            .attr("jid", AttrValue::infer(o.jid.clone()))
                            .attr("error", o.status.to_string())
                    }));
                }
                Ok(group_result(node, from).children([group_node]))
            }
            ("get", "participating", None) => {
                let phone = self.account_of(device).ok_or(Refusal::Forbidden)?;
                let groups: Vec<Node> = self
                    .groups
                    .by_id
                    .values()
                    .filter(|g| g.members.contains_key(&phone))
                    .map(|g| self.group_node(g))
                    .collect();
                Ok(group_result(node, from).children([Node::new("groups").children(groups)]))
            }
            ("set", "leave", None) => {
                let ids: Vec<String> = child
                    .children_by_tag("group")
                    .filter_map(|g| {
                        g.attr_str("id")
                            .map(str::to_owned)
                            .or_else(|| jid_attr(g, "id").map(|j| j.user))
                    })
                    .map(|id| id.split('@').next().unwrap_or_default().to_owned())
                    .collect();
                let me = pn(&self.account_of(device).ok_or(Refusal::Forbidden)?);
                for id in &ids {
                    self.update_group_as(
                        device,
                        id,
                        GroupAction::Remove,
                        std::slice::from_ref(&me),
                    )?;
                }
                Ok(group_result(node, from).children([Node::new("leave")
                    .children(ids.into_iter().map(|id| Node::new("group").attr("id", id)))]))
            }
            ("get", "query", Some(id)) => {
                let phone = self.account_of(device).ok_or(Refusal::Forbidden)?;
                let group = self.groups.by_id.get(&id).ok_or(Refusal::NotFound)?;
                if !group.members.contains_key(&phone) {
                    return Err(Refusal::Forbidden);
                }
                Ok(group_result(node, from).children([self.group_node(group)]))
            }
            ("set", tag, Some(id)) if GroupAction::from_tag(tag).is_some() => {
                let action = GroupAction::from_tag(tag).ok_or(Refusal::BadRequest)?;
                let targets: Vec<Jid> = child
                    .children_by_tag("participant")
                    .map(|p| jid_attr(p, "jid").ok_or(Refusal::BadRequest))
                    .collect::<Result<_, _>>()?;
                if targets.is_empty() {
                    return Err(Refusal::BadRequest);
                }
                let outcomes = self.update_group_as(device, &id, action, &targets)?;
                Ok(
                    group_result(node, from).children([Node::new(tag.to_owned()).children(
                        outcomes.into_iter().map(|o| {
                            let p = Node::new("participant").attr("jid", AttrValue::infer(o.jid));
                            if o.status == 200 {
                                p
                            } else {
                                p.attr("error", o.status.to_string())
                            }
                        }),
                    )]),
                )
            }
            _ => Err(Refusal::BadRequest),
        }
    }

    /// Whether a stanza is a group message (`<message to=…@g.us>`) for [`State::group_message`].
    pub(crate) fn is_group_message(node: &Node) -> bool {
        node.tag == "message" && jid_attr(node, "to").is_some_and(|j| j.server == Server::Group)
    }

    /// A device's `<ack class=notification>`: marks a `w:gp2` notification acked.
    pub(crate) fn observe_group_ack(&mut self, id: SocketId, node: &Node) {
        if node.tag != "ack" || node.attr_str("class") != Some("notification") {
            return;
        }
        let (Some(device), Some(ack_id)) = (self.group_socket_device(id), node.attr_str("id"))
        else {
            return;
        };
        if self
            .groups
            .unacked
            .remove(&(device.to_string(), ack_id.to_owned()))
        {
            self.groups.counters.notifications_acked += 1;
        }
    }

    /// Whether a stanza is a receipt for a group message (`<receipt to=…@g.us>`).
    pub(crate) fn is_group_receipt(node: &Node) -> bool {
        node.tag == "receipt" && jid_attr(node, "to").is_some_and(|j| j.server == Server::Group)
    }

    /// A member's `<receipt to=<group> participant=<sender device> id [type]>` (delivery,
    /// read, retry): it acknowledges the message in the member's queue and is answered as
    /// the 1:1 router answers receipts, and the message's sender gets `<receipt
    /// from=<group> participant=<member device> id t [type]>` with the same children.
    pub(crate) fn group_receipt(&mut self, socket: SocketId, node: &Node) -> Vec<Outbound> {
        let Some(member) = self.group_socket_device(socket) else {
            warn!(
                socket,
                "receipt from a socket that is not logged in: ignored"
            );
            return Vec::new();
        };
        self.route_group_receipt(&member, node)
            .map(Outbound::Node)
            .into_iter()
            .collect()
    }

    /// Routes a group receipt `member` (a device) sent; returns the server's ack.
    pub(crate) fn route_group_receipt(&mut self, member: &Jid, node: &Node) -> Option<Node> {
        // The 1:1 router acknowledges the queued message and acks the receipt; it does not
        // know group message ids, so it routes nothing.
        let out = self
            .resolve_device(member)
            .and_then(|device| self.route_receipt(&device, node));
        let member = self.canonical_device(member)?;
        let (Some(group), Some(id)) = (jid_attr(node, "to"), node.attr_str("id")) else {
            return out;
        };
        let key = (group.user.clone(), id.to_owned());
        let Some(sender) = self.groups.sent.get(&key).cloned() else {
            debug!(%group, id, "receipt for an unknown group message: not routed");
            return out;
        };
        if sender == member {
            return out;
        }
        let lid = self
            .groups
            .by_id
            .get(&group.user)
            .map_or(GroupAddressing::Pn, |g| g.addressing);
        let mut receipt = Node::new("receipt")
            .attr("from", group)
            .attr("participant", self.device_in(&member, lid))
            .attr("id", id.to_owned())
            .attr(
                "t",
                node.attr_str("t")
                    .map(str::to_owned)
                    .unwrap_or_else(|| unix_now().to_string()),
            );
        if let Some(kind) = node.get_attr("type") {
            receipt = receipt.attr("type", kind.clone());
        }
        if let [_, ..] = node.child_nodes() {
            receipt = receipt.children(node.child_nodes().to_vec());
        }
        if self.deliver(&sender, receipt) {
            self.groups.counters.receipts_routed += 1;
        }
        out
    }

    /// A group `<message to=…@g.us>` from a socket: fan-out and the server ack.
    pub(crate) fn group_message(&mut self, id: SocketId, node: Node) -> Vec<Outbound> {
        let Some(sender) = self.group_socket_device(id) else {
            warn!(
                socket = id,
                "group message on a socket that is not logged in: ignored"
            );
            return Vec::new();
        };
        self.route_group_message(&sender, &node)
            .map(Outbound::Node)
            .into_iter()
            .collect()
    }

    /// Fans out a group message `sender` (a device: a companion, or a phone through its
    /// in-process socket) sent; returns the server's ack for the sender (`None` for a
    /// stanza without an id or `to`).
    pub(crate) fn route_group_message(&mut self, sender: &Jid, node: &Node) -> Option<Node> {
        let Some(sender) = self.canonical_device(sender) else {
            warn!(%sender, "group message from an unknown device: ignored");
            return None;
        };
        let (Some(msg_id), Some(to)) =
            (node.attr_str("id").map(str::to_owned), jid_attr(node, "to"))
        else {
            self.groups.counters.messages_refused += 1;
            return None;
        };
        let ack = Node::new("ack")
            .attr("class", "message")
            .attr("id", msg_id.clone())
            .attr("from", to.clone())
            .attr("t", unix_now().to_string());
        let member = self.account_of(&sender);
        let Some(group) = self.groups.by_id.get(&to.user).cloned() else {
            self.groups.counters.messages_refused += 1;
            return Some(ack.attr("error", "404"));
        };
        if !member.is_some_and(|p| group.members.contains_key(&p)) {
            self.groups.counters.messages_refused += 1;
            return Some(ack.attr("error", "403"));
        }
        let recipients: Vec<Jid> = self
            .member_devices(&group)
            .into_iter()
            .filter(|d| *d != sender)
            .collect();
        // A retry resend (`participant` set) goes to that one device only.
        let only = jid_attr(node, "participant").and_then(|j| self.canonical_device(&j));
        let mut own: BTreeMap<String, Vec<Node>> = BTreeMap::new();
        let mut shared = Vec::new();
        let mut identity = None;
        for child in node.child_nodes() {
            match child.tag.as_ref() {
                "participants" => {
                    for to in child.children_by_tag("to") {
                        let device = jid_attr(to, "jid").and_then(|j| self.canonical_device(&j));
                        match device {
                            Some(device) => own
                                .entry(device.to_string())
                                .or_default()
                                .extend(to.children_by_tag("enc").cloned()),
                            None => debug!(jid = %jid_text(to), "<to> names no known device"),
                        }
                    }
                }
                "enc" => shared.push(child.clone()),
                "device-identity" => identity = Some(child.clone()),
                _ => {}
            }
        }
        let phash = node.attr_str("phash").map(str::to_owned);
        let rendered: Vec<Jid> = recipients
            .iter()
            .map(|d| self.device_in(d, group.addressing))
            .collect();
        let author = self.device_in(&sender, group.addressing);
        let mismatch = only.is_none()
            && phash
                .as_deref()
                .is_some_and(|p| !phash_matches(p, &rendered));
        let t = unix_now().to_string();
        let notify = self
            .phones
            .get(&sender.user)
            .and_then(|a| a.push_name.clone());
        let mut delivered = 0usize;
        for device in &recipients {
            if only.as_ref().is_some_and(|o| o != device) {
                continue;
            }
            let mut encs = own.remove(&device.to_string()).unwrap_or_default();
            let prekey = encs.iter().any(|e| e.attr_str("type") == Some("pkmsg"));
            encs.extend(shared.iter().cloned());
            if encs.is_empty() {
                continue;
            }
            if prekey {
                if let Some(identity) = &identity {
                    encs.push(identity.clone());
                }
            }
            let mut stanza = Node::new("message")
                .attr("from", to.clone())
                .attr("participant", author.clone())
                .attr("id", msg_id.clone())
                .attr("t", t.clone());
            for key in ["type", "edit"] {
                if let Some(value) = node.get_attr(key) {
                    stanza = stanza.attr(key, value.clone());
                }
            }
            if let Some(name) = &notify {
                stanza = stanza.attr("notify", name.clone());
            }
            if group.addressing.is_lid() {
                stanza = stanza.attr("participant_pn", sender.clone());
            }
            let stanza = stanza
                .attr("addressing_mode", group.addressing.wire())
                .children(encs);
            if self.deliver(device, stanza) {
                self.groups.counters.deliveries += 1;
                delivered += 1;
            } else {
                self.groups.counters.undeliverable += 1;
            }
        }
        for stray in own.keys() {
            debug!(group = %to, device = %stray, "<to> for a device outside the group: dropped");
        }
        self.groups.counters.messages += 1;
        if only.is_none() {
            self.groups
                .remember((to.user.clone(), msg_id.clone()), sender.clone());
        }
        info!(group = %to, %sender, id = %msg_id, delivered, recipients = recipients.len(), "group message fanned out");
        let ack = if mismatch {
            self.groups.counters.phash_mismatches += 1;
            ack.attr("phash", server_phash(&rendered))
        } else {
            ack
        };
        Some(ack)
    }
}

fn jid_text(node: &Node) -> String {
    node.get_attr("jid")
        .map(ToString::to_string)
        .unwrap_or_default()
}

fn group_jid_user(group: &Jid) -> Result<String, SimError> {
    if group.server != Server::Group || group.user.is_empty() {
        return Err(SimError::UnknownGroup(group.to_string()));
    }
    Ok(group.user.clone())
}

impl Simulator {
    /// The phone `creator` creates a group with the accounts `members` (bare E.164 digits);
    /// every member device gets the `w:gp2` `<create>` notification.
    pub fn create_group(
        &self,
        creator: &str,
        subject: &str,
        members: &[&str],
    ) -> Result<GroupInfo, SimError> {
        let addressing = self.inner.shared.lock().groups.default_addressing;
        self.create_group_with(creator, subject, members, addressing)
    }

    /// [`Simulator::create_group`] with the group's addressing given.
    pub fn create_group_with(
        &self,
        creator: &str,
        subject: &str,
        members: &[&str],
        addressing: GroupAddressing,
    ) -> Result<GroupInfo, SimError> {
        let mut state = self.inner.shared.lock();
        state.phone(creator)?;
        for member in members {
            state.phone(member)?;
        }
        let invited: Vec<Jid> = members.iter().map(|m| pn(m)).collect();
        let (id, _) = state
            .create_group_as(&pn(creator), subject, &invited, addressing)
            .map_err(|r| r.into_sim_error(subject))?;
        state.run_phones();
        let group = state
            .groups
            .by_id
            .get(&id)
            .ok_or_else(|| SimError::UnknownGroup(id.clone()))?;
        Ok(state.group_info(group))
    }

    /// The group's creator (its phone) adds, removes, promotes or demotes accounts; every
    /// member device (and the removed ones) gets the `w:gp2` notification.
    pub fn update_group(
        &self,
        group: &Jid,
        action: GroupAction,
        phones: &[&str],
    ) -> Result<Vec<ParticipantOutcome>, SimError> {
        let id = group_jid_user(group)?;
        let mut state = self.inner.shared.lock();
        let creator = state
            .groups
            .by_id
            .get(&id)
            .map(|g| g.creator.clone())
            .ok_or_else(|| SimError::UnknownGroup(group.to_string()))?;
        let targets: Vec<Jid> = phones.iter().map(|p| pn(p)).collect();
        let outcomes = state
            .update_group_as(&pn(&creator), &id, action, &targets)
            .map_err(|r| r.into_sim_error(&group.to_string()));
        state.run_phones();
        outcomes
    }

    /// How groups created from now on name their members (phone numbers by default).
    pub fn set_group_addressing(&self, addressing: GroupAddressing) {
        self.inner.shared.lock().groups.default_addressing = addressing;
    }

    /// A group as the server knows it.
    pub fn group(&self, group: &Jid) -> Result<GroupInfo, SimError> {
        let id = group_jid_user(group)?;
        let state = self.inner.shared.lock();
        let found = state
            .groups
            .by_id
            .get(&id)
            .ok_or_else(|| SimError::UnknownGroup(group.to_string()))?;
        Ok(state.group_info(found))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;
    use crate::state::{Device, Policy};

    const A: &str = "15550000001";
    const B: &str = "15550000002";
    const C: &str = "15550000003";
    const D: &str = "15550000004";

    fn state(phones: &[&str]) -> State {
        let mut state = State::new(Policy {
            first_qr_ttl: Duration::from_secs(60),
            next_qr_ttl: Duration::from_secs(20),
            qr_refs: 6,
            min_client_version: None,
        });
        for phone in phones {
            state.add_phone(phone).expect("phone");
        }
        state
    }

    /// Links `phone:device` and logs it in on a new socket.
    fn online(
        state: &mut State,
        phone: &str,
        device: u16,
    ) -> (SocketId, mpsc::UnboundedReceiver<Outbound>) {
        let jid = pn(phone).with_device(device);
        let lid = Jid::new(state.phones[phone].lid_user.clone(), Server::Lid).with_device(device);
        state.devices.insert(jid.to_string(), Device::new(lid));
        let (tx, rx) = mpsc::unbounded_channel();
        let id = state.open_socket(tx);
        if let Some(entry) = state.sockets.get_mut(&id) {
            entry.role = Role::Device(jid.to_string());
        }
        (id, rx)
    }

    fn received(rx: &mut mpsc::UnboundedReceiver<Outbound>) -> Vec<Node> {
        let mut nodes = Vec::new();
        while let Ok(out) = rx.try_recv() {
            match out {
                // The phones ask for the made-up ciphertexts of these tests to be resent.
                Outbound::Node(n) if crate::messages::tests::phone_retry(&n) => {}
                Outbound::Node(n) => nodes.push(n),
                other => panic!("unexpected {other:?}"),
            }
        }
        nodes
    }

    fn only(out: Vec<Outbound>) -> Node {
        match <[Outbound; 1]>::try_from(out) {
            Ok([Outbound::Node(n)]) => n,
            Ok([other]) => panic!("expected a node, got {other:?}"),
            Err(out) => panic!("expected one node, got {out:?}"),
        }
    }

    fn iq(ty: &'static str, to: Jid, child: Node) -> Node {
        Node::new("iq")
            .attr("id", "g1")
            .attr("xmlns", "w:g2")
            .attr("type", ty)
            .attr("to", to)
            .children([child])
    }

    fn any_group() -> Jid {
        Jid::new("", Server::Group)
    }

    fn participants(nodes: impl IntoIterator<Item = Jid>) -> Vec<Node> {
        nodes
            .into_iter()
            .map(|j| Node::new("participant").attr("jid", j))
            .collect()
    }

    fn error_code(node: &Node) -> Option<&str> {
        node.child_by_tag("error").and_then(|e| e.attr_str("code"))
    }

    fn jid_of(node: &Node, key: &str) -> String {
        node.get_attr(key)
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    /// A creates "Team" with B and C over its socket; returns the group JID.
    fn created(state: &mut State, a: SocketId) -> Jid {
        let create = Node::new("create")
            .attr("subject", "Team")
            .attr("key", "K1")
            .children(participants([pn(B), pn(C)]));
        let reply = only(state.on_node(a, iq("set", any_group(), create)));
        assert_eq!(reply.attr_str("type"), Some("result"), "{reply:?}");
        let id = reply
            .child_by_tag("group")
            .and_then(|g| g.attr_str("id"))
            .expect("group id");
        Jid::new(id, Server::Group)
    }

    #[test]
    fn create_answers_the_group_and_notifies_the_other_member_devices() {
        let mut state = state(&[A, B, C]);
        let (a, mut a_rx) = online(&mut state, A, 1);
        let (b, mut b_rx) = online(&mut state, B, 1);
        let (_c, mut c_rx) = online(&mut state, C, 1);
        let create = Node::new("create")
            .attr("subject", "Team")
            .attr("key", "K1")
            .children(participants([pn(B), pn(C), pn("15559999999")]));
        let reply = only(state.on_node(a, iq("set", any_group(), create)));
        assert_eq!(reply.attr_str("type"), Some("result"));
        assert_eq!(reply.attr_str("id"), Some("g1"));
        let group = reply.child_by_tag("group").expect("<group>");
        let id = group.attr_str("id").expect("id").to_owned();
        assert!(id.starts_with(GROUP_ID_PREFIX) && id.len() == 18, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(group.attr_str("subject"), Some("Team"));
        assert_eq!(jid_of(group, "creator"), format!("{A}@s.whatsapp.net"));
        assert_eq!(group.attr_str("addressing_mode"), Some("pn"));
        let listed: Vec<(String, Option<&str>, Option<&str>)> = group
            .children_by_tag("participant")
            .map(|p| (jid_of(p, "jid"), p.attr_str("type"), p.attr_str("error")))
            .collect();
        assert_eq!(
            listed,
            vec![
                (format!("{A}@s.whatsapp.net"), Some("superadmin"), None),
                (format!("{B}@s.whatsapp.net"), None, None),
                (format!("{C}@s.whatsapp.net"), None, None),
                ("15559999999@s.whatsapp.net".to_owned(), None, Some("404")),
            ]
        );

        assert!(
            received(&mut a_rx).is_empty(),
            "the creating device gets no notification"
        );
        let mut notification_id = String::new();
        for rx in [&mut b_rx, &mut c_rx] {
            let got = received(rx);
            assert_eq!(got.len(), 1, "{got:?}");
            let n = &got[0];
            assert_eq!(n.tag, "notification");
            assert_eq!(n.attr_str("type"), Some("w:gp2"));
            assert_eq!(jid_of(n, "from"), format!("{id}@g.us"));
            assert_eq!(jid_of(n, "participant"), format!("{A}@s.whatsapp.net"));
            assert!(n.attr_str("t").is_some());
            let inner = n
                .child_by_tag("create")
                .and_then(|c| c.child_by_tag("group"))
                .expect("<create><group>");
            assert_eq!(inner.attr_str("id"), Some(id.as_str()));
            assert_eq!(inner.children_by_tag("participant").count(), 3);
            notification_id = n.attr_str("id").expect("id").to_owned();
        }
        // B:1 and C:1, and the three phones' inboxes.
        let c = state.counters().groups;
        assert_eq!(
            (c.created, c.notifications_sent, c.notifications_acked),
            (1, 5, 0)
        );
        // B acks; a second ack of the same id, or an unknown id, counts nothing.
        let ack = |id: &str| {
            Node::new("ack")
                .attr("class", "notification")
                .attr("id", id.to_owned())
                .attr("type", "w:gp2")
                .attr("to", Jid::new(id.to_owned(), Server::Group))
        };
        assert!(state.on_node(b, ack(&notification_id)).is_empty());
        state.on_node(b, ack(&notification_id));
        state.on_node(b, ack("nonsense"));
        assert_eq!(state.counters().groups.notifications_acked, 1);

        // Not logged in: 401; no subject: 400.
        let (tx, _rx) = mpsc::unbounded_channel();
        let anonymous = state.open_socket(tx);
        let reply = only(state.on_node(
            anonymous,
            iq("set", any_group(), Node::new("create").attr("subject", "x")),
        ));
        assert_eq!(error_code(&reply), Some("401"));
        let reply = only(state.on_node(
            a,
            iq("set", any_group(), Node::new("create").attr("subject", " ")),
        ));
        assert_eq!(error_code(&reply), Some("400"));
        assert_eq!(state.counters().groups.created, 1);
    }

    #[test]
    fn participating_and_metadata_answer_members_only() {
        let mut state = state(&[A, B, C, D]);
        let (a, _a_rx) = online(&mut state, A, 1);
        let (b, _b_rx) = online(&mut state, B, 1);
        let (d, _d_rx) = online(&mut state, D, 1);
        let group = created(&mut state, a);
        let participating = Node::new("participating")
            .children([Node::new("participants"), Node::new("description")]);
        let reply = only(state.on_node(b, iq("get", any_group(), participating.clone())));
        let groups = reply.child_by_tag("groups").expect("<groups>");
        let ids: Vec<&str> = groups
            .children_by_tag("group")
            .filter_map(|g| g.attr_str("id"))
            .collect();
        assert_eq!(ids, vec![group.user.as_str()]);
        let reply = only(state.on_node(d, iq("get", any_group(), participating)));
        assert_eq!(
            reply.child_by_tag("groups").map(|g| g.child_nodes().len()),
            Some(0)
        );

        let query = || Node::new("query").attr("request", "interactive");
        let reply = only(state.on_node(b, iq("get", group.clone(), query())));
        assert_eq!(reply.attr_str("type"), Some("result"));
        assert_eq!(jid_of(&reply, "from"), group.to_string());
        let meta = reply.child_by_tag("group").expect("<group>");
        assert_eq!(meta.attr_str("size"), Some("3"));
        assert_eq!(meta.attr_str("subject"), Some("Team"));
        let reply = only(state.on_node(d, iq("get", group.clone(), query())));
        assert_eq!(error_code(&reply), Some("403"));
        let unknown = Jid::new("120363000000000000", Server::Group);
        let reply = only(state.on_node(b, iq("get", unknown, query())));
        assert_eq!(error_code(&reply), Some("404"));
    }

    fn enc(ty: &'static str, byte: u8) -> Node {
        Node::new("enc")
            .attr("v", "2")
            .attr("type", ty)
            .bytes(vec![byte; 4])
    }

    fn to(jid: Jid, enc: Node) -> Node {
        Node::new("to").attr("jid", jid).children([enc])
    }

    fn group_message(group: &Jid, id: &'static str, phash: Option<String>, tos: Vec<Node>) -> Node {
        let mut message = Node::new("message")
            .attr("id", id)
            .attr("to", group.clone())
            .attr("type", "text");
        if let Some(phash) = phash {
            message = message.attr("phash", phash);
        }
        let mut children = Vec::new();
        if !tos.is_empty() {
            children.push(Node::new("participants").children(tos));
        }
        children.push(enc("skmsg", 9));
        children.push(Node::new("device-identity").bytes(vec![7; 3]));
        message.children(children)
    }

    fn encs(node: &Node) -> Vec<(String, u8)> {
        node.child_nodes()
            .iter()
            .map(|c| {
                let first = c
                    .content_bytes()
                    .and_then(|b| b.first().copied())
                    .unwrap_or(0);
                match c.attr_str("type") {
                    Some(ty) => (ty.to_owned(), first),
                    None => (c.tag.to_string(), first),
                }
            })
            .collect()
    }

    #[test]
    fn group_message_reaches_every_other_member_device_own_enc_first() {
        let mut state = state(&[A, B, C, D]);
        let (a1, mut a1_rx) = online(&mut state, A, 1);
        let (_a2, mut a2_rx) = online(&mut state, A, 2);
        let (_b1, mut b1_rx) = online(&mut state, B, 1);
        let (_c1, mut c1_rx) = online(&mut state, C, 1);
        let (d1, mut d1_rx) = online(&mut state, D, 1);
        let group = created(&mut state, a1);
        for rx in [&mut a2_rx, &mut b1_rx, &mut c1_rx] {
            received(rx);
        }
        // What the sender's device list is: every member device but itself.
        let expected = server_phash(&[
            pn(A),
            pn(A).with_device(2),
            pn(B),
            pn(B).with_device(1),
            pn(C),
            pn(C).with_device(1),
        ]);
        // B's device is named by its LID; D is not a member.
        let b_lid = Jid::new(state.phones[B].lid_user.clone(), Server::Lid).with_device(1);
        let tos = vec![
            to(b_lid, enc("pkmsg", 1)),
            to(pn(C).with_device(1), enc("pkmsg", 2)),
            to(pn(A).with_device(2), enc("msg", 3)),
            to(pn(D).with_device(1), enc("pkmsg", 4)),
        ];
        let out = state.on_node(a1, group_message(&group, "M1", Some(expected.clone()), tos));
        let ack = only(out);
        assert_eq!(ack.tag, "ack");
        assert_eq!(ack.attr_str("class"), Some("message"));
        assert_eq!(ack.attr_str("id"), Some("M1"));
        assert_eq!(jid_of(&ack, "from"), group.to_string());
        assert_eq!(ack.attr_str("phash"), None, "the phash matched");
        assert_eq!(ack.attr_str("error"), None);

        let check =
            |rx: &mut mpsc::UnboundedReceiver<Outbound>, id: &str, want: Vec<(&str, u8)>| {
                let got = received(rx);
                assert_eq!(got.len(), 1, "{got:?}");
                let m = &got[0];
                assert_eq!(m.tag, "message");
                assert_eq!(jid_of(m, "from"), group.to_string());
                assert_eq!(jid_of(m, "participant"), format!("{A}:1@s.whatsapp.net"));
                assert_eq!(m.attr_str("id"), Some(id));
                assert_eq!(m.attr_str("type"), Some("text"));
                assert_eq!(m.attr_str("addressing_mode"), Some("pn"));
                assert!(m.attr_str("t").is_some_and(|t| t.parse::<u64>().is_ok()));
                let want: Vec<(String, u8)> =
                    want.into_iter().map(|(t, b)| (t.to_owned(), b)).collect();
                assert_eq!(encs(m), want);
            };
        check(
            &mut b1_rx,
            "M1",
            vec![("pkmsg", 1), ("skmsg", 9), ("device-identity", 7)],
        );
        check(
            &mut c1_rx,
            "M1",
            vec![("pkmsg", 2), ("skmsg", 9), ("device-identity", 7)],
        );
        check(&mut a2_rx, "M1", vec![("msg", 3), ("skmsg", 9)]);
        assert!(received(&mut d1_rx).is_empty(), "not a member");
        assert!(
            received(&mut a1_rx).is_empty(),
            "the sender gets only the ack"
        );
        let c = state.counters().groups;
        assert_eq!((c.messages, c.deliveries, c.phash_mismatches), (1, 6, 0));
        // The three phones got it in their inboxes.
        assert_eq!(c.undeliverable, 0);

        // A stale phash: delivered all the same, the ack carries the server's.
        let out = state.on_node(
            a1,
            group_message(&group, "M2", Some("2:AAAAAAAA".to_owned()), Vec::new()),
        );
        assert_eq!(only(out).attr_str("phash"), Some(expected.as_str()));
        check(&mut b1_rx, "M2", vec![("skmsg", 9)]);
        check(&mut c1_rx, "M2", vec![("skmsg", 9)]);
        check(&mut a2_rx, "M2", vec![("skmsg", 9)]);
        assert_eq!(state.counters().groups.phash_mismatches, 1);

        // A retry resend to one device (`participant`) reaches only that device.
        let retry = group_message(
            &group,
            "M1",
            None,
            vec![to(pn(B).with_device(1), enc("msg", 5))],
        )
        .attr("participant", pn(B).with_device(1));
        only(state.on_node(a1, retry));
        assert_eq!(received(&mut b1_rx).len(), 1);
        assert!(received(&mut c1_rx).is_empty());
        assert!(received(&mut a2_rx).is_empty());

        // Not a member, unknown group: an ack with an error, nothing delivered.
        let out = state.on_node(d1, group_message(&group, "M3", None, Vec::new()));
        assert_eq!(only(out).attr_str("error"), Some("403"));
        let unknown = Jid::new("120363000000000000", Server::Group);
        let out = state.on_node(a1, group_message(&unknown, "M4", None, Vec::new()));
        assert_eq!(only(out).attr_str("error"), Some("404"));
        assert!(received(&mut b1_rx).is_empty());
        assert_eq!(state.counters().groups.messages_refused, 2);
    }

    #[test]
    fn removed_member_is_notified_and_gets_no_later_message() {
        let mut state = state(&[A, B, C, D]);
        let (a1, mut a1_rx) = online(&mut state, A, 1);
        let (b1, mut b1_rx) = online(&mut state, B, 1);
        let (c1, mut c1_rx) = online(&mut state, C, 1);
        let group = created(&mut state, a1);
        for rx in [&mut b1_rx, &mut c1_rx] {
            received(rx);
        }
        let change = |tag: &'static str, who: &[&str]| {
            iq(
                "set",
                group.clone(),
                Node::new(tag).children(participants(who.iter().map(|p| pn(p)))),
            )
        };
        // B is no admin.
        let reply = only(state.on_node(b1, change("remove", &[C])));
        assert_eq!(error_code(&reply), Some("403"));
        assert!(received(&mut c1_rx).is_empty());

        let reply = only(state.on_node(a1, change("remove", &[C, D])));
        assert_eq!(reply.attr_str("type"), Some("result"));
        let outcomes: Vec<(String, Option<&str>)> = reply
            .child_by_tag("remove")
            .expect("<remove>")
            .children_by_tag("participant")
            .map(|p| (jid_of(p, "jid"), p.attr_str("error")))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                (format!("{C}@s.whatsapp.net"), None),
                (format!("{D}@s.whatsapp.net"), Some("404")),
            ]
        );
        for rx in [&mut b1_rx, &mut c1_rx] {
            let got = received(rx);
            assert_eq!(got.len(), 1, "{got:?}");
            let removed: Vec<String> = got[0]
                .child_by_tag("remove")
                .expect("<remove>")
                .children_by_tag("participant")
                .map(|p| jid_of(p, "jid"))
                .collect();
            assert_eq!(removed, vec![format!("{C}@s.whatsapp.net")]);
        }
        assert!(received(&mut a1_rx).is_empty());

        only(state.on_node(a1, group_message(&group, "M1", None, Vec::new())));
        assert_eq!(received(&mut b1_rx).len(), 1);
        assert!(received(&mut c1_rx).is_empty(), "C was removed");
        let out = state.on_node(c1, group_message(&group, "M2", None, Vec::new()));
        assert_eq!(only(out).attr_str("error"), Some("403"));

        // Promote B; B may now add C back; adding A again is a 409.
        only(state.on_node(a1, change("promote", &[B])));
        let reply = only(state.on_node(b1, change("add", &[C, A])));
        let errors: Vec<Option<&str>> = reply
            .child_by_tag("add")
            .expect("<add>")
            .children_by_tag("participant")
            .map(|p| p.attr_str("error"))
            .collect();
        assert_eq!(errors, vec![None, Some("409")]);
        let got = received(&mut c1_rx);
        assert!(
            got.iter().any(|n| n.child_by_tag("add").is_some()),
            "{got:?}"
        );
        let info = state.group_info(&state.groups.by_id[&group.user]);
        let ranks: Vec<GroupRank> = info.participants.iter().map(|p| p.rank).collect();
        assert_eq!(
            ranks,
            vec![GroupRank::SuperAdmin, GroupRank::Admin, GroupRank::Member]
        );

        // C leaves by itself.
        let leave =
            Node::new("leave").children([Node::new("group").attr("id", group.user.clone())]);
        let reply = only(state.on_node(c1, iq("set", any_group(), leave)));
        assert_eq!(reply.attr_str("type"), Some("result"));
        assert_eq!(
            state
                .group_info(&state.groups.by_id[&group.user])
                .participants
                .len(),
            2
        );
    }

    #[test]
    fn members_receipts_reach_the_sender_and_clear_their_queue() {
        let mut state = state(&[A, B]);
        let (a1, mut a1_rx) = online(&mut state, A, 1);
        let (b1, mut b1_rx) = online(&mut state, B, 1);
        let group = created(&mut state, a1);
        received(&mut b1_rx);
        only(state.on_node(a1, group_message(&group, "M1", None, Vec::new())));
        assert_eq!(received(&mut b1_rx).len(), 1);
        let b_key = format!("{B}:1@s.whatsapp.net");
        assert_eq!(
            state.counters().queued_now.get(&b_key),
            Some(&2),
            "notification and message"
        );

        let receipt = |ty: Option<&'static str>| {
            let r = Node::new("receipt")
                .attr("id", "M1")
                .attr("to", group.clone())
                .attr("participant", pn(A).with_device(1));
            match ty {
                Some(ty) => r
                    .attr("type", ty)
                    .children([Node::new("retry").attr("count", "1").attr("id", "M1")]),
                None => r,
            }
        };
        let ack = only(state.on_node(b1, receipt(None)));
        assert_eq!(ack.tag, "ack");
        assert_eq!(ack.attr_str("class"), Some("receipt"));
        assert_eq!(
            state.counters().queued_now.get(&b_key),
            Some(&1),
            "the receipt acknowledged the message (the notification is still unacked)"
        );
        let got = received(&mut a1_rx);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].tag, "receipt");
        assert_eq!(jid_of(&got[0], "from"), group.to_string());
        assert_eq!(jid_of(&got[0], "participant"), b_key);
        assert_eq!(got[0].attr_str("id"), Some("M1"));
        assert_eq!(got[0].attr_str("type"), None);

        only(state.on_node(b1, receipt(Some("retry"))));
        let got = received(&mut a1_rx);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].attr_str("type"), Some("retry"));
        assert_eq!(
            got[0]
                .child_by_tag("retry")
                .and_then(|r| r.attr_str("count")),
            Some("1")
        );
        // B:1's two receipts, and the two phones' retry receipts for the made-up ciphertext.
        assert_eq!(state.counters().groups.receipts_routed, 4);
        // A receipt for an id nobody sent to the group goes nowhere.
        let stray = Node::new("receipt")
            .attr("id", "NOPE")
            .attr("to", group.clone());
        only(state.on_node(b1, stray));
        assert!(received(&mut a1_rx).is_empty());
    }

    #[test]
    fn a_phone_uses_the_device_entry_points() {
        let mut state = state(&[A, B]);
        let (_a1, mut a1_rx) = online(&mut state, A, 1);
        let (_b1, mut b1_rx) = online(&mut state, B, 1);
        // B's phone creates the group and sends to it, as through an in-process socket.
        let create = Node::new("create")
            .attr("subject", "Phones")
            .children(participants([pn(A)]));
        let reply = state.answer_group_iq(&pn(B), &iq("set", any_group(), create));
        let group = Jid::new(
            reply
                .child_by_tag("group")
                .and_then(|g| g.attr_str("id"))
                .expect("group id"),
            Server::Group,
        );
        assert_eq!(received(&mut a1_rx).len(), 1, "create notification");
        assert_eq!(received(&mut b1_rx).len(), 1, "B's companion is told too");
        let ack = state
            .route_group_message(&pn(B), &group_message(&group, "P1", None, Vec::new()))
            .expect("ack");
        assert_eq!(ack.attr_str("error"), None);
        for rx in [&mut a1_rx, &mut b1_rx] {
            let got = received(rx);
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(
                jid_of(&got[0], "participant"),
                format!("{B}@s.whatsapp.net")
            );
        }
        // A's phone got it in its inbox.
        assert!(state.phones[A]
            .inbox
            .iter()
            .any(|n| n.attr_str("id") == Some("P1")));
        assert!(
            !state.phones[B]
                .inbox
                .iter()
                .any(|n| n.attr_str("id") == Some("P1")),
            "not to the sending phone"
        );
    }

    #[test]
    fn an_offline_member_gets_the_notification_and_message_at_login_until_acked() {
        use prost::Message as _;
        use wafleet_protocol::noise::ClientFinishInfo;
        use wafleet_protocol::proto::ClientPayload;

        let mut state = state(&[A, B]);
        let (a1, _a1_rx) = online(&mut state, A, 1);
        // B:1 is linked but offline.
        let (b1, _b1_rx) = online(&mut state, B, 1);
        state.socket_closed(b1);
        let group = created(&mut state, a1);
        only(state.on_node(a1, group_message(&group, "M1", None, Vec::new())));
        let b_key = format!("{B}:1@s.whatsapp.net");
        assert_eq!(state.counters().queued_now.get(&b_key), Some(&2));

        let login = |state: &mut State| {
            let (tx, rx) = mpsc::unbounded_channel();
            let id = state.open_socket(tx);
            let payload = ClientPayload {
                username: B.parse().ok(),
                device: Some(1),
                ..Default::default()
            };
            let client = ClientFinishInfo {
                client_static: [1; 32],
                client_payload: payload.encode_to_vec(),
                handshake_hash: [0; 32],
            };
            let out = state.on_client_payload(id, &client, std::time::Instant::now());
            let nodes: Vec<Node> = out
                .into_iter()
                .map(|o| match o {
                    Outbound::Node(n) => n,
                    other => panic!("login refused: {other:?}"),
                })
                .collect();
            (id, rx, nodes)
        };
        let (b1, _rx, nodes) = login(&mut state);
        let tags: Vec<&str> = nodes.iter().map(|n| n.tag.as_ref()).collect();
        assert_eq!(tags, vec!["success", "notification", "message", "ib"]);
        assert_eq!(nodes[1].attr_str("type"), Some("w:gp2"));
        assert_eq!(jid_of(&nodes[2], "from"), group.to_string());
        assert_eq!(nodes[2].attr_str("offline"), Some("1"));
        // B acks both; the next login brings nothing.
        let notification_id = nodes[1].attr_str("id").expect("id").to_owned();
        state.on_node(
            b1,
            Node::new("ack")
                .attr("class", "notification")
                .attr("id", notification_id)
                .attr("to", group.clone())
                .attr("type", "w:gp2"),
        );
        state.on_node(
            b1,
            Node::new("ack")
                .attr("class", "message")
                .attr("id", "M1")
                .attr("to", group.clone())
                .attr("participant", pn(A).with_device(1)),
        );
        assert_eq!(state.counters().queued_now.get(&b_key), None);
        assert_eq!(state.counters().groups.notifications_acked, 1);
        let (_b1, _rx, nodes) = login(&mut state);
        let tags: Vec<&str> = nodes.iter().map(|n| n.tag.as_ref()).collect();
        assert_eq!(tags, vec!["success", "ib"]);
    }

    #[test]
    fn a_lid_addressed_group_names_members_by_lid_with_their_phone_numbers() {
        let mut state = state(&[A, B]);
        state.groups.default_addressing = GroupAddressing::Lid;
        let (a1, mut a1_rx) = online(&mut state, A, 1);
        let (b1, mut b1_rx) = online(&mut state, B, 1);
        let lid = |state: &State, phone: &str| {
            Jid::new(state.phones[phone].lid_user.clone(), Server::Lid)
        };
        let (a_lid, b_lid) = (lid(&state, A), lid(&state, B));
        let group = created(&mut state, a1);
        let got = received(&mut b1_rx);
        assert_eq!(got.len(), 1, "{got:?}");
        let n = &got[0];
        assert_eq!(jid_of(n, "participant"), a_lid.to_string());
        assert_eq!(jid_of(n, "participant_pn"), format!("{A}@s.whatsapp.net"));
        let inner = n
            .child_by_tag("create")
            .and_then(|c| c.child_by_tag("group"))
            .expect("<create><group>");
        assert_eq!(inner.attr_str("addressing_mode"), Some("lid"));
        assert_eq!(jid_of(inner, "creator"), a_lid.to_string());
        assert_eq!(jid_of(inner, "creator_pn"), format!("{A}@s.whatsapp.net"));
        let listed: Vec<(String, String)> = inner
            .children_by_tag("participant")
            .map(|p| (jid_of(p, "jid"), jid_of(p, "phone_number")))
            .collect();
        assert!(listed.contains(&(b_lid.to_string(), format!("{B}@s.whatsapp.net"))));

        // A LID-addressed send: phash over LID devices, author as a LID device.
        let expected = server_phash(&[a_lid.clone(), b_lid.clone(), b_lid.clone().with_device(1)]);
        let tos = vec![to(b_lid.clone().with_device(1), enc("pkmsg", 1))];
        let ack = only(state.on_node(a1, group_message(&group, "L1", Some(expected), tos)));
        assert_eq!(ack.attr_str("phash"), None, "{ack:?}");
        let got = received(&mut b1_rx);
        assert_eq!(got.len(), 1, "{got:?}");
        let m = &got[0];
        assert_eq!(
            jid_of(m, "participant"),
            a_lid.clone().with_device(1).to_string()
        );
        assert_eq!(jid_of(m, "participant_pn"), format!("{A}:1@s.whatsapp.net"));
        assert_eq!(m.attr_str("addressing_mode"), Some("lid"));
        assert_eq!(encs(m)[0], ("pkmsg".to_owned(), 1));
        // B's receipt reaches A naming B by LID.
        let receipt = Node::new("receipt")
            .attr("id", "L1")
            .attr("to", group.clone())
            .attr("participant", a_lid.with_device(1));
        only(state.on_node(b1, receipt));
        let got = received(&mut a1_rx);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            jid_of(&got[0], "participant"),
            b_lid.with_device(1).to_string()
        );
    }

    /// Vectors computed with Node's `crypto` from the strings each implementation hashes.
    #[test]
    fn participant_hash_matches_whatsmeow_and_baileys_renderings() {
        let devices = [pn(B), pn(B).with_device(1), pn(A).with_device(2)];
        assert_eq!(server_phash(&devices), "2:07+oAZ");
        let mut shuffled = devices.clone();
        shuffled.reverse();
        assert_eq!(server_phash(&shuffled), "2:07+oAZ");
        assert!(phash_matches("2:07+oAZ", &devices), "Baileys");
        assert!(phash_matches("2:Tv3bMHRM", &devices), "whatsmeow ADString");
        assert!(phash_matches("2:07+oAZAg", &devices), "whatsmeow String()");
        assert!(!phash_matches("2:07+oAZAh", &devices));
        assert!(!phash_matches("2:07+oAZ", &devices[..2]));
    }
}
