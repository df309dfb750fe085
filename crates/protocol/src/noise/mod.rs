//! WhatsApp's Noise handshake and transport cipher.
//!
//! WhatsApp uses `Noise_XX_25519_AESGCM_SHA256` with the prologue `WA 06 03` and **one
//! deviation** from the Noise specification: the initiator's first message carries no payload
//! and *no* `MixHash(empty payload)` follows it (protocol notes §0 finding 1, §2.2). This is
//! why `snow` cannot be used and the symmetric state is implemented here.
//!
//! Layers, lowest first:
//! - [`SymmetricState`]: `h`, `ck`, the handshake cipher key and its counter.
//! - [`Transport`]: the post-handshake cipher with separate read/write counters.
//! - [`Initiator`] / [`Responder`]: the handshake as explicit state machines over
//!   `HandshakeMessage` protobuf bytes (unframed).
//! - [`ClientConnection`] / [`ServerConnection`]: frames + handshake + transport; a runtime
//!   only shovels bytes in and out.

mod connection;
mod handshake;
mod symmetric;
mod transport;

pub use connection::{
    ClientConfig, ClientConnection, ClientEvent, ConnectionError, ServerConnection, ServerEvent,
};
pub use handshake::{
    ClientFinishInfo, ClientFinished, Initiator, InitiatorAwaitingFinish, Responder,
    ResponderAwaitingFinish, ServerHelloInfo,
};
pub use symmetric::{prologue_hash, SymmetricState};
pub use transport::Transport;

use rand_core::CryptoRngCore;
use thiserror::Error;

use crate::cert::CertError;

/// The protocol name; exactly 32 bytes, so it is used as the initial `h` unhashed.
pub const NOISE_NAME: &[u8; 32] = b"Noise_XX_25519_AESGCM_SHA256\0\0\0\0";

/// The Noise prologue (the intro header without any edge-routing pre-intro).
pub const PROLOGUE: [u8; 4] = crate::frame::INTRO_HEADER;

/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;

/// Length of an encrypted static key (32-byte key + tag).
pub const ENCRYPTED_STATIC_LEN: usize = 32 + TAG_LEN;

/// An X25519 key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The private scalar (clamped when used).
    pub private: [u8; 32],
    /// The public key.
    pub public: [u8; 32],
}

impl KeyPair {
    /// A key pair from a private key.
    pub fn from_private(private: [u8; 32]) -> Self {
        let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(private));
        Self {
            private,
            public: public.to_bytes(),
        }
    }

    /// A fresh key pair from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut private = [0u8; 32];
        rng.fill_bytes(&mut private);
        Self::from_private(private)
    }

    /// X25519 with `their_public`; rejects a low-order peer key (all-zero shared secret).
    pub fn dh(&self, their_public: &[u8; 32]) -> Result<[u8; 32], NoiseError> {
        let secret = x25519_dalek::StaticSecret::from(self.private);
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*their_public));
        if !shared.was_contributory() {
            return Err(NoiseError::LowOrderPoint);
        }
        Ok(shared.to_bytes())
    }
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

/// Handshake and transport errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoiseError {
    /// A `HandshakeMessage` is not valid protobuf.
    #[error("undecodable handshake message: {0}")]
    Decode(String),
    /// A required handshake field is absent.
    #[error("handshake message lacks {0}")]
    MissingField(&'static str),
    /// A handshake field has the wrong length.
    #[error("{field} has {len} bytes, expected {expected}")]
    BadLength {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The required length.
        expected: usize,
    },
    /// A peer public key is of low order (the X25519 result is all zero).
    #[error("peer public key has low order")]
    LowOrderPoint,
    /// AES-GCM authentication failed (wrong key, tampered data or out-of-order nonce).
    #[error("decryption failed")]
    Decrypt,
    /// AES-GCM refused to encrypt (plaintext beyond the AEAD's length limit).
    #[error("encryption failed")]
    Encrypt,
    /// The peer used a handshake field wafleet does not support (e.g. an IK `clientHello`).
    #[error("unsupported handshake field {0}")]
    UnexpectedField(&'static str),
    /// A nonce counter reached 2^32: the 4-byte IV counter would wrap.
    #[error("nonce counter exhausted")]
    CounterExhausted,
    /// The server's certificate chain was rejected.
    #[error("certificate chain: {0}")]
    Cert(#[from] CertError),
}
