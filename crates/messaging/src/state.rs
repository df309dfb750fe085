//! What the messenger persists ([`SignalState`]) and what it may read and change
//! ([`Keys`]), plus the adapters that present them to `wafleet_signal` as its stores.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use wafleet_protocol::client::{DeviceIdentity, PreKey};
use wafleet_protocol::jid::Jid;
use wafleet_signal::keys::{IdentityKeyPair, KeyPair, PreKeyRecord, PublicKey, SignedPreKeyRecord};
use wafleet_signal::{
    IdentityKeyStore, PreKeyStore, ProtocolAddress, SenderKeyRecord, SessionRecord,
};

/// Inbound messages kept for redelivery (same sender and id → same content, re-emitted).
pub const RECENT_INBOUND: usize = 512;
/// Outbound messages kept to answer retry receipts.
pub const RECENT_OUTBOUND: usize = 256;

/// A user's device list from usync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    /// Device ids (0 = the primary phone).
    pub devices: Vec<u16>,
    /// When it was fetched (ms, the caller's clock).
    pub fetched_ms: u64,
}

/// A message decrypted recently, kept so a redelivery (the server sends the same stanza
/// again because our ack did not reach it) gets the same content, not an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecentInbound {
    /// The stanza's `from`.
    pub from: String,
    /// The stanza's `participant`.
    pub participant: Option<String>,
    pub id: String,
    /// The unpadded `waE2E.Message`.
    #[serde(with = "b64")]
    pub plaintext: Vec<u8>,
}

/// A message we sent recently, kept to re-encrypt it when a device sends a retry receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecentOutbound {
    pub id: String,
    /// The chat (user or group JID).
    pub chat: String,
    /// The unpadded `waE2E.Message`.
    #[serde(with = "b64")]
    pub message: Vec<u8>,
    /// The `<message type>`.
    pub stanza_type: String,
    /// The caller's reference for the send, so a repeat of the request is recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<SendReference>,
}

/// The caller's name for a send (a command id) and a digest of what it asked for: a
/// repeated request with the same key gets the first send's message id instead of a second
/// message ([`crate::Messenger::send_referenced`]). Kept with the message in the persisted
/// state, so it is recognised after a restart too, for the last [`RECENT_OUTBOUND`] sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendReference {
    /// The caller's idempotency key.
    pub key: String,
    /// What the request asked for, in a form the caller compares (a hash).
    pub digest: String,
}

/// Everything about Signal and messaging that must survive a restart. Persisted by the
/// driver inside its stored session; every change is announced by
/// [`crate::MessengerEvent::StateChanged`] and recorded, so that
/// [`SignalState::take_changes`] can hand a store just what changed since its last save.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SignalState {
    /// 1:1 sessions by Signal address (`user[_domain].device`).
    sessions: BTreeMap<String, SessionRecord>,
    /// Remote identity keys by Signal address.
    identities: BTreeMap<String, PublicKey>,
    /// Sender keys by group JID, then by the sender's Signal address (ours included).
    sender_keys: BTreeMap<String, BTreeMap<String, SenderKeyRecord>>,
    /// Device lists by user JID (no device).
    devices: BTreeMap<String, DeviceList>,
    /// Per group, the device JIDs that already have our current sender key.
    sender_key_sent: BTreeMap<String, BTreeSet<String>>,
    /// Recently decrypted inbound messages, oldest first.
    recent_inbound: VecDeque<RecentInbound>,
    /// Recently sent messages, oldest first.
    recent_outbound: VecDeque<RecentOutbound>,
    /// What changed since the last [`SignalState::take_changes`] (not persisted).
    #[serde(skip)]
    dirty: Dirty,
}

/// The keys changed since the last [`SignalState::take_changes`], and the cache entries
/// added (in order).
#[derive(Clone, Default)]
struct Dirty {
    sessions: BTreeSet<String>,
    identities: BTreeSet<String>,
    sender_keys: BTreeSet<(String, String)>,
    devices: BTreeSet<String>,
    sender_key_sent: BTreeSet<String>,
    inbound: Vec<RecentInbound>,
    outbound: Vec<RecentOutbound>,
    /// More entries were added than kept above: the changes carry the whole caches.
    caches_overflowed: bool,
    pre_keys_used: Vec<u32>,
}

/// What changed in a [`SignalState`] (and which one-time prekeys a `pkmsg` consumed) since
/// the last [`SignalState::take_changes`]: the current value of each changed record
/// (`None`: removed) and the cache entries added. Applied in order to the state it was
/// taken from ([`SignalState::apply`]), the changes give the state they were taken at; a
/// store can append them to a journal instead of rewriting the whole session.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StateChanges {
    sessions: Vec<(String, Option<SessionRecord>)>,
    identities: Vec<(String, PublicKey)>,
    sender_keys: Vec<(String, String, Option<SenderKeyRecord>)>,
    devices: Vec<(String, Option<DeviceList>)>,
    sender_key_sent: Vec<(String, Option<BTreeSet<String>>)>,
    inbound: Vec<RecentInbound>,
    outbound: Vec<RecentOutbound>,
    /// `inbound` and `outbound` are the whole caches, not entries to add.
    caches_replaced: bool,
    pre_keys_used: Vec<u32>,
}

