//! The server's Noise certificate chain (`CertChain`, sent encrypted in `ServerHello.payload`).
//!
//! [`verify_cert_chain`] applies the seven checks whatsmeow and whatsapp-rust make (protocol
//! notes §2.3), each failing with its own [`CertError`] variant. The root is pinned by
//! [`RootKey`], WhatsApp's real root unless explicitly replaced.
//!
//! [`CertificateAuthority`] issues chains for the project's WhatsApp simulator:
//! a root key pair, an intermediate (serial N, issuer serial 0) and a leaf for the server's
//! Noise static key, all deterministic from the rng passed in.

use prost::Message;
use rand_core::CryptoRngCore;
use thiserror::Error;

use crate::proto::{CertChain, CertDetails, NoiseCertificate};
use crate::xeddsa;

/// An XEdDSA (Curve25519) root public key that certificate chains must chain up to.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RootKey([u8; 32]);

impl RootKey {
    /// WhatsApp's production root (`WhatsAppLongTerm1`).
    pub const WHATSAPP: RootKey = RootKey([
        0x14, 0x23, 0x75, 0x57, 0x4d, 0x0a, 0x58, 0x71, 0x66, 0xaa, 0xe7, 0x1e, 0xbe, 0x51, 0x64,
        0x37, 0xc4, 0xa2, 0x8b, 0x73, 0xe3, 0x69, 0x5c, 0x6c, 0xe1, 0xf7, 0xf9, 0x54, 0x5d, 0xa8,
        0xee, 0x6b,
    ]);

    /// A root other than WhatsApp's, e.g. the simulator's [`CertificateAuthority`] root.
    pub const fn custom(public: [u8; 32]) -> Self {
        Self(public)
    }

    /// The raw public key.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Default for RootKey {
    fn default() -> Self {
        Self::WHATSAPP
    }
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootKey({})", hex::encode(self.0))
    }
}

/// Which certificate of the chain an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// The intermediate, signed by the root.
    Intermediate,
    /// The leaf, signed by the intermediate; certifies the server's Noise static key.
    Leaf,
}

/// Why a certificate chain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CertError {
    /// The chain or a certificate's details are not valid protobuf.
    #[error("undecodable {what}: {error}")]
    Decode {
        /// What failed to decode.
        what: &'static str,
        /// The decoder's message.
        error: String,
    },
    /// A certificate, or its details or signature, is absent.
    #[error("{0:?} certificate is missing or incomplete")]
    Missing(CertKind),
    /// A key in a certificate is not 32 bytes.
    #[error("{kind:?} certificate key has {len} bytes, expected 32")]
    BadKeyLength {
        /// Which certificate.
        kind: CertKind,
        /// The key's length.
        len: usize,
    },
    /// Check 1: a signature is not 64 bytes.
    #[error("{kind:?} signature has {len} bytes, expected 64")]
    SignatureLength {
        /// Which certificate.
        kind: CertKind,
        /// The signature's length.
        len: usize,
    },
    /// Check 2: the intermediate's signature does not verify with the root key.
    #[error("intermediate certificate signature does not verify with the root key")]
    IntermediateSignature,
    /// Check 3: the intermediate's issuer serial is not the root's (0).
    #[error("intermediate issuer serial is {0}, expected 0")]
    IntermediateIssuerSerial(u32),
    /// Check 4: the leaf's signature does not verify with the intermediate's key.
    #[error("leaf certificate signature does not verify with the intermediate key")]
    LeafSignature,
    /// Check 5: the leaf's issuer serial is not the intermediate's serial.
    #[error(
        "leaf issuer serial {leaf_issuer_serial} != intermediate serial {intermediate_serial}"
    )]
    LeafIssuerSerial {
        /// `leaf.issuerSerial`.
        leaf_issuer_serial: u32,
        /// `intermediate.serial`.
        intermediate_serial: u32,
    },
    /// Check 6: the leaf does not certify the server static key of this handshake.
    #[error("leaf key does not match the server's Noise static key")]
    LeafKeyMismatch,
    /// Check 7: `now` is outside a certificate's `notBefore..=notAfter`.
    #[error("{kind:?} certificate not valid at {now} (valid {not_before}..={not_after})")]
    NotValidAt {
        /// Which certificate.
        kind: CertKind,
        /// `notBefore` (0 when absent).
        not_before: u64,
        /// `notAfter` (0 when absent).
        not_after: u64,
        /// The time checked.
        now: u64,
    },
}

