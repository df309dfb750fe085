//! Read-only views of the caller's stores. The crate never writes to them: state changes
//! come back as values (new records, identities to save, prekeys consumed) for the caller to
//! persist before acting.

use crate::address::ProtocolAddress;
use crate::keys::{IdentityKeyPair, PreKeyRecord, PublicKey, SignedPreKeyRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Our identity and what we trust about remote identities.
pub trait IdentityKeyStore {
    /// Our identity key pair.
    fn identity_key_pair(&self) -> &IdentityKeyPair;
    /// Our registration id.
    fn local_registration_id(&self) -> u32;
    /// The identity we have on record for `address`, if any.
    fn identity(&self, address: &ProtocolAddress) -> Option<PublicKey>;
    /// Whether `identity` is acceptable for `address`. Default: trust on first use, then
    /// only the same key (an identity change is an error the caller must resolve).
    fn is_trusted_identity(&self, address: &ProtocolAddress, identity: &PublicKey) -> bool {
        self.identity(address)
            .is_none_or(|known| known == *identity)
    }
}

/// Our prekeys.
pub trait PreKeyStore {
    /// A one-time prekey by id.
    fn pre_key(&self, id: u32) -> Option<&PreKeyRecord>;
    /// A signed prekey by id.
    fn signed_pre_key(&self, id: u32) -> Option<&SignedPreKeyRecord>;
}

/// A simple in-memory identity store (tests, tools, and callers that load state up front).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InMemoryIdentityStore {
    /// Our identity.
    pub identity: IdentityKeyPair,
    /// Our registration id.
    pub registration_id: u32,
    /// Known remote identities.
    pub known: BTreeMap<ProtocolAddress, PublicKey>,
}

impl InMemoryIdentityStore {
    /// A store with no known remote identities.
    pub fn new(identity: IdentityKeyPair, registration_id: u32) -> Self {
        Self {
            identity,
            registration_id,
            known: BTreeMap::new(),
        }
    }
    /// Records `identity` as the trusted identity for `address`.
    pub fn save(&mut self, address: &ProtocolAddress, identity: PublicKey) {
        self.known.insert(address.clone(), identity);
    }
}

impl IdentityKeyStore for InMemoryIdentityStore {
    fn identity_key_pair(&self) -> &IdentityKeyPair {
        &self.identity
    }
    fn local_registration_id(&self) -> u32 {
        self.registration_id
    }
    fn identity(&self, address: &ProtocolAddress) -> Option<PublicKey> {
        self.known.get(address).copied()
    }
}

/// A simple in-memory prekey store.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InMemoryPreKeyStore {
    /// One-time prekeys by id.
    pub pre_keys: BTreeMap<u32, PreKeyRecord>,
    /// Signed prekeys by id.
    pub signed_pre_keys: BTreeMap<u32, SignedPreKeyRecord>,
}

impl PreKeyStore for InMemoryPreKeyStore {
    fn pre_key(&self, id: u32) -> Option<&PreKeyRecord> {
        self.pre_keys.get(&id)
    }
    fn signed_pre_key(&self, id: u32) -> Option<&SignedPreKeyRecord> {
        self.signed_pre_keys.get(&id)
    }
}
