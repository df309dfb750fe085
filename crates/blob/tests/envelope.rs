//! Envelope properties: round trip, tamper detection, wrong keys, AAD binding, rotation,
//! and no panics on arbitrary input.

use proptest::prelude::*;
use wafleet_blob::envelope::{self, FORMAT_VERSION, MAGIC, NONCE_LEN, TAG_LEN};
use wafleet_blob::{BlobError, Keyring, MasterKey, SessionBlob, SessionId};

fn keyring(seed: u8) -> Keyring {
    Keyring::new(MasterKey::from_bytes([seed; 32]))
}

fn session(id: &str) -> SessionId {
    SessionId::new(id).unwrap_or_else(|e| panic!("{id}: {e}"))
}

fn sealed(ring: &Keyring, id: &str, epoch: u64, state: &[u8]) -> Vec<u8> {
    envelope::seal(ring, &session(id), epoch, state).unwrap_or_else(|e| panic!("seal: {e}"))
}

fn header_len(id: &str) -> usize {
    4 + 1 + 8 + 8 + 1 + id.len()
}

#[test]
fn round_trip() {
    let ring = keyring(1);
    let state: Vec<u8> = (0..65_536u32).map(|i| (i * 31 % 251) as u8).collect();
    let bytes = sealed(&ring, "acct-1", 42, &state);
    assert_eq!(
        bytes.len(),
        header_len("acct-1") + NONCE_LEN + state.len() + TAG_LEN
    );
    assert!(
        bytes.windows(64).all(|w| w != &state[..64]),
        "plaintext visible in the envelope"
    );

    let opened =
        envelope::open(&ring, &session("acct-1"), &bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(opened.plaintext.as_slice(), state.as_slice());
    assert_eq!(opened.epoch, 42);
    assert_eq!(opened.key_id, ring.current().id());

    let parsed = SessionBlob::parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((parsed.epoch(), parsed.session_id()), (42, "acct-1"));
}

#[test]
fn empty_state_round_trips() {
    let ring = keyring(1);
    let bytes = sealed(&ring, "s", 0, b"");
    let opened = envelope::open(&ring, &session("s"), &bytes).unwrap_or_else(|e| panic!("{e}"));
    assert!(opened.plaintext.is_empty());
}

#[test]
fn two_seals_differ() {
    let ring = keyring(1);
    assert_ne!(
        sealed(&ring, "s", 1, b"same"),
        sealed(&ring, "s", 1, b"same")
    );
}

#[test]
fn every_flipped_byte_fails_authentication_or_is_rejected() {
    let ring = keyring(1);
    let id = "acct-1";
    let bytes = sealed(&ring, id, 7, b"device identity and signal sessions");
    let session_at = header_len(id) - id.len()..header_len(id);
    for at in 0..bytes.len() {
        let mut tampered = bytes.clone();
        tampered[at] ^= 0x01;
        let result = envelope::open(&ring, &session(id), &tampered);
        let expected = match at {
            0..=3 => BlobError::BadMagic,
            4 => BlobError::UnsupportedVersion(FORMAT_VERSION ^ 1),
            5..=12 => {
                let mut key_id = ring.current().id();
                key_id.0[at - 5] ^= 1;
                BlobError::UnknownKeyId(key_id)
            }
            _ if at == header_len(id) - id.len() - 1 => {
                // The session id length byte: the header now reads a different id.
                assert!(
                    matches!(
                        result,
                        Err(BlobError::SessionMismatch { .. } | BlobError::BadSessionId)
                    ),
                    "byte {at}: {result:?}"
                );
                continue;
            }
            _ if session_at.contains(&at) => {
                assert!(
                    matches!(
                        result,
                        Err(BlobError::SessionMismatch { .. } | BlobError::BadSessionId)
                    ),
                    "byte {at}: {result:?}"
                );
                continue;
            }
            // Epoch, nonce, ciphertext and tag.
            _ => BlobError::AuthenticationFailed,
        };
        assert_eq!(result.err(), Some(expected), "byte {at}");
    }
}

#[test]
fn forged_session_id_with_its_own_length_fails_authentication() {
    // Rewriting the header to name another session (a copy of another session's blob put
    // under this session's name) passes the session check but not authentication.
    let ring = keyring(1);
    let bytes = sealed(&ring, "alice", 1, b"alice's keys");
    let mut forged = bytes.clone();
    forged[22..27].copy_from_slice(b"mallo");
    assert_eq!(
        envelope::open(&ring, &session("mallo"), &forged).err(),
        Some(BlobError::AuthenticationFailed)
    );
}

#[test]
fn wrong_master_key_with_the_same_id_fails_authentication() {
    let ring = keyring(1);
    let bytes = sealed(&ring, "acct", 3, b"state");
    // Another key, with the first key's id written into the envelope, fails the tag.
    let other = keyring(2);
    let mut relabelled = bytes.clone();
    relabelled[5..13].copy_from_slice(&other.current().id().0);
    assert_eq!(
        envelope::open(&other, &session("acct"), &relabelled).err(),
        Some(BlobError::AuthenticationFailed)
    );
    // And the plain case: a keyring without the sealing key.
    assert_eq!(
        envelope::open(&other, &session("acct"), &bytes).err(),
        Some(BlobError::UnknownKeyId(ring.current().id()))
    );
}

#[test]
fn session_and_epoch_are_bound() {
    let ring = keyring(1);
    let bytes = sealed(&ring, "acct-1", 5, b"state");
    assert_eq!(
        envelope::open(&ring, &session("acct-2"), &bytes).err(),
        Some(BlobError::SessionMismatch {
            expected: "acct-2".into(),
            found: "acct-1".into()
        })
    );
    // Rewriting the epoch in the header (e.g. to make a stale blob look current).
    let mut bumped = bytes.clone();
    bumped[13..21].copy_from_slice(&6u64.to_be_bytes());
    assert_eq!(
        envelope::open(&ring, &session("acct-1"), &bumped).err(),
        Some(BlobError::AuthenticationFailed)
    );
}

#[test]
fn lease_epoch_check() {
    let ring = keyring(1);
    let bytes = sealed(&ring, "acct", 9, b"state");
    let s = session("acct");
    for lease in [9, 10, u64::MAX] {
        assert_eq!(
            envelope::open_for_lease(&ring, &s, lease, &bytes).map(|o| o.epoch),
            Ok(9)
        );
    }
    assert_eq!(
        envelope::open_for_lease(&ring, &s, 8, &bytes).err(),
        Some(BlobError::EpochAhead {
            blob_epoch: 9,
            lease_epoch: 8
        })
    );
}

#[test]
fn key_rotation() {
    let old = MasterKey::from_bytes([1; 32]);
    let new = MasterKey::from_bytes([2; 32]);
    let s = session("acct");
    let before = Keyring::new(old.clone());
    let bytes = envelope::seal(&before, &s, 4, b"state").unwrap_or_else(|e| panic!("{e}"));

    let after = Keyring::new(new.clone()).with_retired(old.clone());
    // The old blob still opens...
    let opened = envelope::open(&after, &s, &bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(opened.key_id, old.id());
    // ...and re-seals under the new key, same epoch and state.
    let resealed = envelope::rekey(&after, &s, &bytes)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("a blob under a retired key must be re-sealed"));
    let reopened = envelope::open(&after, &s, &resealed).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (
            reopened.key_id,
            reopened.epoch,
            reopened.plaintext.as_slice()
        ),
        (new.id(), 4, &b"state"[..])
    );
    assert_eq!(envelope::rekey(&after, &s, &resealed), Ok(None));
    // Once the old key is dropped, only the re-sealed blob opens.
    let only_new = Keyring::new(new);
    assert!(envelope::open(&only_new, &s, &resealed).is_ok());
    assert_eq!(
        envelope::open(&only_new, &s, &bytes).err(),
        Some(BlobError::UnknownKeyId(old.id()))
    );
}

