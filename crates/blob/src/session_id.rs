//! The name a session blob is stored under.

use std::fmt;

/// Longest accepted session id, in bytes (it is also a file name and an S3 key part): a
/// bus tenant and session name of 64 bytes each, joined by `.`
/// ([`SessionId::for_tenant_session`]).
pub const MAX_SESSION_ID_LEN: usize = 129;

/// A session's id as the blob layer uses it: the envelope binds it (HKDF info and AAD)
/// and the stores name the object after it.
///
/// 1 to [`MAX_SESSION_ID_LEN`] bytes of ASCII letters, digits and `. _ - @ +`, not
/// starting with `.`: safe as a file name and as an S3 key without escaping (a JID such
/// as `15551234567@s.whatsapp.net` fits).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

/// Why a text is not a valid [`SessionId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSessionId {
    /// The id is empty.
    #[error("session id is empty")]
    Empty,
    /// The id is longer than [`MAX_SESSION_ID_LEN`] bytes.
    #[error("session id is {0} bytes long; at most {MAX_SESSION_ID_LEN} allowed")]
    TooLong(usize),
    /// The id starts with `.` (reserved for the filesystem store's temporary files).
    #[error("session id must not start with '.'")]
    LeadingDot,
    /// The id holds a byte outside `A-Z a-z 0-9 . _ - @ +`.
    #[error("session id holds a disallowed character at byte {0}")]
    BadCharacter(usize),
}

impl SessionId {
    /// Checks `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidSessionId> {
        let id = id.into();
        Self::check(id.as_bytes())?;
        Ok(Self(id))
    }

    /// Validates raw bytes as a session id (used on envelope headers).
    pub(crate) fn check(bytes: &[u8]) -> Result<(), InvalidSessionId> {
        if bytes.is_empty() {
            return Err(InvalidSessionId::Empty);
        }
        if bytes.len() > MAX_SESSION_ID_LEN {
            return Err(InvalidSessionId::TooLong(bytes.len()));
        }
        if bytes[0] == b'.' {
            return Err(InvalidSessionId::LeadingDot);
        }
        match bytes
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b"._-@+".contains(&b)))
        {
            Some(at) => Err(InvalidSessionId::BadCharacter(at)),
            None => Ok(()),
        }
    }

    /// The blob id of a fleet session: `<tenant>.<session>`. Bus names are 1 to 64
    /// letters, digits, `_` and `-` and cannot contain `.`, so distinct (tenant, session)
    /// pairs get distinct ids. The worker seals and stores the blob under this id, and the
    /// coordinator purges it under the same id when the session is deleted.
    pub fn for_tenant_session(tenant: &str, session: &str) -> Result<Self, InvalidSessionId> {
        Self::new(format!("{tenant}.{session}"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for SessionId {
    type Error = InvalidSessionId;
    fn try_from(id: &str) -> Result<Self, Self::Error> {
        Self::new(id)
    }
}

impl TryFrom<String> for SessionId {
    type Error = InvalidSessionId;
    fn try_from(id: String) -> Result<Self, Self::Error> {
        Self::new(id)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_jids_and_plain_ids() {
        for id in ["15551234567@s.whatsapp.net", "acct-1", "A.b_c+d"] {
            assert_eq!(
                SessionId::new(id).map(|s| s.to_string()),
                Ok(id.to_string())
            );
        }
    }

    #[test]
    fn fleet_sessions_are_tenant_dot_session() {
        assert_eq!(
            SessionId::for_tenant_session("acme", "support-1").map(|s| s.to_string()),
            Ok("acme.support-1".to_string())
        );
        // The longest bus names fit.
        let long = "a".repeat(64);
        assert!(SessionId::for_tenant_session(&long, &long).is_ok());
        assert_eq!(
            SessionId::for_tenant_session("", "s"),
            Err(InvalidSessionId::LeadingDot)
        );
    }

    #[test]
    fn refuses_unsafe_ids() {
        assert_eq!(SessionId::new(""), Err(InvalidSessionId::Empty));
        assert_eq!(SessionId::new(".hidden"), Err(InvalidSessionId::LeadingDot));
        assert_eq!(
            SessionId::new("a/b"),
            Err(InvalidSessionId::BadCharacter(1))
        );
        assert_eq!(
            SessionId::new("a b"),
            Err(InvalidSessionId::BadCharacter(1))
        );
        assert_eq!(
            SessionId::new("..").map(|_| ()),
            Err(InvalidSessionId::LeadingDot)
        );
        let long = "x".repeat(MAX_SESSION_ID_LEN + 1);
        assert_eq!(
            SessionId::new(long),
            Err(InvalidSessionId::TooLong(MAX_SESSION_ID_LEN + 1))
        );
    }
}
