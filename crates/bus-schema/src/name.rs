//! Names that become NATS subject tokens: tenants, sessions and workers.
//!
//! A name is 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `_` and `-`, and starts
//! with a letter or a digit. That keeps out everything NATS gives a meaning to (`.` splits
//! tokens, `*` and `>` are wildcards, whitespace ends a subject) and the leading `_` of
//! reserved tokens such as `_sys` and `_INBOX`. Names are case-sensitive.

use std::fmt;

/// The longest name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// What a name names, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    /// A tenant.
    Tenant,
    /// A session.
    Session,
    /// A worker.
    Worker,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Tenant => "tenant",
            NameKind::Session => "session",
            NameKind::Worker => "worker",
        })
    }
}

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The empty string.
    #[error("{kind} name is empty")]
    Empty {
        /// What the name names.
        kind: NameKind,
    },
    /// Longer than [`MAX_NAME_LEN`] bytes.
    #[error("{kind} name is {len} bytes long; at most {MAX_NAME_LEN} allowed")]
    TooLong {
        /// What the name names.
        kind: NameKind,
        /// Its length in bytes.
        len: usize,
    },
    /// A character outside `A-Z a-z 0-9 _ -`.
    #[error(
        "{kind} name has {found:?} at byte {position}; only A-Z, a-z, 0-9, '_' and '-' are allowed"
    )]
    InvalidChar {
        /// What the name names.
        kind: NameKind,
        /// The offending character.
        found: char,
        /// Its byte offset.
        position: usize,
    },
    /// Starts with `_` or `-` (a leading `_` is reserved for `_sys` and NATS' own tokens).
    #[error("{kind} name must start with a letter or a digit, not {found:?}")]
    BadStart {
        /// What the name names.
        kind: NameKind,
        /// The first character.
        found: char,
    },
}

/// Checks `s` against the name rules.
pub fn validate_name(kind: NameKind, s: &str) -> Result<(), NameError> {
    let first = s.chars().next().ok_or(NameError::Empty { kind })?;
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { kind, len: s.len() });
    }
    if let Some((position, found)) = s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(NameError::InvalidChar {
            kind,
            found,
            position,
        });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadStart { kind, found: first });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(String);

        impl $ty {
            /// Validates `s` (see the [module docs](self)).
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                validate_name($kind, &s)?;
                Ok($ty(s))
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The name, owned.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                $ty::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                $ty::new(s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                $ty::new(s)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A tenant's name: the first token after `wafleet.v1.`, the unit of NATS permissions.
    TenantId,
    NameKind::Tenant
);
name_type!(
    /// A session's name, unique within its tenant.
    SessionId,
    NameKind::Session
);
name_type!(
    /// A worker's name, unique in the fleet.
    WorkerId,
    NameKind::Worker
);

/// A session's full address: tenant and session.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionAddress {
    /// The tenant.
    pub tenant: TenantId,
    /// The session within the tenant.
    pub session: SessionId,
}

impl SessionAddress {
    /// Validates both names.
    pub fn new(tenant: &str, session: &str) -> Result<Self, NameError> {
        Ok(SessionAddress {
            tenant: TenantId::new(tenant)?,
            session: SessionId::new(session)?,
        })
    }
}

impl fmt::Display for SessionAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["acme", "default", "A-1_b", "7", &"x".repeat(MAX_NAME_LEN)] {
            assert_eq!(
                TenantId::new(ok).map(|t| t.into_string()),
                Ok(ok.to_string())
            );
        }
    }

    #[test]
    fn rejects_subject_syntax_and_reserved_starts() {
        let cases: &[(&str, NameError)] = &[
            (
                "",
                NameError::Empty {
                    kind: NameKind::Session,
                },
            ),
            (
                "a.b",
                NameError::InvalidChar {
                    kind: NameKind::Session,
                    found: '.',
                    position: 1,
                },
            ),
            (
                "*",
                NameError::InvalidChar {
                    kind: NameKind::Session,
                    found: '*',
                    position: 0,
                },
            ),
            (
                "all>",
                NameError::InvalidChar {
                    kind: NameKind::Session,
                    found: '>',
                    position: 3,
                },
            ),
            (
                "a b",
                NameError::InvalidChar {
                    kind: NameKind::Session,
                    found: ' ',
                    position: 1,
                },
            ),
            (
                "tab\t",
                NameError::InvalidChar {
                    kind: NameKind::Session,
                    found: '\t',
                    position: 3,
                },
            ),
            (
                "é",
                NameError::InvalidChar {
                    kind: NameKind::Session,
                    found: 'é',
                    position: 0,
                },
            ),
            (
                "_sys",
                NameError::BadStart {
                    kind: NameKind::Session,
                    found: '_',
                },
            ),
            (
                "-x",
                NameError::BadStart {
                    kind: NameKind::Session,
                    found: '-',
                },
            ),
            (
                &"y".repeat(MAX_NAME_LEN + 1),
                NameError::TooLong {
                    kind: NameKind::Session,
                    len: MAX_NAME_LEN + 1,
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(SessionId::new(*input).as_ref(), Err(want), "{input:?}");
        }
    }
}
