//! The post-handshake cipher.

use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit};

use super::symmetric::iv;
use super::NoiseError;

/// AES-256-GCM with empty associated data and separate read and write counters, each starting
/// at 0 and used as the u32 big-endian tail of the IV. A counter that would pass 2^32 − 1
/// yields [`NoiseError::CounterExhausted`] instead of wrapping.
#[derive(Clone)]
pub struct Transport {
    write: Aes256Gcm,
    read: Aes256Gcm,
    write_n: u64,
    read_n: u64,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("write_n", &self.write_n)
            .field("read_n", &self.read_n)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// A transport writing with `write_key` and reading with `read_key`.
    pub fn new(write_key: [u8; 32], read_key: [u8; 32]) -> Self {
        Self {
            write: Aes256Gcm::new(&write_key.into()),
            read: Aes256Gcm::new(&read_key.into()),
            write_n: 0,
            read_n: 0,
        }
    }

    /// Encrypts the next outgoing message.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let n = u32::try_from(self.write_n).map_err(|_| NoiseError::CounterExhausted)?;
        let ct = self
            .write
            .encrypt((&iv(n)).into(), plaintext)
            .map_err(|_| NoiseError::Encrypt)?;
        self.write_n += 1;
        Ok(ct)
    }

    /// Decrypts the next incoming message. On failure the counter does not advance.
    pub fn decrypt(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let n = u32::try_from(self.read_n).map_err(|_| NoiseError::CounterExhausted)?;
        let pt = self
            .read
            .decrypt((&iv(n)).into(), ciphertext)
            .map_err(|_| NoiseError::Decrypt)?;
        self.read_n += 1;
        Ok(pt)
    }

    /// Messages encrypted so far (the next write nonce).
    pub fn write_counter(&self) -> u64 {
        self.write_n
    }

    /// Messages decrypted so far (the next read nonce).
    pub fn read_counter(&self) -> u64 {
        self.read_n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_separate_and_exhaust_without_wrapping() {
        let mut a = Transport::new([1; 32], [2; 32]);
        let mut b = Transport::new([2; 32], [1; 32]);
        let c0 = a.encrypt(b"x").unwrap();
        let c1 = a.encrypt(b"x").unwrap();
        assert_ne!(c0, c1, "nonce must advance");
        assert_eq!(b.decrypt(&c0).unwrap(), b"x");
        assert_eq!(b.decrypt(&c0), Err(NoiseError::Decrypt), "replay must fail");
        assert_eq!(b.decrypt(&c1).unwrap(), b"x");
        let back = b.encrypt(b"y").unwrap();
        assert_eq!(a.decrypt(&back).unwrap(), b"y");

        a.write_n = u32::MAX as u64;
        b.read_n = u32::MAX as u64;
        let last = a.encrypt(b"z").unwrap();
        assert_eq!(b.decrypt(&last).unwrap(), b"z");
        assert_eq!(a.encrypt(b"z"), Err(NoiseError::CounterExhausted));
        assert_eq!(b.decrypt(&last), Err(NoiseError::CounterExhausted));
    }
}
