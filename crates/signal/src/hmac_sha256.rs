//! HMAC-SHA256 (RFC 2104) and HKDF-SHA256 (RFC 5869) on SHA-256's block function.
//!
//! The ratchet hashes tiny inputs under 32-byte keys, so its cost is counted in SHA-256
//! compressions (one per 64-byte block; [`crate::sha256_block`] runs them on SHA-NI where
//! the CPU has it, two at a time where they are independent).
//! Keying an HMAC costs two compressions (the inner and outer pad blocks); each MAC then
//! costs one per 64 bytes of `inner pad || message || padding` after the first block, plus
//! one for the outer hash. [`HmacKey`] keeps the two keyed states, so a key used more than
//! once (a chain key deriving both the message-key seed and the next chain key, an HKDF
//! pseudo-random key producing several blocks) is keyed once, and [`zero_salt`] keys the
//! all-zero HKDF salt Signal uses once per process. The `hmac`/`hkdf` crates would re-key
//! on every use and buffer through the generic `digest` machinery.

use crate::sha256_block::compress_x2;
use std::sync::OnceLock;

/// SHA-256 initial hash value (FIPS 180-4, 5.3.3).
const INITIAL_STATE: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];
const BLOCK: usize = 64;
/// Output length of SHA-256 and HMAC-SHA256.
pub(crate) const DIGEST_LEN: usize = 32;

/// Runs the compression function over whole blocks.
fn compress(state: &mut [u32; 8], blocks: &[u8]) {
    debug_assert_eq!(blocks.len() % BLOCK, 0);
    for block in blocks.chunks_exact(BLOCK) {
        // `chunks_exact` yields 64-byte chunks: the conversion always succeeds.
        if let Ok(block) = <&[u8; BLOCK]>::try_from(block) {
            crate::sha256_block::compress(state, block);
        }
    }
}

/// A SHA-256 computation in progress: the chaining state after the whole blocks absorbed so
/// far, and the bytes of the next, partial block.
struct Sha256 {
    state: [u32; 8],
    /// Whole blocks absorbed into `state`.
    blocks: u64,
    partial: [u8; BLOCK],
    filled: usize,
}

