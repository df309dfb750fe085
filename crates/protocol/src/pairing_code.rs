//! The cryptography of pairing-code (phone-number) linking, and the types a user types in.
//!
//! The companion shows an 8-character code; the user types it on the phone. Both sides
//! derive a key from the code (PBKDF2-HMAC-SHA256, 131,072 iterations) and use it to wrap
//! their ephemeral X25519 keys (AES-256-CTR). The companion then sends its identity inside a
//! key bundle sealed with a key derived from the ephemeral agreement, and both derive the
//! ADV secret that later authenticates `pair-success` (protocol-notes §5).
//!
//! Everything here is a pure function; randomness comes from the caller.

use aes::cipher::{KeyIvInit, StreamCipher};
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use sha2::Sha256;

/// The alphabet of pairing codes (Crockford-like base32 without 0, I, O, U).
pub const ALPHABET: &[u8; 32] = b"123456789ABCDEFGHJKLMNPQRSTVWXYZ";
/// PBKDF2 iterations for the code key (`2 << 16`).
pub const PBKDF2_ITERATIONS: u32 = 2 << 16;
/// Length of a wrapped ephemeral key: salt(32) || iv(16) || ciphertext(32).
pub const WRAPPED_EPHEMERAL_LEN: usize = 80;
/// Length of the wrapped key bundle: salt(32) || nonce(12) || ciphertext(96) || tag(16).
pub const WRAPPED_KEY_BUNDLE_LEN: usize = 156;
/// HKDF info for the key-bundle encryption key.
pub const KEY_BUNDLE_INFO: &[u8] = b"link_code_pairing_key_bundle_encryption_key";
/// HKDF info for the ADV secret.
pub const ADV_SECRET_INFO: &[u8] = b"adv_secret";

/// Errors of pairing-code input and cryptography.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairingCodeError {
    /// The code is not 8 characters of the pairing alphabet (an optional dash in the middle).
    #[error("pairing code must be 8 characters of {alphabet} (as XXXX-XXXX), got {len} characters", alphabet = String::from_utf8_lossy(ALPHABET))]
    BadCode {
        /// Characters received (dash excluded).
        len: usize,
    },
    /// A wrapped key has the wrong length.
    #[error("wrapped key is {got} bytes, expected {expected}")]
    BadLength {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// The key bundle did not authenticate (wrong code or tampered bundle).
    #[error("key bundle failed authentication")]
    BundleAuth,
}

/// An 8-character pairing code, as the user types it on the phone.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode([u8; 8]);

impl PairingCode {
    /// Draws a fresh code from 5 random bytes.
    pub fn generate(rng: &mut impl CryptoRngCore) -> PairingCode {
        let mut bytes = [0u8; 5];
        rng.fill_bytes(&mut bytes);
        PairingCode::from_bytes(bytes)
    }

    /// Encodes 5 bytes (40 bits) as 8 characters of 5 bits each, most significant first.
    pub fn from_bytes(bytes: [u8; 5]) -> PairingCode {
        let mut value = 0u64;
        for b in bytes {
            value = (value << 8) | u64::from(b);
        }
        let mut out = [0u8; 8];
        for (i, c) in out.iter_mut().enumerate() {
            let shift = 35 - 5 * i;
            *c = ALPHABET[((value >> shift) & 31) as usize];
        }
        PairingCode(out)
    }

    /// Parses what a user or an API client gives: 8 characters, case-insensitive, with or
    /// without a dash (or space) between the halves.
    pub fn parse(s: &str) -> Result<PairingCode, PairingCodeError> {
        let chars: Vec<u8> = s
            .bytes()
            .filter(|b| *b != b'-' && *b != b' ')
            .map(|b| b.to_ascii_uppercase())
            .collect();
        let code: [u8; 8] = chars
            .as_slice()
            .try_into()
            .map_err(|_| PairingCodeError::BadCode { len: chars.len() })?;
        if code.iter().all(|c| ALPHABET.contains(c)) {
            Ok(PairingCode(code))
        } else {
            Err(PairingCodeError::BadCode { len: 8 })
        }
    }