impl StateChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == StateChanges::default()
    }

    /// The one-time prekeys consumed (their ids): the owner of the prekey list removes
    /// them when it applies the changes.
    pub fn pre_keys_used(&self) -> &[u32] {
        &self.pre_keys_used
    }
}

impl PartialEq for SignalState {
    /// The persisted state only (not what changed since the last save).
    fn eq(&self, other: &SignalState) -> bool {
        self.sessions == other.sessions
            && self.identities == other.identities
            && self.sender_keys == other.sender_keys
            && self.devices == other.devices
            && self.sender_key_sent == other.sender_key_sent
            && self.recent_inbound == other.recent_inbound
            && self.recent_outbound == other.recent_outbound
    }
}

impl std::fmt::Debug for SignalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalState")
            .field("sessions", &self.sessions.len())
            .field("identities", &self.identities.len())
            .field("sender_key_groups", &self.sender_keys.len())
            .field("device_lists", &self.devices.len())
            .field("recent_inbound", &self.recent_inbound.len())
            .field("recent_outbound", &self.recent_outbound.len())
            .finish()
    }
}

impl SignalState {
    /// The session with this device, if any.
    pub fn session(&self, device: &Jid) -> Option<&SessionRecord> {
        self.sessions.get(&device.signal_address())
    }

    /// Whether we have a session we can encrypt with for this device.
    pub fn has_session(&self, device: &Jid) -> bool {
        self.session(device)
            .is_some_and(SessionRecord::has_current_session)
    }

    /// Forgets the session with this device (tests, or a reset forced by the operator).
    pub fn forget_session(&mut self, device: &Jid) {
        let key = device.signal_address();
        self.sessions.remove(&key);
        self.dirty.sessions.insert(key);
    }

    /// The session under a Signal address.
    pub(crate) fn session_at(&self, address: &str) -> Option<&SessionRecord> {
        self.sessions.get(address)
    }

    pub(crate) fn put_session(&mut self, address: String, record: SessionRecord) {
        self.dirty.sessions.insert(address.clone());
        self.sessions.insert(address, record);
    }

    /// The remote identity keys on record, by Signal address.
    pub(crate) fn identities(&self) -> &BTreeMap<String, PublicKey> {
        &self.identities
    }

    pub(crate) fn put_identity(&mut self, address: String, key: PublicKey) {
        if self.identities.get(&address) != Some(&key) {
            self.dirty.identities.insert(address.clone());
            self.identities.insert(address, key);
        }
    }

    /// A sender key record by group JID and sender Signal address.
    pub(crate) fn sender_key_at(&self, group: &str, sender: &str) -> Option<&SenderKeyRecord> {
        self.sender_keys.get(group)?.get(sender)
    }

    pub(crate) fn put_sender_key(
        &mut self,
        group: String,
        sender: String,
        record: SenderKeyRecord,
    ) {
        self.dirty
            .sender_keys
            .insert((group.clone(), sender.clone()));
        self.sender_keys
            .entry(group)
            .or_default()
            .insert(sender, record);
    }

    /// Removes a sender key record; whether there was one.
    pub(crate) fn remove_sender_key(&mut self, group: &str, sender: &str) -> bool {
        let Some(records) = self.sender_keys.get_mut(group) else {
            return false;
        };
        let had = records.remove(sender).is_some();
        if records.is_empty() {
            self.sender_keys.remove(group);
        }
        if had {
            self.dirty
                .sender_keys
                .insert((group.to_owned(), sender.to_owned()));
        }
        had
    }

    pub(crate) fn put_device_list(&mut self, user: String, list: DeviceList) {
        self.dirty.devices.insert(user.clone());
        self.devices.insert(user, list);
    }

    /// Drops the cached device list of `user`; whether there was one.
    pub(crate) fn remove_device_list(&mut self, user: &str) -> bool {
        let had = self.devices.remove(user).is_some();
        if had {
            self.dirty.devices.insert(user.to_owned());
        }
        had
    }

    /// The devices (JIDs) of `group` that have our current sender key.
    pub(crate) fn sender_key_sent(&self, group: &str) -> Option<&BTreeSet<String>> {
        self.sender_key_sent.get(group)
    }

    pub(crate) fn mark_sender_key_sent(&mut self, group: &str, device: String) {
        let set = self.sender_key_sent.entry(group.to_owned()).or_default();
        if set.insert(device) {
            self.dirty.sender_key_sent.insert(group.to_owned());
        }
    }

