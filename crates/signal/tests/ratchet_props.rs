//! Property tests of the double ratchet: any delivery order within the skip bound decrypts
//! each message exactly once (a second delivery is `DuplicateMessage`), and arbitrary bytes
//! never panic a parser.
mod common;
use common::*;
use proptest::prelude::*;
use proptest::sample::Index;
use wafleet_signal::*;

struct Pending {
    to_bob: bool,
    msg: CiphertextMessage,
    pt: Vec<u8>,
}

fn deliver(a: &mut Peer, b: &mut Peer, p: &Pending) -> Result<Vec<u8>, SignalError> {
    if p.to_bob {
        b.decrypt(&p.msg)
    } else {
        a.decrypt(&p.msg)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Up to 5 segments (so at most 4 direction changes: every chain stays within the
    /// 5 receiving chains kept) of 1..25 messages; deliveries of arbitrary pending messages
    /// interleaved with sending; the rest delivered in an arbitrary order at the end.
    #[test]
    fn any_order_within_bounds_decrypts_exactly_once(
        segments in prop::collection::vec((any::<bool>(), 1usize..25), 1..6),
        picks in prop::collection::vec(prop::collection::vec(any::<Index>(), 0..3), 0..130),
        final_order in prop::collection::vec(any::<Index>(), 130),
        one_time in any::<bool>(),
    ) {
        let (mut a, mut b) = pair(one_time);
        let mut pending: Vec<Pending> = Vec::new();
        let mut done: Vec<Pending> = Vec::new();
        let mut bob_has_session = false;
        let mut n = 0u32;
        let mut step = 0usize;
        for (alice_sends, count) in segments {
            for _ in 0..count {
                let from_alice = alice_sends || !bob_has_session;
                let pt = n.to_be_bytes().repeat((n % 7) as usize + 1);
                n += 1;
                let msg = if from_alice { a.encrypt(&pt) } else { b.encrypt(&pt) };
                pending.push(Pending { to_bob: from_alice, msg, pt });
                for ix in picks.get(step).into_iter().flatten() {
                    if pending.is_empty() { break; }
                    let p = pending.remove(ix.index(pending.len()));
                    prop_assert_eq!(deliver(&mut a, &mut b, &p)?, p.pt.clone());
                    bob_has_session |= p.to_bob;
                    done.push(p);
                }
                step += 1;
            }
            // Bob can only speak once he has a session.
            if !bob_has_session {
                if let Some(i) = pending.iter().position(|p| p.to_bob) {
                    let p = pending.remove(i);
                    prop_assert_eq!(deliver(&mut a, &mut b, &p)?, p.pt.clone());
                    bob_has_session = true;
                    done.push(p);
                }
            }
        }
        let mut k = 0;
        while !pending.is_empty() {
            let p = pending.remove(final_order[k % final_order.len()].index(pending.len()));
            k += 1;
            prop_assert_eq!(deliver(&mut a, &mut b, &p)?, p.pt.clone());
            done.push(p);
        }
        prop_assert_eq!(done.len(), n as usize);
        for p in &done {
            let e = deliver(&mut a, &mut b, p);
            prop_assert!(matches!(e, Err(SignalError::DuplicateMessage(_))), "{:?}", e);
        }
    }

    /// One long chain delivered in any order (up to the forward-jump bound).
    #[test]
    fn one_chain_any_permutation(len in 1usize..300, order in prop::collection::vec(any::<Index>(), 300)) {
        let (mut a, mut b) = pair(true);
        let mut msgs: Vec<(u32, CiphertextMessage)> = (0..len as u32).map(|i| (i, a.encrypt(&i.to_le_bytes()))).collect();
        let mut seen = std::collections::BTreeSet::new();
        let mut k = 0;
        while !msgs.is_empty() {
            let (i, m) = msgs.remove(order[k].index(msgs.len()));
            k += 1;
            prop_assert_eq!(b.decrypt(&m)?, i.to_le_bytes().to_vec());
            prop_assert!(seen.insert(i));
            prop_assert!(matches!(b.decrypt(&m), Err(SignalError::DuplicateMessage(_))));
        }
    }

    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = CiphertextMessage::from_wire("msg", &bytes);
        let _ = CiphertextMessage::from_wire("pkmsg", &bytes);
        let _ = SenderKeyMessage::parse(&bytes);
        let _ = SenderKeyDistributionMessage::parse(&bytes);
        let _ = padding::unpad(&bytes);
        let _ = SessionRecord::from_bytes(&bytes);
        let _ = SenderKeyRecord::from_bytes(&bytes);
        let mut v = vec![0x33];
        v.extend_from_slice(&bytes);
        let _ = CiphertextMessage::from_wire("msg", &v);
        let _ = CiphertextMessage::from_wire("pkmsg", &v);
        let _ = SenderKeyMessage::parse(&v);
        let _ = SenderKeyDistributionMessage::parse(&v);
    }
}
