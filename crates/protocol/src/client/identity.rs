//! The companion's long-lived identity: everything a device must persist between connections
//! (protocol-notes §4 step 7), as one serde-serializable value.
//!
//! Key material is serialized as lowercase hex (private keys only; public keys are derived on
//! load). `Debug` never prints private keys, the ADV secret or the account signature.

use prost::Message;
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};

use crate::jid::Jid;
use crate::noise::KeyPair;
use crate::proto::AdvSignedDeviceIdentity;
use crate::xeddsa;

/// Key type byte of Signal's Curve25519 public keys (`05 || pub`).
pub const KEY_TYPE_DJB: u8 = 5;

/// A signed prekey: its id, key pair and the identity key's XEdDSA signature over
/// `05 || public`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPreKey {
    /// The key id (24 bits on the wire).
    pub id: u32,
    /// The key pair.
    #[serde(with = "keypair_hex")]
    pub key_pair: KeyPair,
    /// XEdDSA signature (64 bytes) over `05 || key_pair.public`.
    #[serde(with = "bytes_hex")]
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for SignedPreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedPreKey")
            .field("id", &self.id)
            .field("key_pair", &self.key_pair)
            .finish_non_exhaustive()
    }
}

impl SignedPreKey {
    /// A fresh signed prekey with this id, signed by `identity`.
    pub fn generate(id: u32, identity: &KeyPair, rng: &mut impl CryptoRngCore) -> SignedPreKey {
        let key_pair = KeyPair::generate(rng);
        let signature = xeddsa::sign(&identity.private, &djb_public(&key_pair.public), rng);
        SignedPreKey {
            id,
            key_pair,
            signature: signature.to_vec(),
        }
    }

    /// Whether the signature verifies with `identity_public`.
    pub fn verify(&self, identity_public: &[u8; 32]) -> bool {
        xeddsa::verify(
            identity_public,
            &djb_public(&self.key_pair.public),
            &self.signature,
        )
    }
}

/// A one-time prekey.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PreKey {
    /// The key id (24 bits on the wire, never 0).
    pub id: u32,
    /// The key pair (`Debug` shows the public half only).
    #[serde(with = "keypair_hex")]
    pub key_pair: KeyPair,
}

/// `05 || public`.
pub fn djb_public(public: &[u8; 32]) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = KEY_TYPE_DJB;
    out[1..].copy_from_slice(public);
    out
}

/// Everything a companion device persists. Created unpaired by [`DeviceIdentity::generate`];
/// [`Session`](super::Session) fills in the account fields at `pair-success` and reports the
/// updated value in [`Event::Paired`](super::Event::Paired).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// The Noise static key (its public half is `companion_server_auth_key_pub`).
    #[serde(with = "keypair_hex")]
    pub noise_key: KeyPair,
    /// The Signal identity key.
    #[serde(with = "keypair_hex")]
    pub identity_key: KeyPair,
    /// The current signed prekey.
    pub signed_pre_key: SignedPreKey,
    /// The Signal registration id (14 bits, 1..=16380).
    pub registration_id: u32,
    /// The ADV secret (QR) or, in pairing-code linking, the derived one.
    #[serde(with = "array_hex")]
    pub adv_secret: [u8; 32],
    /// Id of the next one-time prekey to generate (starts at 1).
    pub next_pre_key_id: u32,
    /// Whether a first (full) prekey upload was done.
    pub pre_keys_uploaded: bool,
    /// Our device JID (`<phone>:<device>@s.whatsapp.net`), after pairing.
    pub jid: Option<String>,
    /// Our LID (`<lid>:<device>@lid`), after pairing.
    pub lid: Option<String>,
    /// The primary's platform name (`<platform name>`), after pairing.
    pub platform: Option<String>,
    /// The business name (`<biz name>`), after pairing, if any.
    pub business_name: Option<String>,
    /// The full `ADVSignedDeviceIdentity` (with `accountSignatureKey` and our device
    /// signature), encoded, after pairing.
    #[serde(with = "opt_bytes_hex")]
    pub account: Option<Vec<u8>>,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("noise_key", &self.noise_key)
            .field("identity_key", &self.identity_key)
            .field("signed_pre_key", &self.signed_pre_key)
            .field("registration_id", &self.registration_id)
            .field("next_pre_key_id", &self.next_pre_key_id)
            .field("jid", &self.jid)
            .field("lid", &self.lid)
            .field("platform", &self.platform)
            .field("business_name", &self.business_name)
            .finish_non_exhaustive()
    }
}

impl DeviceIdentity {
    /// A fresh, unpaired identity: Noise and identity keys, signed prekey id 1, a random
    /// registration id and ADV secret.
    pub fn generate(rng: &mut impl CryptoRngCore) -> DeviceIdentity {
        let noise_key = KeyPair::generate(rng);
        let identity_key = KeyPair::generate(rng);
        let signed_pre_key = SignedPreKey::generate(1, &identity_key, rng);
        let registration_id = (rng.next_u32() % 16380) + 1;
        let mut adv_secret = [0u8; 32];
        rng.fill_bytes(&mut adv_secret);
        DeviceIdentity {
            noise_key,
            identity_key,
            signed_pre_key,
            registration_id,
            adv_secret,
            next_pre_key_id: 1,
            pre_keys_uploaded: false,
            jid: None,
            lid: None,
            platform: None,
            business_name: None,
            account: None,
        }
    }

    /// Whether pairing completed (a JID is stored): connect with the login payload.
    pub fn is_paired(&self) -> bool {
        self.jid.is_some()
    }

    /// Our device JID, parsed.
    pub fn jid(&self) -> Option<Jid> {
        self.jid.as_deref().and_then(|s| s.parse().ok())
    }

    /// Our LID, parsed.
    pub fn lid(&self) -> Option<Jid> {
        self.lid.as_deref().and_then(|s| s.parse().ok())
    }

    /// The stored account identity, decoded.
    pub fn account(&self) -> Option<AdvSignedDeviceIdentity> {
        self.account
            .as_deref()
            .and_then(|b| AdvSignedDeviceIdentity::decode(b).ok())
    }
}

fn decode_hex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    hex::decode(s).map_err(serde::de::Error::custom)
}

fn decode_array<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let v = decode_hex(d)?;
    <[u8; 32]>::try_from(v.as_slice())
        .map_err(|_| serde::de::Error::custom("expected 32 bytes of hex"))
}

mod keypair_hex {
    use crate::noise::KeyPair;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(k: &KeyPair, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(k.private))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<KeyPair, D::Error> {
        super::decode_array(d).map(KeyPair::from_private)
    }
}

mod array_hex {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(k: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(k))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        super::decode_array(d)
    }
}

mod bytes_hex {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(k: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(k))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        super::decode_hex(d)
    }
}

mod opt_bytes_hex {
    use serde::{Deserialize, Serializer};

    pub fn serialize<S: Serializer>(k: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match k {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