/// A chain that passed [`verify_cert_chain`], with its decoded details.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedCertChain {
    /// The chain as received.
    pub chain: CertChain,
    /// The intermediate's decoded details.
    pub intermediate: CertDetails,
    /// The leaf's decoded details.
    pub leaf: CertDetails,
}

fn parts(cert: Option<&NoiseCertificate>, kind: CertKind) -> Result<(&[u8], &[u8]), CertError> {
    match cert {
        Some(NoiseCertificate {
            details: Some(d),
            signature: Some(s),
        }) => Ok((d, s)),
        _ => Err(CertError::Missing(kind)),
    }
}

fn decode_details(bytes: &[u8], kind: CertKind) -> Result<CertDetails, CertError> {
    CertDetails::decode(bytes).map_err(|e| CertError::Decode {
        what: match kind {
            CertKind::Intermediate => "intermediate details",
            CertKind::Leaf => "leaf details",
        },
        error: e.to_string(),
    })
}

fn key32(d: &CertDetails, kind: CertKind) -> Result<[u8; 32], CertError> {
    let k = d.key.as_deref().unwrap_or_default();
    k.try_into()
        .map_err(|_| CertError::BadKeyLength { kind, len: k.len() })
}

fn check_validity(d: &CertDetails, kind: CertKind, now: u64) -> Result<(), CertError> {
    let not_before = d.not_before.unwrap_or(0);
    let not_after = d.not_after.unwrap_or(0);
    if not_before <= now && now <= not_after {
        Ok(())
    } else {
        Err(CertError::NotValidAt {
            kind,
            not_before,
            not_after,
            now,
        })
    }
}

/// Verifies a serialized `CertChain` for a handshake whose (decrypted) server static key is
/// `server_static`, at unix time `now` (seconds).
pub fn verify_cert_chain(
    chain_bytes: &[u8],
    root: &RootKey,
    server_static: &[u8; 32],
    now: u64,
) -> Result<VerifiedCertChain, CertError> {
    let chain = CertChain::decode(chain_bytes).map_err(|e| CertError::Decode {
        what: "certificate chain",
        error: e.to_string(),
    })?;
    let (inter, leaf) = verify_decoded(&chain, root, server_static, now)?;
    Ok(VerifiedCertChain {
        chain,
        intermediate: inter,
        leaf,
    })
}

/// [`verify_cert_chain`] for an already decoded chain; returns (intermediate, leaf) details.
pub fn verify_decoded(
    chain: &CertChain,
    root: &RootKey,
    server_static: &[u8; 32],
    now: u64,
) -> Result<(CertDetails, CertDetails), CertError> {
    use CertKind::{Intermediate, Leaf};
    let (i_details, i_sig) = parts(chain.intermediate.as_ref(), Intermediate)?;
    let (l_details, l_sig) = parts(chain.leaf.as_ref(), Leaf)?;
    // 1. Both signatures are 64 bytes.
    for (kind, sig) in [(Intermediate, i_sig), (Leaf, l_sig)] {
        if sig.len() != xeddsa::SIGNATURE_LEN {
            return Err(CertError::SignatureLength {
                kind,
                len: sig.len(),
            });
        }
    }
    // 2. The intermediate is signed by the root.
    if !xeddsa::verify(root.as_bytes(), i_details, i_sig) {
        return Err(CertError::IntermediateSignature);
    }
    let inter = decode_details(i_details, Intermediate)?;
    // 3. The intermediate was issued by the root (serial 0).
    let issuer = inter.issuer_serial.unwrap_or(0);
    if issuer != 0 {
        return Err(CertError::IntermediateIssuerSerial(issuer));
    }
    // 4. The leaf is signed by the intermediate.
    let inter_key = key32(&inter, Intermediate)?;
    if !xeddsa::verify(&inter_key, l_details, l_sig) {
        return Err(CertError::LeafSignature);
    }
    let leaf = decode_details(l_details, Leaf)?;
    // 5. The leaf was issued by this intermediate.
    let leaf_issuer_serial = leaf.issuer_serial.unwrap_or(0);
    let intermediate_serial = inter.serial.unwrap_or(0);
    if leaf_issuer_serial != intermediate_serial {
        return Err(CertError::LeafIssuerSerial {
            leaf_issuer_serial,
            intermediate_serial,
        });
    }
    // 6. The leaf certifies this server's static key.
    if key32(&leaf, Leaf)? != *server_static {
        return Err(CertError::LeafKeyMismatch);
    }
    // 7. Both are valid now.
    check_validity(&inter, Intermediate, now)?;
    check_validity(&leaf, Leaf, now)?;
    Ok((inter, leaf))
}

