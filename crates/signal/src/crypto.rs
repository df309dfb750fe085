//! Primitives: HKDF-SHA256, HMAC-SHA256 chain steps, AES-256-CBC with PKCS#7.

use crate::error::SignalError;
use aes::cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes256;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// HKDF-SHA256 (RFC 5869) producing `N` 32-byte chunks.
pub(crate) fn derive_secrets<const N: usize>(
    input: &[u8],
    salt: &[u8; 32],
    info: &[u8],
) -> [[u8; 32]; N] {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(salt), input);
    let mut buf = [0u8; 96];
    let len = (32 * N).min(96);
    // 96 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let _ = hk.expand(info, &mut buf[..len]);
    let mut out = [[0u8; 32]; N];
    for (i, chunk) in out.iter_mut().enumerate().take(3) {
        chunk.copy_from_slice(&buf[32 * i..32 * (i + 1)]);
    }
    out
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time check that `tag` equals the first `tag.len()` bytes of the HMAC.
pub(crate) fn verify_truncated_hmac(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    !tag.is_empty() && mac.verify_truncated_left(tag).is_ok()
}

/// One chain step: (message-key seed `HMAC(ck, 01)`, next chain key `HMAC(ck, 02)`), keying
/// the HMAC once.
pub(crate) fn chain_step(chain_key: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let keyed = <HmacSha256 as Mac>::new_from_slice(chain_key).expect("HMAC takes any key length");
    let mut a = keyed.clone();
    a.update(&[1u8]);
    let mut b = keyed;
    b.update(&[2u8]);
    (
        a.finalize().into_bytes().into(),
        b.finalize().into_bytes().into(),
    )
}

/// AES-256-CBC with PKCS#7 padding.
pub(crate) fn aes_cbc_encrypt(key: &[u8; 32], iv: &[u8; 16], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256::new(GenericArray::from_slice(key));
    let pad = 16 - plaintext.len() % 16;
    let mut out = Vec::with_capacity(plaintext.len() + pad);
    out.extend_from_slice(plaintext);
    out.resize(plaintext.len() + pad, pad as u8);
    let mut prev = *iv;
    for block in out.chunks_exact_mut(16) {
        for (b, p) in block.iter_mut().zip(prev.iter()) {
            *b ^= p;
        }
        let ga = GenericArray::from_mut_slice(block);
        cipher.encrypt_block(ga);
        prev.copy_from_slice(block);
    }
    out
}

/// AES-256-CBC decryption with PKCS#7 padding check.
pub(crate) fn aes_cbc_decrypt(
    key: &[u8; 32],
    iv: &[u8; 16],
    ciphertext: &[u8],
) -> Result<Vec<u8>, SignalError> {
    if ciphertext.is_empty() || ciphertext.len() & 15 != 0 {
        return Err(SignalError::InvalidCiphertext);
    }
    let cipher = Aes256::new(GenericArray::from_slice(key));
    let mut out = ciphertext.to_vec();
    let mut prev = *iv;
    for block in out.chunks_exact_mut(16) {
        let mut this = [0u8; 16];
        this.copy_from_slice(block);
        cipher.decrypt_block(GenericArray::from_mut_slice(block));
        for (b, p) in block.iter_mut().zip(prev.iter()) {
            *b ^= p;
        }
        prev = this;
    }
    let pad = *out.last().ok_or(SignalError::InvalidCiphertext)? as usize;
    if pad == 0 || pad > 16 || pad > out.len() {
        return Err(SignalError::InvalidCiphertext);
    }
    if !out[out.len() - pad..].iter().all(|&b| b as usize == pad) {
        return Err(SignalError::InvalidCiphertext);
    }
    out.truncate(out.len() - pad);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hkdf_matches_rfc5869_case_1_prefix() {
        // RFC 5869 test case 1 uses a 13-byte salt; check our chunking against hkdf directly
        // with a 32-byte salt instead.
        let salt = [7u8; 32];
        let out: [[u8; 32]; 3] = derive_secrets(b"input", &salt, b"WhisperText");
        let mut full = [0u8; 96];
        hkdf::Hkdf::<Sha256>::new(Some(&salt), b"input")
            .expand(b"WhisperText", &mut full)
            .unwrap();
        assert_eq!(out.concat(), full.to_vec());
        let two: [[u8; 32]; 2] = derive_secrets(b"input", &salt, b"WhisperText");
        assert_eq!(two.concat(), full[..64].to_vec());
    }

    #[test]
    fn cbc_round_trip_and_bad_padding() {
        let key = [1u8; 32];
        let iv = [2u8; 16];
        for len in [0usize, 1, 15, 16, 17, 100] {
            let pt = vec![9u8; len];
            let ct = aes_cbc_encrypt(&key, &iv, &pt);
            assert_eq!(ct.len() % 16, 0);
            assert_eq!(aes_cbc_decrypt(&key, &iv, &ct).unwrap(), pt);
        }
        assert!(aes_cbc_decrypt(&key, &iv, &[0u8; 15]).is_err());
        assert!(aes_cbc_decrypt(&key, &iv, &[]).is_err());
        let mut ct = aes_cbc_encrypt(&key, &iv, b"hello");
        ct[15] ^= 0x55;
        assert!(aes_cbc_decrypt(&key, &iv, &ct).is_err());
    }
}
