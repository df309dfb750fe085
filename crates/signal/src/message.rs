//! The 1:1 wire messages: WhisperMessage (`msg`) and PreKeyWhisperMessage (`pkmsg`).
//!
//! `msg`   = `0x33 || WhisperMessage proto || MAC[..8]`
//! `pkmsg` = `0x33 || PreKeyWhisperMessage proto` (its `message` field holds a whole `msg`).

use crate::error::SignalError;
use crate::keys::PublicKey;
use crate::proto;
use crate::protobuf;
use prost::Message;
use std::ops::Range;

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

/// A parsed (or freshly built) WhisperMessage. It owns its wire bytes; the MAC'd body and
/// the MAC (and normally the ciphertext) are views into them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhisperMessage {
    /// The sender's current ratchet key.
    pub ephemeral_key: PublicKey,
    /// Index of this message in the sender's chain.
    pub counter: u32,
    /// Index of the last message in the sender's previous chain.
    pub previous_counter: u32,
    ciphertext: Ciphertext,
    serialized: Vec<u8>,
}

/// Where a WhisperMessage's ciphertext is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ciphertext {
    /// A range of the wire bytes (built here, or parsed on the common path).
    InWire(Range<usize>),
    /// Its own copy (parsed by prost, for protobufs off the common path).
    Copied(Vec<u8>),
}

/// The fields of a WhisperMessage protobuf as the common path reads them: bytes fields as
/// ranges of the protobuf.
#[derive(Debug, Default, PartialEq, Eq)]
struct WhisperFields {
    ephemeral_key: Option<Range<usize>>,
    counter: Option<u32>,
    previous_counter: Option<u32>,
    ciphertext: Option<Range<usize>>,
}

