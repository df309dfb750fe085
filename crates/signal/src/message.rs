//! The 1:1 wire messages: WhisperMessage (`msg`) and PreKeyWhisperMessage (`pkmsg`).
//!
//! `msg`   = `0x33 || WhisperMessage proto || MAC[..8]`
//! `pkmsg` = `0x33 || PreKeyWhisperMessage proto` (its `message` field holds a whole `msg`).

use crate::error::SignalError;
use crate::keys::PublicKey;
use crate::proto;
use prost::Message;

/// The version byte: current version 3 in both nibbles.
pub const VERSION_BYTE: u8 = 0x33;
/// Length of the truncated MAC of a WhisperMessage.
pub const MAC_LEN: usize = 8;

pub(crate) fn check_version(byte: u8) -> Result<(), SignalError> {
    if byte >> 4 == 3 {
        Ok(())
    } else {
        Err(SignalError::UnsupportedVersion(byte))
    }
}

/// A parsed (or freshly built) WhisperMessage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhisperMessage {
    /// The sender's current ratchet key.
    pub ephemeral_key: PublicKey,
    /// Index of this message in the sender's chain.
    pub counter: u32,
    /// Index of the last message in the sender's previous chain.
    pub previous_counter: u32,
    /// AES-256-CBC ciphertext.
    pub ciphertext: Vec<u8>,
    serialized: Vec<u8>,
}

impl WhisperMessage {
    /// Parses `0x33 || proto || mac8`.
    pub fn parse(bytes: &[u8]) -> Result<Self, SignalError> {
        let (&version, _) = bytes
            .split_first()
            .ok_or(SignalError::InvalidMessage("empty message"))?;
        check_version(version)?;
        if bytes.len() < 1 + MAC_LEN {
            return Err(SignalError::InvalidMessage("message too short"));
        }
        let body = &bytes[1..bytes.len() - MAC_LEN];
        let p = proto::WhisperMessage::decode(body)
            .map_err(|_| SignalError::InvalidMessage("WhisperMessage protobuf"))?;
        let ephemeral_key = PublicKey::deserialize(
            p.ephemeral_key
                .as_deref()
                .ok_or(SignalError::InvalidMessage("missing ratchet key"))?,
        )?;
        Ok(Self {
            ephemeral_key,
            counter: p
                .counter
                .ok_or(SignalError::InvalidMessage("missing counter"))?,
            previous_counter: p.previous_counter.unwrap_or(0),
            ciphertext: p
                .ciphertext
                .ok_or(SignalError::InvalidMessage("missing ciphertext"))?,
            serialized: bytes.to_vec(),
        })
    }

    /// The proto part (between the version byte and the MAC).
    pub(crate) fn body(&self) -> &[u8] {
        &self.serialized[1..self.serialized.len() - MAC_LEN]
    }

    /// The 8-byte MAC.
    pub(crate) fn mac(&self) -> &[u8] {
        &self.serialized[self.serialized.len() - MAC_LEN..]
    }

    /// Builds the message; `mac` computes the 8-byte MAC over `version || proto`.
    pub(crate) fn build(
        ephemeral_key: PublicKey,
        counter: u32,
        previous_counter: u32,
        ciphertext: Vec<u8>,
        mac: impl FnOnce(&[u8]) -> [u8; 32],
    ) -> Self {
        let p = proto::WhisperMessage {
            ephemeral_key: Some(ephemeral_key.serialize().to_vec()),
            counter: Some(counter),
            previous_counter: Some(previous_counter),
            ciphertext: Some(ciphertext.clone()),
        };
        let mut serialized = Vec::with_capacity(p.encoded_len() + 1 + MAC_LEN);
        serialized.push(VERSION_BYTE);
        p.encode(&mut serialized)
            .expect("Vec has unlimited capacity");
        let tag = mac(&serialized[1..]);
        serialized.extend_from_slice(&tag[..MAC_LEN]);
        Self {
            ephemeral_key,
            counter,
            previous_counter,
            ciphertext,
            serialized,
        }
    }

    /// The wire bytes.
    pub fn serialize(&self) -> &[u8] {
        &self.serialized
    }
}

