//! Sans-IO Signal protocol as WhatsApp uses it.
//!
//! * [`keys`]: identity key pair, signed prekey (XEdDSA signature over `05 || pub`), one-time
//!   prekeys, registration id, prekey bundles; raw 32-byte keys on the wire, 33-byte
//!   `05`-prefixed keys inside Signal protobufs, 3-byte big-endian key ids.
//! * [`session`]: X3DH session setup from a prekey bundle, the double ratchet, `pkmsg`/`msg`
//!   encryption and decryption over a [`SessionRecord`] that keeps previous states.
//! * [`group`]: sender keys (`skmsg`) and SenderKeyDistributionMessage.
//! * [`padding`]: WhatsApp's random plaintext padding.
//!
//! Internally, `crypto` holds Signal's KDFs and AES-256-CBC, built on `hmac_sha256` (HMAC and
//! HKDF on cached SHA-256 states) and `sha256_block` (SHA-NI block compression, two
//! independent blocks at a time where the ratchet allows; the crate's only `unsafe`);
//! `protobuf` has the varint primitives of the hand-written WhisperMessage codec.
//!
//! Every operation takes the current state by reference and returns the new state to
//! persist *apart from* its output, so a caller can make state durable before a ciphertext
//! goes on the wire or before it acks an inbound message. No I/O, no clock, randomness passed
//! in. Bytes from outside never cause a panic: every failure is a [`SignalError`].

pub mod address;
mod crypto;
pub mod error;
pub mod group;
mod hmac_sha256;
pub mod keys;
pub mod message;
pub mod padding;
mod protobuf;
pub mod session;
mod sha256_block;
pub mod store;

/// Generated protobuf types for the Signal wire messages.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/wafleet.signal.rs"));
}

pub use address::ProtocolAddress;
pub use error::SignalError;
pub use group::{
    create_sender_key_distribution, group_decrypt, group_encrypt, process_sender_key_distribution,
    SenderKeyDistributionMessage, SenderKeyMessage, SenderKeyRecord,
};
pub use keys::{
    IdentityKeyPair, KeyPair, PreKeyBundle, PreKeyRecord, PublicKey, SignedPreKeyRecord,
};
pub use message::{CiphertextMessage, PreKeyWhisperMessage, WhisperMessage};
pub use session::{
    decrypt, encrypt, process_prekey_bundle, Decrypted, SessionRecord, SessionSetup, SessionState,
    MAX_FORWARD_JUMPS,
};
pub use store::{IdentityKeyStore, InMemoryIdentityStore, InMemoryPreKeyStore, PreKeyStore};

/// Result alias for this crate.
pub type Result<T, E = SignalError> = std::result::Result<T, E>;
