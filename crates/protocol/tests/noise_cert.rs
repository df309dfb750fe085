//! Certificate chain: the seven checks of protocol notes §2.3, one failing test each, plus the
//! pinned root and the simulator CA.

use prost::Message;
use rand::rngs::StdRng;
use rand::SeedableRng;
use wafleet_protocol::cert::{
    sign_certificate, verify_cert_chain, CertError, CertKind, CertificateAuthority, ChainSpec,
    IssuedChain, RootKey,
};
use wafleet_protocol::noise::KeyPair;
use wafleet_protocol::proto::{CertChain, CertDetails};

const NOW: u64 = 1_760_000_000;
const NB: u64 = NOW - 100;
const NA: u64 = NOW + 100;

struct Setup {
    ca: CertificateAuthority,
    server: KeyPair,
    rng: StdRng,
}

fn setup() -> Setup {
    let mut rng = StdRng::seed_from_u64(0xce47);
    let ca = CertificateAuthority::generate(&mut rng);
    let server = KeyPair::generate(&mut rng);
    Setup { ca, server, rng }
}

impl Setup {
    fn issue(&mut self, spec: &ChainSpec) -> IssuedChain {
        self.ca.issue(spec, &self.server.public, &mut self.rng)
    }

    fn verify(&self, chain: &CertChain) -> Result<(), CertError> {
        self.verify_at(chain, NOW)
    }

    fn verify_at(&self, chain: &CertChain, now: u64) -> Result<(), CertError> {
        verify_cert_chain(
            &chain.encode_to_vec(),
            &self.ca.root_key(),
            &self.server.public,
            now,
        )
        .map(|_| ())
    }
}

fn details(cert: &Option<wafleet_protocol::proto::NoiseCertificate>) -> CertDetails {
    CertDetails::decode(cert.as_ref().unwrap().details.as_deref().unwrap()).unwrap()
}

#[test]
fn root_key_defaults_to_whatsapp() {
    assert_eq!(
        hex::encode(RootKey::default().as_bytes()),
        "142375574d0a587166aae71ebe516437c4a28b73e3695c6ce1f7f9545da8ee6b"
    );
    assert_eq!(RootKey::default(), RootKey::WHATSAPP);
    assert_ne!(RootKey::custom([1; 32]), RootKey::WHATSAPP);
    assert_eq!(RootKey::custom([1; 32]).as_bytes(), &[1; 32]);
}

#[test]
fn a_valid_chain_verifies_and_is_deterministic() {
    let mut s = setup();
    let issued = s.issue(&ChainSpec::new(42, NB, NA));
    let v = verify_cert_chain(&issued.to_bytes(), &s.ca.root_key(), &s.server.public, NOW).unwrap();
    assert_eq!(v.intermediate.serial, Some(42));
    assert_eq!(v.intermediate.issuer_serial, Some(0));
    assert_eq!(v.leaf.issuer_serial, Some(42));
    assert_eq!(v.leaf.key.as_deref(), Some(&s.server.public[..]));
    assert_eq!(v.chain, issued.chain);
    // The intermediate's issuerSerial 0 is on the wire (explicit, as clients read it).
    let raw = issued
        .chain
        .intermediate
        .as_ref()
        .unwrap()
        .details
        .clone()
        .unwrap();
    assert!(raw.windows(2).any(|w| w == [0x10, 0x00]));
    // Validity bounds are inclusive.
    assert_eq!(s.verify_at(&issued.chain, NB), Ok(()));
    assert_eq!(s.verify_at(&issued.chain, NA), Ok(()));

    let again = setup().issue(&ChainSpec::new(42, NB, NA));
    assert_eq!(again.to_bytes(), issued.to_bytes(), "same rng, same chain");
}

/// Check 1: both signatures are 64 bytes.
#[test]
fn check1_signature_length() {
    let mut s = setup();
    let mut chain = s.issue(&ChainSpec::new(1, NB, NA)).chain;
    chain
        .intermediate
        .as_mut()
        .unwrap()
        .signature
        .as_mut()
        .unwrap()
        .pop();
    assert_eq!(
        s.verify(&chain),
        Err(CertError::SignatureLength {
            kind: CertKind::Intermediate,
            len: 63
        })
    );
    let mut chain = s.issue(&ChainSpec::new(1, NB, NA)).chain;
    chain
        .leaf
        .as_mut()
        .unwrap()
        .signature
        .as_mut()
        .unwrap()
        .push(0);
    assert_eq!(
        s.verify(&chain),
        Err(CertError::SignatureLength {
            kind: CertKind::Leaf,
            len: 65
        })
    );
}

/// Check 2: the intermediate's signature verifies with the root key.
#[test]
fn check2_intermediate_signature() {
    let mut s = setup();
    let mut chain = s.issue(&ChainSpec::new(1, NB, NA)).chain;
    chain
        .intermediate
        .as_mut()
        .unwrap()
        .signature
        .as_mut()
        .unwrap()[10] ^= 1;
    assert_eq!(s.verify(&chain), Err(CertError::IntermediateSignature));

    // Tampered details (serial changed) under the original signature.
    let mut chain = s.issue(&ChainSpec::new(1, NB, NA)).chain;
    let mut d = details(&chain.intermediate);
    d.not_after = Some(u64::MAX);
    chain.intermediate.as_mut().unwrap().details = Some(d.encode_to_vec());
    assert_eq!(s.verify(&chain), Err(CertError::IntermediateSignature));
}

