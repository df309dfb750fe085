// The oracle peer: Baileys 7.0.0-rc14 and libsignal-node 6.0.0 driven over JSON lines.
//
// One request per line on stdin, one reply per line on stdout, in order. Every reply is
// either {"ok": true, ...} or {"ok": false, "error": "..."}; a request never ends the
// process, so one peer serves a whole test. Bytes travel as lowercase hex.
//
// Nodes travel in wafleet's JSON form: {"tag", "attrs", "content"}, children as an array,
// bytes as "hex:…".
import { createInterface } from 'node:readline';
import { createRequire } from 'node:module';
import { encodeBinaryNode, decodeBinaryNode } from 'baileys/lib/WABinary/index.js';
import { makeNoiseHandler } from 'baileys/lib/Utils/noise-handler.js';
import { initAuthCreds } from 'baileys/lib/Utils/auth-utils.js';
import { Curve } from 'baileys/lib/Utils/crypto.js';
import { generateRegistrationNode } from 'baileys/lib/Utils/validate-connection.js';
import { DEFAULT_CONNECTION_CONFIG, NOISE_WA_HEADER, WA_CERT_DETAILS } from 'baileys/lib/Defaults/index.js';
import { proto } from 'baileys/WAProto/index.js';

const require = createRequire(import.meta.url);
// libsignal's own curve module: its verifySignature returns a boolean (Baileys' Curve.verify
// always returns true, so it proves nothing).
const curve = require('libsignal/src/curve.js');

const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (s) => Buffer.from(s, 'hex');

// ---- node JSON form <-> Baileys BinaryNode --------------------------------------------
export const fromJson = (n) => {
    const node = { tag: n.tag, attrs: { ...(n.attrs || {}) } };
    if (Array.isArray(n.content)) {
        node.content = n.content.map(fromJson);
    } else if (typeof n.content === 'string') {
        node.content = n.content.startsWith('hex:') ? unhex(n.content.slice(4)) : n.content;
    }
    return node;
};

export const toJson = (node) => {
    const out = { tag: node.tag, attrs: {} };
    for (const [k, v] of Object.entries(node.attrs || {})) out.attrs[k] = v;
    const c = node.content;
    if (Array.isArray(c)) out.content = c.map(toJson);
    else if (Buffer.isBuffer(c) || c instanceof Uint8Array) out.content = 'hex:' + hex(c);
    else if (typeof c === 'string') out.content = c;
    return out;
};

// ---- a deterministic generator of canonical random nodes --------------------------------
// "Canonical" means the tree survives an encode/decode round trip unchanged in Baileys'
// decoder: string content is only ever a token, a packable string or a JID (a raw string
// would decode as bytes), JIDs avoid forms Baileys' own decoder rewrites (device 0).
import * as C from 'baileys/lib/WABinary/constants.js';