/// A parsed (or freshly built) PreKeyWhisperMessage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreKeyWhisperMessage {
    /// The sender's registration id.
    pub registration_id: u32,
    /// The one-time prekey used, if any.
    pub pre_key_id: Option<u32>,
    /// The signed prekey used.
    pub signed_pre_key_id: u32,
    /// The sender's X3DH base key.
    pub base_key: PublicKey,
    /// The sender's identity key.
    pub identity_key: PublicKey,
    /// The embedded WhisperMessage.
    pub message: WhisperMessage,
    serialized: Vec<u8>,
}

impl PreKeyWhisperMessage {
    /// Parses `0x33 || proto`.
    pub fn parse(bytes: &[u8]) -> Result<Self, SignalError> {
        let (&version, body) = bytes
            .split_first()
            .ok_or(SignalError::InvalidMessage("empty message"))?;
        check_version(version)?;
        let p = proto::PreKeyWhisperMessage::decode(body)
            .map_err(|_| SignalError::InvalidMessage("PreKeyWhisperMessage protobuf"))?;
        let key = |k: &Option<Vec<u8>>, what| {
            PublicKey::deserialize(k.as_deref().ok_or(SignalError::InvalidMessage(what))?)
        };
        Ok(Self {
            registration_id: p
                .registration_id
                .ok_or(SignalError::InvalidMessage("missing registration id"))?,
            pre_key_id: p.pre_key_id,
            signed_pre_key_id: p
                .signed_pre_key_id
                .ok_or(SignalError::InvalidMessage("missing signed prekey id"))?,
            base_key: key(&p.base_key, "missing base key")?,
            identity_key: key(&p.identity_key, "missing identity key")?,
            message: WhisperMessage::parse(
                p.message
                    .as_deref()
                    .ok_or(SignalError::InvalidMessage("missing inner message"))?,
            )?,
            serialized: bytes.to_vec(),
        })
    }

    pub(crate) fn build(
        registration_id: u32,
        pre_key_id: Option<u32>,
        signed_pre_key_id: u32,
        base_key: PublicKey,
        identity_key: PublicKey,
        message: WhisperMessage,
    ) -> Self {
        let p = proto::PreKeyWhisperMessage {
            registration_id: Some(registration_id),
            pre_key_id,
            signed_pre_key_id: Some(signed_pre_key_id),
            base_key: Some(base_key.serialize().to_vec()),
            identity_key: Some(identity_key.serialize().to_vec()),
            message: Some(message.serialize().to_vec()),
        };
        let mut serialized = Vec::with_capacity(p.encoded_len() + 1);
        serialized.push(VERSION_BYTE);
        p.encode(&mut serialized)
            .expect("Vec has unlimited capacity");
        Self {
            registration_id,
            pre_key_id,
            signed_pre_key_id,
            base_key,
            identity_key,
            message,
            serialized,
        }
    }

    /// The wire bytes.
    pub fn serialize(&self) -> &[u8] {
        &self.serialized
    }
}

/// A 1:1 ciphertext as it goes in `<enc type=…>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CiphertextMessage {
    /// `pkmsg`.
    PreKey(PreKeyWhisperMessage),
    /// `msg`.
    Whisper(WhisperMessage),
}

impl CiphertextMessage {
    /// Parses the content of `<enc type=…>` given its `type` attribute (`pkmsg` or `msg`).
    pub fn from_wire(enc_type: &str, bytes: &[u8]) -> Result<Self, SignalError> {
        match enc_type {
            "pkmsg" => PreKeyWhisperMessage::parse(bytes).map(Self::PreKey),
            "msg" => WhisperMessage::parse(bytes).map(Self::Whisper),
            _ => Err(SignalError::InvalidMessage("unknown enc type")),
        }
    }

    /// The `type` attribute: `pkmsg` or `msg`.
    pub fn enc_type(&self) -> &'static str {
        match self {
            Self::PreKey(_) => "pkmsg",
            Self::Whisper(_) => "msg",
        }
    }

    /// The wire bytes.
    pub fn serialize(&self) -> &[u8] {
        match self {
            Self::PreKey(m) => m.serialize(),
            Self::Whisper(m) => m.serialize(),
        }
    }
}
