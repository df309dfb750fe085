#![allow(dead_code)]
use rand::rngs::OsRng;
use wafleet_signal::keys::{
    generate_registration_id, IdentityKeyPair, PreKeyRecord, SignedPreKeyRecord,
};
use wafleet_signal::*;

pub struct Party {
    pub addr: ProtocolAddress,
    pub ids: InMemoryIdentityStore,
    pub prekeys: InMemoryPreKeyStore,
    pub next_pre_key: u32,
}

impl Party {
    pub fn new(name: &str) -> Self {
        let identity = IdentityKeyPair::generate(&mut OsRng);
        let mut p = Party {
            addr: ProtocolAddress::new(name, 0),
            ids: InMemoryIdentityStore::new(identity, generate_registration_id(&mut OsRng)),
            prekeys: InMemoryPreKeyStore::default(),
            next_pre_key: 1,
        };
        p.rotate_signed_pre_key(1);
        p
    }

    pub fn rotate_signed_pre_key(&mut self, id: u32) {
        let spk = SignedPreKeyRecord::generate(id, &self.ids.identity, &mut OsRng);
        self.prekeys.signed_pre_keys.insert(id, spk);
    }

    pub fn bundle(&mut self, with_one_time: bool) -> PreKeyBundle {
        let spk = self
            .prekeys
            .signed_pre_keys
            .values()
            .last()
            .unwrap()
            .clone();
        let pre_key = with_one_time.then(|| {
            let id = self.next_pre_key;
            self.next_pre_key += 1;
            let pk = PreKeyRecord::generate(id, &mut OsRng);
            self.prekeys.pre_keys.insert(id, pk.clone());
            (id, pk.key_pair.public)
        });
        PreKeyBundle {
            registration_id: self.ids.registration_id,
            identity_key: *self.ids.identity.public(),
            signed_pre_key_id: spk.id,
            signed_pre_key: spk.key_pair.public,
            signed_pre_key_signature: spk.signature,
            pre_key,
        }
    }
}

/// One side's view of a 1:1 conversation.
pub struct Peer {
    pub me: Party,
    pub them: ProtocolAddress,
    pub record: SessionRecord,
}

impl Peer {
    pub fn encrypt(&mut self, pt: &[u8]) -> CiphertextMessage {
        let (rec, msg) = encrypt(&self.record, &self.them, &self.me.ids, pt).unwrap();
        self.record = rec;
        msg
    }
    pub fn decrypt(&mut self, msg: &CiphertextMessage) -> Result<Vec<u8>, SignalError> {
        let d = decrypt(
            &self.record,
            &self.them,
            &self.me.ids,
            &self.me.prekeys,
            msg,
            &mut OsRng,
        )?;
        self.record = d.record;
        if let Some(id) = d.consumed_pre_key {
            self.me.prekeys.pre_keys.remove(&id);
        }
        if let Some(k) = d.new_identity {
            self.me.ids.save(&self.them, k);
        }
        Ok(d.plaintext)
    }
}

/// Alice (initiator) and Bob with a session set up from Bob's bundle.
pub fn pair(with_one_time: bool) -> (Peer, Peer) {
    let alice = Party::new("alice");
    let mut bob = Party::new("bob");
    let bundle = bob.bundle(with_one_time);
    let mut a = Peer {
        them: bob.addr.clone(),
        me: alice,
        record: SessionRecord::new(),
    };
    let b = Peer {
        them: a.me.addr.clone(),
        me: bob,
        record: SessionRecord::new(),
    };
    let setup = process_prekey_bundle(&a.record, &a.them, &a.me.ids, &bundle, &mut OsRng).unwrap();
    a.record = setup.record;
    a.me.ids.save(&b.me.addr, setup.new_identity.unwrap());
    (a, b)
}
