//! Encrypt+decrypt pairs per second on one core, 1:1 and group, on the workload that
//! `tests/interop/oracle/signal-peer.mjs`'s `time` op runs for libsignal-node (64-byte
//! plaintext, established session, records passed in and returned every call).
//! Run with `bash scripts/bench-signal.sh` to get both numbers in one run.
//!
//! As on the node side, the receiver parses the wire bytes (`from_wire`) before decrypting.
//! `sha256_block_dependent` is the floor reference: one SHA-256 compression whose input
//! depends on the previous one's output (the shape of the ratchet's HMAC chains), through
//! the same `sha2` function (SHA-NI where the CPU has it).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::hint::black_box;
use wafleet_signal::*;

#[path = "support/workload.rs"]
mod workload;

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let mut session = workload::Established::new(&mut rng);
    let pt = [3u8; 64];
    let mut g = c.benchmark_group("signal");
    g.throughput(Throughput::Elements(1));
    g.bench_function("1to1_encrypt_decrypt_pair_64B", |bch| {
        bch.iter(|| black_box(session.pair(black_box(&pt), &mut rng)))
    });

    let (mut sender, skdm) = create_sender_key_distribution(&SenderKeyRecord::new(), &mut rng);
    let mut member = process_sender_key_distribution(&SenderKeyRecord::new(), &skdm);
    g.bench_function("group_encrypt_decrypt_pair_64B", |bch| {
        bch.iter(|| {
            let (ns, m) = group_encrypt(&sender, black_box(&pt), &mut rng).unwrap();
            let (nm, p) = group_decrypt(&member, m.serialize()).unwrap();
            sender = ns;
            member = nm;
            black_box(p)
        })
    });

    let mut state = [0u32; 8];
    g.bench_function("sha256_block_dependent", |bch| {
        bch.iter(|| {
            // The next block is the previous state: each compression waits for the last.
            let mut block = [0u8; 64];
            for (bytes, word) in block.chunks_exact_mut(4).zip(state) {
                bytes.copy_from_slice(&word.to_le_bytes());
            }
            let block = sha2::digest::generic_array::GenericArray::from(block);
            sha2::compress256(&mut state, std::slice::from_ref(&block));
            black_box(state[0])
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
