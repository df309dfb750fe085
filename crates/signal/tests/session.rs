mod common;
use common::*;
use rand::rngs::OsRng;
use wafleet_signal::*;

#[test]
fn prekey_then_whisper_both_directions() {
    for one_time in [true, false] {
        let (mut a, mut b) = pair(one_time);
        let m1 = a.encrypt(b"hello bob");
        assert_eq!(m1.enc_type(), "pkmsg");
        let had = b.me.prekeys.pre_keys.len();
        assert_eq!(b.decrypt(&m1).unwrap(), b"hello bob");
        assert_eq!(b.me.prekeys.pre_keys.len(), had - usize::from(one_time));
        // Until Alice hears back she keeps sending pkmsg.
        let m2 = a.encrypt(b"again");
        assert_eq!(m2.enc_type(), "pkmsg");
        assert_eq!(b.decrypt(&m2).unwrap(), b"again");
        let r1 = b.encrypt(b"hi alice");
        assert_eq!(r1.enc_type(), "msg");
        assert_eq!(a.decrypt(&r1).unwrap(), b"hi alice");
        let m3 = a.encrypt(b"now a msg");
        assert_eq!(m3.enc_type(), "msg");
        assert_eq!(b.decrypt(&m3).unwrap(), b"now a msg");
        for i in 0..20 {
            let m = if i % 3 == 0 {
                a.encrypt(&[i; 40])
            } else {
                b.encrypt(&[i; 40])
            };
            let pt = if i % 3 == 0 {
                b.decrypt(&m)
            } else {
                a.decrypt(&m)
            };
            assert_eq!(pt.unwrap(), vec![i; 40]);
        }
    }
}

#[test]
fn wire_bytes_round_trip_through_from_wire() {
    let (mut a, mut b) = pair(true);
    let m = a.encrypt(b"x");
    let bytes = m.serialize().to_vec();
    assert_eq!(bytes[0], 0x33);
    let parsed = CiphertextMessage::from_wire("pkmsg", &bytes).unwrap();
    assert_eq!(b.decrypt(&parsed).unwrap(), b"x");
    let r = b.encrypt(b"y");
    let parsed = CiphertextMessage::from_wire("msg", r.serialize()).unwrap();
    assert_eq!(a.decrypt(&parsed).unwrap(), b"y");
}

#[test]
fn duplicate_is_typed_and_state_is_untouched_on_error() {
    let (mut a, mut b) = pair(true);
    let m = a.encrypt(b"once");
    b.decrypt(&m).unwrap();
    let before = b.record.clone();
    assert!(matches!(
        b.decrypt(&m),
        Err(SignalError::DuplicateMessage(0))
    ));
    assert_eq!(b.record, before);
    let r = b.encrypt(b"r");
    a.decrypt(&r).unwrap();
    let m2 = a.encrypt(b"m2");
    b.decrypt(&m2).unwrap();
    assert!(matches!(
        b.decrypt(&m2),
        Err(SignalError::DuplicateMessage(_))
    ));
}

#[test]
fn tampered_mac_and_ciphertext_are_bad_mac() {
    let (mut a, mut b) = pair(true);
    b.decrypt(&a.encrypt(b"setup")).unwrap();
    a.decrypt(&b.encrypt(b"reply")).unwrap();
    let m = a.encrypt(b"payload");
    assert_eq!(m.enc_type(), "msg");
    let before = b.record.clone();
    for pos in [m.serialize().len() - 1, m.serialize().len() - 12] {
        let mut bytes = m.serialize().to_vec();
        bytes[pos] ^= 1;
        let forged = CiphertextMessage::from_wire("msg", &bytes).unwrap();
        assert_eq!(b.decrypt(&forged), Err(SignalError::BadMac));
        assert_eq!(b.record, before);
    }
    assert_eq!(b.decrypt(&m).unwrap(), b"payload");
}

#[test]
fn out_of_order_across_ratchet_steps() {
    let (mut a, mut b) = pair(true);
    b.decrypt(&a.encrypt(b"hello")).unwrap();
    let r0 = b.encrypt(b"r0");
    a.decrypt(&r0).unwrap();
    let batch1: Vec<_> = (0..5).map(|i| a.encrypt(&[i])).collect();
    b.decrypt(&batch1[4]).unwrap();
    let r1 = b.encrypt(b"r1");
    a.decrypt(&r1).unwrap();
    let batch2: Vec<_> = (10..15).map(|i| a.encrypt(&[i])).collect();
    // New chain first, then the stragglers of the old one.
    for (i, m) in batch2.iter().enumerate().rev() {
        assert_eq!(b.decrypt(m).unwrap(), vec![10 + i as u8]);
    }
    for (i, m) in batch1.iter().enumerate().take(4) {
        assert_eq!(b.decrypt(m).unwrap(), vec![i as u8]);
    }
    for m in batch1.iter().chain(&batch2) {
        assert!(matches!(
            b.decrypt(m),
            Err(SignalError::DuplicateMessage(_))
        ));
    }
}

