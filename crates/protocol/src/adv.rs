//! ADV: the account-signed device identity that `pair-success` carries (protocol-notes §4).
//!
//! The phone (primary device) signs the companion's identity key with its account key and
//! wraps the result in an HMAC keyed with the ADV secret that only the two of them share (from
//! the QR code, or derived in pairing-code linking). The companion checks the HMAC and the
//! account signature, adds its own device signature, and sends the identity back.
//!
//! Both sides live here: [`countersign`] is the companion's, [`issue`] and
//! [`verify_device_signature`] are the phone's (the simulator's).

use hmac::{Hmac, Mac};
use prost::Message;
use rand_core::CryptoRngCore;
use sha2::Sha256;

use crate::proto::{
    AdvDeviceIdentity, AdvEncryptionType, AdvSignedDeviceIdentity, AdvSignedDeviceIdentityHmac,
};
use crate::xeddsa;

/// Prefix of the HMAC input for hosted accounts.
pub const HOSTED_HMAC_PREFIX: [u8; 2] = [6, 5];
/// Prefix of the account-signature message.
pub const ACCOUNT_SIGNATURE_PREFIX: [u8; 2] = [6, 0];
/// Prefix of the account-signature message for hosted devices.
pub const HOSTED_ACCOUNT_SIGNATURE_PREFIX: [u8; 2] = [6, 5];
/// Prefix of the device-signature message (both libraries use it for hosted devices too).
pub const DEVICE_SIGNATURE_PREFIX: [u8; 2] = [6, 1];

/// Why a device identity was refused. The first two map to the `401` error replies WhatsApp
/// expects (`hmac-mismatch`, `signature-mismatch`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvError {
    /// A protobuf did not decode.
    #[error("device identity: {what} is not a valid protobuf")]
    Decode {
        /// Which message.
        what: &'static str,
    },
    /// A required field is missing or has the wrong length.
    #[error("device identity: field {0} is missing or malformed")]
    Field(&'static str),
    /// The HMAC does not match the ADV secret (reply `401 hmac-mismatch`).
    #[error("device identity HMAC does not match")]
    HmacMismatch,
    /// The account signature does not verify (reply `401 signature-mismatch`).
    #[error("account signature does not verify")]
    SignatureMismatch,
    /// The companion's device signature does not verify (phone side).
    #[error("device signature does not verify")]
    DeviceSignatureMismatch,
}

impl AdvError {
    /// The `text` of the `<error code="401">` reply for the two verification failures.
    pub fn reply_text(&self) -> Option<&'static str> {
        match self {
            AdvError::HmacMismatch => Some("hmac-mismatch"),
            AdvError::SignatureMismatch => Some("signature-mismatch"),
            _ => None,
        }
    }
}

/// What the companion keeps and sends after a successful check.
#[derive(Debug, Clone, PartialEq)]
pub struct Countersigned {
    /// The full signed identity, device signature included: persisted, and sent later as
    /// `<device-identity>` beside `pkmsg` messages.
    pub account: AdvSignedDeviceIdentity,
    /// The bytes for `<pair-device-sign><device-identity key-index=…>`: the same message
    /// without `accountSignatureKey`.
    pub reply: Vec<u8>,
    /// The `keyIndex` of the device identity (the `key-index` attribute).
    pub key_index: u32,
    /// The decoded device identity details.
    pub device: AdvDeviceIdentity,
}

