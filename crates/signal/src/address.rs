//! The address of a remote Signal device.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A remote device: a user name (the JID user part) and a device id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProtocolAddress {
    /// The user part, e.g. `15551234567` or an `@lid` user.
    pub name: String,
    /// The device id (0 for the primary phone).
    pub device_id: u32,
}

impl ProtocolAddress {
    /// Creates an address.
    pub fn new(name: impl Into<String>, device_id: u32) -> Self {
        Self {
            name: name.into(),
            device_id,
        }
    }
}

impl fmt::Display for ProtocolAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.device_id)
    }
}
