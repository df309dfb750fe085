// Messaging throughput and latency of stock Baileys 7.0.0-rc14 (makeWASocket) against the
// wafleet simulator, the peer figure beside crates/session-worker/benches/messaging.rs.
//
//   node msg-bench.mjs <ws_url> <root_key_hex> <control_url> <n> <concurrency> <phone_prefix>
//
// Two Baileys sockets A and B in this one node process, each linked (fresh in-memory auth
// state) to its own simulator account through the simulator's control API, as
// link-bench.mjs does. A sends texts to B with `concurrency` sendMessage calls in flight;
// B's `messages.upsert` gives the receive instant of each text. Runs: a warm-up of 50
// (not printed), a burst of n, then n paced at 1,000 msg/s. Prints one JSON line per run:
// {"label", "n", "wall_ms" (first send -> last upsert), "msg_per_s", "latencies_ms"
// (per message, sendMessage call -> B's upsert)}.
//
// Nothing in Baileys is patched except WA_CERT_DETAILS.PUBLIC_KEY; config differs from the
// defaults only in `shouldSyncHistoryMessage: () => false` (as chat.mjs) and
// markOnlineOnConnect/syncFullHistory false (as link-bench.mjs).
import makeWASocket, { initAuthCreds, DisconnectReason } from 'baileys';
import { WA_CERT_DETAILS } from 'baileys/lib/Defaults/index.js';
import P from 'pino';

const [wsUrl, rootHex, control, nArg, concurrencyArg, prefix] = process.argv.slice(2);
WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(rootHex, 'hex');
const logger = P({ level: 'silent' });
const RUN_TIMEOUT_MS = 180_000;

async function post(path, body) {
  const res = await fetch(control + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`${path}: ${JSON.stringify(json)}`);
  return json;
}

function memoryAuth() {
  const creds = initAuthCreds();
  const data = new Map();
  const keys = {
    get: async (type, ids) => {
      const out = {};
      for (const id of ids) {
        const v = data.get(`${type}-${id}`);
        if (v !== undefined) out[id] = v;
      }
      return out;
    },
    set: async (update) => {
      for (const type in update) {
        for (const id in update[type]) {
          const v = update[type][id];
          if (v) data.set(`${type}-${id}`, v);
          else data.delete(`${type}-${id}`);
        }
      }
    },
  };
  return { creds, keys };
}

const textOf = (message) => message?.conversation ?? message?.extendedTextMessage?.text ?? null;

// Links a socket to a new simulator account and resolves with it once `connection: open`.
function linked(phone, onText) {
  return new Promise(async (resolve, reject) => {
    await post('/phones', { phone });
    const auth = memoryAuth();
    let scannedOnce = false;
    const open = () => {
      const sock = makeWASocket({
        auth,
        logger,
        waWebSocketUrl: wsUrl,
        printQRInTerminal: false,
        markOnlineOnConnect: false,
        syncFullHistory: false,
        shouldSyncHistoryMessage: () => false,
      });
      sock.ev.on('creds.update', (u) => Object.assign(auth.creds, u));
      sock.ev.on('messages.upsert', ({ messages }) => {
        const at = performance.now();
        for (const m of messages) {
          if (m.key.fromMe) continue;
          const text = textOf(m.message);
          if (text) onText(text, at);
        }
      });
      sock.ev.on('connection.update', async ({ connection, lastDisconnect, qr }) => {
        if (qr && !scannedOnce) {
          scannedOnce = true;
          post(`/phones/${phone}/scan`, { qr }).catch(reject);
        }
        if (connection === 'open') resolve(sock);
        if (connection === 'close') {
          const code = lastDisconnect?.error?.output?.statusCode;
          if (code === DisconnectReason.restartRequired) open();
          else reject(new Error(`${phone} closed: ${code}`));
        }
      });
    };
    open();
  });
}

let current = null; // { tag, received: Map<index, time>, n, done }
function onText(text, at) {
  if (!current || !text.startsWith(current.tag + ' ')) return;
  const i = Number(text.slice(current.tag.length + 1));
  if (!current.received.has(i)) {
    current.received.set(i, at);
    if (current.received.size === current.n) current.done();
  }
}

const phoneA = `${prefix}0000001`;
const phoneB = `${prefix}0000002`;
const a = await linked(phoneA, () => {});
await linked(phoneB, onText);
const toB = `${phoneB}@s.whatsapp.net`;

async function run(label, n, concurrency, rate) {
  const sent = new Array(n);
  let finished;
  const all = new Promise((resolve, reject) => {
    finished = resolve;
    setTimeout(() => reject(new Error(`${label}: ${current.received.size} of ${n} arrived in time`)), RUN_TIMEOUT_MS).unref();
  });
  current = { tag: label, received: new Map(), n, done: () => finished() };
  const start = performance.now();
  let next = 0;
  async function worker() {
    while (next < n) {
      const i = next++;
      if (rate) {
        const wait = start + (i * 1000) / rate - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
      sent[i] = performance.now();
      await a.sendMessage(toB, { text: `${label} ${i}` });
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  await all;
  const received = current.received;
  let last = 0;
  const latencies = [];
  for (let i = 0; i < n; i++) {
    const r = received.get(i);
    last = Math.max(last, r);
    latencies.push(r - sent[i]);
  }
  const wall = last - start;
  return { label, n, concurrency, wall_ms: wall, msg_per_s: (n * 1000) / wall, latencies_ms: latencies };
}

const n = Number(nArg);
const concurrency = Number(concurrencyArg);
try {
  await run('warmup', 20, 1, null);
  console.log(JSON.stringify(await run('burst', n, concurrency, null)));
  console.log(JSON.stringify(await run('paced', n, 64, 1000)));
} catch (e) {
  console.error(e?.message ?? e);
  process.exit(1);
}
process.exit(0);
