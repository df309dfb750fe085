//! Typed failures: why an inbound message could not be read, why a send failed.

use thiserror::Error;
use wafleet_signal::SignalError;

/// Why an inbound `<message>` could not be turned into content.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UndecryptableReason {
    /// We have no (or an empty) Signal session with the sending device for a `msg`.
    #[error("no session with the sending device")]
    NoSession,
    /// The message MAC did not verify (wrong or out-of-sync session, corrupted ciphertext).
    #[error("bad MAC")]
    BadMac,
    /// A `pkmsg` names a one-time or signed prekey we do not have (consumed or never issued).
    #[error("unknown prekey {0}")]
    UnknownPreKey(u32),
    /// An `skmsg` from a group sender whose sender key we never received.
    #[error("no sender key for this group sender")]
    UnknownSenderKey,
    /// A sender-key message signature did not verify.
    #[error("invalid signature")]
    InvalidSignature,
    /// The message is further ahead in its chain than the skipped-key bound allows.
    #[error("message too far ahead in its chain")]
    FutureMessage,
    /// The message key was already used and the message is no longer in the recent cache.
    #[error("already decrypted (not in the recent-message cache)")]
    Duplicate,
    /// The stanza or the ciphertext cannot be parsed (truncated `enc`, bad version, ...).
    #[error("malformed: {0}")]
    Malformed(String),
    /// The stanza is addressed to another device or account.
    #[error("not for this device: {0}")]
    NotForUs(String),
    /// A chat kind this client does not handle (newsletter, bot, ...).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The stanza carries no `enc` this client can decrypt.
    #[error("no encrypted content")]
    NoContent,
    /// The plaintext padding is invalid.
    #[error("invalid plaintext padding")]
    BadPadding,
    /// The plaintext decrypted but is not a `waE2E.Message` this client can read.
    #[error("message content: {0}")]
    BadContent(String),
    /// Any other Signal failure.
    #[error("signal: {0}")]
    Signal(String),
}

impl UndecryptableReason {
    /// A short stable name for logs and event JSON (`reason`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::NoSession => "no_session",
            Self::BadMac => "bad_mac",
            Self::UnknownPreKey(_) => "unknown_prekey",
            Self::UnknownSenderKey => "unknown_sender_key",
            Self::InvalidSignature => "invalid_signature",
            Self::FutureMessage => "future_message",
            Self::Duplicate => "duplicate",
            Self::Malformed(_) => "malformed",
            Self::NotForUs(_) => "not_for_us",
            Self::Unsupported(_) => "unsupported",
            Self::NoContent => "no_content",
            Self::BadPadding => "bad_padding",
            Self::BadContent(_) => "bad_content",
            Self::Signal(_) => "signal",
        }
    }

    /// The `error` code of the retry receipt we send for this failure (WhatsApp Web's
    /// `RetryReason`, as in Baileys' `message-retry-manager`), or `None` when no retry
    /// receipt is sent (a message for another device, a duplicate, an unsupported chat or
    /// enc type, a stanza without enc).
    pub fn retry_code(&self) -> Option<u8> {
        match self {
            Self::NoSession => Some(1),
            Self::UnknownPreKey(_) => Some(3),
            Self::Malformed(_) | Self::BadPadding | Self::BadContent(_) => Some(4),
            Self::InvalidSignature => Some(5),
            Self::FutureMessage => Some(6),
            Self::BadMac => Some(7),
            Self::UnknownSenderKey | Self::Signal(_) => Some(0),
            // No enc at all (Baileys asks the phone for a placeholder resend instead) or only
            // enc types we do not read (`msmsg`, which Baileys nacks): a resend would not help.
            Self::NotForUs(_) | Self::Duplicate | Self::Unsupported(_) | Self::NoContent => None,
        }
    }

    /// Maps a Signal error from a `pkmsg`/`msg`/`skmsg` decryption.
    pub(crate) fn from_signal(e: &SignalError) -> Self {
        match e {
            SignalError::BadMac => Self::BadMac,
            SignalError::NoSession | SignalError::ChainClosed => Self::NoSession,
            SignalError::DuplicateMessage(_) => Self::Duplicate,
            SignalError::InvalidPreKeyId(id) | SignalError::InvalidSignedPreKeyId(id) => {
                Self::UnknownPreKey(*id)
            }
            SignalError::NoSenderKeyState(_) => Self::UnknownSenderKey,
            SignalError::InvalidSignature => Self::InvalidSignature,
            SignalError::TooFarInFuture { .. } => Self::FutureMessage,
            SignalError::InvalidPadding => Self::BadPadding,
            SignalError::InvalidMessage(what) => Self::Malformed((*what).to_owned()),
            SignalError::UnsupportedVersion(v) => Self::Malformed(format!("version {v:#04x}")),
            SignalError::InvalidKey(what) => Self::Malformed((*what).to_owned()),
            SignalError::InvalidCiphertext => Self::BadMac,
            other => Self::Signal(other.to_string()),
        }
    }
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SendError {
    /// The recipient is neither a user (`@s.whatsapp.net`, `@lid`) nor a group (`@g.us`).
    #[error("invalid recipient {0}")]
    InvalidRecipient(String),
    /// The usync answer lists no device for this user: the number has no WhatsApp account.
    #[error("no such user {0}")]
    NoSuchUser(String),
    /// No recipient device could be encrypted for (no bundle, no session).
    #[error("no device to send to")]
    NoDevices,
    /// No server ack before the deadline.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The server refused the message (an `<ack error=…>`) or one of the queries it needed.
    #[error("server error {code}{}", text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default())]
    Server {
        /// The error code.
        code: String,
        /// The error text, when given.
        text: Option<String>,
    },
    /// A server answer could not be read.
    #[error("malformed server answer: {0}")]
    Malformed(String),
    /// Encryption failed for every device (should not happen with a valid session).
    #[error("encryption failed: {0}")]
    Encrypt(String),
    /// The connection closed (the messenger was dropped or reset) before the server acked.
    #[error("connection closed before the server acked")]
    Disconnected,
    /// A [`crate::SendReference`] key already named a send with another request.
    #[error("reference {0:?} was used for another message")]
    ReferenceReused(String),
}