impl WhisperFields {
    /// Reads the fields the way WhatsApp and libsignal write them: fields 1–4, each with its
    /// own wire type, in any order, the last occurrence winning (protobuf's rule), varints
    /// of at most 5 bytes, and nothing else. Anything outside that (unknown fields, groups,
    /// malformed input) gives `None`, and the caller hands the protobuf to prost, whose
    /// answer is the reference; the tests check that the two agree wherever this one
    /// answers.
    fn decode_common(body: &[u8]) -> Option<Self> {
        let mut fields = Self::default();
        let mut pos = 0;
        while let Some(&key) = body.get(pos) {
            pos += 1;
            match key {
                0x0a | 0x22 => {
                    let len = usize::try_from(protobuf::read_varint(body, &mut pos)?).ok()?;
                    let end = pos.checked_add(len).filter(|&end| end <= body.len())?;
                    let range = Some(pos..end);
                    pos = end;
                    if key == 0x0a {
                        fields.ephemeral_key = range;
                    } else {
                        fields.ciphertext = range;
                    }
                }
                // uint32 fields: protobuf truncates the varint to 32 bits.
                0x10 => fields.counter = Some(protobuf::read_varint(body, &mut pos)? as u32),
                0x18 => {
                    fields.previous_counter = Some(protobuf::read_varint(body, &mut pos)? as u32)
                }
                _ => return None,
            }
        }
        Some(fields)
    }
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
        let (ephemeral_key, counter, previous_counter, ciphertext) =
            match WhisperFields::decode_common(body) {
                Some(f) => (
                    f.ephemeral_key.map(|r| PublicKey::deserialize(&body[r])),
                    f.counter,
                    f.previous_counter,
                    // Ranges of `body` are one byte further into the wire bytes.
                    f.ciphertext
                        .map(|r| Ciphertext::InWire(r.start + 1..r.end + 1)),
                ),
                None => {
                    let p = proto::WhisperMessage::decode(body)
                        .map_err(|_| SignalError::InvalidMessage("WhisperMessage protobuf"))?;
                    (
                        p.ephemeral_key.as_deref().map(PublicKey::deserialize),
                        p.counter,
                        p.previous_counter,
                        p.ciphertext.map(Ciphertext::Copied),
                    )
                }
            };
        Ok(Self {
            ephemeral_key: ephemeral_key
                .ok_or(SignalError::InvalidMessage("missing ratchet key"))??,
            counter: counter.ok_or(SignalError::InvalidMessage("missing counter"))?,
            previous_counter: previous_counter.unwrap_or(0),
            ciphertext: ciphertext.ok_or(SignalError::InvalidMessage("missing ciphertext"))?,
            serialized: bytes.to_vec(),
        })
    }

    /// The AES-256-CBC ciphertext.
    pub fn ciphertext(&self) -> &[u8] {
        match &self.ciphertext {
            Ciphertext::InWire(range) => &self.serialized[range.clone()],
            Ciphertext::Copied(bytes) => bytes,
        }
    }

    /// The proto part (between the version byte and the MAC).
    pub(crate) fn body(&self) -> &[u8] {
        &self.serialized[1..self.serialized.len() - MAC_LEN]
    }

    /// The 8-byte MAC.
    pub(crate) fn mac(&self) -> &[u8] {
        &self.serialized[self.serialized.len() - MAC_LEN..]
    }

    /// Builds the message in one buffer, laid out as prost would encode the protobuf
    /// (fields in number order, all present): `encrypt` appends exactly
    /// `ciphertext_len` bytes of ciphertext, `mac` computes the MAC over `version || proto`
    /// (its first 8 bytes are appended).
    pub(crate) fn build(
        ephemeral_key: PublicKey,
        counter: u32,
        previous_counter: u32,
        ciphertext_len: usize,
        encrypt: impl FnOnce(&mut Vec<u8>),
        mac: impl FnOnce(&[u8]) -> [u8; 32],
    ) -> Self {
        let mut serialized = Vec::with_capacity(1 + 35 + 2 * 6 + 6 + ciphertext_len + MAC_LEN);
        serialized.push(VERSION_BYTE);
        serialized.extend_from_slice(&[0x0a, 33]);
        serialized.extend_from_slice(&ephemeral_key.serialize());
        serialized.push(0x10);
        protobuf::write_varint(&mut serialized, counter.into());
        serialized.push(0x18);
        protobuf::write_varint(&mut serialized, previous_counter.into());
        serialized.push(0x22);
        protobuf::write_varint(&mut serialized, ciphertext_len as u64);
        let start = serialized.len();
        encrypt(&mut serialized);
        debug_assert_eq!(serialized.len() - start, ciphertext_len);
        let ciphertext = Ciphertext::InWire(start..serialized.len());
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type View = (Option<Vec<u8>>, Option<u32>, Option<u32>, Option<Vec<u8>>);

    /// prost's reading of a WhisperMessage protobuf: the reference.
    fn prost_view(body: &[u8]) -> Option<View> {
        let p = proto::WhisperMessage::decode(body).ok()?;
        Some((p.ephemeral_key, p.counter, p.previous_counter, p.ciphertext))
    }

    /// The common path's reading, `None` where it defers to prost.
    fn fast_view(body: &[u8]) -> Option<View> {
        let f = WhisperFields::decode_common(body)?;
        let bytes = |r: Option<Range<usize>>| r.map(|r| body[r].to_vec());
        Some((
            bytes(f.ephemeral_key),
            f.counter,
            f.previous_counter,
            bytes(f.ciphertext),
        ))
    }

    /// A protobuf from (kind, number, bytes) fields: kinds 0–3 are fields 1–4 with their
    /// own wire types, 4 an unknown field, 5 a known field with the wrong wire type.
    fn encode(fields: &[(u8, u64, Vec<u8>)]) -> (Vec<u8>, bool) {
        let mut body = Vec::new();
        let mut common = true;
        for (kind, number, bytes) in fields {
            let len_field = |body: &mut Vec<u8>, key: u8| {
                body.push(key);
                protobuf::write_varint(body, bytes.len() as u64);
                body.extend_from_slice(bytes);
            };
            match kind {
                0 => len_field(&mut body, 0x0a),
                1 | 2 => {
                    body.push(if *kind == 1 { 0x10 } else { 0x18 });
                    protobuf::write_varint(&mut body, *number);
                    common &= *number < 1 << 35;
                }
                3 => len_field(&mut body, 0x22),
                4 => {
                    body.push(0x28);
                    protobuf::write_varint(&mut body, *number);
                    common = false;
                }
                _ => {
                    len_field(&mut body, 0x12);
                    common = false;
                }
            }
        }
        (body, common)
    }

    proptest! {
        #[test]
        fn fast_path_agrees_with_prost(
            fields in prop::collection::vec(
                (0u8..6, prop_oneof![0u64..300, any::<u32>().prop_map(u64::from), any::<u64>()],
                 prop::collection::vec(any::<u8>(), 0..40)),
                0..8,
            ),
            cut in any::<prop::sample::Index>(),
        ) {
            let (body, common) = encode(&fields);
            let fast = fast_view(&body);
            if common {
                prop_assert!(fast.is_some(), "the common layout must take the fast path");
            }
            if let Some(fast) = fast {
                prop_assert_eq!(Some(fast), prost_view(&body));
            }
            // Truncated anywhere: the fast path agrees or defers.
            let truncated = &body[..cut.index(body.len() + 1)];
            if let Some(fast) = fast_view(truncated) {
                prop_assert_eq!(Some(fast), prost_view(truncated));
            }
        }

        #[test]
        fn fast_path_agrees_with_prost_on_any_bytes(
            body in prop::collection::vec(any::<u8>(), 0..120),
        ) {
            if let Some(fast) = fast_view(&body) {
                prop_assert_eq!(Some(fast), prost_view(&body));
            }
        }
    }

    #[test]
    fn built_message_is_prosts_encoding_and_parses_back() {
        let key = PublicKey([9; 32]);
        for (counter, previous) in [(0, 0), (1, 0), (127, 128), (300, 70_000), (u32::MAX, 5)] {
            let ciphertext = vec![7u8; 48];
            let msg = WhisperMessage::build(
                key,
                counter,
                previous,
                48,
                |out| out.extend_from_slice(&ciphertext),
                |_| [0xab; 32],
            );
            let mut want = vec![VERSION_BYTE];
            proto::WhisperMessage {
                ephemeral_key: Some(key.serialize().to_vec()),
                counter: Some(counter),
                previous_counter: Some(previous),
                ciphertext: Some(ciphertext.clone()),
            }
            .encode(&mut want)
            .unwrap();
            want.extend_from_slice(&[0xab; MAC_LEN]);
            assert_eq!(msg.serialize(), want);
            let parsed = WhisperMessage::parse(msg.serialize()).unwrap();
            assert_eq!(parsed, msg);
            assert_eq!(parsed.ciphertext(), ciphertext);
            assert_eq!(parsed.mac(), [0xab; MAC_LEN]);
        }
    }

    #[test]
    fn unknown_fields_go_through_prost_with_the_same_result() {
        // A genuine layout with an unknown varint field appended: the fast path defers and
        // the parse still yields the same fields (ciphertext copied).
        let key = PublicKey([3; 32]);
        let msg = WhisperMessage::build(
            key,
            5,
            2,
            16,
            |out| out.extend_from_slice(&[1; 16]),
            |_| [0; 32],
        );
        let mut bytes = msg.serialize()[..msg.serialize().len() - MAC_LEN].to_vec();
        bytes.extend_from_slice(&[0x28, 0x01]);
        bytes.extend_from_slice(&[0; MAC_LEN]);
        let parsed = WhisperMessage::parse(&bytes).unwrap();
        assert_eq!(
            (
                parsed.ephemeral_key,
                parsed.counter,
                parsed.previous_counter
            ),
            (key, 5, 2)
        );
        assert_eq!(parsed.ciphertext(), [1; 16]);
        assert!(matches!(parsed.ciphertext, Ciphertext::Copied(_)));
    }
}