#[test]
fn truncation_at_every_length_is_a_typed_error() {
    let ring = keyring(1);
    let bytes = sealed(&ring, "acct", 1, b"some state bytes");
    for len in 0..bytes.len() {
        let result = envelope::open(&ring, &session("acct"), &bytes[..len]);
        match result {
            Err(BlobError::Truncated { got, needed }) => {
                assert_eq!(got, len);
                assert!(needed > len);
            }
            // Cutting inside the ciphertext leaves enough bytes for the tag: the tag fails.
            Err(BlobError::AuthenticationFailed) => {
                assert!(len >= header_len("acct") + NONCE_LEN + TAG_LEN, "len {len}")
            }
            other => panic!("len {len}: {other:?}"),
        }
    }
    assert_eq!(
        envelope::open(&ring, &session("acct"), b"WFS").err(),
        Some(BlobError::Truncated { needed: 4, got: 3 })
    );
    assert_eq!(
        envelope::open(&ring, &session("acct"), b"PK\x03\x04 a zip file").err(),
        Some(BlobError::BadMagic)
    );
    let mut v2 = MAGIC.to_vec();
    v2.push(2);
    assert_eq!(
        envelope::open(&ring, &session("acct"), &v2).err(),
        Some(BlobError::UnsupportedVersion(2))
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let ring = keyring(1);
        let result = envelope::open(&ring, &session("acct"), &bytes);
        prop_assert!(result.is_err());
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..256),
        id_len in any::<u8>(),
    ) {
        let ring = keyring(1);
        let mut bytes = MAGIC.to_vec();
        bytes.push(FORMAT_VERSION);
        bytes.extend_from_slice(&ring.current().id().0);
        bytes.extend_from_slice(&3u64.to_be_bytes());
        bytes.push(id_len);
        bytes.extend_from_slice(&tail);
        let result = envelope::open(&ring, &session("acct"), &bytes);
        prop_assert!(result.is_err());
    }

    #[test]
    fn round_trip_any_state(
        state in proptest::collection::vec(any::<u8>(), 0..2048),
        epoch in any::<u64>(),
        flip in any::<proptest::sample::Index>(),
    ) {
        let ring = keyring(7);
        let s = session("prop-session");
        let bytes = envelope::seal(&ring, &s, epoch, &state).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let opened = envelope::open(&ring, &s, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(opened.plaintext.as_slice(), state.as_slice());
        prop_assert_eq!(opened.epoch, epoch);
        let mut tampered = bytes.clone();
        let at = flip.index(tampered.len());
        tampered[at] ^= 0x80;
        prop_assert!(envelope::open(&ring, &s, &tampered).is_err());
    }
}