    /// Nobody in `group` has our (new) sender key.
    pub(crate) fn clear_sender_key_sent(&mut self, group: &str) {
        if self.sender_key_sent.remove(group).is_some() {
            self.dirty.sender_key_sent.insert(group.to_owned());
        }
    }

    /// Records that a `pkmsg` consumed one-time prekey `id` (the caller removes it from its
    /// list).
    pub(crate) fn note_pre_key_used(&mut self, id: u32) {
        self.dirty.pre_keys_used.push(id);
    }

    /// What changed since the last call (or since the state was loaded or created), and
    /// forgets it: the next call reports only later changes.
    pub fn take_changes(&mut self) -> StateChanges {
        let dirty = std::mem::take(&mut self.dirty);
        StateChanges {
            sessions: dirty
                .sessions
                .into_iter()
                .map(|k| {
                    let v = self.sessions.get(&k).cloned();
                    (k, v)
                })
                .collect(),
            identities: dirty
                .identities
                .into_iter()
                .filter_map(|k| {
                    let v = *self.identities.get(&k)?;
                    Some((k, v))
                })
                .collect(),
            sender_keys: dirty
                .sender_keys
                .into_iter()
                .map(|(g, s)| {
                    let v = self.sender_key_at(&g, &s).cloned();
                    (g, s, v)
                })
                .collect(),
            devices: dirty
                .devices
                .into_iter()
                .map(|k| {
                    let v = self.devices.get(&k).cloned();
                    (k, v)
                })
                .collect(),
            sender_key_sent: dirty
                .sender_key_sent
                .into_iter()
                .map(|k| {
                    let v = self.sender_key_sent.get(&k).cloned();
                    (k, v)
                })
                .collect(),
            inbound: if dirty.caches_overflowed {
                self.recent_inbound.iter().cloned().collect()
            } else {
                dirty.inbound
            },
            outbound: if dirty.caches_overflowed {
                self.recent_outbound.iter().cloned().collect()
            } else {
                dirty.outbound
            },
            caches_replaced: dirty.caches_overflowed,
            pre_keys_used: dirty.pre_keys_used,
        }
    }

    /// Applies changes taken from this state's successor (a journal replayed onto the
    /// snapshot it extends). Nothing is recorded as changed: the result is what was saved.
    pub fn apply(&mut self, changes: StateChanges) {
        for (k, v) in changes.sessions {
            match v {
                Some(v) => self.sessions.insert(k, v),
                None => self.sessions.remove(&k),
            };
        }
        self.identities.extend(changes.identities);
        for (g, s, v) in changes.sender_keys {
            match v {
                Some(v) => {
                    self.sender_keys.entry(g).or_default().insert(s, v);
                }
                None => {
                    self.remove_sender_key(&g, &s);
                }
            }
        }
        for (k, v) in changes.devices {
            match v {
                Some(v) => self.devices.insert(k, v),
                None => self.devices.remove(&k),
            };
        }
        for (k, v) in changes.sender_key_sent {
            match v {
                Some(v) => self.sender_key_sent.insert(k, v),
                None => self.sender_key_sent.remove(&k),
            };
        }
        if changes.caches_replaced {
            self.recent_inbound.clear();
            self.recent_outbound.clear();
        }
        for entry in changes.inbound {
            self.remember_inbound(entry);
        }
        for entry in changes.outbound {
            self.remember_outbound(entry);
        }
        self.dirty = Dirty::default();
    }

    /// The identity key on record for this device.
    pub fn remote_identity(&self, device: &Jid) -> Option<PublicKey> {
        self.identities.get(&device.signal_address()).copied()
    }

    /// The sender key record of `sender` (a device) in `group`.
    pub fn sender_key(&self, group: &Jid, sender: &Jid) -> Option<&SenderKeyRecord> {
        self.sender_keys
            .get(&group.to_string())?
            .get(&sender.signal_address())
    }

    /// The cached device list of `user`.
    pub fn device_list(&self, user: &Jid) -> Option<&DeviceList> {
        self.devices.get(&user.to_non_ad().to_string())
    }

    pub(crate) fn remember_inbound(&mut self, entry: RecentInbound) {
        if self.dirty.inbound.len() < RECENT_INBOUND {
            self.dirty.inbound.push(entry.clone());
        } else {
            self.dirty.caches_overflowed = true;
        }
        self.recent_inbound.push_back(entry);
        while self.recent_inbound.len() > RECENT_INBOUND {
            self.recent_inbound.pop_front();
        }
    }

    pub(crate) fn find_inbound(
        &self,
        from: &str,
        participant: Option<&str>,
        id: &str,
    ) -> Option<&RecentInbound> {
        self.recent_inbound
            .iter()
            .rev()
            .find(|r| r.id == id && r.from == from && r.participant.as_deref() == participant)
    }

