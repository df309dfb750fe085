// Nodes in wafleet's JSON form ({"tag", "attrs", "content"}, children as an array, bytes as
// "hex:…") converted to and from Baileys' BinaryNode, and a deterministic generator of
// random canonical nodes. Shared by peer.mjs and bench.mjs.
import * as C from 'baileys/lib/WABinary/constants.js';

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
    // Code points, not UTF-16 units, so no lone surrogate is ever produced.
    const rawChars = Array.from('abcdefghijklmnopqrstuvwxyz XYZ_/:+=,!é漢😀');
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
        // Packed content only up to 127 characters: longer strings are written raw and
        // would decode as bytes.
        else if (kind === 2) n.content = pick([pick(singles), nibble().slice(0, 127), hexs().slice(0, 127), jid()]);
        else if (kind === 3) n.content = [];
        else if (kind >= 4) {
            // Now and then a wide list at the root, so LIST_16 is exercised.
            const wide = depth === 0 && int(20) === 0;
            n.content = Array.from({ length: wide ? 256 + int(100) : int(4) }, () => node(wide ? 4 : depth + 1));
        }
        return n;
    };
    return Array.from({ length: count }, () => node(0));
}

