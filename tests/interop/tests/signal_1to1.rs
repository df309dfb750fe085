//! Differential tests: wafleet-signal against libsignal-node 6.0.0, both directions.
mod signal_support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use signal_support::*;
use wafleet_signal::SignalError;

/// Sets up a session; `rust_first` picks the initiator. Returns (oracle, rust peer).
fn setup(rust_first: bool) -> (Oracle, RustPeer) {
    let mut o = Oracle::spawn();
    o.ok(json!({"op": "create", "peer": "node"}));
    let mut r = RustPeer::new("rust");
    if rust_first {
        let b = o.ok(json!({"op": "bundle", "peer": "node"}));
        r.process_bundle_json("node", &b).unwrap();
    } else {
        let b = r.bundle_json(true);
        o.ok(json!({"op": "processBundle", "peer": "node", "remote": "rust", "bundle": b}));
    }
    (o, r)
}

fn node_encrypt(o: &mut Oracle, pt: &[u8]) -> (String, Vec<u8>) {
    let m = o.ok(json!({"op": "encrypt", "peer": "node", "remote": "rust", "plaintext": h(pt)}));
    (m["type"].as_str().unwrap().to_string(), unh(&m["body"]))
}

fn node_decrypt(o: &mut Oracle, ty: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    o.call(json!({"op": "decrypt", "peer": "node", "remote": "rust", "type": ty, "body": h(body)}))
        .map(|v| unh(&v["plaintext"]))
}

#[test]
fn session_set_up_by_rust() {
    let (mut o, mut r) = setup(true);
    for i in 0..3u8 {
        let (ty, body) = r.encrypt("node", &[i; 10]);
        assert_eq!(ty, "pkmsg");
        assert_eq!(node_decrypt(&mut o, &ty, &body).unwrap(), vec![i; 10]);
    }
    let (ty, body) = node_encrypt(&mut o, b"reply from libsignal-node");
    assert_eq!(ty, "msg");
    assert_eq!(
        r.decrypt("node", &ty, &body).unwrap(),
        b"reply from libsignal-node"
    );
    for i in 0..20u8 {
        let (ty, body) = r.encrypt("node", &[i; 100]);
        assert_eq!(ty, "msg");
        assert_eq!(node_decrypt(&mut o, &ty, &body).unwrap(), vec![i; 100]);
        let (ty, body) = node_encrypt(&mut o, &[i; 7]);
        assert_eq!(r.decrypt("node", &ty, &body).unwrap(), vec![i; 7]);
    }
}

#[test]
fn session_set_up_by_node() {
    let (mut o, mut r) = setup(false);
    let before = r.prekeys.pre_keys.len();
    for i in 0..3u8 {
        let (ty, body) = node_encrypt(&mut o, &[i; 10]);
        assert_eq!(ty, "pkmsg");
        assert_eq!(r.decrypt("node", &ty, &body).unwrap(), vec![i; 10]);
    }
    assert_eq!(
        r.prekeys.pre_keys.len(),
        before - 1,
        "one-time prekey consumed"
    );
    let (ty, body) = r.encrypt("node", b"reply from wafleet");
    assert_eq!(ty, "msg");
    assert_eq!(
        node_decrypt(&mut o, &ty, &body).unwrap(),
        b"reply from wafleet"
    );
    let (ty, body) = node_encrypt(&mut o, b"now msg");
    assert_eq!(ty, "msg");
    assert_eq!(r.decrypt("node", &ty, &body).unwrap(), b"now msg");
    // Without a one-time prekey, too.
    let mut o2 = Oracle::spawn();
    o2.ok(json!({"op": "create", "peer": "node"}));
    let mut r2 = RustPeer::new("rust");
    let b = r2.bundle_json(false);
    o2.ok(json!({"op": "processBundle", "peer": "node", "remote": "rust", "bundle": b}));
    let (ty, body) = node_encrypt(&mut o2, b"no one-time prekey");
    assert_eq!(
        r2.decrypt("node", &ty, &body).unwrap(),
        b"no one-time prekey"
    );
}

struct InFlight {
    ty: String,
    body: Vec<u8>,
    pt: Vec<u8>,
}

