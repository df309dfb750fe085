// Long-running libsignal-node 6.0.0 / Baileys sender-key peer for wafleet's Signal interop
// tests. Driven by JSON lines on stdin; one JSON line answer per request on stdout:
// {"ok": ...} or {"err": "..."}. All byte strings are hex. Keys in bundles are raw 32 bytes
// (WhatsApp's wire form). One process hosts any number of named peers ("peer" field).
import { createInterface } from 'node:readline';
import libsignal from 'libsignal';
import { BufferJSON } from 'baileys/lib/Utils/generics.js';
import {
  GroupCipher, GroupSessionBuilder, SenderKeyName, SenderKeyRecord, SenderKeyDistributionMessage,
} from 'baileys/lib/Signal/Group/index.js';

// libsignal-node logs to the console; keep stdout for the protocol.
for (const k of ['log', 'info', 'warn', 'error', 'debug']) {
  console[k] = (...a) => { if (process.env.SIGNAL_PEER_DEBUG) process.stderr.write(a.join(' ') + '\n'); };
}
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (s) => Buffer.from(s, 'hex');
const prefixed = (raw) => Buffer.concat([Buffer.from([5]), unhex(raw)]);
const raw = (k33) => hex(k33.subarray(1));
const { keyhelper, curve, SessionBuilder, SessionCipher, ProtocolAddress } = libsignal;

class Peer {
  constructor(name) {
    this.name = name;
    this.identity = keyhelper.generateIdentityKeyPair();
    this.registrationId = keyhelper.generateRegistrationId();
    this.signed = new Map();
    this.preKeys = new Map();
    this.sessions = new Map();
    this.trusted = new Map();
    this.senderKeys = new Map();
    this.nextPreKey = 1;
    this.rotateSignedPreKey(1);
  }
  rotateSignedPreKey(id) {
    const spk = keyhelper.generateSignedPreKey(this.identity, id);
    this.signed.set(id, spk);
    this.currentSigned = id;
  }
  // libsignal-node's storage interface.
  async getOurIdentity() { return this.identity; }
  async getOurRegistrationId() { return this.registrationId; }
  async isTrustedIdentity(id, key) {
    const user = String(id).split('.')[0];
    const known = this.trusted.get(user);
    if (!known) { this.trusted.set(user, hex(key)); return true; }
    return known === hex(key);
  }
  // Records are stored serialized (as Baileys does), so a failed operation that mutated
  // the in-memory object before throwing is not persisted.
  async loadSession(id) {
    const s = this.sessions.get(id);
    return s && libsignal.SessionRecord.deserialize(JSON.parse(s));
  }
  async storeSession(id, rec) { this.sessions.set(id, JSON.stringify(rec.serialize())); }
  async loadPreKey(id) { const k = this.preKeys.get(id); return k && k.keyPair; }
  async removePreKey(id) { this.preKeys.delete(id); }
  async loadSignedPreKey(id) { const k = this.signed.get(id); return k && k.keyPair; }
  // Baileys' sender key store.
  async loadSenderKey(name) {
    const r = this.senderKeys.get(name.toString());
    return r ? SenderKeyRecord.deserialize(Buffer.from(r)) : new SenderKeyRecord();
  }
  async storeSenderKey(name, rec) {
    this.senderKeys.set(name.toString(), JSON.stringify(rec.serialize(), BufferJSON.replacer));
  }

  bundle(withPreKey) {
    const spk = this.signed.get(this.currentSigned);
    const b = {
      registrationId: this.registrationId,
      identityKey: raw(this.identity.pubKey),
      signedPreKeyId: spk.keyId,
      signedPreKey: raw(spk.keyPair.pubKey),
      signature: hex(spk.signature),
    };
    if (withPreKey) {
      const pk = keyhelper.generatePreKey(this.nextPreKey++);
      this.preKeys.set(pk.keyId, pk);
      b.preKeyId = pk.keyId;
      b.preKey = raw(pk.keyPair.pubKey);
    }
    return b;
  }
}

const peers = new Map();
const peer = (name) => {
  const p = peers.get(name);
  if (!p) throw new Error(`unknown peer ${name}`);
  return p;
};
const addr = (a) => new ProtocolAddress(a, 0);
const skName = (group, sender) => new SenderKeyName(group, { id: sender, deviceId: 0, toString: () => `${sender}.0` });

