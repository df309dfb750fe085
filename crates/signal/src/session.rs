//! 1:1 sessions: X3DH setup from a prekey bundle, the double ratchet, `pkmsg`/`msg`.
//!
//! Everything here is a pure function from the current [`SessionRecord`] (and read-only store
//! views) to a new record plus an output. Nothing is committed on error: a failed decryption
//! leaves the caller's record untouched, so a forged message cannot consume keys.

use crate::address::ProtocolAddress;
use crate::crypto::{
    aes_cbc_decrypt, aes_cbc_encrypt_into, cbc_ciphertext_len, chain_step, derive_secrets,
    message_keys, verify_truncated_hmac, Salt,
};
use crate::error::SignalError;
use crate::keys::{KeyPair, PreKeyBundle, PublicKey};
use crate::message::{CiphertextMessage, PreKeyWhisperMessage, WhisperMessage, VERSION_BYTE};
use crate::store::{IdentityKeyStore, PreKeyStore};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;

/// How far ahead of its chain a message may be (libsignal-node's bound).
pub const MAX_FORWARD_JUMPS: u32 = 2000;
/// Skipped message keys kept per receiving chain (oldest dropped first).
pub const MAX_SKIPPED_KEYS: usize = 2000;
/// Receiving chains kept per session state before spent ones (closed, no skipped keys
/// left) are dropped, oldest first.
pub const MAX_RECEIVER_CHAINS: usize = 5;
/// Receiving chains kept at most, spent or not (oldest dropped first). libsignal-node never
/// drops a receiving chain, so a message that arrives after several ratchet steps still
/// decrypts there; keeping chains that still hold skipped keys (up to this bound) lets it
/// decrypt here too. Worst case per session: 16 × 2,000 skipped keys.
pub const MAX_RECEIVER_CHAINS_HARD: usize = 16;
/// Previous session states kept per record (libsignal-node keeps 40 closed sessions).
pub const MAX_PREVIOUS_STATES: usize = 40;
/// Version of the serialized [`SessionRecord`] format.
pub const SESSION_RECORD_VERSION: u32 = 1;

const WHISPER_TEXT: &[u8; 11] = b"WhisperText";
const WHISPER_RATCHET: &[u8; 14] = b"WhisperRatchet";
const WHISPER_MESSAGE_KEYS: &[u8; 18] = b"WhisperMessageKeys";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Chain {
    /// `None` once the chain is closed (we moved past it).
    key: Option<[u8; 32]>,
    /// Index of the next message key this chain will produce.
    next: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ReceiverChain {
    ratchet_key: PublicKey,
    chain: Chain,
    skipped: SkippedKeys,
}

/// Message-key seeds of a receiving chain's skipped messages, by chain index, oldest first,
/// at most [`MAX_SKIPPED_KEYS`] (the oldest dropped first). Shared between the record an
/// operation takes and the one it returns until one of them changes, so returning a new
/// record does not copy up to 2,000 keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
struct SkippedKeys(Arc<VecDeque<(u32, [u8; 32])>>);

impl SkippedKeys {
    fn push(&mut self, index: u32, seed: [u8; 32]) {
        let keys = Arc::make_mut(&mut self.0);
        keys.push_back((index, seed));
        if keys.len() > MAX_SKIPPED_KEYS {
            keys.pop_front();
        }
    }

    /// Removes and returns the seed for chain index `index`, if it is held.
    fn take(&mut self, index: u32) -> Option<[u8; 32]> {
        let pos = self.0.iter().position(|(i, _)| *i == index)?;
        Arc::make_mut(&mut self.0).remove(pos).map(|(_, seed)| seed)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PendingPreKey {
    pre_key_id: Option<u32>,
    signed_pre_key_id: u32,
    base_key: PublicKey,
}

/// One ratchet session with a remote device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    remote_registration_id: u32,
    remote_identity: PublicKey,
    local_identity: PublicKey,
    base_key: PublicKey,
    base_key_ours: bool,
    root_key: [u8; 32],
    our_ratchet: KeyPair,
    their_ratchet: PublicKey,
    previous_counter: u32,
    sender_chain: Option<Chain>,
    receiver_chains: Vec<ReceiverChain>,
    pending_pre_key: Option<PendingPreKey>,
}

impl SessionState {
    /// The remote device's identity key.
    pub fn remote_identity(&self) -> &PublicKey {
        &self.remote_identity
    }
    /// The remote device's registration id.
    pub fn remote_registration_id(&self) -> u32 {
        self.remote_registration_id
    }
    /// The X3DH base key that identifies this session.
    pub fn base_key(&self) -> &PublicKey {
        &self.base_key
    }
    /// Whether we still wrap outgoing messages as `pkmsg` (no reply received yet).
    pub fn has_pending_pre_key(&self) -> bool {
        self.pending_pre_key.is_some()
    }
    /// Total skipped message keys held.
    pub fn skipped_key_count(&self) -> usize {
        self.receiver_chains.iter().map(|c| c.skipped.len()).sum()
    }
}

/// All sessions with one remote device: the current one and previous ones (kept so that
/// messages still in flight on an older session decrypt after a peer re-keys).
///
/// Cloning is cheap where it matters: the previous sessions (up to
/// [`MAX_PREVIOUS_STATES`]) are shared between the record an operation takes and the one it
/// returns until one of them changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    version: u32,
    current: Option<SessionState>,
    previous: Arc<VecDeque<SessionState>>,
}

impl Default for SessionRecord {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionRecord {
    /// An empty record (no session yet).
    pub fn new() -> Self {
        Self {
            version: SESSION_RECORD_VERSION,
            current: None,
            previous: Arc::default(),
        }
    }
    /// The current session, if any.
    pub fn current(&self) -> Option<&SessionState> {
        self.current.as_ref()
    }
    /// Previous sessions, most recent first.
    pub fn previous(&self) -> impl Iterator<Item = &SessionState> {
        self.previous.iter()
    }
    /// Whether there is a current session to encrypt with.
    pub fn has_current_session(&self) -> bool {
        self.current.is_some()
    }
    /// Returns a record whose current session (if any) is archived as a previous one.
    pub fn archive_current(&self) -> Self {
        let mut r = self.clone();
        r.promote(None);
        r
    }
    fn promote(&mut self, state: Option<SessionState>) {
        if let Some(old) = self.current.take() {
            let previous = Arc::make_mut(&mut self.previous);
            previous.push_front(old);
            previous.truncate(MAX_PREVIOUS_STATES);
        }
        self.current = state;
    }
    /// Serializes the record (versioned JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records serialize")
    }
    /// Reads a record written by [`SessionRecord::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignalError> {
        let r: Self =
            serde_json::from_slice(bytes).map_err(|e| SignalError::InvalidRecord(e.to_string()))?;
        if r.version != SESSION_RECORD_VERSION {
            return Err(SignalError::InvalidRecord(format!(
                "unsupported session record version {}",
                r.version
            )));
        }
        Ok(r)
    }
}