#[test]
fn too_far_in_future_is_rejected() {
    let (mut a, mut b) = pair(true);
    b.decrypt(&a.encrypt(b"hello")).unwrap();
    let mut last = None;
    for _ in 0..=MAX_FORWARD_JUMPS + 1 {
        last = Some(a.encrypt(b"x"));
    }
    assert!(matches!(
        b.decrypt(&last.unwrap()),
        Err(SignalError::TooFarInFuture { .. })
    ));
}

#[test]
fn no_session_and_garbage() {
    let (mut a, mut b) = pair(true);
    let m = a.encrypt(b"x");
    b.decrypt(&m).unwrap();
    let r = b.encrypt(b"r");
    let mut fresh = Peer {
        me: Party::new("carol"),
        them: b.me.addr.clone(),
        record: SessionRecord::new(),
    };
    assert_eq!(fresh.decrypt(&r), Err(SignalError::NoSession));
    assert!(matches!(
        encrypt(&SessionRecord::new(), &fresh.them, &fresh.me.ids, b"x"),
        Err(SignalError::NoSession)
    ));
    assert!(CiphertextMessage::from_wire("msg", &[]).is_err());
    assert_eq!(
        CiphertextMessage::from_wire("msg", &[0x22; 20]),
        Err(SignalError::UnsupportedVersion(0x22))
    );
    assert!(CiphertextMessage::from_wire("pkmsg", &[0x33, 0xff, 0xff]).is_err());
    assert!(CiphertextMessage::from_wire("skmsg", &[0x33]).is_err());
}

#[test]
fn unknown_prekeys_are_typed() {
    let (mut a, mut b) = pair(true);
    let m = a.encrypt(b"x");
    let saved = std::mem::take(&mut b.me.prekeys.pre_keys);
    assert!(matches!(
        b.decrypt(&m),
        Err(SignalError::InvalidPreKeyId(1))
    ));
    b.me.prekeys.pre_keys = saved;
    b.me.prekeys.signed_pre_keys.clear();
    assert!(matches!(
        b.decrypt(&m),
        Err(SignalError::InvalidSignedPreKeyId(1))
    ));
}

#[test]
fn identity_change_is_detected_both_ways() {
    let (mut a, mut b) = pair(true);
    b.decrypt(&a.encrypt(b"x")).unwrap();
    // Alice reinstalls: new identity, new session to Bob.
    let bob_bundle = b.me.bundle(true);
    let mut a2 = Peer {
        me: Party::new("alice"),
        them: b.me.addr.clone(),
        record: SessionRecord::new(),
    };
    let setup =
        process_prekey_bundle(&a2.record, &a2.them, &a2.me.ids, &bob_bundle, &mut OsRng).unwrap();
    a2.record = setup.record;
    let m = a2.encrypt(b"new me");
    let before = b.record.clone();
    assert!(matches!(
        b.decrypt(&m),
        Err(SignalError::UntrustedIdentity(_))
    ));
    assert_eq!(b.record, before);
    // Bob reinstalls; Alice sees a bundle with a different identity.
    let mut bob2 = Party::new("bob");
    let bundle2 = bob2.bundle(true);
    assert!(matches!(
        process_prekey_bundle(&a.record, &a.them, &a.me.ids, &bundle2, &mut OsRng),
        Err(SignalError::UntrustedIdentity(_))
    ));
    // A forged signed prekey signature is rejected.
    let mut forged = b.me.bundle(false);
    forged.signed_pre_key_signature[0] ^= 1;
    assert!(matches!(
        process_prekey_bundle(&a.record, &a.them, &a.me.ids, &forged, &mut OsRng),
        Err(SignalError::InvalidSignature)
    ));
}

#[test]
fn new_signed_prekey_rekey_keeps_previous_state() {
    let (mut a, mut b) = pair(true);
    b.decrypt(&a.encrypt(b"x")).unwrap();
    a.decrypt(&b.encrypt(b"y")).unwrap();
    let in_flight = a.encrypt(b"old session, in flight");
    b.me.rotate_signed_pre_key(2);
    let bundle = b.me.bundle(true);
    let setup = process_prekey_bundle(&a.record, &a.them, &a.me.ids, &bundle, &mut OsRng).unwrap();
    assert!(setup.new_identity.is_none());
    a.record = setup.record;
    assert_eq!(a.record.previous().count(), 1);
    let m = a.encrypt(b"new session");
    assert_eq!(m.enc_type(), "pkmsg");
    assert_eq!(b.decrypt(&m).unwrap(), b"new session");
    assert_eq!(b.record.previous().count(), 1);
    assert_eq!(b.decrypt(&in_flight).unwrap(), b"old session, in flight");
    let r = b.encrypt(b"reply on new");
    assert_eq!(a.decrypt(&r).unwrap(), b"reply on new");
}

