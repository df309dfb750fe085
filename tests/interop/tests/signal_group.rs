//! Differential group test: wafleet-signal sender keys against Baileys' sender-key code
//! (`lib/Signal/Group`, on libsignal-node's curve) in a 5-member group: 2 wafleet members,
//! 3 Baileys members; reordered delivery; members leave and everyone rotates sender keys.
mod signal_support;

use rand::rngs::{OsRng, StdRng};
use rand::{Rng, SeedableRng};
use serde_json::json;
use signal_support::*;
use std::collections::BTreeMap;
use wafleet_signal::*;

const GROUP: &str = "120363000000000001@g.us";

/// Per receiver: (sender, skmsg, expected plaintext) in flight.
type Queues = BTreeMap<String, Vec<(String, Vec<u8>, Vec<u8>)>>;

#[derive(Default)]
struct RustMember {
    own: SenderKeyRecord,
    others: BTreeMap<String, SenderKeyRecord>,
}

struct Group {
    o: Oracle,
    rust: BTreeMap<String, RustMember>,
    node: Vec<String>,
    members: Vec<String>,
}

impl Group {
    /// Creates a fresh sender key for `who` and returns its SKDM bytes.
    fn new_sender_key(&mut self, who: &str) -> Vec<u8> {
        if let Some(m) = self.rust.get_mut(who) {
            let (rec, skdm) = create_sender_key_distribution(&SenderKeyRecord::new(), &mut OsRng);
            m.own = rec;
            skdm.serialize().to_vec()
        } else {
            self.o
                .ok(json!({"op": "groupReset", "peer": who, "group": GROUP}));
            unh(&self
                .o
                .ok(json!({"op": "groupCreate", "peer": who, "group": GROUP}))["skdm"])
        }
    }

    fn receive_skdm(&mut self, who: &str, sender: &str, skdm: &[u8]) {
        if let Some(m) = self.rust.get_mut(who) {
            let msg = SenderKeyDistributionMessage::parse(skdm).unwrap();
            let rec = m.others.get(sender).cloned().unwrap_or_default();
            m.others
                .insert(sender.into(), process_sender_key_distribution(&rec, &msg));
        } else {
            self.o.ok(json!({"op": "groupProcess", "peer": who, "group": GROUP, "sender": sender, "skdm": h(skdm)}));
        }
    }

    /// Every current member rotates and distributes to every other current member.
    fn rotate_all(&mut self) {
        for sender in self.members.clone() {
            let skdm = self.new_sender_key(&sender);
            for who in self.members.clone() {
                if who != sender {
                    self.receive_skdm(&who, &sender, &skdm);
                }
            }
        }
    }

    fn encrypt(&mut self, who: &str, pt: &[u8]) -> Vec<u8> {
        if let Some(m) = self.rust.get_mut(who) {
            let (rec, msg) = group_encrypt(&m.own, pt, &mut OsRng).unwrap();
            m.own = rec;
            msg.serialize().to_vec()
        } else {
            unh(&self
                .o
                .ok(json!({"op": "groupEncrypt", "peer": who, "group": GROUP, "plaintext": h(pt)}))
                ["skmsg"])
        }
    }

    fn decrypt(&mut self, who: &str, sender: &str, skmsg: &[u8]) -> Result<Vec<u8>, String> {
        if let Some(m) = self.rust.get_mut(who) {
            let rec = m.others.get(sender).cloned().unwrap_or_default();
            let (rec, pt) = group_decrypt(&rec, skmsg).map_err(|e| e.to_string())?;
            m.others.insert(sender.into(), rec);
            Ok(pt)
        } else {
            self.o
                .call(json!({"op": "groupDecrypt", "peer": who, "group": GROUP, "sender": sender, "skmsg": h(skmsg)}))
                .map(|v| unh(&v["plaintext"]))
        }
    }

    /// `n` messages from random members; each other member receives them reordered within
    /// a window. `outsiders` must fail to decrypt every one. Returns decryptions checked.
    fn chat(&mut self, rng: &mut StdRng, n: usize, outsiders: &[&str]) -> usize {
        let mut queues: Queues = BTreeMap::new();
        let mut checked = 0;
        for i in 0..n {
            let sender = self.members[rng.gen_range(0..self.members.len())].clone();
            let mut pt = vec![0u8; rng.gen_range(1..120)];
            rng.fill(&mut pt[..]);
            pt.extend_from_slice(&(i as u32).to_be_bytes());
            let ct = self.encrypt(&sender, &pt);
            for who in &self.members {
                if *who != sender {
                    queues.entry(who.clone()).or_default().push((
                        sender.clone(),
                        ct.clone(),
                        pt.clone(),
                    ));
                }
            }
            for out in outsiders {
                assert!(
                    self.decrypt(out, &sender, &ct).is_err(),
                    "{out} left but decrypted {sender}'s message"
                );
                checked += 1;
            }
            if rng.gen_bool(0.5) {
                checked += self.flush(rng, &mut queues, 3);
            }
        }
        checked + self.flush(rng, &mut queues, 0)
    }

    fn flush(&mut self, rng: &mut StdRng, queues: &mut Queues, keep: usize) -> usize {
        let mut checked = 0;
        for (who, q) in queues.iter_mut() {
            while q.len() > keep {
                let i = rng.gen_range(0..q.len().min(4));
                let (sender, ct, pt) = q.remove(i);
                let got = self
                    .decrypt(who, &sender, &ct)
                    .unwrap_or_else(|e| panic!("{who} from {sender}: {e}"));
                assert_eq!(got, pt, "{who} from {sender}");
                checked += 1;
            }
        }
        checked
    }
}

#[test]
fn five_member_group_with_leaves_and_new_sender_keys() {
    let seed: u64 = std::env::var("SIGNAL_INTEROP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut g = Group {
        o: Oracle::spawn(),
        rust: BTreeMap::new(),
        node: vec!["n1".into(), "n2".into(), "n3".into()],
        members: vec![
            "r1".into(),
            "r2".into(),
            "n1".into(),
            "n2".into(),
            "n3".into(),
        ],
    };
    g.rust.insert("r1".into(), RustMember::default());
    g.rust.insert("r2".into(), RustMember::default());
    for n in g.node.clone() {
        g.o.ok(json!({"op": "create", "peer": n}));
    }
    g.rotate_all();
    let c1 = g.chat(&mut rng, 40, &[]);

    // A Baileys member leaves: everyone else rotates; the leaver cannot read new messages.
    g.members.retain(|m| m != "n3");
    g.rotate_all();
    let c2 = g.chat(&mut rng, 30, &["n3"]);

    // A wafleet member leaves as well.
    g.members.retain(|m| m != "r2");
    g.rotate_all();
    let c3 = g.chat(&mut rng, 30, &["n3", "r2"]);
    // The departed wafleet member's error is typed.
    let ct = g.encrypt("n1", b"after r2 left");
    let rec = g.rust["r2"].others["n1"].clone();
    assert!(matches!(
        group_decrypt(&rec, &ct),
        Err(SignalError::NoSenderKeyState(_))
    ));
    eprintln!("seed {seed}: group decryptions checked {c1} + {c2} + {c3}");
    assert!(c1 >= 160 && c2 >= 90 && c3 >= 60);
}