fn check_trust(
    store: &impl IdentityKeyStore,
    address: &ProtocolAddress,
    identity: &PublicKey,
) -> Result<Option<PublicKey>, SignalError> {
    if !store.is_trusted_identity(address, identity) {
        return Err(SignalError::UntrustedIdentity(address.to_string()));
    }
    Ok(match store.identity(address) {
        None => Some(*identity),
        Some(_) => None,
    })
}

/// The result of [`process_prekey_bundle`].
#[derive(Clone, Debug)]
pub struct SessionSetup {
    /// The new record to persist (the previous current session is archived).
    pub record: SessionRecord,
    /// The remote identity, if it was not on record yet: persist it as trusted.
    pub new_identity: Option<PublicKey>,
}

/// Starts a session as the initiator from the remote device's prekey bundle (X3DH, no PQ).
/// The next [`encrypt`] produces a `pkmsg`.
pub fn process_prekey_bundle(
    record: &SessionRecord,
    address: &ProtocolAddress,
    store: &impl IdentityKeyStore,
    bundle: &PreKeyBundle,
    rng: &mut impl CryptoRngCore,
) -> Result<SessionSetup, SignalError> {
    let new_identity = check_trust(store, address, &bundle.identity_key)?;
    bundle.verify_signature()?;
    let ours = store.identity_key_pair().key_pair();
    let base = KeyPair::generate(rng);

    let mut secret = Vec::with_capacity(160);
    secret.extend_from_slice(&[0xff; 32]);
    secret.extend_from_slice(&ours.agree(&bundle.signed_pre_key));
    secret.extend_from_slice(&base.agree(&bundle.identity_key));
    secret.extend_from_slice(&base.agree(&bundle.signed_pre_key));
    if let Some((_, one_time)) = &bundle.pre_key {
        secret.extend_from_slice(&base.agree(one_time));
    }
    let [root, _]: [[u8; 32]; 2] = derive_secrets(&secret, Salt::Zero, WHISPER_TEXT);

    let our_ratchet = KeyPair::generate(rng);
    let [root, sending]: [[u8; 32]; 2] = derive_secrets(
        &our_ratchet.agree(&bundle.signed_pre_key),
        Salt::Key(&root),
        WHISPER_RATCHET,
    );
    let state = SessionState {
        remote_registration_id: bundle.registration_id,
        remote_identity: bundle.identity_key,
        local_identity: ours.public,
        base_key: base.public,
        base_key_ours: true,
        root_key: root,
        our_ratchet,
        their_ratchet: bundle.signed_pre_key,
        previous_counter: 0,
        sender_chain: Some(Chain {
            key: Some(sending),
            next: 0,
        }),
        receiver_chains: Vec::new(),
        pending_pre_key: Some(PendingPreKey {
            pre_key_id: bundle.pre_key.map(|(id, _)| id),
            signed_pre_key_id: bundle.signed_pre_key_id,
            base_key: base.public,
        }),
    };
    let mut record = record.clone();
    record.promote(Some(state));
    Ok(SessionSetup {
        record,
        new_identity,
    })
}

