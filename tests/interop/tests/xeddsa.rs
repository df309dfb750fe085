//! XEdDSA against libsignal-node's `curve.js`: 1,000 signatures made by each side verify on
//! the other (libsignal's `verifySignature` returns `true`), and one flipped bit makes both
//! say `false`.

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};
use wafleet_interop::{unhex, Peer};
use wafleet_protocol::xeddsa;

const N: usize = 1000;

struct Case {
    private: [u8; 32],
    public: [u8; 32],
    msg: Vec<u8>,
}

fn cases(seed: u64) -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..N)
        .map(|_| {
            let mut private = [0u8; 32];
            rng.fill_bytes(&mut private);
            let mut msg = vec![0u8; rng.gen_range(1..200)];
            rng.fill_bytes(&mut msg);
            Case {
                public: xeddsa::public_key(&private),
                private,
                msg,
            }
        })
        .collect()
}

fn flip(sig: &[u8], i: usize) -> Vec<u8> {
    let mut s = sig.to_vec();
    s[i % 64] ^= 1 << (i % 8);
    s
}

fn verify_in_libsignal(peer: &mut Peer, items: Vec<Value>) -> Vec<bool> {
    let reply = peer.call(json!({"op": "xeddsa_verify_many", "items": items}));
    reply["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|v| v.as_bool().expect("bool"))
        .collect()
}

#[test]
fn wafleet_signatures_verify_in_libsignal() {
    let mut peer = Peer::start();
    let mut rng = StdRng::seed_from_u64(11);
    let cases = cases(1);
    let sigs: Vec<[u8; 64]> = cases
        .iter()
        .map(|c| xeddsa::sign(&c.private, &c.msg, &mut rng))
        .collect();
    let sign_bits = sigs.iter().filter(|s| s[63] & 0x80 != 0).count();
    assert!(
        sign_bits > N / 4 && sign_bits < 3 * N / 4,
        "sign bit set in {sign_bits}/{N}: the convention is not exercised"
    );

    let good: Vec<Value> = cases
        .iter()
        .zip(&sigs)
        .map(|(c, s)| json!({"pub": hex::encode(c.public), "msg": hex::encode(&c.msg), "sig": hex::encode(s)}))
        .collect();
    let ok = verify_in_libsignal(&mut peer, good);
    assert_eq!(ok.len(), N);
    let accepted = ok.iter().filter(|b| **b).count();
    assert_eq!(accepted, N, "libsignal accepted only {accepted}/{N}");

    let flipped: Vec<Value> = cases
        .iter()
        .zip(&sigs)
        .enumerate()
        .map(|(i, (c, s))| json!({"pub": hex::encode(c.public), "msg": hex::encode(&c.msg), "sig": hex::encode(flip(s, i * 13))}))
        .collect();
    let ok = verify_in_libsignal(&mut peer, flipped);
    let accepted = ok.iter().filter(|b| **b).count();
    assert_eq!(
        accepted, 0,
        "libsignal accepted {accepted} flipped signatures"
    );
}

#[test]
fn libsignal_signatures_verify_in_wafleet() {
    let mut peer = Peer::start();
    let cases = cases(2);
    let items: Vec<Value> = cases
        .iter()
        .map(|c| json!({"priv": hex::encode(c.private), "msg": hex::encode(&c.msg)}))
        .collect();
    let reply = peer.call(json!({"op": "xeddsa_sign_many", "items": items}));
    let sigs: Vec<Vec<u8>> = reply["sigs"]
        .as_array()
        .expect("sigs")
        .iter()
        .map(unhex)
        .collect();
    let pubs: Vec<Vec<u8>> = reply["pubs"]
        .as_array()
        .expect("pubs")
        .iter()
        .map(unhex)
        .collect();
    assert_eq!(sigs.len(), N);

    let mut sign_bits = 0;
    for (i, ((c, sig), public)) in cases.iter().zip(&sigs).zip(&pubs).enumerate() {
        assert_eq!(
            public.as_slice(),
            c.public,
            "public key derivation differs at {i}"
        );
        sign_bits += usize::from(sig[63] & 0x80 != 0);
        assert!(
            xeddsa::verify(&c.public, &c.msg, sig),
            "libsignal signature {i} rejected"
        );
        assert!(
            !xeddsa::verify(&c.public, &c.msg, &flip(sig, i * 13)),
            "flipped libsignal signature {i} accepted"
        );
    }
    assert!(
        sign_bits > N / 4 && sign_bits < 3 * N / 4,
        "sign bit set in {sign_bits}/{N}: the convention is not exercised"
    );
}
