//! SHA-256 block compression on SHA-NI, one block or two independent ones at a time.
//!
//! The ratchet's SHA-256 work is a chain of single-block compressions, so it is bound by the
//! latency of the SHA-NI round instruction (`sha256rnds2`), not its throughput: one block is
//! 32 of them back to back, each waiting for the one before. Where two compressions do not
//! depend on each other (an HMAC key's inner and outer pad blocks; a chain step's two
//! HMACs; the last HKDF block beside keying the MAC) [`compress_x2`] interleaves their
//! rounds in one instruction stream so the second fills the first's latency. [`compress`]
//! runs the same rounds for one block, inlined where it is used.
//!
//! This is the crate's only `unsafe` code: SHA-NI intrinsics, only called after runtime
//! detection of the CPU features they need, reading 64-byte blocks and 32-byte states
//! through references of exactly those sizes. Without SHA-NI (or off x86-64) the blocks go
//! through `sha2`'s compression function. The tests check the kernel against `sha2` (its
//! own, separately written SHA-NI code on such CPUs) on random states and blocks, and
//! against FIPS 180-4's "abc" example.

/// Compresses `block_a` into `state_a` and `block_b` into `state_b` (each exactly what
/// `sha2::compress256` would do with one block).
pub(crate) fn compress_x2(
    state_a: &mut [u32; 8],
    block_a: &[u8; 64],
    state_b: &mut [u32; 8],
    block_b: &[u8; 64],
) {
    #[cfg(target_arch = "x86_64")]
    if shani::available() {
        // SAFETY: `available` checked that the CPU has every feature `compress_x2`'s
        // `target_feature` attribute enables.
        unsafe { shani::compress_x2(state_a, block_a, state_b, block_b) };
        return;
    }
    compress_portable(state_a, block_a);
    compress_portable(state_b, block_b);
}

/// One block: the same SHA-NI rounds as [`compress_x2`] where available (inlined into the
/// caller's code, without `sha2`'s per-call dispatch and multi-block loop), else `sha2`.
pub(crate) fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    #[cfg(target_arch = "x86_64")]
    if shani::available() {
        // SAFETY: `available` checked that the CPU has every feature `compress_x1`'s
        // `target_feature` attribute enables.
        unsafe { shani::compress_x1(state, block) };
        return;
    }
    compress_portable(state, block);
}