impl Sha256 {
    /// Continues from a state that has absorbed `blocks` whole blocks.
    fn resume(state: [u32; 8], blocks: u64) -> Self {
        Self {
            state,
            blocks,
            partial: [0; BLOCK],
            filled: 0,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        if self.filled > 0 {
            let take = (BLOCK - self.filled).min(data.len());
            self.partial[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled < BLOCK {
                return;
            }
            compress(&mut self.state, &self.partial);
            self.blocks += 1;
            self.filled = 0;
        }
        let whole = data.len() - data.len() % BLOCK;
        compress(&mut self.state, &data[..whole]);
        self.blocks += (whole / BLOCK) as u64;
        let rest = &data[whole..];
        self.partial[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    /// Appends the padding and length (FIPS 180-4, 5.1.1) and returns the digest.
    fn finish(self) -> [u8; DIGEST_LEN] {
        state_bytes(&self.finish_state())
    }

    /// [`Sha256::finish`] as the final state words.
    fn finish_state(mut self) -> [u32; 8] {
        let bits = (self.blocks * BLOCK as u64 + self.filled as u64) * 8;
        self.partial[self.filled] = 0x80;
        self.partial[self.filled + 1..].fill(0);
        if self.filled + 1 > BLOCK - 8 {
            compress(&mut self.state, &self.partial);
            self.partial.fill(0);
        }
        self.partial[BLOCK - 8..].copy_from_slice(&bits.to_be_bytes());
        compress(&mut self.state, &self.partial);
        self.state
    }
}

fn state_bytes(state: &[u32; 8]) -> [u8; DIGEST_LEN] {
    let mut out = [0u8; DIGEST_LEN];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// A message short enough (at most 55 bytes) to fit, with SHA-256's padding, in the one
/// block after HMAC's inner pad; built in place from fixed-size parts so the hot paths
/// (chain steps, HKDF blocks) copy no more than they must.
pub(crate) struct ShortMessage {
    block: [u8; BLOCK],
    len: usize,
}

impl ShortMessage {
    /// The longest message that fits: 64 bytes less the `0x80` byte and the 8-byte length.
    pub(crate) const MAX: usize = BLOCK - 9;

    #[inline(always)]
    pub(crate) fn new() -> Self {
        Self {
            block: [0; BLOCK],
            len: 0,
        }
    }

    /// Appends `part`. The callers' sizes are constants within [`ShortMessage::MAX`]
    /// (checked in debug builds; a longer message would be cut off by a slice panic, never
    /// hashed wrongly).
    #[inline(always)]
    pub(crate) fn push(&mut self, part: &[u8]) -> &mut Self {
        debug_assert!(self.len + part.len() <= Self::MAX);
        self.block[self.len..self.len + part.len()].copy_from_slice(part);
        self.len += part.len();
        self
    }

    /// The block: message, `0x80`, zeros, the bit length of inner pad and message.
    fn into_block(mut self) -> [u8; BLOCK] {
        self.block[self.len] = 0x80;
        let bits = ((BLOCK + self.len) * 8) as u64;
        self.block[BLOCK - 8..].copy_from_slice(&bits.to_be_bytes());
        self.block
    }
}

/// An HMAC-SHA256 key with its inner and outer pad blocks already absorbed.
#[derive(Clone)]
pub(crate) struct HmacKey {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl HmacKey {
    /// Keys HMAC-SHA256 with `key` (two compressions; keys over 64 bytes are hashed first,
    /// as RFC 2104 says).
    pub(crate) fn new(key: &[u8]) -> Self {
        let mut padded = [0u8; BLOCK];
        if key.len() > BLOCK {
            let mut h = Sha256::resume(INITIAL_STATE, 0);
            h.update(key);
            padded[..DIGEST_LEN].copy_from_slice(&h.finish());
        } else if let Ok(key) = <&[u8; DIGEST_LEN]>::try_from(key) {
            // The usual 32-byte key: a fixed-size copy.
            padded[..DIGEST_LEN].copy_from_slice(key);
        } else {
            padded[..key.len()].copy_from_slice(key);
        }
        let (mut inner, mut outer) = (INITIAL_STATE, INITIAL_STATE);
        compress_x2(
            &mut inner,
            &padded.map(|b| b ^ 0x36),
            &mut outer,
            &padded.map(|b| b ^ 0x5c),
        );
        Self { inner, outer }
    }

    /// HMAC over the concatenation of `parts`.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> [u8; DIGEST_LEN] {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len <= BLOCK - 9 {
            return self.mac_one_block(parts, len);
        }
        let mut h = Sha256::resume(self.inner, 1);
        for part in parts {
            h.update(part);
        }
        self.outer_hash(&h.finish_state())
    }

    /// A message of `len` bytes that fits with its padding in the block after the inner
    /// pad: that block is laid out directly, two compressions in all.
    fn mac_one_block(&self, parts: &[&[u8]], len: usize) -> [u8; DIGEST_LEN] {
        let mut block = ShortMessage::new();
        for part in parts {
            block.push(part);
        }
        debug_assert_eq!(block.len, len);
        self.mac_short(block)
    }

    /// HMAC of a short message: two compressions.
    pub(crate) fn mac_short(&self, message: ShortMessage) -> [u8; DIGEST_LEN] {
        let mut state = self.inner;
        compress(&mut state, &message.into_block());
        self.outer_hash(&state)
    }

    /// HMACs of two short messages under this key, their compressions paired.
    pub(crate) fn mac_short_x2(
        &self,
        a: ShortMessage,
        b: ShortMessage,
    ) -> ([u8; DIGEST_LEN], [u8; DIGEST_LEN]) {
        let (mut inner_a, mut inner_b) = (self.inner, self.inner);
        compress_x2(&mut inner_a, &a.into_block(), &mut inner_b, &b.into_block());
        let (mut outer_a, mut outer_b) = (self.outer, self.outer);
        compress_x2(
            &mut outer_a,
            &outer_block(&inner_a),
            &mut outer_b,
            &outer_block(&inner_b),
        );
        (state_bytes(&outer_a), state_bytes(&outer_b))
    }

    /// The HMAC of a short message under this key, and `key` keyed as a new [`HmacKey`],
    /// their compressions paired (the last HKDF block beside keying the key an earlier
    /// block produced).
    pub(crate) fn mac_short_and_key(
        &self,
        message: ShortMessage,
        key: &[u8; DIGEST_LEN],
    ) -> ([u8; DIGEST_LEN], HmacKey) {
        let mut padded = [0u8; BLOCK];
        padded[..DIGEST_LEN].copy_from_slice(key);
        let (mut inner, mut new_inner) = (self.inner, INITIAL_STATE);
        compress_x2(
            &mut inner,
            &message.into_block(),
            &mut new_inner,
            &padded.map(|b| b ^ 0x36),
        );
        let (mut outer, mut new_outer) = (self.outer, INITIAL_STATE);
        compress_x2(
            &mut outer,
            &outer_block(&inner),
            &mut new_outer,
            &padded.map(|b| b ^ 0x5c),
        );
        let keyed = HmacKey {
            inner: new_inner,
            outer: new_outer,
        };
        (state_bytes(&outer), keyed)
    }

    /// The outer hash over the inner hash's final state: one compression.
    fn outer_hash(&self, inner: &[u32; 8]) -> [u8; DIGEST_LEN] {
        let mut state = self.outer;
        compress(&mut state, &outer_block(inner));
        state_bytes(&state)
    }
}

/// The outer hash's second block, laid out directly: the inner digest, `0x80`, zeros, the
/// bit length of outer pad and digest.
fn outer_block(inner: &[u32; 8]) -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    for (bytes, word) in block[..DIGEST_LEN].chunks_exact_mut(4).zip(inner) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    block[DIGEST_LEN] = 0x80;
    let bits = ((BLOCK + DIGEST_LEN) * 8) as u64;
    block[BLOCK - 8..].copy_from_slice(&bits.to_be_bytes());
    block
}

/// The all-zero 32-byte salt that Signal's HKDFs use (X3DH, message keys, sender keys),
/// keyed once per process.
pub(crate) fn zero_salt() -> &'static HmacKey {
    static ZERO: OnceLock<HmacKey> = OnceLock::new();
    ZERO.get_or_init(|| HmacKey::new(&[0u8; DIGEST_LEN]))
}

/// HKDF-SHA256: extract with the keyed `salt`, then expand `info` into `out`, computing only
/// the blocks `out` needs. `out` is at most 255 × 32 bytes (RFC 5869's limit); every caller
/// asks for a constant size of at most 96. With a 32-byte input and an `info` of at most 22
/// bytes (all of Signal's) every HMAC is one block: 2 + 2 + 2 per 32 output bytes
/// compressions, plus 2 to key `salt` if it is not pre-keyed.
pub(crate) fn hkdf<const I: usize>(salt: &HmacKey, input: &[u8], info: &[u8; I], out: &mut [u8]) {
    assert!(out.len() <= 255 * DIGEST_LEN, "HKDF output too long");
    let prk = match <&[u8; DIGEST_LEN]>::try_from(input) {
        Ok(input) => salt.mac_short({
            let mut m = ShortMessage::new();
            m.push(input);
            m
        }),
        Err(_) => salt.mac(&[input]),
    };
    let prk = HmacKey::new(&prk);
    const COUNTER_LEN: usize = 1;
    let mut t = [0u8; DIGEST_LEN];
    for (i, chunk) in out.chunks_mut(DIGEST_LEN).enumerate() {
        // T(i) = HMAC(PRK, T(i-1) || info || i), T(0) empty.
        let counter = [i as u8 + 1];
        let previous: &[u8] = if i == 0 { &[] } else { &t };
        // T(i-1), info and the one-byte counter in one block?
        t = if DIGEST_LEN + I + COUNTER_LEN <= ShortMessage::MAX {
            let mut m = ShortMessage::new();
            m.push(previous).push(info).push(&counter);
            prk.mac_short(m)
        } else {
            prk.mac(&[previous, info, &counter])
        };
        chunk.copy_from_slice(&t[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::Mac;

    fn reference_hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(msg);
        mac.finalize().into_bytes().into()
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let tag = HmacKey::new(b"Jefe").mac(&[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex(&tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_matches_reference_across_block_boundaries() {
        // Key lengths around the block size (including hashed long keys) and message lengths
        // around every padding boundary, split into parts at several points.
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for key_len in [0usize, 1, 32, 63, 64, 65, 131] {
            let key = &data[..key_len];
            let k = HmacKey::new(key);
            for len in [
                0usize, 1, 54, 55, 56, 63, 64, 65, 119, 120, 128, 190, 255, 300,
            ] {
                let msg = &data[..len];
                let want = reference_hmac(key, msg);
                assert_eq!(k.mac(&[msg]), want, "key {key_len} msg {len}");
                for split in [0, len / 3, len / 2, len] {
                    let (a, b) = msg.split_at(split);
                    let (b, c) = b.split_at(b.len() / 2);
                    assert_eq!(
                        k.mac(&[a, b, c]),
                        want,
                        "key {key_len} msg {len} split {split}"
                    );
                }
            }
        }
    }

    #[test]
    fn hkdf_matches_reference_for_every_length() {
        let salt = [9u8; 32];
        for len in [0usize, 1, 16, 32, 33, 64, 80, 96, 200] {
            let mut want = vec![0u8; len];
            hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), b"input key material")
                .expand(b"WhisperMessageKeys", &mut want)
                .unwrap();
            let mut got = vec![0u8; len];
            hkdf(
                &HmacKey::new(&salt),
                b"input key material",
                b"WhisperMessageKeys",
                &mut got,
            );
            let mut want32 = vec![0u8; len];
            hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), &[5u8; 32])
                .expand(b"WhisperMessageKeys", &mut want32)
                .unwrap();
            let mut got32 = vec![0u8; len];
            hkdf(
                &HmacKey::new(&salt),
                &[5u8; 32],
                b"WhisperMessageKeys",
                &mut got32,
            );
            assert_eq!(got32, want32, "32-byte input, length {len}");
            let long_info = [3u8; 40];
            let mut want_long = vec![0u8; len];
            hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), &[5u8; 32])
                .expand(&long_info, &mut want_long)
                .unwrap();
            let mut got_long = vec![0u8; len];
            hkdf(&HmacKey::new(&salt), &[5u8; 32], &long_info, &mut got_long);
            assert_eq!(got_long, want_long, "40-byte info, length {len}");
            assert_eq!(got, want, "length {len}");
            let mut zero = vec![0u8; len];
            hkdf::Hkdf::<sha2::Sha256>::new(Some(&[0u8; 32]), b"seed")
                .expand(b"info", &mut zero)
                .unwrap();
            hkdf(zero_salt(), b"seed", b"info", &mut got);
            assert_eq!(got, zero, "zero salt, length {len}");
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