/// Encrypts `plaintext` (already padded by the caller, see [`crate::padding`]) with the
/// current session. Returns the new record to persist *before* the ciphertext is sent.
pub fn encrypt(
    record: &SessionRecord,
    address: &ProtocolAddress,
    store: &impl IdentityKeyStore,
    plaintext: &[u8],
) -> Result<(SessionRecord, CiphertextMessage), SignalError> {
    let mut record = record.clone();
    let state = record.current.as_mut().ok_or(SignalError::NoSession)?;
    if !store.is_trusted_identity(address, &state.remote_identity) {
        return Err(SignalError::UntrustedIdentity(address.to_string()));
    }
    let chain = state.sender_chain.as_mut().ok_or(SignalError::NoSession)?;
    let chain_key = chain.key.ok_or(SignalError::NoSession)?;
    let counter = chain.next;
    chain.next = counter
        .checked_add(1)
        .ok_or(SignalError::InvalidMessage("sending chain exhausted"))?;
    let (seed, next) = chain_step(&chain_key);
    chain.key = Some(next);
    let keys = message_keys(&seed, WHISPER_MESSAGE_KEYS);
    let local = state.local_identity.serialize();
    let remote = state.remote_identity.serialize();
    let msg = WhisperMessage::build(
        state.our_ratchet.public,
        counter,
        state.previous_counter,
        cbc_ciphertext_len(plaintext.len()),
        |out| aes_cbc_encrypt_into(&keys.cipher, &keys.iv, plaintext, out),
        |body| keys.mac.mac(&[&local, &remote, &[VERSION_BYTE], body]),
    );
    let out = match &state.pending_pre_key {
        Some(p) => CiphertextMessage::PreKey(PreKeyWhisperMessage::build(
            store.local_registration_id(),
            p.pre_key_id,
            p.signed_pre_key_id,
            p.base_key,
            state.local_identity,
            msg,
        )),
        None => CiphertextMessage::Whisper(msg),
    };
    Ok((record, out))
}

/// The result of [`decrypt`].
#[derive(Clone, Debug)]
pub struct Decrypted {
    /// The new record to persist *before* acking the message.
    pub record: SessionRecord,
    /// The plaintext (still padded; see [`crate::padding`]).
    pub plaintext: Vec<u8>,
    /// A one-time prekey this `pkmsg` consumed: remove it once the record is persisted.
    pub consumed_pre_key: Option<u32>,
    /// The sender's identity, if it was not on record yet: persist it as trusted.
    pub new_identity: Option<PublicKey>,
}

/// Decrypts a `pkmsg` or `msg` from `address`.
pub fn decrypt(
    record: &SessionRecord,
    address: &ProtocolAddress,
    identities: &impl IdentityKeyStore,
    pre_keys: &impl PreKeyStore,
    message: &CiphertextMessage,
    rng: &mut impl CryptoRngCore,
) -> Result<Decrypted, SignalError> {
    match message {
        CiphertextMessage::Whisper(m) => decrypt_whisper(record, address, identities, m, rng),
        CiphertextMessage::PreKey(m) => {
            decrypt_prekey(record, address, identities, pre_keys, m, rng)
        }
    }
}