/// One block through `sha2` (which picks SHA-NI or portable code itself).
fn compress_portable(state: &mut [u32; 8], block: &[u8; 64]) {
    use sha2::digest::generic_array::GenericArray;
    sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

#[cfg(target_arch = "x86_64")]
mod shani {
    use std::arch::x86_64::*;

    /// Whether the CPU has SHA-NI and the SSE levels the kernel uses (cached by std).
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse2")
            && std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1")
    }

    /// SHA-256 round constants (FIPS 180-4, 4.2.2).
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    /// One lane: the state in SHA-NI's (ABEF, CDGH) register layout and the message
    /// schedule window.
    struct Lane {
        abef: __m128i,
        cdgh: __m128i,
        w: [__m128i; 4],
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn load(state: &[u32; 8], block: &[u8; 64]) -> Lane {
        let byte_swap = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
        // Unaligned loads of 16 bytes at offsets 0/16 of a 32-byte state and 0..48 of a
        // 64-byte block: in bounds.
        let dcba = _mm_loadu_si128(state.as_ptr().cast());
        let hgfe = _mm_loadu_si128(state.as_ptr().add(4).cast());
        let cdab = _mm_shuffle_epi32(dcba, 0xb1);
        let efgh = _mm_shuffle_epi32(hgfe, 0x1b);
        let block = block.as_ptr();
        Lane {
            abef: _mm_alignr_epi8(cdab, efgh, 8),
            cdgh: _mm_blend_epi16(efgh, cdab, 0xf0),
            w: [
                _mm_shuffle_epi8(_mm_loadu_si128(block.cast()), byte_swap),
                _mm_shuffle_epi8(_mm_loadu_si128(block.add(16).cast()), byte_swap),
                _mm_shuffle_epi8(_mm_loadu_si128(block.add(32).cast()), byte_swap),
                _mm_shuffle_epi8(_mm_loadu_si128(block.add(48).cast()), byte_swap),
            ],
        }
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn store(lane: &Lane, start: (__m128i, __m128i), state: &mut [u32; 8]) {
        let abef = _mm_add_epi32(lane.abef, start.0);
        let cdgh = _mm_add_epi32(lane.cdgh, start.1);
        let feba = _mm_shuffle_epi32(abef, 0x1b);
        let dchg = _mm_shuffle_epi32(cdgh, 0xb1);
        // Stores of 16 bytes at offsets 0 and 16 of a 32-byte state: in bounds.
        _mm_storeu_si128(state.as_mut_ptr().cast(), _mm_blend_epi16(feba, dchg, 0xf0));
        _mm_storeu_si128(
            state.as_mut_ptr().add(4).cast(),
            _mm_alignr_epi8(dchg, feba, 8),
        );
    }

    /// Four rounds (`i` = 0..16 selects the group): message words `w[i % 4]`, scheduled
    /// from the previous four groups' words from group 4 on. Always called with a constant
    /// `i`, so the window indexes fold to registers.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn rounds4(lane: &mut Lane, i: usize) {
        if i >= 4 {
            let [w0, w1, w2, w3] = [
                lane.w[i % 4],
                lane.w[(i + 1) % 4],
                lane.w[(i + 2) % 4],
                lane.w[(i + 3) % 4],
            ];
            let t = _mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), _mm_alignr_epi8(w3, w2, 4));
            lane.w[i % 4] = _mm_sha256msg2_epu32(t, w3);
        }
        let k = _mm_loadu_si128(K.as_ptr().add(4 * i).cast());
        let wk = _mm_add_epi32(lane.w[i % 4], k);
        lane.cdgh = _mm_sha256rnds2_epu32(lane.cdgh, lane.abef, wk);
        lane.abef = _mm_sha256rnds2_epu32(lane.abef, lane.cdgh, _mm_shuffle_epi32(wk, 0x0e));
    }

    /// One compression.
    ///
    /// # Safety
    ///
    /// The CPU must have SHA-NI, SSE2, SSSE3 and SSE4.1 ([`available`]).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn compress_x1(state: &mut [u32; 8], block: &[u8; 64]) {
        let mut lane = load(state, block);
        let start = (lane.abef, lane.cdgh);
        macro_rules! rounds {
            ($($i:literal)*) => { $( rounds4(&mut lane, $i); )* };
        }
        rounds!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        store(&lane, start, state);
    }

    /// Both compressions, their 16 groups of four rounds interleaved.
    ///
    /// # Safety
    ///
    /// The CPU must have SHA-NI, SSE2, SSSE3 and SSE4.1 ([`available`]).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn compress_x2(
        state_a: &mut [u32; 8],
        block_a: &[u8; 64],
        state_b: &mut [u32; 8],
        block_b: &[u8; 64],
    ) {
        let mut a = load(state_a, block_a);
        let mut b = load(state_b, block_b);
        let start_a = (a.abef, a.cdgh);
        let start_b = (b.abef, b.cdgh);
        macro_rules! interleaved {
            ($($i:literal)*) => { $( rounds4(&mut a, $i); rounds4(&mut b, $i); )* };
        }
        interleaved!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        store(&a, start_a, state_a);
        store(&b, start_b, state_b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_sha2_on_random_states_and_blocks() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for _ in 0..2000 {
            let (mut a, mut b): ([u32; 8], [u32; 8]) = (rng.gen(), rng.gen());
            let mut block_a = [0u8; 64];
            let mut block_b = [0u8; 64];
            rng.fill(&mut block_a[..]);
            rng.fill(&mut block_b[..]);
            let (mut want_a, mut want_b) = (a, b);
            compress_portable(&mut want_a, &block_a);
            compress_portable(&mut want_b, &block_b);
            let mut single = a;
            compress(&mut single, &block_a);
            assert_eq!(single, want_a);
            compress_x2(&mut a, &block_a, &mut b, &block_b);
            assert_eq!((a, b), (want_a, want_b));
        }
    }

    #[test]
    fn matches_sha256_of_a_known_message() {
        // SHA-256("abc"), FIPS 180-4 example: one padded block, run in both lanes.
        let mut block = [0u8; 64];
        block[..3].copy_from_slice(b"abc");
        block[3] = 0x80;
        block[63] = 24;
        let initial = [
            0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
            0x5be0cd19,
        ];
        let (mut a, mut b) = (initial, initial);
        compress_x2(&mut a, &block, &mut b, &block);
        let mut single = initial;
        compress(&mut single, &block);
        assert_eq!(single, want_of_abc());
        assert_eq!(a, want_of_abc());
        assert_eq!(b, want_of_abc());
    }

    fn want_of_abc() -> [u32; 8] {
        [
            0xba7816bf, 0x8f01cfea, 0x414140de, 0x5dae2223, 0xb00361a3, 0x96177a9c, 0xb410ff61,
            0xf20015ad,
        ]
    }
}