/// Signs `details` with `signer_private` into a `NoiseCertificate`.
pub fn sign_certificate(
    details: &CertDetails,
    signer_private: &[u8; 32],
    rng: &mut impl CryptoRngCore,
) -> NoiseCertificate {
    let details = details.encode_to_vec();
    let signature = xeddsa::sign(signer_private, &details, rng).to_vec();
    NoiseCertificate {
        details: Some(details),
        signature: Some(signature),
    }
}

/// What to put in the certificates of an issued chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    /// The intermediate's serial (N); the leaf's issuer serial.
    pub intermediate_serial: u32,
    /// The intermediate's issuer serial; 0 (the root) in a valid chain.
    pub intermediate_issuer_serial: u32,
    /// The leaf's serial.
    pub leaf_serial: u32,
    /// The leaf's issuer serial; the intermediate's serial in a valid chain.
    pub leaf_issuer_serial: u32,
    /// The intermediate's validity window (unix seconds, inclusive).
    pub intermediate_validity: (u64, u64),
    /// The leaf's validity window (unix seconds, inclusive).
    pub leaf_validity: (u64, u64),
}

impl ChainSpec {
    /// A valid chain: intermediate serial `intermediate_serial` issued by the root (0), leaf
    /// serial `intermediate_serial + 1` issued by it, both valid `not_before..=not_after`.
    pub fn new(intermediate_serial: u32, not_before: u64, not_after: u64) -> Self {
        Self {
            intermediate_serial,
            intermediate_issuer_serial: 0,
            leaf_serial: intermediate_serial.wrapping_add(1),
            leaf_issuer_serial: intermediate_serial,
            intermediate_validity: (not_before, not_after),
            leaf_validity: (not_before, not_after),
        }
    }
}

/// A chain issued by [`CertificateAuthority::issue`].
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedChain {
    /// The chain.
    pub chain: CertChain,
    /// The intermediate's private key (lets tests re-sign a tampered leaf).
    pub intermediate_private: [u8; 32],
}

impl IssuedChain {
    /// The serialized chain, as sent in `ServerHello.payload`.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.chain.encode_to_vec()
    }
}

/// A certificate authority for the simulator: holds a root key pair and issues chains.
#[derive(Clone)]
pub struct CertificateAuthority {
    root_private: [u8; 32],
    root: RootKey,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A fresh root key pair from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut private = [0u8; 32];
        rng.fill_bytes(&mut private);
        Self::from_root_private(private)
    }

    /// A CA whose root private key is `root_private`.
    pub fn from_root_private(root_private: [u8; 32]) -> Self {
        let root = RootKey::custom(xeddsa::public_key(&root_private));
        Self { root_private, root }
    }

    /// The root public key clients must pin ([`RootKey::custom`]).
    pub fn root_key(&self) -> RootKey {
        self.root
    }

    /// The root private key.
    pub fn root_private(&self) -> &[u8; 32] {
        &self.root_private
    }

    /// Issues a chain for the server Noise static public key `server_static`: a fresh
    /// intermediate key pair from `rng`, intermediate signed by the root, leaf signed by the
    /// intermediate. `spec` chooses serials and validity windows.
    pub fn issue(
        &self,
        spec: &ChainSpec,
        server_static: &[u8; 32],
        rng: &mut impl CryptoRngCore,
    ) -> IssuedChain {
        let mut intermediate_private = [0u8; 32];
        rng.fill_bytes(&mut intermediate_private);
        let inter = CertDetails {
            serial: Some(spec.intermediate_serial),
            issuer_serial: Some(spec.intermediate_issuer_serial),
            key: Some(xeddsa::public_key(&intermediate_private).to_vec()),
            not_before: Some(spec.intermediate_validity.0),
            not_after: Some(spec.intermediate_validity.1),
        };
        let leaf = CertDetails {
            serial: Some(spec.leaf_serial),
            issuer_serial: Some(spec.leaf_issuer_serial),
            key: Some(server_static.to_vec()),
            not_before: Some(spec.leaf_validity.0),
            not_after: Some(spec.leaf_validity.1),
        };
        let chain = CertChain {
            intermediate: Some(sign_certificate(&inter, &self.root_private, rng)),
            leaf: Some(sign_certificate(&leaf, &intermediate_private, rng)),
        };
        IssuedChain {
            chain,
            intermediate_private,
        }
    }
}