/// 1,000 messages, random interleaving of senders, reordering within a window, ~5% drops,
/// and re-delivered duplicates that both sides must reject.
fn thousand(rust_first: bool, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut o, mut r) = setup(rust_first);
    let (mut rust_can_send, mut node_can_send) = (rust_first, !rust_first);
    let mut to_node: Vec<InFlight> = Vec::new();
    let mut to_rust: Vec<InFlight> = Vec::new();
    let mut delivered_node: Vec<InFlight> = Vec::new();
    let mut delivered_rust: Vec<InFlight> = Vec::new();
    let (mut sent, mut dropped, mut delivered, mut dups) = (0u32, 0u32, 0u32, 0u32);
    const WINDOW: usize = 6;

    let deliver = |to_rust_side: bool,
                   o: &mut Oracle,
                   r: &mut RustPeer,
                   m: InFlight,
                   log: &mut Vec<InFlight>| {
        if to_rust_side {
            let pt = r
                .decrypt("node", &m.ty, &m.body)
                .unwrap_or_else(|e| panic!("seed {seed}: rust decrypt {}: {e}", m.ty));
            assert_eq!(pt, m.pt, "seed {seed}");
        } else {
            let pt = node_decrypt(o, &m.ty, &m.body)
                .unwrap_or_else(|e| panic!("seed {seed}: node decrypt {}: {e}", m.ty));
            assert_eq!(pt, m.pt, "seed {seed}");
        }
        log.push(m);
    };

    while sent < 1000 {
        let rust_sends = match (rust_can_send, node_can_send) {
            (true, true) => rng.gen_bool(0.5),
            (r_, _) => r_,
        };
        let len = rng.gen_range(0..200);
        let mut pt = vec![0u8; len];
        rng.fill(&mut pt[..]);
        pt.extend_from_slice(&sent.to_be_bytes());
        let (ty, body) = if rust_sends {
            r.encrypt("node", &pt)
        } else {
            node_encrypt(&mut o, &pt)
        };
        sent += 1;
        if rng.gen_bool(0.05) {
            dropped += 1;
        } else if rust_sends {
            to_node.push(InFlight { ty, body, pt });
        } else {
            to_rust.push(InFlight { ty, body, pt });
        }
        // Deliver a few, out of order within the window.
        for _ in 0..rng.gen_range(0..3) {
            let to_rust_side = rng.gen_bool(0.5);
            let q = if to_rust_side {
                &mut to_rust
            } else {
                &mut to_node
            };
            if q.is_empty() {
                continue;
            }
            let i = rng.gen_range(0..q.len().min(WINDOW));
            let m = q.remove(i);
            if to_rust_side {
                deliver(true, &mut o, &mut r, m, &mut delivered_rust);
                node_can_send = node_can_send || rust_first;
                rust_can_send = true;
            } else {
                deliver(false, &mut o, &mut r, m, &mut delivered_node);
                node_can_send = true;
            }
            delivered += 1;
        }
        // Occasionally re-deliver something already delivered: must be rejected.
        if rng.gen_bool(0.02) {
            if let Some(m) = delivered_rust.last() {
                let e = r.decrypt("node", &m.ty, &m.body).unwrap_err();
                assert!(
                    matches!(e, SignalError::DuplicateMessage(_)),
                    "seed {seed}: {e}"
                );
                dups += 1;
            }
            if let Some(m) = delivered_node.last() {
                assert!(node_decrypt(&mut o, &m.ty, &m.body).is_err(), "seed {seed}");
                dups += 1;
            }
        }
    }
    // Drain the rest, still out of order within the window.
    while !to_rust.is_empty() || !to_node.is_empty() {
        let to_rust_side = !to_rust.is_empty() && (to_node.is_empty() || rng.gen_bool(0.5));
        let q = if to_rust_side {
            &mut to_rust
        } else {
            &mut to_node
        };
        let i = rng.gen_range(0..q.len().min(WINDOW));
        let m = q.remove(i);
        let log = if to_rust_side {
            &mut delivered_rust
        } else {
            &mut delivered_node
        };
        deliver(to_rust_side, &mut o, &mut r, m, log);
        delivered += 1;
    }
    assert_eq!(sent, 1000);
    assert_eq!(delivered + dropped, sent);
    eprintln!(
        "seed {seed}: sent {sent}, delivered {delivered} (rust got {}, node got {}), dropped {dropped}, duplicates rejected {dups}",
        delivered_rust.len(),
        delivered_node.len()
    );
    assert!(dropped > 0 && dups > 0 && delivered_rust.len() > 300 && delivered_node.len() > 300);
}

