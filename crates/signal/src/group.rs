//! Sender keys for groups: SenderKeyDistributionMessage and SenderKeyMessage (`skmsg`).
//!
//! `skmsg` = `0x33 || SenderKeyMessage proto || XEdDSA signature (64)` over everything before
//! the signature; `skdm` = `0x33 || SenderKeyDistributionMessage proto`. Message keys come
//! from the chain (`HMAC(ck,01)`) through HKDF "WhisperGroup": IV = first 16 bytes, key = the
//! next 32.

use crate::crypto::{aes_cbc_decrypt, aes_cbc_encrypt, chain_step, derive_secrets, Salt};
use crate::error::SignalError;
use crate::keys::{KeyPair, PublicKey};
use crate::message::{check_version, VERSION_BYTE};
use crate::proto;
use prost::Message;
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Sender key states kept per (group, sender) record.
pub const MAX_SENDER_KEY_STATES: usize = 5;
/// Skipped message keys kept per sender key state.
pub const MAX_SENDER_MESSAGE_KEYS: usize = 2000;
/// How far ahead of the chain an `skmsg` may be.
pub const MAX_SENDER_FORWARD_JUMPS: u32 = 2000;
/// Version of the serialized [`SenderKeyRecord`] format.
pub const SENDER_KEY_RECORD_VERSION: u32 = 1;
const SIGNATURE_LEN: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SenderKeyState {
    key_id: u32,
    iteration: u32,
    chain_key: [u8; 32],
    signing_public: PublicKey,
    signing_private: Option<[u8; 32]>,
    message_keys: VecDeque<(u32, [u8; 32])>,
}

/// The sender key states of one sender in one group (ours, or a member's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderKeyRecord {
    version: u32,
    /// Oldest first.
    states: VecDeque<SenderKeyState>,
}

impl Default for SenderKeyRecord {
    fn default() -> Self {
        Self::new()
    }
}

impl SenderKeyRecord {
    /// An empty record.
    pub fn new() -> Self {
        Self {
            version: SENDER_KEY_RECORD_VERSION,
            states: VecDeque::new(),
        }
    }
    /// Whether the record has no state.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
    /// Key ids held, oldest first.
    pub fn key_ids(&self) -> Vec<u32> {
        self.states.iter().map(|s| s.key_id).collect()
    }
    /// Serializes the record (versioned JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records serialize")
    }
    /// Reads a record written by [`SenderKeyRecord::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignalError> {
        let r: Self =
            serde_json::from_slice(bytes).map_err(|e| SignalError::InvalidRecord(e.to_string()))?;
        if r.version != SENDER_KEY_RECORD_VERSION {
            return Err(SignalError::InvalidRecord(format!(
                "unsupported sender key record version {}",
                r.version
            )));
        }
        Ok(r)
    }
}

/// A SenderKeyDistributionMessage (sent to each member inside a 1:1 `pkmsg`/`msg`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderKeyDistributionMessage {
    /// Sender key id.
    pub key_id: u32,
    /// Chain iteration of `chain_key`.
    pub iteration: u32,
    /// The chain key at `iteration`.
    pub chain_key: [u8; 32],
    /// The sender's signing key for `skmsg`.
    pub signing_key: PublicKey,
    serialized: Vec<u8>,
}

impl SenderKeyDistributionMessage {
    fn build(key_id: u32, iteration: u32, chain_key: [u8; 32], signing_key: PublicKey) -> Self {
        let p = proto::SenderKeyDistributionMessage {
            id: Some(key_id),
            iteration: Some(iteration),
            chain_key: Some(chain_key.to_vec()),
            signing_key: Some(signing_key.serialize().to_vec()),
        };
        let mut serialized = vec![VERSION_BYTE];
        p.encode(&mut serialized)
            .expect("Vec has unlimited capacity");
        Self {
            key_id,
            iteration,
            chain_key,
            signing_key,
            serialized,
        }
    }

