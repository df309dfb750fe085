//! Drives `oracle/signal-peer.mjs` (libsignal-node 6.0.0 + Baileys' sender keys), one
//! long-running node process per test, over JSON lines.
#![allow(dead_code)]

use rand::rngs::OsRng;
use serde_json::{json, Value};
use std::path::PathBuf;
use wafleet_interop::Peer;
use wafleet_signal::keys::{
    generate_registration_id, IdentityKeyPair, PreKeyRecord, SignedPreKeyRecord,
};
use wafleet_signal::*;

/// `oracle/signal-peer.mjs`, whose replies are `{"ok": value}` or `{"err": text}`.
pub struct Oracle(Peer);

impl Oracle {
    pub fn spawn() -> Self {
        let peer = Peer::start_script("signal-peer.mjs");
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let v: Value = serde_json::from_slice(
            &std::fs::read(manifest.join("oracle/node_modules/libsignal/package.json"))
                .expect("libsignal package.json"),
        )
        .expect("package.json is JSON");
        assert_eq!(
            v["version"], "6.0.0",
            "signal interop: want libsignal-node 6.0.0"
        );
        Oracle(peer)
    }

    /// Sends one request; `Ok(result)` or `Err(error string from node)`.
    pub fn call(&mut self, req: Value) -> Result<Value, String> {
        let v = self.0.request(&req);
        match (v.get("ok"), v.get("err")) {
            (Some(ok), _) => Ok(ok.clone()),
            (_, Some(e)) => Err(e.as_str().unwrap_or_default().to_string()),
            _ => panic!("bad oracle reply {v}"),
        }
    }

    pub fn ok(&mut self, req: Value) -> Value {
        let r = self.call(req.clone());
        r.unwrap_or_else(|e| panic!("oracle {req}: {e}"))
    }
}

pub fn h(b: &[u8]) -> String {
    hex::encode(b)
}
pub use wafleet_interop::unhex as unh;

/// A wafleet device: identity, prekeys, and session records per remote.
pub struct RustPeer {
    pub name: String,
    pub ids: InMemoryIdentityStore,
    pub prekeys: InMemoryPreKeyStore,
    pub sessions: std::collections::BTreeMap<String, SessionRecord>,
    next_pre_key: u32,
    current_signed: u32,
}

impl RustPeer {
    pub fn new(name: &str) -> Self {
        let identity = IdentityKeyPair::generate(&mut OsRng);
        let mut p = RustPeer {
            name: name.into(),
            ids: InMemoryIdentityStore::new(identity, generate_registration_id(&mut OsRng)),
            prekeys: InMemoryPreKeyStore::default(),
            sessions: Default::default(),
            next_pre_key: 1,
            current_signed: 0,
        };
        p.rotate_signed_pre_key(1);
        p
    }

    pub fn rotate_signed_pre_key(&mut self, id: u32) {
        let spk = SignedPreKeyRecord::generate(id, &self.ids.identity, &mut OsRng);
        self.prekeys.signed_pre_keys.insert(id, spk);
        self.current_signed = id;
    }

    /// Our bundle in the oracle's JSON form (raw 32-byte keys, as on WhatsApp's wire).
    pub fn bundle_json(&mut self, with_pre_key: bool) -> Value {
        let spk = &self.prekeys.signed_pre_keys[&self.current_signed];
        let mut b = json!({
            "registrationId": self.ids.registration_id,
            "identityKey": h(self.ids.identity.public().raw()),
            "signedPreKeyId": spk.id,
            "signedPreKey": h(spk.key_pair.public.raw()),
            "signature": h(&spk.signature),
        });
        if with_pre_key {
            let id = self.next_pre_key;
            self.next_pre_key += 1;
            let pk = PreKeyRecord::generate(id, &mut OsRng);
            b["preKeyId"] = id.into();
            b["preKey"] = h(pk.key_pair.public.raw()).into();
            self.prekeys.pre_keys.insert(id, pk);
        }
        b
    }

    pub fn addr(remote: &str) -> ProtocolAddress {
        ProtocolAddress::new(remote, 0)
    }

    pub fn process_bundle_json(&mut self, remote: &str, b: &Value) -> Result<(), SignalError> {
        let key = |k: &str| PublicKey::from_raw(&unh(&b[k])).unwrap();
        let bundle = PreKeyBundle {
            registration_id: b["registrationId"].as_u64().unwrap() as u32,
            identity_key: key("identityKey"),
            signed_pre_key_id: b["signedPreKeyId"].as_u64().unwrap() as u32,
            signed_pre_key: key("signedPreKey"),
            signed_pre_key_signature: unh(&b["signature"]),
            pre_key: b
                .get("preKey")
                .map(|_| (b["preKeyId"].as_u64().unwrap() as u32, key("preKey"))),
        };
        let rec = self.sessions.get(remote).cloned().unwrap_or_default();
        let setup =
            process_prekey_bundle(&rec, &Self::addr(remote), &self.ids, &bundle, &mut OsRng)?;
        self.sessions.insert(remote.into(), setup.record);
        if let Some(k) = setup.new_identity {
            self.ids.save(&Self::addr(remote), k);
        }
        Ok(())
    }

    /// Encrypts (padding is the caller's business); returns (enc type, bytes).
    pub fn encrypt(&mut self, remote: &str, pt: &[u8]) -> (String, Vec<u8>) {
        let rec = self.sessions.get(remote).cloned().unwrap_or_default();
        let (rec, msg) = encrypt(&rec, &Self::addr(remote), &self.ids, pt).expect("encrypt");
        self.sessions.insert(remote.into(), rec);
        (msg.enc_type().into(), msg.serialize().to_vec())
    }

    pub fn decrypt(&mut self, remote: &str, ty: &str, body: &[u8]) -> Result<Vec<u8>, SignalError> {
        let msg = CiphertextMessage::from_wire(ty, body)?;
        let rec = self.sessions.get(remote).cloned().unwrap_or_default();
        let d = decrypt(
            &rec,
            &Self::addr(remote),
            &self.ids,
            &self.prekeys,
            &msg,
            &mut OsRng,
        )?;
        // Persist first, then act (remove the consumed prekey, trust the identity).
        self.sessions.insert(remote.into(), d.record);
        if let Some(id) = d.consumed_pre_key {
            self.prekeys.pre_keys.remove(&id);
        }
        if let Some(k) = d.new_identity {
            self.ids.save(&Self::addr(remote), k);
        }
        Ok(d.plaintext)
    }
}