fn seed() -> u64 {
    std::env::var("SIGNAL_INTEROP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

#[test]
fn thousand_messages_rust_initiates() {
    thousand(true, seed());
}

#[test]
fn thousand_messages_node_initiates() {
    thousand(false, seed());
}

#[test]
fn peer_rekeys_new_signed_prekey_works_new_identity_errors() {
    let (mut o, mut r) = setup(true);
    let (ty, body) = r.encrypt("node", b"hello");
    node_decrypt(&mut o, &ty, &body).unwrap();
    let (ty, body) = node_encrypt(&mut o, b"hi");
    r.decrypt("node", &ty, &body).unwrap();
    let in_flight_from_node = node_encrypt(&mut o, b"sent on the old session");

    // libsignal-node rotates its signed prekey; we fetch the new bundle: works.
    o.ok(json!({"op": "rotateSignedPreKey", "peer": "node", "id": 2}));
    let b = o.ok(json!({"op": "bundle", "peer": "node"}));
    r.process_bundle_json("node", &b).unwrap();
    let (ty, body) = r.encrypt("node", b"on the new session");
    assert_eq!(ty, "pkmsg");
    assert_eq!(
        node_decrypt(&mut o, &ty, &body).unwrap(),
        b"on the new session"
    );
    let (ty, body) = node_encrypt(&mut o, b"node on new session");
    assert_eq!(
        r.decrypt("node", &ty, &body).unwrap(),
        b"node on new session"
    );
    // The message sent on the old session still decrypts from our previous state.
    let (ty, body) = in_flight_from_node;
    assert_eq!(
        r.decrypt("node", &ty, &body).unwrap(),
        b"sent on the old session"
    );

    // We rotate our signed prekey; libsignal-node starts a new session from our bundle.
    r.rotate_signed_pre_key(2);
    let b = r.bundle_json(true);
    o.ok(json!({"op": "processBundle", "peer": "node", "remote": "rust", "bundle": b}));
    let (ty, body) = node_encrypt(&mut o, b"node re-keyed to our new spk");
    assert_eq!(ty, "pkmsg");
    assert_eq!(
        r.decrypt("node", &ty, &body).unwrap(),
        b"node re-keyed to our new spk"
    );
    let (ty, body) = r.encrypt("node", b"ack");
    assert_eq!(node_decrypt(&mut o, &ty, &body).unwrap(), b"ack");

    // The node peer reinstalls (new identity) and messages us: untrusted identity.
    o.ok(json!({"op": "create", "peer": "node"}));
    let b = r.bundle_json(true);
    o.ok(json!({"op": "processBundle", "peer": "node", "remote": "rust", "bundle": b}));
    let (ty, body) = node_encrypt(&mut o, b"I am new");
    let before = r.sessions["node"].clone();
    assert!(matches!(
        r.decrypt("node", &ty, &body),
        Err(SignalError::UntrustedIdentity(_))
    ));
    assert_eq!(r.sessions["node"], before, "no state change on error");
    // ... and its new bundle is refused too.
    let b = o.ok(json!({"op": "bundle", "peer": "node"}));
    assert!(matches!(
        r.process_bundle_json("node", &b),
        Err(SignalError::UntrustedIdentity(_))
    ));

    // We reinstall: libsignal-node (trust on first use) refuses our new identity both ways.
    let (mut o, mut r) = setup(true);
    let (ty, body) = r.encrypt("node", b"hello");
    node_decrypt(&mut o, &ty, &body).unwrap();
    let mut r2 = RustPeer::new("rust");
    let b = o.ok(json!({"op": "bundle", "peer": "node"}));
    r2.process_bundle_json("node", &b).unwrap();
    let (ty, body) = r2.encrypt("node", b"new identity");
    let e = node_decrypt(&mut o, &ty, &body).unwrap_err();
    assert!(e.contains("Untrusted"), "{e}");
    let b = r2.bundle_json(true);
    let e = o
        .call(json!({"op": "processBundle", "peer": "node", "remote": "rust", "bundle": b}))
        .unwrap_err();
    assert!(e.contains("Untrusted"), "{e}");
}

#[test]
fn node_checks_our_signed_prekey_signature_and_we_check_its() {
    let mut o = Oracle::spawn();
    o.ok(json!({"op": "create", "peer": "node"}));
    let mut r = RustPeer::new("rust");
    // Our XEdDSA signatures verify under libsignal-node's curve (many bundles: sign bits vary).
    for i in 0..20 {
        r.rotate_signed_pre_key(10 + i);
        let b = r.bundle_json(false);
        o.ok(json!({"op": "processBundle", "peer": "node", "remote": "rust", "bundle": b}));
    }
    let mut b = r.bundle_json(false);
    let mut sig = unh(&b["signature"]);
    sig[1] ^= 1;
    b["signature"] = h(&sig).into();
    assert!(o
        .call(json!({"op": "processBundle", "peer": "node", "remote": "rust", "bundle": b}))
        .is_err());
    // libsignal-node's signatures verify under ours.
    for _ in 0..20 {
        let b = o.ok(json!({"op": "bundle", "peer": "node", "withPreKey": false}));
        r.process_bundle_json("node", &b).unwrap();
    }
    let mut b = o.ok(json!({"op": "bundle", "peer": "node"}));
    let mut sig = unh(&b["signature"]);
    sig[1] ^= 1;
    b["signature"] = h(&sig).into();
    assert!(matches!(
        r.process_bundle_json("node", &b),
        Err(SignalError::InvalidSignature)
    ));
}
