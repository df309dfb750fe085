//! Typed errors. Every failure on bytes from outside is one of these; nothing panics.

use thiserror::Error;

/// Everything that can go wrong in the Signal layer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignalError {
    /// The message MAC did not verify (wrong session, corrupted or forged message).
    #[error("bad MAC")]
    BadMac,
    /// The remote identity key differs from the one we trust for this address.
    #[error("untrusted identity for {0}")]
    UntrustedIdentity(String),
    /// The message key for this counter was already used: the message was decrypted before.
    #[error("duplicate message (chain index {0})")]
    DuplicateMessage(u32),
    /// There is no session (or no usable session) for this address.
    #[error("no session")]
    NoSession,
    /// The message cannot be parsed or is inconsistent.
    #[error("invalid message: {0}")]
    InvalidMessage(&'static str),
    /// The message carries a protocol version we do not speak.
    #[error("unsupported message version {0:#04x}")]
    UnsupportedVersion(u8),
    /// A public key is malformed (wrong length or missing `05` type byte).
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// A signature (signed prekey or sender key message) did not verify.
    #[error("invalid signature")]
    InvalidSignature,
    /// The message refers to a one-time prekey we do not have (consumed or never issued).
    #[error("unknown one-time prekey id {0}")]
    InvalidPreKeyId(u32),
    /// The message refers to a signed prekey we do not have.
    #[error("unknown signed prekey id {0}")]
    InvalidSignedPreKeyId(u32),
    /// The message is further ahead in its chain than the skipped-key bound allows.
    #[error("message index {index} is more than {limit} ahead of chain index {current}")]
    TooFarInFuture {
        /// Index the chain has reached.
        current: u32,
        /// Index of the message.
        index: u32,
        /// The bound.
        limit: u32,
    },
    /// The receiving chain the message belongs to was closed and its key is gone.
    #[error("receiving chain closed")]
    ChainClosed,
    /// No sender key state for this group sender and key id.
    #[error("no sender key state for key id {0}")]
    NoSenderKeyState(u32),
    /// We have no private signing key for this sender key (it was received, not created).
    #[error("sender key state has no private signing key")]
    NoSigningKey,
    /// The plaintext padding is malformed.
    #[error("invalid padding")]
    InvalidPadding,
    /// AES-CBC decryption failed (bad length or PKCS#7 padding).
    #[error("invalid ciphertext")]
    InvalidCiphertext,
    /// A persisted record could not be read.
    #[error("invalid record: {0}")]
    InvalidRecord(String),
}
