use rand::rngs::OsRng;
use wafleet_signal::*;

#[test]
fn group_round_trip_out_of_order_duplicates_and_rotation() {
    let (sender, skdm) = create_sender_key_distribution(&SenderKeyRecord::new(), &mut OsRng);
    let skdm = SenderKeyDistributionMessage::parse(skdm.serialize()).unwrap();
    let mut member = process_sender_key_distribution(&SenderKeyRecord::new(), &skdm);
    let mut sender = sender;
    let mut msgs = Vec::new();
    for i in 0..10u8 {
        let (s, m) = group_encrypt(&sender, &[i; 33], &mut OsRng).unwrap();
        sender = s;
        msgs.push(m.serialize().to_vec());
    }
    for i in [9usize, 0, 5, 1, 2, 3, 4, 8, 7, 6] {
        let (r, pt) = group_decrypt(&member, &msgs[i]).unwrap();
        member = r;
        assert_eq!(pt, vec![i as u8; 33]);
    }
    assert!(matches!(
        group_decrypt(&member, &msgs[3]),
        Err(SignalError::DuplicateMessage(3))
    ));
    let mut bad = msgs[0].clone();
    bad[5] ^= 1;
    assert!(group_decrypt(&member, &bad).is_err());
    let mut bad_sig = msgs[0].clone();
    let n = bad_sig.len();
    bad_sig[n - 10] ^= 1;
    assert_eq!(
        group_decrypt(&member, &bad_sig),
        Err(SignalError::InvalidSignature)
    );
    // Rotation: a fresh sender key; the member without the new SKDM cannot decrypt.
    let (rotated, skdm2) = create_sender_key_distribution(&SenderKeyRecord::new(), &mut OsRng);
    let (_, m) = group_encrypt(&rotated, b"after rotation", &mut OsRng).unwrap();
    assert!(matches!(
        group_decrypt(&member, m.serialize()),
        Err(SignalError::NoSenderKeyState(_))
    ));
    let member2 = process_sender_key_distribution(&member, &skdm2);
    assert_eq!(
        group_decrypt(&member2, m.serialize()).unwrap().1,
        b"after rotation"
    );
    // Receiver records cannot encrypt.
    assert_eq!(
        group_encrypt(&member2, b"x", &mut OsRng).unwrap_err(),
        SignalError::NoSigningKey
    );
    // Serialization.
    let r = SenderKeyRecord::from_bytes(&member2.to_bytes()).unwrap();
    assert_eq!(r, member2);
}

#[test]
fn group_forward_jump_bound() {
    let (mut sender, skdm) = create_sender_key_distribution(&SenderKeyRecord::new(), &mut OsRng);
    let member = process_sender_key_distribution(&SenderKeyRecord::new(), &skdm);
    let mut last = None;
    for _ in 0..2002 {
        let (s, m) = group_encrypt(&sender, b"x", &mut OsRng).unwrap();
        sender = s;
        last = Some(m);
    }
    assert!(matches!(
        group_decrypt(&member, last.unwrap().serialize()),
        Err(SignalError::TooFarInFuture { .. })
    ));
}