    /// The 8 characters without the dash (what the key derivation uses).
    pub fn as_str(&self) -> &str {
        // Only ALPHABET bytes are ever stored, which are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The form shown to users: `XXXX-XXXX`.
    pub fn display(&self) -> String {
        let s = self.as_str();
        format!("{}-{}", &s[..4], &s[4..])
    }

    /// PBKDF2-HMAC-SHA256(code, salt, 131072) → 32-byte wrapping key.
    pub fn derive_key(&self, salt: &[u8; 32]) -> [u8; 32] {
        let mut key = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&self.0, salt, PBKDF2_ITERATIONS, &mut key);
        key
    }
}

impl std::fmt::Debug for PairingCode {
    // A pairing code is a short-lived secret: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairingCode(****-****)")
    }
}

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// Wraps an ephemeral public key with the code: `salt || iv || AES-256-CTR(key(code, salt), iv, pub)`.
pub fn wrap_ephemeral(
    code: &PairingCode,
    salt: &[u8; 32],
    iv: &[u8; 16],
    ephemeral_pub: &[u8; 32],
) -> [u8; WRAPPED_EPHEMERAL_LEN] {
    let key = code.derive_key(salt);
    let mut body = *ephemeral_pub;
    Aes256Ctr::new(&key.into(), &(*iv).into()).apply_keystream(&mut body);
    let mut out = [0u8; WRAPPED_EPHEMERAL_LEN];
    out[..32].copy_from_slice(salt);
    out[32..48].copy_from_slice(iv);
    out[48..].copy_from_slice(&body);
    out
}

/// Unwraps an 80-byte wrapped ephemeral public key with the code.
///
/// CTR mode has no authentication: a wrong code yields a wrong key, which the later key
/// bundle / HMAC checks reject.
pub fn unwrap_ephemeral(code: &PairingCode, wrapped: &[u8]) -> Result<[u8; 32], PairingCodeError> {
    let wrapped: &[u8; WRAPPED_EPHEMERAL_LEN] =
        wrapped
            .try_into()
            .map_err(|_| PairingCodeError::BadLength {
                got: wrapped.len(),
                expected: WRAPPED_EPHEMERAL_LEN,
            })?;
    let mut salt = [0u8; 32];
    salt.copy_from_slice(&wrapped[..32]);
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&wrapped[32..48]);
    let mut body = [0u8; 32];
    body.copy_from_slice(&wrapped[48..]);
    let key = code.derive_key(&salt);
    Aes256Ctr::new(&key.into(), &iv.into()).apply_keystream(&mut body);
    Ok(body)
}

/// HKDF-SHA256(ikm = ephemeral shared secret, salt, info = key-bundle label) → 32 bytes.
pub fn key_bundle_key(ephemeral_shared: &[u8; 32], salt: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(salt), ephemeral_shared)
        .expand(KEY_BUNDLE_INFO, &mut out)
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 length"));
    out
}

/// The ADV secret: HKDF-SHA256(ikm = eph_shared || identity_shared || random, no salt,
/// info = "adv_secret") → 32 bytes.
pub fn adv_secret(
    ephemeral_shared: &[u8; 32],
    identity_shared: &[u8; 32],
    random: &[u8; 32],
) -> [u8; 32] {
    let mut ikm = [0u8; 96];
    ikm[..32].copy_from_slice(ephemeral_shared);
    ikm[32..64].copy_from_slice(identity_shared);
    ikm[64..].copy_from_slice(random);
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(None, &ikm)
        .expand(ADV_SECRET_INFO, &mut out)
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 length"));
    out
}

/// What the companion seals into the key bundle.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBundle {
    /// The companion's identity public key.
    pub companion_identity: [u8; 32],
    /// The primary's identity public key.
    pub primary_identity: [u8; 32],
    /// 32 random bytes that feed the ADV secret.
    pub random: [u8; 32],
}

impl std::fmt::Debug for KeyBundle {
    // `random` is secret input to the ADV secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyBundle")
            .field("companion_identity", &hex::encode(self.companion_identity))
            .field("primary_identity", &hex::encode(self.primary_identity))
            .finish_non_exhaustive()
    }
}

