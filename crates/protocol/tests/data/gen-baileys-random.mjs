// Generates random nodes, encodes and decodes them with Baileys, and prints one JSON line per
// node: {"node", "hex", "decoded"}. Deterministic (fixed LCG seed). Run from the oracle dir
// after scripts/install-oracle.sh:
//   cp crates/protocol/tests/data/gen-baileys-random.mjs tests/interop/oracle/ &&
//   (cd tests/interop/oracle && node gen-baileys-random.mjs 400) \
//     > crates/protocol/tests/data/baileys-random.jsonl
import * as b from 'baileys/lib/WABinary/index.js';
import * as C from 'baileys/lib/WABinary/constants.js';
let seed = 12345;
const rnd = (n) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return (seed >>> 8) % n; };
const pick = (a) => a[rnd(a.length)];
const toks = [...C.SINGLE_BYTE_TOKENS.slice(1), ...C.DOUBLE_BYTE_TOKENS.flat()];
const chars = (set0, n) => { const set = Array.from(set0); return Array.from({length: n}, () => set[rnd(set.length)]).join(''); };
const str = () => { switch (rnd(6)) {
  case 0: case 1: return pick(toks);
  case 2: return chars('0123456789.-', rnd(140));
  case 3: return chars('0123456789ABCDEF', rnd(140));
  case 4: return chars('abcdefxyz ,!é😀0123456789', rnd(40));
  default: return chars('0123456789abcdef', rnd(20)); } };
const user = () => pick(['', chars('0123456789', 1 + rnd(15)), 'status', chars('abc', 3)]);
const jid = () => { switch (rnd(5)) {
  case 0: return `${user()}@${pick(['s.whatsapp.net','lid','g.us','broadcast','newsletter','c.us','hosted','hosted.lid','bot','msgr','interop'])}`;
  case 1: return `${user()}:${1 + rnd(255)}@${pick(['s.whatsapp.net','lid','hosted','hosted.lid'])}`;
  case 2: return `${user()}_${2 + rnd(120)}:${1 + rnd(255)}@s.whatsapp.net`;
  default: return `${chars('0123456789', 1 + rnd(15))}@s.whatsapp.net`; } };
const node = (d) => {
  const attrs = {}; const na = rnd(5);
  for (let i = 0; i < na; i++) attrs[str().replace(/@/g,'') || 'k'] = rnd(3) ? str() : jid();
  let content;
  switch (rnd(d > 3 ? 4 : 5)) {
    case 0: break;
    case 1: content = Buffer.from(Array.from({length: pick([0, 5, 255, 256, 300])}, () => rnd(256))); break;
    case 2: content = rnd(2) ? pick(toks) : chars('0123456789.-', 1 + rnd(120)); break;
    case 3: content = jid(); break;
    default: content = Array.from({length: rnd(4)}, () => node(d + 1));
  }
  let tag = str(); if (!tag || tag.includes('@')) tag = 'x';
  return { tag, attrs, content };
};
const toJson = (n) => { const o = { tag: n.tag, attrs: n.attrs };
  if (n.content !== undefined) o.content = Array.isArray(n.content) ? n.content.map(toJson) : Buffer.isBuffer(n.content) ? 'hex:' + n.content.toString('hex') : n.content;
  return o; };
const count = Number(process.argv[2] || 400);
for (let i = 0; i < count; i++) {
  const n = node(0);
  const hex = b.encodeBinaryNode(n).toString('hex');
  const decoded = b.decodeDecompressedBinaryNode(Buffer.from(hex, 'hex').subarray(1), C);
  console.log(JSON.stringify({ node: toJson(n), hex, decoded: toJson(decoded) }));
}