fn hmac(secret: &[u8; 32], hosted: bool, details: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    if hosted {
        mac.update(&HOSTED_HMAC_PREFIX);
    }
    mac.update(details);
    mac
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn key32(bytes: Option<&Vec<u8>>, field: &'static str) -> Result<[u8; 32], AdvError> {
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or(AdvError::Field(field))
}

fn account_prefix(device: &AdvDeviceIdentity) -> [u8; 2] {
    if device.device_type == Some(AdvEncryptionType::Hosted as i32) {
        HOSTED_ACCOUNT_SIGNATURE_PREFIX
    } else {
        ACCOUNT_SIGNATURE_PREFIX
    }
}

/// The companion's check of `pair-success`'s `<device-identity>`: verify the HMAC with the
/// ADV secret and the account signature over our identity key, then add our device
/// signature.
pub fn countersign(
    device_identity: &[u8],
    adv_secret: &[u8; 32],
    identity_private: &[u8; 32],
    rng: &mut impl CryptoRngCore,
) -> Result<Countersigned, AdvError> {
    let wrapper =
        AdvSignedDeviceIdentityHmac::decode(device_identity).map_err(|_| AdvError::Decode {
            what: "ADVSignedDeviceIdentityHMAC",
        })?;
    let details = wrapper
        .details
        .as_deref()
        .ok_or(AdvError::Field("details"))?;
    let tag = wrapper.hmac.as_deref().ok_or(AdvError::Field("hmac"))?;
    let hosted = wrapper.account_type == Some(AdvEncryptionType::Hosted as i32);
    hmac(adv_secret, hosted, details)
        .verify_slice(tag)
        .map_err(|_| AdvError::HmacMismatch)?;

    let mut account = AdvSignedDeviceIdentity::decode(details).map_err(|_| AdvError::Decode {
        what: "ADVSignedDeviceIdentity",
    })?;
    let inner = account.details.clone().ok_or(AdvError::Field("details"))?;
    let device = AdvDeviceIdentity::decode(inner.as_slice()).map_err(|_| AdvError::Decode {
        what: "ADVDeviceIdentity",
    })?;
    let account_key = key32(
        account.account_signature_key.as_ref(),
        "accountSignatureKey",
    )?;
    let account_sig = account
        .account_signature
        .as_deref()
        .filter(|s| s.len() == xeddsa::SIGNATURE_LEN)
        .ok_or(AdvError::Field("accountSignature"))?;
    let our_identity = xeddsa::public_key(identity_private);
    let message = concat(&[&account_prefix(&device), &inner, &our_identity]);
    if !xeddsa::verify(&account_key, &message, account_sig) {
        return Err(AdvError::SignatureMismatch);
    }

    let message = concat(&[
        &DEVICE_SIGNATURE_PREFIX,
        &inner,
        &our_identity,
        &account_key,
    ]);
    account.device_signature = Some(xeddsa::sign(identity_private, &message, rng).to_vec());
    let mut stripped = account.clone();
    stripped.account_signature_key = None;
    Ok(Countersigned {
        reply: stripped.encode_to_vec(),
        key_index: device.key_index.unwrap_or(0),
        account,
        device,
    })
}

/// What the phone puts in a device identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceGrant {
    /// The account's user id part (`rawId`).
    pub raw_id: u32,
    /// Unix seconds.
    pub timestamp: u64,
    /// The key index assigned to the new device.
    pub key_index: u32,
    /// Whether the account (and device) is hosted.
    pub hosted: bool,
}

/// The phone's side: sign the companion's identity key with the account key and wrap it in
/// the HMAC keyed with the ADV secret. Returns the `ADVSignedDeviceIdentityHMAC` bytes.
pub fn issue(
    grant: &DeviceGrant,
    account_private: &[u8; 32],
    adv_secret: &[u8; 32],
    companion_identity: &[u8; 32],
    rng: &mut impl CryptoRngCore,
) -> Vec<u8> {
    let kind = if grant.hosted {
        AdvEncryptionType::Hosted
    } else {
        AdvEncryptionType::E2ee
    } as i32;
    let device = AdvDeviceIdentity {
        raw_id: Some(grant.raw_id),
        timestamp: Some(grant.timestamp),
        key_index: Some(grant.key_index),
        account_type: Some(kind),
        device_type: Some(kind),
    };
    let inner = device.encode_to_vec();
    let message = concat(&[&account_prefix(&device), &inner, companion_identity]);
    let signed = AdvSignedDeviceIdentity {
        details: Some(inner),
        account_signature_key: Some(xeddsa::public_key(account_private).to_vec()),
        account_signature: Some(xeddsa::sign(account_private, &message, rng).to_vec()),
        device_signature: None,
    };
    let details = signed.encode_to_vec();
    let tag = hmac(adv_secret, grant.hosted, &details)
        .finalize()
        .into_bytes();
    AdvSignedDeviceIdentityHmac {
        details: Some(details),
        hmac: Some(tag.to_vec()),
        account_type: Some(kind),
    }
    .encode_to_vec()
}