/// Check 3: the intermediate's issuer serial is 0.
#[test]
fn check3_intermediate_issuer_serial() {
    let mut s = setup();
    let mut spec = ChainSpec::new(1, NB, NA);
    spec.intermediate_issuer_serial = 9;
    let chain = s.issue(&spec).chain;
    assert_eq!(
        s.verify(&chain),
        Err(CertError::IntermediateIssuerSerial(9))
    );
}

/// Check 4: the leaf's signature verifies with the intermediate's key.
#[test]
fn check4_leaf_signature() {
    let mut s = setup();
    let mut chain = s.issue(&ChainSpec::new(1, NB, NA)).chain;
    chain.leaf.as_mut().unwrap().signature.as_mut().unwrap()[0] ^= 0x40;
    assert_eq!(s.verify(&chain), Err(CertError::LeafSignature));

    // A leaf signed by the root instead of the intermediate.
    let mut chain = s.issue(&ChainSpec::new(1, NB, NA)).chain;
    let leaf = details(&chain.leaf);
    chain.leaf = Some(sign_certificate(&leaf, s.ca.root_private(), &mut s.rng));
    assert_eq!(s.verify(&chain), Err(CertError::LeafSignature));
}

/// Check 5: the leaf's issuer serial is the intermediate's serial.
#[test]
fn check5_leaf_issuer_serial() {
    let mut s = setup();
    let mut spec = ChainSpec::new(5, NB, NA);
    spec.leaf_issuer_serial = 6;
    let chain = s.issue(&spec).chain;
    assert_eq!(
        s.verify(&chain),
        Err(CertError::LeafIssuerSerial {
            leaf_issuer_serial: 6,
            intermediate_serial: 5
        })
    );
}

/// Check 6: the leaf's key is the decrypted server static key.
#[test]
fn check6_leaf_key() {
    let mut s = setup();
    let chain = s.issue(&ChainSpec::new(1, NB, NA)).chain;
    let other = KeyPair::generate(&mut s.rng);
    assert_eq!(
        verify_cert_chain(&chain.encode_to_vec(), &s.ca.root_key(), &other.public, NOW),
        Err(CertError::LeafKeyMismatch)
    );
    // Re-signed leaf for another key (valid signature, wrong key).
    let mut issued = s.issue(&ChainSpec::new(1, NB, NA));
    let mut leaf = details(&issued.chain.leaf);
    leaf.key = Some(other.public.to_vec());
    issued.chain.leaf = Some(sign_certificate(
        &leaf,
        &issued.intermediate_private,
        &mut s.rng,
    ));
    assert_eq!(s.verify(&issued.chain), Err(CertError::LeafKeyMismatch));
}

/// Check 7: both certificates are valid at `now`.
#[test]
fn check7_validity_window() {
    let mut s = setup();
    let chain = s.issue(&ChainSpec::new(1, NB, NA)).chain;
    assert_eq!(
        s.verify_at(&chain, NB - 1),
        Err(CertError::NotValidAt {
            kind: CertKind::Intermediate,
            not_before: NB,
            not_after: NA,
            now: NB - 1
        })
    );
    assert!(matches!(
        s.verify_at(&chain, NA + 1),
        Err(CertError::NotValidAt {
            kind: CertKind::Intermediate,
            ..
        })
    ));
    // Only the leaf expired.
    let mut spec = ChainSpec::new(1, NB, NA);
    spec.leaf_validity = (NB, NOW - 1);
    let chain = s.issue(&spec).chain;
    assert_eq!(
        s.verify(&chain),
        Err(CertError::NotValidAt {
            kind: CertKind::Leaf,
            not_before: NB,
            not_after: NOW - 1,
            now: NOW
        })
    );
    // Only the leaf not yet valid.
    let mut spec = ChainSpec::new(1, NB, NA);
    spec.leaf_validity = (NOW + 1, NA);
    let chain = s.issue(&spec).chain;
    assert!(matches!(
        s.verify(&chain),
        Err(CertError::NotValidAt {
            kind: CertKind::Leaf,
            ..
        })
    ));
}

#[test]
fn wrong_root_key_fails() {
    let mut s = setup();
    let chain = s.issue(&ChainSpec::new(1, NB, NA)).to_bytes();
    for root in [RootKey::WHATSAPP, RootKey::custom(s.server.public)] {
        assert_eq!(
            verify_cert_chain(&chain, &root, &s.server.public, NOW),
            Err(CertError::IntermediateSignature)
        );
    }
}

#[test]
fn structural_errors() {
    let mut s = setup();
    let full = s.issue(&ChainSpec::new(1, NB, NA)).chain;
    let mut c = full.clone();
    c.leaf = None;
    assert_eq!(s.verify(&c), Err(CertError::Missing(CertKind::Leaf)));
    let mut c = full.clone();
    c.intermediate.as_mut().unwrap().signature = None;
    assert_eq!(
        s.verify(&c),
        Err(CertError::Missing(CertKind::Intermediate))
    );
    assert!(matches!(
        verify_cert_chain(&[0x0a, 0x05, 1], &s.ca.root_key(), &s.server.public, NOW),
        Err(CertError::Decode { .. })
    ));
    // An intermediate with a short key, properly signed.
    let bad = CertDetails {
        serial: Some(1),
        issuer_serial: Some(0),
        key: Some(vec![1; 31]),
        not_before: Some(NB),
        not_after: Some(NA),
    };
    let mut c = full;
    c.intermediate = Some(sign_certificate(&bad, s.ca.root_private(), &mut s.rng));
    assert_eq!(
        s.verify(&c),
        Err(CertError::BadKeyLength {
            kind: CertKind::Intermediate,
            len: 31
        })
    );
}