#[test]
fn records_serialize_and_resume() {
    let (mut a, mut b) = pair(true);
    b.decrypt(&a.encrypt(b"x")).unwrap();
    let skipped = a.encrypt(b"skipped");
    b.decrypt(&a.encrypt(b"y")).unwrap();
    let bytes = b.record.to_bytes();
    b.record = SessionRecord::from_bytes(&bytes).unwrap();
    assert_eq!(b.decrypt(&skipped).unwrap(), b"skipped");
    a.decrypt(&b.encrypt(b"z")).unwrap();
    assert!(SessionRecord::from_bytes(b"{}").is_err());
    assert!(SessionRecord::from_bytes(b"\xff").is_err());
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["version"] = 99.into();
    assert!(SessionRecord::from_bytes(&serde_json::to_vec(&v).unwrap()).is_err());
}

/// A message held back while the conversation ratchets many times still decrypts, as in
/// libsignal-node (which never drops a receiving chain). Found by the interop suite: with
/// the five most recent chains kept regardless, the sixth-oldest was dropped and its late
/// message was taken for a new ratchet key, failing with a bad MAC.
#[test]
fn late_message_after_many_ratchet_steps() {
    let (mut a, mut b) = pair(true);
    let first = a.encrypt(b"first");
    assert_eq!(b.decrypt(&first).unwrap(), b"first");
    // Alice's chain: one message delivered now, one held back.
    let held = a.encrypt(b"held back");
    let mut delivered_after = Vec::new();
    for round in 0..8u8 {
        let m = b.encrypt(&[round]);
        assert_eq!(a.decrypt(&m).unwrap(), [round]);
        let m = a.encrypt(&[100 + round]);
        assert_eq!(b.decrypt(&m).unwrap(), [100 + round]);
        delivered_after.push(round);
    }
    assert_eq!(delivered_after.len(), 8);
    assert_eq!(b.decrypt(&held).unwrap(), b"held back");
    // And only once.
    assert!(matches!(
        b.decrypt(&held),
        Err(SignalError::DuplicateMessage(_))
    ));
}

#[test]
fn records_share_history_but_never_change_each_other() {
    // Skipped keys and previous sessions are shared between the record a call takes and the
    // one it returns; using one record must not change what the other can still do.
    let (mut a, mut b) = pair(true);
    let first = a.encrypt(b"first");
    b.decrypt(&first).unwrap();
    let reply = b.encrypt(b"reply");
    a.decrypt(&reply).unwrap();
    let skipped: Vec<_> = (0..3u8).map(|i| a.encrypt(&[i; 10])).collect();
    let last = a.encrypt(b"last");
    assert_eq!(b.decrypt(&last).unwrap(), b"last");
    let with_three_skipped = b.record.clone();
    assert_eq!(with_three_skipped.current().unwrap().skipped_key_count(), 3);

    // Consuming a skipped key yields a record without it; the earlier record keeps it.
    assert_eq!(b.decrypt(&skipped[1]).unwrap(), [1; 10]);
    assert_eq!(b.record.current().unwrap().skipped_key_count(), 2);
    assert_eq!(with_three_skipped.current().unwrap().skipped_key_count(), 3);
    assert!(matches!(
        b.decrypt(&skipped[1]),
        Err(SignalError::DuplicateMessage(_))
    ));
    b.record = with_three_skipped.clone();
    assert_eq!(b.decrypt(&skipped[1]).unwrap(), [1; 10]);

    // Archiving shares the previous sessions; a new session on one record leaves the
    // other's history as it was.
    let archived = with_three_skipped.archive_current();
    assert_eq!(archived.previous().count(), 1);
    let again = archived.archive_current();
    assert_eq!(again.previous().count(), 1, "no current session to archive");
    assert_eq!(with_three_skipped.previous().count(), 0);
    b.record = archived;
    assert_eq!(b.decrypt(&skipped[2]).unwrap(), [2; 10]);
    assert_eq!(b.record.previous().next().unwrap().skipped_key_count(), 2);
    assert_eq!(with_three_skipped.current().unwrap().skipped_key_count(), 3);
}