/// Seals the key bundle: `salt || nonce || AES-256-GCM(key_bundle_key(eph_shared, salt), nonce, "", bundle)`.
pub fn wrap_key_bundle(
    ephemeral_shared: &[u8; 32],
    salt: &[u8; 32],
    nonce: &[u8; 12],
    bundle: &KeyBundle,
) -> Vec<u8> {
    let key = key_bundle_key(ephemeral_shared, salt);
    let mut plain = [0u8; 96];
    plain[..32].copy_from_slice(&bundle.companion_identity);
    plain[32..64].copy_from_slice(&bundle.primary_identity);
    plain[64..].copy_from_slice(&bundle.random);
    let sealed = Aes256Gcm::new(&key.into())
        .encrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: &plain,
                aad: &[],
            },
        )
        .unwrap_or_else(|_| unreachable!("AES-GCM encryption of 96 bytes cannot fail"));
    let mut out = Vec::with_capacity(WRAPPED_KEY_BUNDLE_LEN);
    out.extend_from_slice(salt);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens a sealed key bundle (the phone's side of the exchange).
pub fn unwrap_key_bundle(
    ephemeral_shared: &[u8; 32],
    wrapped: &[u8],
) -> Result<KeyBundle, PairingCodeError> {
    if wrapped.len() != WRAPPED_KEY_BUNDLE_LEN {
        return Err(PairingCodeError::BadLength {
            got: wrapped.len(),
            expected: WRAPPED_KEY_BUNDLE_LEN,
        });
    }
    let mut salt = [0u8; 32];
    salt.copy_from_slice(&wrapped[..32]);
    let key = key_bundle_key(ephemeral_shared, &salt);
    let plain = Aes256Gcm::new(&key.into())
        .decrypt(
            Nonce::from_slice(&wrapped[32..44]),
            Payload {
                msg: &wrapped[44..],
                aad: &[],
            },
        )
        .map_err(|_| PairingCodeError::BundleAuth)?;
    let mut bundle = KeyBundle {
        companion_identity: [0; 32],
        primary_identity: [0; 32],
        random: [0; 32],
    };
    bundle.companion_identity.copy_from_slice(&plain[..32]);
    bundle.primary_identity.copy_from_slice(&plain[32..64]);
    bundle.random.copy_from_slice(&plain[64..96]);
    Ok(bundle)
}

/// Errors of phone-number input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneNumberError {
    /// Something other than digits (after an optional leading `+` and separators).
    #[error(
        "phone number must be digits in international (E.164) form, e.g. 15551234567; found {0:?}"
    )]
    NotDigits(char),
    /// Fewer than 7 or more than 15 digits.
    #[error("phone number must have 7 to 15 digits including the country code, got {0}")]
    Length(usize),
    /// Starts with 0: a national number, not country code + number.
    #[error("phone number must start with the country code, not 0 (use international form, e.g. 4915112345678)")]
    LeadingZero,
}

