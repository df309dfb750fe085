//! Runs the 1:1 benchmark workload (`benches/signal.rs`) a given number of times without
//! criterion, for instruction counts: the per-pair cost is the difference between two runs
//! divided by the difference in pairs, e.g.
//!
//! ```sh
//! cargo build --release -p wafleet-signal --example signal_pairs
//! for n in 1000 11000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n target/release/examples/signal_pairs $n
//! done
//! ```
//!
//! (`callgrind_annotate` on the larger run shows where the instructions go.)

use rand::rngs::StdRng;
use rand::SeedableRng;
use std::hint::black_box;
use wafleet_signal::keys::{IdentityKeyPair, PreKeyRecord, SignedPreKeyRecord};
use wafleet_signal::*;

fn main() {
    let pairs: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let mut rng = StdRng::seed_from_u64(1);
    let alice = InMemoryIdentityStore::new(IdentityKeyPair::generate(&mut rng), 1);
    let bob = InMemoryIdentityStore::new(IdentityKeyPair::generate(&mut rng), 2);
    let mut prekeys = InMemoryPreKeyStore::default();
    let spk = SignedPreKeyRecord::generate(1, &bob.identity, &mut rng);
    let pk = PreKeyRecord::generate(1, &mut rng);
    let bundle = PreKeyBundle {
        registration_id: 2,
        identity_key: *bob.identity.public(),
        signed_pre_key_id: 1,
        signed_pre_key: spk.key_pair.public,
        signed_pre_key_signature: spk.signature.clone(),
        pre_key: Some((1, pk.key_pair.public)),
    };
    prekeys.signed_pre_keys.insert(1, spk);
    prekeys.pre_keys.insert(1, pk);
    let (a_addr, b_addr) = (ProtocolAddress::new("a", 0), ProtocolAddress::new("b", 0));
    let a = process_prekey_bundle(&SessionRecord::new(), &b_addr, &alice, &bundle, &mut rng)
        .expect("bundle")
        .record;
    let (a, m) = encrypt(&a, &b_addr, &alice, &[1; 64]).expect("pkmsg");
    let b = decrypt(&SessionRecord::new(), &a_addr, &bob, &prekeys, &m, &mut rng)
        .expect("pkmsg decrypts")
        .record;
    let (b, r) = encrypt(&b, &a_addr, &bob, &[2; 64]).expect("reply");
    let mut a = decrypt(&a, &b_addr, &alice, &prekeys, &r, &mut rng)
        .expect("reply decrypts")
        .record;
    let mut b = b;
    let pt = [3u8; 64];
    for _ in 0..pairs {
        let (na, m) = encrypt(&a, &b_addr, &alice, black_box(&pt)).expect("encrypt");
        let wire = CiphertextMessage::from_wire(m.enc_type(), m.serialize()).expect("parse");
        let d = decrypt(&b, &a_addr, &bob, &prekeys, &wire, &mut rng).expect("decrypt");
        a = na;
        b = d.record;
        black_box(d.plaintext);
    }
}
