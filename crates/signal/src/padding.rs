//! WhatsApp's plaintext padding: `Message proto || N bytes each equal to N`, N in 1..=16,
//! for `<enc v="2">`; `v="3"` carries no padding.

use crate::error::SignalError;
use rand_core::CryptoRngCore;

/// Appends 1–16 padding bytes, each equal to the count.
pub fn pad(plaintext: &[u8], rng: &mut impl CryptoRngCore) -> Vec<u8> {
    let n = (rng.next_u32() % 16 + 1) as u8;
    pad_with(plaintext, n)
}

/// Appends exactly `n` (1..=16, clamped) padding bytes each equal to `n`.
pub fn pad_with(plaintext: &[u8], n: u8) -> Vec<u8> {
    let n = n.clamp(1, 16);
    let mut out = Vec::with_capacity(plaintext.len() + n as usize);
    out.extend_from_slice(plaintext);
    out.resize(plaintext.len() + n as usize, n);
    out
}

/// Strips padding: the last byte N must be ≥ 1, ≤ the length, and the last N bytes must
/// all equal N. (Other clients pad 1..=15; we accept any consistent N.)
pub fn unpad(padded: &[u8]) -> Result<&[u8], SignalError> {
    let n = *padded.last().ok_or(SignalError::InvalidPadding)? as usize;
    if n == 0 || n > padded.len() {
        return Err(SignalError::InvalidPadding);
    }
    let (body, pad) = padded.split_at(padded.len() - n);
    if pad.iter().all(|&b| b as usize == n) {
        Ok(body)
    } else {
        Err(SignalError::InvalidPadding)
    }
}

/// Strips padding according to the `<enc v=…>` attribute: `v="3"` has none.
pub fn unpad_for_version(enc_version: &str, plaintext: &[u8]) -> Result<Vec<u8>, SignalError> {
    match enc_version {
        "3" => Ok(plaintext.to_vec()),
        _ => unpad(plaintext).map(<[u8]>::to_vec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn pad_round_trip_all_lengths() {
        for n in 1..=16u8 {
            let p = pad_with(b"hi", n);
            assert_eq!(p.len(), 2 + n as usize);
            assert_eq!(unpad(&p).unwrap(), b"hi");
        }
        for _ in 0..100 {
            let p = pad(b"x", &mut OsRng);
            assert!((2..=17).contains(&p.len()));
            assert_eq!(unpad(&p).unwrap(), b"x");
        }
    }

    #[test]
    fn bad_padding_is_an_error() {
        assert_eq!(unpad(&[]), Err(SignalError::InvalidPadding));
        assert_eq!(unpad(&[1, 2, 0]), Err(SignalError::InvalidPadding));
        assert_eq!(unpad(&[1, 3, 2]), Err(SignalError::InvalidPadding));
        assert_eq!(unpad(&[5]), Err(SignalError::InvalidPadding));
        assert_eq!(unpad_for_version("3", &[1, 2, 0]).unwrap(), vec![1, 2, 0]);
        assert_eq!(unpad_for_version("2", &[7, 1]).unwrap(), vec![7]);
    }
}
