//! Noise's SymmetricState (with its CipherState), as WhatsApp uses it.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};

use super::{NoiseError, NOISE_NAME, PROLOGUE};

/// The 12-byte AES-GCM IV: 8 zero bytes, then the counter as u32 big-endian.
pub(crate) fn iv(counter: u32) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[8..].copy_from_slice(&counter.to_be_bytes());
    iv
}

/// HKDF-SHA256(salt = `ck`, ikm, info = "") expanded to 64 bytes, split in two halves.
pub(crate) fn hkdf2(ck: &[u8; 32], ikm: &[u8]) -> ([u8; 32], [u8; 32]) {
    let mut okm = [0u8; 64];
    // 64 bytes is far below HKDF-SHA256's 255*32 limit, so expand cannot fail.
    let _ = Hkdf::<Sha256>::new(Some(ck), ikm).expand(&[], &mut okm);
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    a.copy_from_slice(&okm[..32]);
    b.copy_from_slice(&okm[32..]);
    (a, b)
}

/// `h`, `ck` and the handshake CipherState (`k`, `n`).
///
/// One counter serves both encryption and decryption and is reset by
/// [`mix_key`](Self::mix_key); the AEAD's associated data is `h`.
#[derive(Clone)]
pub struct SymmetricState {
    h: [u8; 32],
    ck: [u8; 32],
    cipher: Option<Aes256Gcm>,
    n: u64,
}

impl std::fmt::Debug for SymmetricState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymmetricState")
            .field("h", &hex::encode(self.h))
            .field("has_key", &self.cipher.is_some())
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

/// The handshake hash after `InitializeSymmetric(name)` and `MixHash(prologue)`.
pub fn prologue_hash() -> [u8; 32] {
    SymmetricState::new().handshake_hash()
}

impl SymmetricState {
    /// `InitializeSymmetric(NOISE_NAME)` then `MixHash(PROLOGUE)`.
    pub fn new() -> Self {
        let mut s = Self {
            h: *NOISE_NAME,
            ck: *NOISE_NAME,
            cipher: None,
            n: 0,
        };
        s.mix_hash(&PROLOGUE);
        s
    }

    /// The current handshake hash `h`.
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.h
    }

    /// `h = SHA256(h || data)`.
    pub fn mix_hash(&mut self, data: &[u8]) {
        let mut d = Sha256::new();
        d.update(self.h);
        d.update(data);
        self.h = d.finalize().into();
    }

    /// `(ck, k) = HKDF(ck, ikm)`, `n = 0`.
    pub fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, k) = hkdf2(&self.ck, ikm);
        self.ck = ck;
        self.cipher = Some(Aes256Gcm::new(&k.into()));
        self.n = 0;
    }

    fn next_iv(&mut self) -> Result<[u8; 12], NoiseError> {
        let n = u32::try_from(self.n).map_err(|_| NoiseError::CounterExhausted)?;
        self.n += 1;
        Ok(iv(n))
    }

    /// Encrypts with `ad = h`, then mixes the ciphertext into `h`. Without a key (never the
    /// case in WhatsApp's XX) the plaintext passes through, as in the Noise spec.
    pub fn encrypt_and_hash(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let out = match self.cipher.clone() {
            None => plaintext.to_vec(),
            Some(c) => {
                let iv = self.next_iv()?;
                c.encrypt(
                    (&iv).into(),
                    Payload {
                        msg: plaintext,
                        aad: &self.h,
                    },
                )
                .map_err(|_| NoiseError::Encrypt)?
            }
        };
        self.mix_hash(&out);
        Ok(out)
    }

    /// Decrypts with `ad = h`, then mixes the ciphertext into `h`. On failure nothing changes.
    pub fn decrypt_and_hash(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let out = match &self.cipher {
            None => ciphertext.to_vec(),
            Some(c) => {
                let n = u32::try_from(self.n).map_err(|_| NoiseError::CounterExhausted)?;
                let pt = c
                    .decrypt(
                        (&iv(n)).into(),
                        Payload {
                            msg: ciphertext,
                            aad: &self.h,
                        },
                    )
                    .map_err(|_| NoiseError::Decrypt)?;
                self.n += 1;
                pt
            }
        };
        self.mix_hash(ciphertext);
        Ok(out)
    }

    /// `Split()`: `(k1, k2) = HKDF(ck, "")`. The initiator writes with k1 and reads with k2.
    pub fn split(&self) -> ([u8; 32], [u8; 32]) {
        hkdf2(&self.ck, &[])
    }
}

impl Default for SymmetricState {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_counter_for_both_directions_reset_by_mix_key() {
        let mut a = SymmetricState::new();
        let mut b = SymmetricState::new();
        a.mix_key(b"dh");
        b.mix_key(b"dh");
        let c0 = a.encrypt_and_hash(b"one").unwrap();
        assert_eq!(b.decrypt_and_hash(&c0).unwrap(), b"one");
        // b's counter is now 1: a message a encrypted at n = 0 under the same h would fail,
        // and a decrypt failure leaves the state untouched.
        let (h, n) = (b.handshake_hash(), b.n);
        assert_eq!(b.decrypt_and_hash(&c0), Err(NoiseError::Decrypt));
        assert_eq!((b.handshake_hash(), b.n), (h, n));
        let c1 = a.encrypt_and_hash(b"two").unwrap();
        assert_eq!(b.decrypt_and_hash(&c1).unwrap(), b"two");
        assert_eq!((a.n, b.n), (2, 2));
        a.mix_key(b"x");
        assert_eq!(a.n, 0);
        assert_eq!(a.handshake_hash(), b.handshake_hash());
    }

    #[test]
    fn counter_exhaustion_is_an_error() {
        let mut a = SymmetricState::new();
        a.mix_key(b"dh");
        a.n = u32::MAX as u64;
        assert!(a.encrypt_and_hash(b"last").is_ok());
        assert_eq!(a.encrypt_and_hash(b"x"), Err(NoiseError::CounterExhausted));
        assert_eq!(
            a.decrypt_and_hash(&[0; 16]),
            Err(NoiseError::CounterExhausted)
        );
    }

    #[test]
    fn iv_is_eight_zero_bytes_then_u32_be() {
        assert_eq!(iv(0x0102_0304), [0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
    }
}