function rng(seed) {
    let s = BigInt(seed) & 0xffffffffffffffffn;
    if (s === 0n) s = 0x9e3779b97f4a7c15n;
    return () => {
        // xorshift64*
        s ^= s >> 12n; s ^= (s << 25n) & 0xffffffffffffffffn; s ^= s >> 27n;
        return Number(((s * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn) >> 11n) / 2 ** 53;
    };
}

export function randomNodes(seed, count) {
    const r = rng(seed);
    const int = (n) => Math.floor(r() * n);
    const pick = (a) => a[int(a.length)];
    const singles = C.SINGLE_BYTE_TOKENS.filter((t) => t);
    const doubles = C.DOUBLE_BYTE_TOKENS.flat();
    const rawChars = 'abcdefghijklmnopqrstuvwxyz XYZ_/:+=,!é漢😀';
    const digits = (n) => Array.from({ length: n }, () => int(10)).join('');
    const str = (len, alphabet) => Array.from({ length: len }, () => alphabet[int(alphabet.length)]).join('');
    const nibble = () => str(1 + int(140), '0123456789.-');
    const hexs = () => str(1 + int(140), '0123456789ABCDEF');
    const raw = () => {
        const s = str(int(300) > 290 ? 300 + int(200) : int(40), rawChars);
        return /@/.test(s) ? s.replace(/@/g, 'a') : s;
    };
    const jid = () => {
        switch (int(7)) {
            case 0: return digits(5 + int(11)) + '@s.whatsapp.net';
            case 1: return digits(5 + int(11)) + ':' + (1 + int(99)) + '@s.whatsapp.net';
            case 2: return digits(15) + ':' + (1 + int(99)) + '@lid';
            case 3: return digits(15) + '@lid';
            case 4: return '1203630' + digits(11) + '@g.us';
            case 5: return pick(['status@broadcast', '@s.whatsapp.net', digits(10) + '@newsletter', digits(11) + '@c.us', digits(10) + '@bot']);
            default: return digits(12) + ':' + (1 + int(20)) + '@hosted';
        }
    };
    const attrValue = () => {
        switch (int(6)) {
            case 0: return pick(singles);
            case 1: return pick(doubles);
            case 2: return nibble();
            case 3: return hexs();
            case 4: return jid();
            default: return raw();
        }
    };
    const tag = () => (r() < 0.7 ? pick(singles) : r() < 0.5 ? pick(doubles) : 'x' + raw().replace(/[^a-z]/g, ''));
    const node = (depth) => {
        const n = { tag: tag(), attrs: {} };
        const nattrs = int(5);
        for (let i = 0; i < nattrs; i++) {
            const k = r() < 0.8 ? pick(singles) : 'k' + digits(3);
            n.attrs[k] = attrValue();
        }
        const kind = int(depth > 3 ? 4 : 6);
        if (kind === 1) n.content = 'hex:' + hex(Buffer.from(Array.from({ length: pick([0, 1, 31, 255, 256, 1000]) }, () => int(256))));
        else if (kind === 2) n.content = pick([pick(singles), nibble(), hexs(), jid()]);
        else if (kind === 3) n.content = [];
        else if (kind >= 4) n.content = Array.from({ length: int(4) + (int(20) === 0 ? 300 : 0) }, () => node(depth + 1));
        return n;
    };
    return Array.from({ length: count }, () => node(0));
}

// ---- a Noise initiator, exactly as Baileys' socket drives it ------------------------------
const silent = { level: 'silent', child() { return silent; }, trace() {}, debug() {}, info() {}, warn() {}, error() {} };
const noiseClients = new Map();
let nextClient = 1;

function noiseStart({ root }) {
    WA_CERT_DETAILS.PUBLIC_KEY = unhex(root);
    const creds = initAuthCreds();
    const ephemeral = Curve.generateKeyPair();
    const noise = makeNoiseHandler({ keyPair: ephemeral, NOISE_HEADER: NOISE_WA_HEADER, logger: silent });
    const config = { ...DEFAULT_CONNECTION_CONFIG };
    const payload = proto.ClientPayload.encode(generateRegistrationNode(creds, config)).finish();
    const hello = proto.HandshakeMessage.encode({ clientHello: { ephemeral: ephemeral.public } }).finish();
    const id = nextClient++;
    noiseClients.set(id, { noise, creds, payload, stage: 'hello' });
    return { id, out: hex(noise.encodeFrame(hello)), noise_pub: hex(creds.noiseKey.public), payload: hex(payload) };
}

async function noiseRecv({ id, bytes }) {
    const c = noiseClients.get(id);
    if (!c) throw new Error('no such noise client ' + id);
    const frames = [];
    await c.noise.decodeFrame(unhex(bytes), (f) => frames.push(f));
    const out = [];
    const nodes = [];
    for (const f of frames) {
        if (c.stage === 'hello') {
            const handshake = proto.HandshakeMessage.decode(f);
            const keyEnc = c.noise.processHandshake(handshake, c.creds.noiseKey);
            const payloadEnc = c.noise.encrypt(c.payload);
            const finish = proto.HandshakeMessage.encode({ clientFinish: { static: keyEnc, payload: payloadEnc } }).finish();
            out.push(hex(c.noise.encodeFrame(finish)));
            await c.noise.finishInit();
            c.stage = 'transport';
        } else {
            nodes.push(toJson(f));
        }
    }
    return { out, nodes, stage: c.stage };
}

function noiseSend({ id, node }) {
    const c = noiseClients.get(id);
    if (!c) throw new Error('no such noise client ' + id);
    if (c.stage !== 'transport') throw new Error('handshake not finished');
    return { out: hex(c.noise.encodeFrame(encodeBinaryNode(fromJson(node)))) };
}

// ---- dispatch ------------------------------------------------------------------------------
const ops = {
    encode: ({ node }) => ({ hex: hex(encodeBinaryNode(fromJson(node))) }),
    decode: async ({ hex: h }) => ({ node: toJson(await decodeBinaryNode(unhex(h))) }),
    encode_many: ({ nodes }) => ({ hex: nodes.map((n) => hex(encodeBinaryNode(fromJson(n)))) }),
    decode_many: async ({ hex: hs }) => {
        const nodes = [];
        for (const h of hs) {
            try { nodes.push(toJson(await decodeBinaryNode(unhex(h)))); } catch (e) { nodes.push({ error: String(e.message || e) }); }
        }
        return { nodes };
    },
    random_nodes: ({ seed, count }) => {
        const nodes = randomNodes(seed, count);
        return { nodes, hex: nodes.map((n) => hex(encodeBinaryNode(fromJson(n)))) };
    },
    xeddsa_sign_many: ({ items }) => ({
        sigs: items.map(({ priv, msg }) => hex(curve.calculateSignature(unhex(priv), unhex(msg)))),
        pubs: items.map(({ priv }) => hex(curve.getPublicFromPrivateKey(unhex(priv)).slice(1))),
    }),
    xeddsa_verify_many: ({ items }) => ({
        results: items.map(({ pub, msg, sig }) => curve.verifySignature(Buffer.concat([Buffer.from([5]), unhex(pub)]), unhex(msg), unhex(sig), false) === true),
    }),
    tokens: () => ({ single: C.SINGLE_BYTE_TOKENS, double: C.DOUBLE_BYTE_TOKENS }),
    noise_start: noiseStart,
    noise_recv: noiseRecv,
    noise_send: noiseSend,
};

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of rl) {
    if (!line.trim()) continue;
    let reply;
    try {
        const req = JSON.parse(line);
        const op = ops[req.op];
        if (!op) throw new Error('unknown op ' + req.op);
        reply = { ok: true, ...(await op(req)) };
    } catch (e) {
        reply = { ok: false, error: String((e && e.message) || e) };
    }
    process.stdout.write(JSON.stringify(reply) + '\n');
}
