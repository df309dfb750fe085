//! Keys as WhatsApp uses them.
//!
//! Public keys travel raw (32 bytes) in WhatsApp's XML nodes and `05`-prefixed (33 bytes)
//! inside Signal protobufs. Prekey ids are 3-byte big-endian on the wire, the registration
//! id 4-byte big-endian. A signed prekey's signature is XEdDSA by the identity key over
//! `05 || pub`.

use crate::error::SignalError;
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use wafleet_protocol::xeddsa;

/// The type byte of a Curve25519 key inside Signal protobufs.
pub const DJB_TYPE: u8 = 0x05;

/// A Curve25519 (X25519) public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl PublicKey {
    /// The raw 32 bytes, as sent in WhatsApp's XML nodes.
    pub fn raw(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 33-byte `05 || key` form used inside Signal protobufs and MAC inputs.
    pub fn serialize(&self) -> [u8; 33] {
        let mut out = [0u8; 33];
        out[0] = DJB_TYPE;
        out[1..].copy_from_slice(&self.0);
        out
    }

    /// Parses a raw 32-byte key.
    pub fn from_raw(bytes: &[u8]) -> Result<Self, SignalError> {
        <[u8; 32]>::try_from(bytes)
            .map(PublicKey)
            .map_err(|_| SignalError::InvalidKey("raw key must be 32 bytes"))
    }

    /// Parses the 33-byte `05`-prefixed form.
    pub fn deserialize(bytes: &[u8]) -> Result<Self, SignalError> {
        match bytes {
            [DJB_TYPE, rest @ ..] if rest.len() == 32 => Self::from_raw(rest),
            [DJB_TYPE, ..] => Err(SignalError::InvalidKey("prefixed key must be 33 bytes")),
            _ => Err(SignalError::InvalidKey("missing 05 key type byte")),
        }
    }

    /// Verifies an XEdDSA signature made with the matching private key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        xeddsa::verify(&self.0, message, signature)
    }
}

/// A Curve25519 key pair.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPair {
    /// The public key.
    pub public: PublicKey,
    /// The 32-byte private scalar (clamped on use).
    pub private: [u8; 32],
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// Generates a fresh key pair.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut private = [0u8; 32];
        rng.fill_bytes(&mut private);
        Self::from_private(private)
    }

    /// Rebuilds a key pair from its private key.
    pub fn from_private(private: [u8; 32]) -> Self {
        let secret = x25519_dalek::StaticSecret::from(private);
        let public = x25519_dalek::PublicKey::from(&secret);
        Self {
            public: PublicKey(public.to_bytes()),
            private,
        }
    }

    /// X25519 agreement with `their` public key.
    pub fn agree(&self, their: &PublicKey) -> [u8; 32] {
        x25519_dalek::x25519(self.private, their.0)
    }

    /// XEdDSA signature over `message`.
    pub fn sign(&self, message: &[u8], rng: &mut impl CryptoRngCore) -> [u8; 64] {
        xeddsa::sign(&self.private, message, rng)
    }
}

/// A device's long-term identity key pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityKeyPair(pub KeyPair);

impl IdentityKeyPair {
    /// Generates a fresh identity.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self(KeyPair::generate(rng))
    }
    /// The public identity key.
    pub fn public(&self) -> &PublicKey {
        &self.0.public
    }
    /// The key pair.
    pub fn key_pair(&self) -> &KeyPair {
        &self.0
    }
}

/// Generates a registration id the way WhatsApp clients do: 14 random bits, never 0.
pub fn generate_registration_id(rng: &mut impl CryptoRngCore) -> u32 {
    loop {
        let id = rng.next_u32() & 0x3fff;
        if id != 0 {
            return id;
        }
    }
}

/// Encodes a prekey id as WhatsApp's 3-byte big-endian form (the id must be < 2^24).
pub fn encode_key_id(id: u32) -> Result<[u8; 3], SignalError> {
    if id > 0x00ff_ffff {
        return Err(SignalError::InvalidKey("key id does not fit in 3 bytes"));
    }
    let b = id.to_be_bytes();
    Ok([b[1], b[2], b[3]])
}

/// Decodes a 3-byte big-endian key id.
pub fn decode_key_id(bytes: &[u8]) -> Result<u32, SignalError> {
    match bytes {
        [a, b, c] => Ok(u32::from_be_bytes([0, *a, *b, *c])),
        _ => Err(SignalError::InvalidKey("key id must be 3 bytes")),
    }
}