    /// Parses `0x33 || proto`.
    pub fn parse(bytes: &[u8]) -> Result<Self, SignalError> {
        let (&version, body) = bytes
            .split_first()
            .ok_or(SignalError::InvalidMessage("empty message"))?;
        check_version(version)?;
        let p = proto::SenderKeyDistributionMessage::decode(body)
            .map_err(|_| SignalError::InvalidMessage("SenderKeyDistributionMessage protobuf"))?;
        let chain_key = <[u8; 32]>::try_from(
            p.chain_key
                .as_deref()
                .ok_or(SignalError::InvalidMessage("missing chain key"))?,
        )
        .map_err(|_| SignalError::InvalidMessage("chain key must be 32 bytes"))?;
        Ok(Self {
            key_id: p.id.ok_or(SignalError::InvalidMessage("missing key id"))?,
            iteration: p
                .iteration
                .ok_or(SignalError::InvalidMessage("missing iteration"))?,
            chain_key,
            signing_key: PublicKey::deserialize(
                p.signing_key
                    .as_deref()
                    .ok_or(SignalError::InvalidMessage("missing signing key"))?,
            )?,
            serialized: bytes.to_vec(),
        })
    }

    /// The wire bytes.
    pub fn serialize(&self) -> &[u8] {
        &self.serialized
    }
}

/// A parsed (or freshly built) SenderKeyMessage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderKeyMessage {
    /// Sender key id.
    pub key_id: u32,
    /// Chain iteration.
    pub iteration: u32,
    /// AES-256-CBC ciphertext.
    pub ciphertext: Vec<u8>,
    serialized: Vec<u8>,
}

impl SenderKeyMessage {
    /// Parses `0x33 || proto || signature(64)`; the signature is checked on decryption.
    pub fn parse(bytes: &[u8]) -> Result<Self, SignalError> {
        let (&version, _) = bytes
            .split_first()
            .ok_or(SignalError::InvalidMessage("empty message"))?;
        check_version(version)?;
        if bytes.len() < 1 + SIGNATURE_LEN {
            return Err(SignalError::InvalidMessage("message too short"));
        }
        let p = proto::SenderKeyMessage::decode(&bytes[1..bytes.len() - SIGNATURE_LEN])
            .map_err(|_| SignalError::InvalidMessage("SenderKeyMessage protobuf"))?;
        Ok(Self {
            key_id: p.id.ok_or(SignalError::InvalidMessage("missing key id"))?,
            iteration: p
                .iteration
                .ok_or(SignalError::InvalidMessage("missing iteration"))?,
            ciphertext: p
                .ciphertext
                .ok_or(SignalError::InvalidMessage("missing ciphertext"))?,
            serialized: bytes.to_vec(),
        })
    }

    /// The wire bytes.
    pub fn serialize(&self) -> &[u8] {
        &self.serialized
    }

    fn signed_part(&self) -> (&[u8], &[u8]) {
        self.serialized
            .split_at(self.serialized.len() - SIGNATURE_LEN)
    }
}

fn sender_message_keys(seed: &[u8; 32]) -> ([u8; 16], [u8; 32]) {
    let [d0, d1]: [[u8; 32]; 2] = derive_secrets(seed, Salt::Zero, b"WhisperGroup");
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&d0[..16]);
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(&d0[16..]);
    key[16..].copy_from_slice(&d1[..16]);
    (iv, key)
}

/// Our SenderKeyDistributionMessage for a group, creating our sender key if the record has
/// none of ours. Start from an empty record to rotate (e.g. after a member leaves).
pub fn create_sender_key_distribution(
    record: &SenderKeyRecord,
    rng: &mut impl CryptoRngCore,
) -> (SenderKeyRecord, SenderKeyDistributionMessage) {
    let mut record = record.clone();
    if record
        .states
        .back()
        .is_none_or(|s| s.signing_private.is_none())
    {
        let signing = KeyPair::generate(rng);
        let mut chain_key = [0u8; 32];
        rng.fill_bytes(&mut chain_key);
        record.states.clear();
        record.states.push_back(SenderKeyState {
            key_id: rng.next_u32() & 0x7fff_ffff,
            iteration: 0,
            chain_key,
            signing_public: signing.public,
            signing_private: Some(signing.private),
            message_keys: VecDeque::new(),
        });
    }
    let s = record.states.back().expect("just ensured");
    let msg =
        SenderKeyDistributionMessage::build(s.key_id, s.iteration, s.chain_key, s.signing_public);
    (record, msg)
}