/// A phone number in E.164 digits (country code first, 7–15 digits, no leading 0), the form
/// WhatsApp's `link_code_companion_reg` expects in `jid="<digits>@s.whatsapp.net"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Parses `+1 555-123-4567`, `15551234567` and the like; spaces, dashes, dots and
    /// parentheses are separators; a single leading `+` is allowed.
    pub fn parse(input: &str) -> Result<PhoneNumber, PhoneNumberError> {
        let trimmed = input.trim();
        let body = trimmed.strip_prefix('+').unwrap_or(trimmed);
        let mut digits = String::with_capacity(body.len());
        for c in body.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '.' | '(' | ')' => {}
                other => return Err(PhoneNumberError::NotDigits(other)),
            }
        }
        if !(7..=15).contains(&digits.len()) {
            return Err(PhoneNumberError::Length(digits.len()));
        }
        if digits.starts_with('0') {
            return Err(PhoneNumberError::LeadingZero);
        }
        Ok(PhoneNumber(digits))
    }

    /// The digits.
    pub fn digits(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn vectors() -> Value {
        let text = include_str!("../tests/data/baileys-vectors.json");
        serde_json::from_str::<Value>(text).expect("vectors parse")["pairing_code"].clone()
    }

    fn h<const N: usize>(v: &Value) -> [u8; N] {
        hex::decode(v.as_str().expect("hex"))
            .expect("hex")
            .try_into()
            .expect("length")
    }

    #[test]
    fn code_from_bytes_matches_baileys() {
        let v = vectors();
        let code = PairingCode::from_bytes(h(&v["code_bytes"]));
        assert_eq!(code.as_str(), v["code"].as_str().expect("code"));
        assert_eq!(code.display(), "1521-7216");
        assert_eq!(
            ALPHABET.as_slice(),
            v["alphabet"].as_str().expect("alphabet").as_bytes()
        );
    }

    #[test]
    fn pbkdf2_and_wrap_match_baileys() {
        let v = vectors();
        let code = PairingCode::parse(v["code"].as_str().expect("code")).expect("valid");
        let salt = h(&v["pbkdf2"]["salt"]);
        assert_eq!(code.derive_key(&salt), h::<32>(&v["pbkdf2"]["key"]));
        let wrapped = wrap_ephemeral(
            &code,
            &salt,
            &h(&v["wrap"]["iv"]),
            &h(&v["wrap"]["ephemeral_pub"]),
        );
        assert_eq!(wrapped, h::<80>(&v["wrap"]["wrapped_80"]));
        assert_eq!(
            unwrap_ephemeral(&code, &wrapped).expect("unwrap"),
            h::<32>(&v["wrap"]["ephemeral_pub"])
        );
        let other = PairingCode::parse("ABCD-EFGH").expect("valid");
        assert_ne!(
            unwrap_ephemeral(&other, &wrapped).expect("unwrap"),
            h::<32>(&v["wrap"]["ephemeral_pub"])
        );
    }

    #[test]
    fn hkdf_steps_match_baileys() {
        let v = vectors();
        let k = &v["key_bundle_key"];
        assert_eq!(
            key_bundle_key(&h(&k["ikm"]), &h(&k["salt"])),
            h::<32>(&k["out"])
        );
        let a = &v["adv_secret"];
        let ikm: [u8; 96] = h(&a["ikm"]);
        let (e, rest) = ikm.split_at(32);
        let (i, r) = rest.split_at(32);
        assert_eq!(
            adv_secret(
                e.try_into().expect("32"),
                i.try_into().expect("32"),
                r.try_into().expect("32")
            ),
            h::<32>(&a["out"])
        );
    }

    #[test]
    fn key_bundle_round_trip_and_tamper() {
        let shared = [4u8; 32];
        let bundle = KeyBundle {
            companion_identity: [1; 32],
            primary_identity: [2; 32],
            random: [3; 32],
        };
        let sealed = wrap_key_bundle(&shared, &[5; 32], &[6; 12], &bundle);
        assert_eq!(sealed.len(), WRAPPED_KEY_BUNDLE_LEN);
        assert!(unwrap_key_bundle(&shared, &sealed).expect("opens") == bundle);
        let mut bad = sealed.clone();
        bad[100] ^= 1;
        assert_eq!(
            unwrap_key_bundle(&shared, &bad),
            Err(PairingCodeError::BundleAuth)
        );
        assert_eq!(
            unwrap_key_bundle(&[9; 32], &sealed),
            Err(PairingCodeError::BundleAuth)
        );
        assert!(matches!(
            unwrap_key_bundle(&shared, &sealed[..155]),
            Err(PairingCodeError::BadLength { got: 155, .. })
        ));
    }

    #[test]
    fn code_parsing() {
        assert_eq!(
            PairingCode::parse("abcd-efgh").expect("ok").as_str(),
            "ABCDEFGH"
        );
        assert!(PairingCode::parse("ABCDEFG").is_err());
        assert!(PairingCode::parse("ABCD-EFG0").is_err()); // 0 is not in the alphabet
        assert!(PairingCode::parse("ABCD-EFGU").is_err()); // nor U
        assert_eq!(
            format!("{:?}", PairingCode::parse("ABCD-EFGH").expect("ok")),
            "PairingCode(****-****)"
        );
    }

    #[test]
    fn phone_numbers() {
        assert_eq!(
            PhoneNumber::parse("+1 (555) 123-4567")
                .expect("ok")
                .digits(),
            "15551234567"
        );
        assert_eq!(
            PhoneNumber::parse("4915112345678").expect("ok").digits(),
            "4915112345678"
        );
        assert_eq!(
            PhoneNumber::parse("015112345678"),
            Err(PhoneNumberError::LeadingZero)
        );
        assert_eq!(
            PhoneNumber::parse("123456"),
            Err(PhoneNumberError::Length(6))
        );
        assert_eq!(
            PhoneNumber::parse("1234567890123456"),
            Err(PhoneNumberError::Length(16))
        );
        assert_eq!(
            PhoneNumber::parse("1555abc4567"),
            Err(PhoneNumberError::NotDigits('a'))
        );
        assert_eq!(PhoneNumber::parse(""), Err(PhoneNumberError::Length(0)));
    }
}