/// Encodes a registration id as WhatsApp's 4-byte big-endian form.
pub fn encode_registration_id(id: u32) -> [u8; 4] {
    id.to_be_bytes()
}

/// Decodes a 4-byte big-endian registration id.
pub fn decode_registration_id(bytes: &[u8]) -> Result<u32, SignalError> {
    <[u8; 4]>::try_from(bytes)
        .map(u32::from_be_bytes)
        .map_err(|_| SignalError::InvalidKey("registration id must be 4 bytes"))
}

/// A one-time prekey we issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreKeyRecord {
    /// Its id (< 2^24).
    pub id: u32,
    /// The key pair.
    pub key_pair: KeyPair,
}

impl PreKeyRecord {
    /// Generates a one-time prekey.
    pub fn generate(id: u32, rng: &mut impl CryptoRngCore) -> Self {
        Self {
            id,
            key_pair: KeyPair::generate(rng),
        }
    }
}

/// A signed prekey we issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPreKeyRecord {
    /// Its id (< 2^24).
    pub id: u32,
    /// The key pair.
    pub key_pair: KeyPair,
    /// XEdDSA signature by the identity key over `05 || public`.
    pub signature: Vec<u8>,
}

impl SignedPreKeyRecord {
    /// Generates a signed prekey, signed by `identity`.
    pub fn generate(id: u32, identity: &IdentityKeyPair, rng: &mut impl CryptoRngCore) -> Self {
        let key_pair = KeyPair::generate(rng);
        let signature = identity.0.sign(&key_pair.public.serialize(), rng).to_vec();
        Self {
            id,
            key_pair,
            signature,
        }
    }
}

/// What we learn about a remote device from the server to start a session with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreKeyBundle {
    /// The device's registration id.
    pub registration_id: u32,
    /// The device's identity key.
    pub identity_key: PublicKey,
    /// The signed prekey id.
    pub signed_pre_key_id: u32,
    /// The signed prekey.
    pub signed_pre_key: PublicKey,
    /// XEdDSA signature by the identity key over `05 || signed_pre_key`.
    pub signed_pre_key_signature: Vec<u8>,
    /// An optional one-time prekey (id, key).
    pub pre_key: Option<(u32, PublicKey)>,
}

impl PreKeyBundle {
    /// Verifies the signed prekey signature.
    pub fn verify_signature(&self) -> Result<(), SignalError> {
        if self.identity_key.verify(
            &self.signed_pre_key.serialize(),
            &self.signed_pre_key_signature,
        ) {
            Ok(())
        } else {
            Err(SignalError::InvalidSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn key_forms_round_trip() {
        let kp = KeyPair::generate(&mut OsRng);
        let s = kp.public.serialize();
        assert_eq!(s[0], 5);
        assert_eq!(PublicKey::deserialize(&s).unwrap(), kp.public);
        assert!(PublicKey::deserialize(&s[1..]).is_err());
        assert!(PublicKey::deserialize(&[6; 33]).is_err());
        assert_eq!(PublicKey::from_raw(kp.public.raw()).unwrap(), kp.public);
        assert_eq!(
            decode_key_id(&encode_key_id(0x123456).unwrap()).unwrap(),
            0x123456
        );
        assert_eq!(encode_key_id(1).unwrap(), [0, 0, 1]);
        assert!(encode_key_id(1 << 24).is_err());
        assert!(decode_key_id(&[1, 2]).is_err());
        assert_eq!(
            decode_registration_id(&encode_registration_id(77)).unwrap(),
            77
        );
    }

    #[test]
    fn signed_prekey_signature_verifies_and_tamper_fails() {
        let id = IdentityKeyPair::generate(&mut OsRng);
        let spk = SignedPreKeyRecord::generate(7, &id, &mut OsRng);
        let mut bundle = PreKeyBundle {
            registration_id: 1,
            identity_key: *id.public(),
            signed_pre_key_id: 7,
            signed_pre_key: spk.key_pair.public,
            signed_pre_key_signature: spk.signature.clone(),
            pre_key: None,
        };
        bundle.verify_signature().unwrap();
        bundle.signed_pre_key_signature[3] ^= 1;
        assert_eq!(
            bundle.verify_signature(),
            Err(SignalError::InvalidSignature)
        );
    }

    #[test]
    fn agreement_is_symmetric() {
        let a = KeyPair::generate(&mut OsRng);
        let b = KeyPair::generate(&mut OsRng);
        assert_eq!(a.agree(&b.public), b.agree(&a.public));
    }
}
