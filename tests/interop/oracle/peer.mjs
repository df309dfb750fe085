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
import { buildPairingQRData } from 'baileys/lib/Utils/companion-reg-client-utils.js';
import * as C from 'baileys/lib/WABinary/constants.js';
import { fromJson, toJson, randomNodes } from './nodes.mjs';

const require = createRequire(import.meta.url);
// libsignal's own curve module: its verifySignature returns a boolean (Baileys' Curve.verify
// always returns true, so it proves nothing).
const curve = require('libsignal/src/curve.js');

const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (s) => Buffer.from(s, 'hex');

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
    qr_text: ({ ref, noise, identity, adv, browser }) => ({
        text: buildPairingQRData(ref, unhex(noise).toString('base64'), unhex(identity).toString('base64'), unhex(adv).toString('base64'), browser),
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