const ops = {
  async create({ peer: name }) {
    const p = new Peer(name);
    peers.set(name, p);
    return { identityKey: raw(p.identity.pubKey), registrationId: p.registrationId };
  },
  async bundle({ peer: name, withPreKey }) { return peer(name).bundle(withPreKey !== false); },
  async rotateSignedPreKey({ peer: name, id }) { peer(name).rotateSignedPreKey(id); return {}; },
  async processBundle({ peer: name, remote, bundle: b }) {
    const p = peer(name);
    const identityKey = prefixed(b.identityKey);
    const signedPub = prefixed(b.signedPreKey);
    // libsignal-node skips this check on session setup (isInit); we make it for real.
    if (curve.verifySignature(identityKey, signedPub, unhex(b.signature)) !== true) {
      throw new Error('bad signed prekey signature');
    }
    const device = {
      registrationId: b.registrationId,
      identityKey,
      signedPreKey: { keyId: b.signedPreKeyId, publicKey: signedPub, signature: unhex(b.signature) },
    };
    if (b.preKey) device.preKey = { keyId: b.preKeyId, publicKey: prefixed(b.preKey) };
    await new SessionBuilder(p, addr(remote)).initOutgoing(device);
    return {};
  },
  async encrypt({ peer: name, remote, plaintext }) {
    const r = await new SessionCipher(peer(name), addr(remote)).encrypt(unhex(plaintext));
    return { type: r.type === 3 ? 'pkmsg' : 'msg', body: hex(Buffer.from(r.body, 'binary')) };
  },
  async decrypt({ peer: name, remote, type, body }) {
    const c = new SessionCipher(peer(name), addr(remote));
    const pt = type === 'pkmsg'
      ? await c.decryptPreKeyWhisperMessage(unhex(body))
      : await c.decryptWhisperMessage(unhex(body));
    return { plaintext: hex(pt) };
  },
  async groupCreate({ peer: name, group }) {
    const skdm = await new GroupSessionBuilder(peer(name)).create(skName(group, name));
    return { skdm: hex(skdm.serialize()) };
  },
  async groupReset({ peer: name, group }) {
    peer(name).senderKeys.delete(skName(group, name).toString());
    return {};
  },
  async groupProcess({ peer: name, group, sender, skdm }) {
    const m = new SenderKeyDistributionMessage(null, null, null, null, unhex(skdm));
    await new GroupSessionBuilder(peer(name)).process(skName(group, sender), m);
    return {};
  },
  async groupEncrypt({ peer: name, group, plaintext }) {
    const ct = await new GroupCipher(peer(name), skName(group, name)).encrypt(unhex(plaintext));
    return { skmsg: hex(ct) };
  },
  async groupDecrypt({ peer: name, group, sender, skmsg }) {
    const pt = await new GroupCipher(peer(name), skName(group, sender)).decrypt(unhex(skmsg));
    return { plaintext: hex(pt) };
  },
  async time({ n, size, group }) {
    // libsignal-node on the benchmark workload: n encrypt+decrypt pairs of `size` bytes.
    const a = new Peer('bench-a');
    const b = new Peer('bench-b');
    if (!group) {
      await new SessionBuilder(a, addr('bench-b')).initOutgoing((() => {
        const bb = b.bundle(true);
        return {
          registrationId: bb.registrationId, identityKey: prefixed(bb.identityKey),
          signedPreKey: { keyId: bb.signedPreKeyId, publicKey: prefixed(bb.signedPreKey), signature: unhex(bb.signature) },
          preKey: { keyId: bb.preKeyId, publicKey: prefixed(bb.preKey) },
        };
      })());
      const ca = new SessionCipher(a, addr('bench-b'));
      const cb = new SessionCipher(b, addr('bench-a'));
      const first = await ca.encrypt(Buffer.alloc(size, 1));
      await cb.decryptPreKeyWhisperMessage(Buffer.from(first.body, 'binary'));
      const reply = await cb.encrypt(Buffer.alloc(size, 2));
      await ca.decryptWhisperMessage(Buffer.from(reply.body, 'binary'));
      const pt = Buffer.alloc(size, 3);
      for (let i = 0; i < Math.ceil(n / 4); i++) { // JIT warm-up
        const m = await ca.encrypt(pt);
        await cb.decryptWhisperMessage(Buffer.from(m.body, 'binary'));
      }
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < n; i++) {
        const m = await ca.encrypt(pt);
        await cb.decryptWhisperMessage(Buffer.from(m.body, 'binary'));
      }
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      return { pairs: n, secs, perSec: n / secs };
    }
    const skdm = await new GroupSessionBuilder(a).create(skName('g', 'bench-a'));
    await new GroupSessionBuilder(b).process(skName('g', 'bench-a'), skdm);
    const ga = new GroupCipher(a, skName('g', 'bench-a'));
    const gb = new GroupCipher(b, skName('g', 'bench-a'));
    const pt = Buffer.alloc(size, 3);
    for (let i = 0; i < Math.ceil(n / 4); i++) await gb.decrypt(await ga.encrypt(pt)); // warm-up
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) {
      const ct = await ga.encrypt(pt);
      await gb.decrypt(ct);
    }
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    return { pairs: n, secs, perSec: n / secs };
  },
};

const rl = createInterface({ input: process.stdin });
let chain = Promise.resolve();
rl.on('line', (line) => {
  chain = chain.then(async () => {
    let req;
    try {
      req = JSON.parse(line);
      const f = ops[req.op];
      if (!f) throw new Error(`unknown op ${req.op}`);
      out({ ok: await f(req) });
    } catch (e) {
      out({ err: String(e && (e.name ? `${e.name}: ${e.message}` : e)) });
    }
  });
});
