//! The 1:1 workload shared by `benches/signal.rs` and `examples/signal_pairs.rs`: an
//! established session (after the `pkmsg` and one reply), then pairs of one 64-byte `msg`
//! encrypted by Alice, parsed from its wire bytes and decrypted by Bob, with the records
//! passed in and returned on every call (the durable-state API).

use rand::rngs::StdRng;
use wafleet_signal::keys::{IdentityKeyPair, PreKeyRecord, SignedPreKeyRecord};
use wafleet_signal::*;

/// Alice and Bob with a session established both ways.
pub struct Established {
    alice: InMemoryIdentityStore,
    alice_record: SessionRecord,
    bob: InMemoryIdentityStore,
    bob_prekeys: InMemoryPreKeyStore,
    bob_record: SessionRecord,
    alice_address: ProtocolAddress,
    bob_address: ProtocolAddress,
}

impl Established {
    /// Sets the session up: Alice processes Bob's bundle, sends a `pkmsg`, Bob replies.
    pub fn new(rng: &mut StdRng) -> Established {
        let alice = InMemoryIdentityStore::new(IdentityKeyPair::generate(rng), 1);
        let bob = InMemoryIdentityStore::new(IdentityKeyPair::generate(rng), 2);
        let mut bob_prekeys = InMemoryPreKeyStore::default();
        let spk = SignedPreKeyRecord::generate(1, &bob.identity, rng);
        let pk = PreKeyRecord::generate(1, rng);
        let bundle = PreKeyBundle {
            registration_id: 2,
            identity_key: *bob.identity.public(),
            signed_pre_key_id: 1,
            signed_pre_key: spk.key_pair.public,
            signed_pre_key_signature: spk.signature.clone(),
            pre_key: Some((1, pk.key_pair.public)),
        };
        bob_prekeys.signed_pre_keys.insert(1, spk);
        bob_prekeys.pre_keys.insert(1, pk);
        let alice_address = ProtocolAddress::new("a", 0);
        let bob_address = ProtocolAddress::new("b", 0);
        let a = process_prekey_bundle(&SessionRecord::new(), &bob_address, &alice, &bundle, rng)
            .expect("bundle")
            .record;
        let (a, m) = encrypt(&a, &bob_address, &alice, &[1; 64]).expect("pkmsg");
        let b = decrypt(
            &SessionRecord::new(),
            &alice_address,
            &bob,
            &bob_prekeys,
            &m,
            rng,
        )
        .expect("pkmsg decrypts")
        .record;
        let (bob_record, r) = encrypt(&b, &alice_address, &bob, &[2; 64]).expect("reply");
        let alice_record = decrypt(&a, &bob_address, &alice, &bob_prekeys, &r, rng)
            .expect("reply decrypts")
            .record;
        Established {
            alice,
            alice_record,
            bob,
            bob_prekeys,
            bob_record,
            alice_address,
            bob_address,
        }
    }

    /// One pair: Alice encrypts `plaintext`, Bob parses the wire bytes and decrypts; both
    /// records are replaced by the ones returned. Returns Bob's plaintext.
    pub fn pair(&mut self, plaintext: &[u8], rng: &mut StdRng) -> Vec<u8> {
        let (a, m) = encrypt(
            &self.alice_record,
            &self.bob_address,
            &self.alice,
            plaintext,
        )
        .expect("encrypt");
        let wire = CiphertextMessage::from_wire(m.enc_type(), m.serialize()).expect("parse");
        let d = decrypt(
            &self.bob_record,
            &self.alice_address,
            &self.bob,
            &self.bob_prekeys,
            &wire,
            rng,
        )
        .expect("decrypt");
        self.alice_record = a;
        self.bob_record = d.record;
        d.plaintext
    }
}