fn decrypt_whisper(
    record: &SessionRecord,
    address: &ProtocolAddress,
    identities: &impl IdentityKeyStore,
    msg: &WhisperMessage,
    rng: &mut impl CryptoRngCore,
) -> Result<Decrypted, SignalError> {
    // Try the current session, then the previous ones, each on its own copy; only the one
    // that decrypts goes into the new record.
    let mut first_err = None;
    let slots = record.current.iter().map(|s| (None, s));
    let slots = slots.chain(
        record
            .previous
            .iter()
            .enumerate()
            .map(|(i, s)| (Some(i), s)),
    );
    for (previous_index, original) in slots {
        let mut state = original.clone();
        match decrypt_with_state(&mut state, msg, rng) {
            Ok(plaintext) => {
                let new_identity = check_trust(identities, address, &state.remote_identity)?;
                let record = match previous_index {
                    None => SessionRecord {
                        version: record.version,
                        current: Some(state),
                        previous: Arc::clone(&record.previous),
                    },
                    Some(i) => {
                        let mut record = record.clone();
                        Arc::make_mut(&mut record.previous)[i] = state;
                        record
                    }
                };
                return Ok(Decrypted {
                    record,
                    plaintext,
                    consumed_pre_key: None,
                    new_identity,
                });
            }
            Err(e @ SignalError::DuplicateMessage(_)) => return Err(e),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or(SignalError::NoSession))
}

fn decrypt_prekey(
    record: &SessionRecord,
    address: &ProtocolAddress,
    identities: &impl IdentityKeyStore,
    pre_keys: &impl PreKeyStore,
    msg: &PreKeyWhisperMessage,
    rng: &mut impl CryptoRngCore,
) -> Result<Decrypted, SignalError> {
    let new_identity = check_trust(identities, address, &msg.identity_key)?;
    let is_this_session = |s: &SessionState| !s.base_key_ours && s.base_key == msg.base_key;

    // A session from this very pkmsg already exists: we just have not replied yet.
    let mut record = record.clone();
    let existing = if record.current.as_ref().is_some_and(is_this_session) {
        record.current.as_mut()
    } else {
        match record.previous.iter().position(is_this_session) {
            Some(i) => Arc::make_mut(&mut record.previous).get_mut(i),
            None => None,
        }
    };
    if let Some(state) = existing {
        let mut updated = state.clone();
        let plaintext = decrypt_with_state(&mut updated, &msg.message, rng)?;
        *state = updated;
        return Ok(Decrypted {
            record,
            plaintext,
            consumed_pre_key: None,
            new_identity,
        });
    }

    let one_time = match msg.pre_key_id {
        Some(id) => Some(
            pre_keys
                .pre_key(id)
                .ok_or(SignalError::InvalidPreKeyId(id))?,
        ),
        None => None,
    };
    let signed = pre_keys
        .signed_pre_key(msg.signed_pre_key_id)
        .ok_or(SignalError::InvalidSignedPreKeyId(msg.signed_pre_key_id))?;
    let ours = identities.identity_key_pair().key_pair();

    let mut secret = Vec::with_capacity(160);
    secret.extend_from_slice(&[0xff; 32]);
    secret.extend_from_slice(&signed.key_pair.agree(&msg.identity_key));
    secret.extend_from_slice(&ours.agree(&msg.base_key));
    secret.extend_from_slice(&signed.key_pair.agree(&msg.base_key));
    if let Some(pk) = one_time {
        secret.extend_from_slice(&pk.key_pair.agree(&msg.base_key));
    }
    let [root, _]: [[u8; 32]; 2] = derive_secrets(&secret, Salt::Zero, WHISPER_TEXT);
    let mut state = SessionState {
        remote_registration_id: msg.registration_id,
        remote_identity: msg.identity_key,
        local_identity: ours.public,
        base_key: msg.base_key,
        base_key_ours: false,
        root_key: root,
        our_ratchet: signed.key_pair.clone(),
        their_ratchet: msg.base_key,
        previous_counter: 0,
        sender_chain: None,
        receiver_chains: Vec::new(),
        pending_pre_key: None,
    };
    let plaintext = decrypt_with_state(&mut state, &msg.message, rng)?;
    record.promote(Some(state));
    Ok(Decrypted {
        record,
        plaintext,
        consumed_pre_key: msg.pre_key_id,
        new_identity,
    })
}

/// Steps the ratchet if needed and decrypts; mutates `state` (the caller's scratch copy).
fn decrypt_with_state(
    state: &mut SessionState,
    msg: &WhisperMessage,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, SignalError> {
    let idx = match state
        .receiver_chains
        .iter()
        .position(|c| c.ratchet_key == msg.ephemeral_key)
    {
        Some(i) => i,
        None => {
            if msg.ephemeral_key == state.our_ratchet.public {
                return Err(SignalError::InvalidMessage(
                    "message on our own sending chain",
                ));
            }
            step_ratchet(state, msg, rng)?
        }
    };
    let chain = &mut state.receiver_chains[idx];
    let seed = if msg.counter < chain.chain.next {
        chain
            .skipped
            .take(msg.counter)
            .ok_or(SignalError::DuplicateMessage(msg.counter))?
    } else {
        let key = chain.chain.key.ok_or(SignalError::ChainClosed)?;
        let seed = advance(chain, key, msg.counter)?;
        chain.chain.key = Some(seed.1);
        chain.chain.next = msg.counter + 1;
        seed.0
    };
    let keys = message_keys(&seed, WHISPER_MESSAGE_KEYS);
    let remote = state.remote_identity.serialize();
    let local = state.local_identity.serialize();
    if !verify_truncated_hmac(
        &keys.mac,
        &[&remote, &local, &[VERSION_BYTE], msg.body()],
        msg.mac(),
    ) {
        return Err(SignalError::BadMac);
    }
    let plaintext = aes_cbc_decrypt(&keys.cipher, &keys.iv, msg.ciphertext())?;
    state.pending_pre_key = None;
    Ok(plaintext)
}

/// Derives message keys from `key` (the chain key at index `chain.next`) up to `target`,
/// storing the skipped ones; returns (seed at `target`, chain key after `target`).
fn advance(
    chain: &mut ReceiverChain,
    mut key: [u8; 32],
    target: u32,
) -> Result<([u8; 32], [u8; 32]), SignalError> {
    let current = chain.chain.next;
    if target - current > MAX_FORWARD_JUMPS {
        return Err(SignalError::TooFarInFuture {
            current,
            index: target,
            limit: MAX_FORWARD_JUMPS,
        });
    }
    for i in current..target {
        let (seed, next) = chain_step(&key);
        chain.skipped.push(i, seed);
        key = next;
    }
    Ok(chain_step(&key))
}

/// Drops receiving chains beyond [`MAX_RECEIVER_CHAINS`]: first those that can no longer
/// decrypt anything (closed, no skipped keys), oldest first; then, beyond
/// [`MAX_RECEIVER_CHAINS_HARD`], the oldest of any kind. The newest chain is never dropped.
fn prune_receiver_chains(chains: &mut Vec<ReceiverChain>) {
    while chains.len() > MAX_RECEIVER_CHAINS {
        let spent = chains[..chains.len() - 1]
            .iter()
            .position(|c| c.chain.key.is_none() && c.skipped.is_empty());
        match spent {
            Some(i) => {
                chains.remove(i);
            }
            None if chains.len() > MAX_RECEIVER_CHAINS_HARD => {
                chains.remove(0);
            }
            None => break,
        }
    }
}

/// A new ratchet key from the peer: close its previous chain (keeping skipped keys up to
/// `previous_counter`), derive the new receiving chain and a fresh sending chain.
fn step_ratchet(
    state: &mut SessionState,
    msg: &WhisperMessage,
    rng: &mut impl CryptoRngCore,
) -> Result<usize, SignalError> {
    let their_old = state.their_ratchet;
    if let Some(prev) = state
        .receiver_chains
        .iter_mut()
        .find(|c| c.ratchet_key == their_old)
    {
        // libsignal-node sends 0xffffffff (-1) when it never used the previous chain.
        if msg.previous_counter != u32::MAX {
            if let Some(key) = prev.chain.key {
                if msg.previous_counter >= prev.chain.next {
                    let (seed, next) = advance(prev, key, msg.previous_counter)?;
                    prev.skipped.push(msg.previous_counter, seed);
                    prev.chain.key = Some(next);
                    prev.chain.next = msg.previous_counter + 1;
                }
            }
        }
        prev.chain.key = None;
    }
    let [root, receiving]: [[u8; 32]; 2] = derive_secrets(
        &state.our_ratchet.agree(&msg.ephemeral_key),
        Salt::Key(&state.root_key),
        WHISPER_RATCHET,
    );
    state.receiver_chains.push(ReceiverChain {
        ratchet_key: msg.ephemeral_key,
        chain: Chain {
            key: Some(receiving),
            next: 0,
        },
        skipped: SkippedKeys::default(),
    });
    prune_receiver_chains(&mut state.receiver_chains);
    if let Some(sending) = state.sender_chain.take() {
        state.previous_counter = sending.next.saturating_sub(1);
    }
    state.our_ratchet = KeyPair::generate(rng);
    let [root, sending]: [[u8; 32]; 2] = derive_secrets(
        &state.our_ratchet.agree(&msg.ephemeral_key),
        Salt::Key(&root),
        WHISPER_RATCHET,
    );
    state.root_key = root;
    state.sender_chain = Some(Chain {
        key: Some(sending),
        next: 0,
    });
    state.their_ratchet = msg.ephemeral_key;
    Ok(state.receiver_chains.len() - 1)
}
