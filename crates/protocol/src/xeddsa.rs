//! XEdDSA signatures on Curve25519 (Montgomery) keys, with libsignal's sign-bit convention.
//!
//! WhatsApp and libsignal sign with the X25519 identity key. The signer derives the Edwards
//! public key `A = a·B` from the clamped private scalar `a` and keeps A's sign bit in the top
//! bit of the last signature byte (`sig[63] & 0x80`); the verifier converts the Montgomery
//! `u` to an Edwards point with that sign bit and checks an ordinary Ed25519 equation.
//! Spec-pure XEdDSA (always sign bit 0) rejects about half of libsignal's signatures,
//! which is why this module exists (protocol-notes, finding 4).

use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha512};

/// Length of an XEdDSA signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// A 64-byte XEdDSA signature: `R || s`, with the signer's Edwards sign bit in `s[31] & 0x80`.
pub type Signature = [u8; SIGNATURE_LEN];

/// Clamps a 32-byte X25519 private key the way X25519 does.
fn clamp(private: &[u8; 32]) -> Scalar {
    let mut k = *private;
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    Scalar::from_bytes_mod_order(k)
}

/// Signs `message` with the X25519 private key `private`, using 64 random bytes from `rng`
/// as the nonce input. The result verifies with [`verify`] and with libsignal's
/// `curve25519_verify`.
pub fn sign(private: &[u8; 32], message: &[u8], rng: &mut impl CryptoRngCore) -> Signature {
    let mut random = [0u8; 64];
    rng.fill_bytes(&mut random);
    sign_with_nonce(private, message, &random)
}

/// Deterministic form of [`sign`]: `random` is the 64-byte nonce input. Exposed so that
/// tests and fuzzers can reproduce signatures; production code calls [`sign`].
pub fn sign_with_nonce(private: &[u8; 32], message: &[u8], random: &[u8; 64]) -> Signature {
    let a = clamp(private);
    let public = (ED25519_BASEPOINT_TABLE * &a).compress();
    let sign_bit = public.as_bytes()[31] & 0x80;

    // r = SHA-512(0xFE || 0xFF*31 || a || M || Z) mod L, as in XEdDSA's hash_1.
    let mut h = Sha512::new();
    h.update([0xFEu8]);
    h.update([0xFFu8; 31]);
    h.update(a.as_bytes());
    h.update(message);
    h.update(random);
    let r = Scalar::from_hash(h);
    let big_r = (ED25519_BASEPOINT_TABLE * &r).compress();

    let mut h = Sha512::new();
    h.update(big_r.as_bytes());
    h.update(public.as_bytes());
    h.update(message);
    let k = Scalar::from_hash(h);
    let s = r + k * a;

    let mut sig = [0u8; SIGNATURE_LEN];
    sig[..32].copy_from_slice(big_r.as_bytes());
    sig[32..].copy_from_slice(s.as_bytes());
    sig[63] |= sign_bit;
    sig
}

/// Verifies an XEdDSA signature made by the holder of the X25519 public key `public`.
/// Returns `false` for any malformed key or signature; never panics.
pub fn verify(public: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let Ok(sig) = <&[u8; SIGNATURE_LEN]>::try_from(signature) else {
        return false;
    };
    let sign_bit = sig[63] & 0x80;
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(&sig[32..]);
    s_bytes[31] &= 0x7F;
    // Reject non-canonical s (s >= L), as libsignal's ge_scalarmult checks via sc_reduce.
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
        return false;
    };
    let Some(a_point) = MontgomeryPoint(*public).to_edwards(sign_bit >> 7) else {
        return false;
    };
    let a_compressed = a_point.compress();
    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&sig[..32]);
    let big_r = CompressedEdwardsY(r_bytes);

    let mut h = Sha512::new();
    h.update(big_r.as_bytes());
    h.update(a_compressed.as_bytes());
    h.update(message);
    let k = Scalar::from_hash(h);
    // R' = s·B − k·A
    let check =
        curve25519_dalek::EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &(-a_point), &s);
    check.compress().as_bytes() == big_r.as_bytes()
}

/// The X25519 public key for a private key (clamped scalar times the Montgomery base point).
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(*private, x25519_dalek::X25519_BASEPOINT_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};

    #[test]
    fn sign_then_verify_and_reject_tampering() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen_sign_bit = [false; 2];
        for i in 0..200u32 {
            let mut private = [0u8; 32];
            rng.fill_bytes(&mut private);
            let public = public_key(&private);
            let msg = i.to_be_bytes();
            let sig = sign(&private, &msg, &mut rng);
            seen_sign_bit[usize::from(sig[63] >> 7)] = true;
            assert!(verify(&public, &msg, &sig), "signature {i} did not verify");
            let mut bad = sig;
            bad[(i as usize * 7) % 64] ^= 1 << (i % 8);
            assert!(
                !verify(&public, &msg, &bad),
                "tampered signature {i} verified"
            );
            assert!(!verify(&public, b"other", &sig));
        }
        // Both sign-bit values must occur, or the convention is not exercised.
        assert_eq!(seen_sign_bit, [true, true]);
    }

    #[test]
    fn wrong_length_is_false() {
        let private = [9u8; 32];
        let public = public_key(&private);
        let sig = sign_with_nonce(&private, b"m", &[1; 64]);
        assert!(!verify(&public, b"m", &sig[..63]));
        assert!(!verify(&public, b"m", &[]));
    }
}