/// Stores a member's sender key from their SenderKeyDistributionMessage.
pub fn process_sender_key_distribution(
    record: &SenderKeyRecord,
    msg: &SenderKeyDistributionMessage,
) -> SenderKeyRecord {
    let mut record = record.clone();
    let known = record
        .states
        .iter()
        .any(|s| s.key_id == msg.key_id && s.signing_public == msg.signing_key);
    if !known {
        record.states.push_back(SenderKeyState {
            key_id: msg.key_id,
            iteration: msg.iteration,
            chain_key: msg.chain_key,
            signing_public: msg.signing_key,
            signing_private: None,
            message_keys: VecDeque::new(),
        });
        while record.states.len() > MAX_SENDER_KEY_STATES {
            record.states.pop_front();
        }
    }
    record
}

/// Encrypts (already padded) `plaintext` for the group with our sender key.
pub fn group_encrypt(
    record: &SenderKeyRecord,
    plaintext: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<(SenderKeyRecord, SenderKeyMessage), SignalError> {
    let mut record = record.clone();
    let state = record
        .states
        .back_mut()
        .ok_or(SignalError::NoSenderKeyState(0))?;
    let private = state.signing_private.ok_or(SignalError::NoSigningKey)?;
    let iteration = state.iteration;
    let (seed, next) = chain_step(&state.chain_key);
    let (iv, key) = sender_message_keys(&seed);
    state.chain_key = next;
    state.iteration = iteration
        .checked_add(1)
        .ok_or(SignalError::InvalidMessage("sender chain exhausted"))?;
    let ciphertext = aes_cbc_encrypt(&key, &iv, plaintext);
    let p = proto::SenderKeyMessage {
        id: Some(state.key_id),
        iteration: Some(iteration),
        ciphertext: Some(ciphertext.clone()),
    };
    let mut serialized = vec![VERSION_BYTE];
    p.encode(&mut serialized)
        .expect("Vec has unlimited capacity");
    let signature = KeyPair::from_private(private).sign(&serialized, rng);
    serialized.extend_from_slice(&signature);
    let msg = SenderKeyMessage {
        key_id: state.key_id,
        iteration,
        ciphertext,
        serialized,
    };
    Ok((record, msg))
}

/// Decrypts a member's `skmsg`, verifying its signature.
pub fn group_decrypt(
    record: &SenderKeyRecord,
    skmsg: &[u8],
) -> Result<(SenderKeyRecord, Vec<u8>), SignalError> {
    let msg = SenderKeyMessage::parse(skmsg)?;
    let mut record = record.clone();
    let state = record
        .states
        .iter_mut()
        .rev()
        .find(|s| s.key_id == msg.key_id)
        .ok_or(SignalError::NoSenderKeyState(msg.key_id))?;
    let (signed, signature) = msg.signed_part();
    if !state.signing_public.verify(signed, signature) {
        return Err(SignalError::InvalidSignature);
    }
    let seed = if msg.iteration < state.iteration {
        let pos = state
            .message_keys
            .iter()
            .position(|(i, _)| *i == msg.iteration)
            .ok_or(SignalError::DuplicateMessage(msg.iteration))?;
        state
            .message_keys
            .remove(pos)
            .map(|(_, s)| s)
            .ok_or(SignalError::DuplicateMessage(msg.iteration))?
    } else {
        if msg.iteration - state.iteration > MAX_SENDER_FORWARD_JUMPS {
            return Err(SignalError::TooFarInFuture {
                current: state.iteration,
                index: msg.iteration,
                limit: MAX_SENDER_FORWARD_JUMPS,
            });
        }
        let mut ck = state.chain_key;
        for i in state.iteration..msg.iteration {
            let (seed, next) = chain_step(&ck);
            state.message_keys.push_back((i, seed));
            if state.message_keys.len() > MAX_SENDER_MESSAGE_KEYS {
                state.message_keys.pop_front();
            }
            ck = next;
        }
        let (seed, next) = chain_step(&ck);
        state.chain_key = next;
        state.iteration = msg.iteration + 1;
        seed
    };
    let (iv, key) = sender_message_keys(&seed);
    let plaintext = aes_cbc_decrypt(&key, &iv, &msg.ciphertext)?;
    Ok((record, plaintext))
}