    pub(crate) fn remember_outbound(&mut self, entry: RecentOutbound) {
        if self.dirty.outbound.len() < RECENT_OUTBOUND {
            self.dirty.outbound.push(entry.clone());
        } else {
            self.dirty.caches_overflowed = true;
        }
        self.recent_outbound.retain(|r| r.id != entry.id);
        self.recent_outbound.push_back(entry);
        while self.recent_outbound.len() > RECENT_OUTBOUND {
            self.recent_outbound.pop_front();
        }
    }

    pub(crate) fn find_outbound(&self, id: &str) -> Option<&RecentOutbound> {
        self.recent_outbound.iter().rev().find(|r| r.id == id)
    }

    pub(crate) fn find_outbound_by_reference(&self, key: &str) -> Option<&RecentOutbound> {
        self.recent_outbound
            .iter()
            .rev()
            .find(|r| r.reference.as_ref().is_some_and(|k| k.key == key))
    }
}

/// What the messenger may read and change for one call: our identity (read-only), the
/// one-time prekeys (a `pkmsg` consumes one) and the [`SignalState`].
pub struct Keys<'a> {
    /// Our identity key, registration id, signed prekey and account (`device-identity`).
    pub identity: &'a DeviceIdentity,
    /// Our unconsumed one-time prekeys.
    pub pre_keys: &'a mut Vec<PreKey>,
    /// Sessions, sender keys, caches.
    pub signal: &'a mut SignalState,
}

impl std::fmt::Debug for Keys<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("pre_keys", &self.pre_keys.len())
            .field("signal", &self.signal)
            .finish_non_exhaustive()
    }
}

/// The Signal address of a device JID.
pub(crate) fn address(device: &Jid) -> ProtocolAddress {
    let full = device.signal_address();
    match full.rsplit_once('.') {
        Some((name, dev)) => ProtocolAddress::new(name, dev.parse().unwrap_or(0)),
        None => ProtocolAddress::new(full, 0),
    }
}

/// Our identity as `wafleet_signal` wants it, over the known remote identities.
pub(crate) struct Identities<'a> {
    pair: IdentityKeyPair,
    registration_id: u32,
    known: &'a BTreeMap<String, PublicKey>,
}

impl<'a> Identities<'a> {
    pub(crate) fn new(identity: &DeviceIdentity, known: &'a BTreeMap<String, PublicKey>) -> Self {
        Identities {
            pair: identity_pair(identity),
            registration_id: identity.registration_id,
            known,
        }
    }
}

pub(crate) fn identity_pair(identity: &DeviceIdentity) -> IdentityKeyPair {
    IdentityKeyPair(KeyPair {
        public: PublicKey(identity.identity_key.public),
        private: identity.identity_key.private,
    })
}

impl IdentityKeyStore for Identities<'_> {
    fn identity_key_pair(&self) -> &IdentityKeyPair {
        &self.pair
    }
    fn local_registration_id(&self) -> u32 {
        self.registration_id
    }
    fn identity(&self, address: &ProtocolAddress) -> Option<PublicKey> {
        self.known.get(&address.to_string()).copied()
    }
    /// WhatsApp accepts a changed identity (the peer reinstalled): the new session replaces
    /// the old one and the new key is recorded.
    fn is_trusted_identity(&self, _address: &ProtocolAddress, _identity: &PublicKey) -> bool {
        true
    }
}

/// The one prekey a `pkmsg` names, and our signed prekey.
pub(crate) struct PreKeys {
    one_time: Option<PreKeyRecord>,
    signed: SignedPreKeyRecord,
}

impl PreKeys {
    pub(crate) fn new(identity: &DeviceIdentity, pre_keys: &[PreKey], wanted: Option<u32>) -> Self {
        let one_time = wanted
            .and_then(|id| pre_keys.iter().find(|k| k.id == id))
            .map(|k| PreKeyRecord {
                id: k.id,
                key_pair: KeyPair {
                    public: PublicKey(k.key_pair.public),
                    private: k.key_pair.private,
                },
            });
        let spk = &identity.signed_pre_key;
        PreKeys {
            one_time,
            signed: SignedPreKeyRecord {
                id: spk.id,
                key_pair: KeyPair {
                    public: PublicKey(spk.key_pair.public),
                    private: spk.key_pair.private,
                },
                signature: spk.signature.clone(),
            },
        }
    }
}

impl PreKeyStore for PreKeys {
    fn pre_key(&self, id: u32) -> Option<&PreKeyRecord> {
        self.one_time.as_ref().filter(|k| k.id == id)
    }
    fn signed_pre_key(&self, id: u32) -> Option<&SignedPreKeyRecord> {
        (self.signed.id == id).then_some(&self.signed)
    }
}

mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}
