//! Signal message parsing and decryption on arbitrary input, by the first byte's mode:
//! 0. `msg` bytes to the WhisperMessage parser; 1. `pkmsg` bytes to the PreKeyWhisperMessage
//! parser; 2. `skmsg` bytes to a group member's `group_decrypt`; 3. SKDM bytes to the parser
//! and `process_sender_key_distribution`; 4. parsed `msg`/`pkmsg` (arbitrary) into `decrypt`
//! against an established session (both with and without a matching ratchet key);
//! 5. a genuine `msg`, `pkmsg` or `skmsg` with fuzzer-chosen byte edits, decrypted;
//! 6. padding and record deserialization.
//!
//! Nothing may panic; a genuine message that was not edited must still decrypt.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::OnceLock;
use wafleet_signal::keys::{IdentityKeyPair, PreKeyRecord, SignedPreKeyRecord};
use wafleet_signal::*;

struct Fixture {
    bob_ids: InMemoryIdentityStore,
    bob_prekeys: InMemoryPreKeyStore,
    bob_record: SessionRecord,
    alice: ProtocolAddress,
    genuine_msg: Vec<u8>,
    genuine_pkmsg: Vec<u8>,
    fresh_bob_record: SessionRecord,
    member: SenderKeyRecord,
    genuine_skmsg: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let alice_ids = InMemoryIdentityStore::new(IdentityKeyPair::generate(&mut rng), 1);
        let mut bob_ids = InMemoryIdentityStore::new(IdentityKeyPair::generate(&mut rng), 2);
        let mut bob_prekeys = InMemoryPreKeyStore::default();
        let spk = SignedPreKeyRecord::generate(1, &bob_ids.identity, &mut rng);
        let pk = PreKeyRecord::generate(1, &mut rng);
        let bundle = PreKeyBundle {
            registration_id: 2,
            identity_key: *bob_ids.identity.public(),
            signed_pre_key_id: 1,
            signed_pre_key: spk.key_pair.public,
            signed_pre_key_signature: spk.signature.clone(),
            pre_key: Some((1, pk.key_pair.public)),
        };
        bob_prekeys.signed_pre_keys.insert(1, spk);
        bob_prekeys.pre_keys.insert(1, pk);
        let alice = ProtocolAddress::new("alice", 0);
        let bob = ProtocolAddress::new("bob", 0);
        let a = process_prekey_bundle(&SessionRecord::new(), &bob, &alice_ids, &bundle, &mut rng).unwrap().record;
        let (a, pkmsg) = encrypt(&a, &bob, &alice_ids, b"first").unwrap();
        let fresh_bob_record = SessionRecord::new();
        let d = decrypt(&fresh_bob_record, &alice, &bob_ids, &bob_prekeys, &pkmsg, &mut rng).unwrap();
        bob_ids.save(&alice, *alice_ids.identity.public());
        let (b, reply) = encrypt(&d.record, &alice, &bob_ids, b"reply").unwrap();
        let a = decrypt(&a, &bob, &alice_ids, &InMemoryPreKeyStore::default(), &reply, &mut rng).unwrap().record;
        let (_, msg) = encrypt(&a, &bob, &alice_ids, b"second").unwrap();
        let (sender, skdm) = create_sender_key_distribution(&SenderKeyRecord::new(), &mut rng);
        let member = process_sender_key_distribution(&SenderKeyRecord::new(), &skdm);
        let (_, skmsg) = group_encrypt(&sender, b"group", &mut rng).unwrap();
        Fixture {
            bob_ids,
            bob_prekeys,
            bob_record: b,
            alice,
            genuine_msg: msg.serialize().to_vec(),
            genuine_pkmsg: pkmsg.serialize().to_vec(),
            fresh_bob_record,
            member,
            genuine_skmsg: skmsg.serialize().to_vec(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let f = fixture();
    let mut rng = ChaCha8Rng::seed_from_u64(u64::from(mode));
    match mode % 7 {
        0 => {
            let _ = CiphertextMessage::from_wire("msg", rest);
        }
        1 => {
            let _ = CiphertextMessage::from_wire("pkmsg", rest);
        }
        2 => {
            let _ = group_decrypt(&f.member, rest);
        }
        3 => {
            if let Ok(m) = SenderKeyDistributionMessage::parse(rest) {
                let r = process_sender_key_distribution(&f.member, &m);
                let _ = group_decrypt(&r, &f.genuine_skmsg);
            }
        }
        4 => {
            for ty in ["msg", "pkmsg"] {
                if let Ok(m) = CiphertextMessage::from_wire(ty, rest) {
                    let _ = decrypt(&f.bob_record, &f.alice, &f.bob_ids, &f.bob_prekeys, &m, &mut rng);
                    let _ = decrypt(&f.fresh_bob_record, &f.alice, &f.bob_ids, &f.bob_prekeys, &m, &mut rng);
                }
            }
        }
        5 => {
            let Some((&which, edits)) = rest.split_first() else { return };
            let (ty, mut bytes) = match which % 3 {
                0 => ("msg", f.genuine_msg.clone()),
                1 => ("pkmsg", f.genuine_pkmsg.clone()),
                _ => ("skmsg", f.genuine_skmsg.clone()),
            };
            // Edits: (position, xor) pairs; a 0xff position byte truncates instead.
            for e in edits.chunks(2) {
                match e {
                    [0xff, n] => bytes.truncate(usize::from(*n)),
                    [p, x] if !bytes.is_empty() => {
                        let i = usize::from(*p) % bytes.len();
                        bytes[i] ^= x;
                    }
                    _ => bytes.push(e[0]),
                }
            }
            let unchanged = edits.is_empty();
            if ty == "skmsg" {
                let r = group_decrypt(&f.member, &bytes);
                assert!(!unchanged || r.is_ok());
            } else if let Ok(m) = CiphertextMessage::from_wire(ty, &bytes) {
                let record = if ty == "msg" { &f.bob_record } else { &f.fresh_bob_record };
                let r = decrypt(record, &f.alice, &f.bob_ids, &f.bob_prekeys, &m, &mut rng);
                assert!(!unchanged || r.is_ok(), "{r:?}");
            } else {
                assert!(!unchanged);
            }
        }
        _ => {
            let _ = padding::unpad(rest);
            let _ = SessionRecord::from_bytes(rest);
            let _ = SenderKeyRecord::from_bytes(rest);
        }
    }
});