/// The phone's check of the companion's reply (`<pair-device-sign><device-identity>`): the
/// device signature must verify with the companion's identity key.
pub fn verify_device_signature(
    reply: &[u8],
    account_public: &[u8; 32],
    companion_identity: &[u8; 32],
) -> Result<AdvSignedDeviceIdentity, AdvError> {
    let signed = AdvSignedDeviceIdentity::decode(reply).map_err(|_| AdvError::Decode {
        what: "ADVSignedDeviceIdentity",
    })?;
    let inner = signed
        .details
        .as_deref()
        .ok_or(AdvError::Field("details"))?;
    let sig = signed
        .device_signature
        .as_deref()
        .ok_or(AdvError::Field("deviceSignature"))?;
    let message = concat(&[
        &DEVICE_SIGNATURE_PREFIX,
        inner,
        companion_identity,
        account_public,
    ]);
    if xeddsa::verify(companion_identity, &message, sig) {
        Ok(signed)
    } else {
        Err(AdvError::DeviceSignatureMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    struct World {
        rng: StdRng,
        account: [u8; 32],
        secret: [u8; 32],
        companion: [u8; 32],
    }

    fn world(seed: u64) -> World {
        World {
            rng: StdRng::seed_from_u64(seed),
            account: [seed as u8 + 1; 32],
            secret: [seed as u8 + 2; 32],
            companion: [seed as u8 + 3; 32],
        }
    }

    fn grant(hosted: bool) -> DeviceGrant {
        DeviceGrant {
            raw_id: 15551234,
            timestamp: 1_790_000_000,
            key_index: 3,
            hosted,
        }
    }

    #[test]
    fn phone_issues_companion_countersigns_phone_verifies() {
        for hosted in [false, true] {
            let mut w = world(u64::from(hosted));
            let companion_pub = xeddsa::public_key(&w.companion);
            let bytes = issue(
                &grant(hosted),
                &w.account,
                &w.secret,
                &companion_pub,
                &mut w.rng,
            );
            let c = countersign(&bytes, &w.secret, &w.companion, &mut w.rng).expect("valid");
            assert_eq!(c.key_index, 3);
            assert_eq!(c.device.raw_id, Some(15551234));
            assert!(c.account.account_signature_key.is_some());
            let account_pub = xeddsa::public_key(&w.account);
            let back = verify_device_signature(&c.reply, &account_pub, &companion_pub).expect("ok");
            assert_eq!(
                back.account_signature_key, None,
                "the reply strips the account key"
            );
            // A reply whose device signature was made over another account key fails.
            assert_eq!(
                verify_device_signature(&c.reply, &[9; 32], &companion_pub),
                Err(AdvError::DeviceSignatureMismatch)
            );
        }
    }

    #[test]
    fn tampered_hmac_or_wrong_secret_is_hmac_mismatch() {
        let mut w = world(5);
        let companion_pub = xeddsa::public_key(&w.companion);
        let bytes = issue(
            &grant(false),
            &w.account,
            &w.secret,
            &companion_pub,
            &mut w.rng,
        );
        let err = countersign(&bytes, &[0; 32], &w.companion, &mut w.rng).unwrap_err();
        assert_eq!(err, AdvError::HmacMismatch);
        assert_eq!(err.reply_text(), Some("hmac-mismatch"));
        let mut wrapper = AdvSignedDeviceIdentityHmac::decode(bytes.as_slice()).expect("decodes");
        if let Some(h) = wrapper.hmac.as_mut() {
            h[0] ^= 1;
        }
        assert_eq!(
            countersign(
                &wrapper.encode_to_vec(),
                &w.secret,
                &w.companion,
                &mut w.rng
            ),
            Err(AdvError::HmacMismatch)
        );
    }

    #[test]
    fn identity_for_another_companion_is_signature_mismatch() {
        // The phone signed someone else's identity key: the HMAC is right, the account
        // signature is not over ours.
        let mut w = world(6);
        let other = xeddsa::public_key(&[42; 32]);
        let bytes = issue(&grant(false), &w.account, &w.secret, &other, &mut w.rng);
        let err = countersign(&bytes, &w.secret, &w.companion, &mut w.rng).unwrap_err();
        assert_eq!(err, AdvError::SignatureMismatch);
        assert_eq!(err.reply_text(), Some("signature-mismatch"));
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let mut w = world(7);
        assert!(matches!(
            countersign(&[0xff, 0xff, 0xff], &w.secret, &w.companion, &mut w.rng),
            Err(AdvError::Decode { .. })
        ));
        assert_eq!(
            countersign(&[], &w.secret, &w.companion, &mut w.rng),
            Err(AdvError::Field("details"))
        );
    }
}
