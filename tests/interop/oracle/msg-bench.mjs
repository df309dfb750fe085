// Messaging throughput and latency of stock Baileys 7.0.0-rc14 (makeWASocket) against the
// wafleet simulator, the peer figure beside crates/session-worker/benches/messaging.rs.
//
//   node msg-bench.mjs <ws_url> <root_key_hex> <control_url> <n> <concurrency> <phone_prefix>
//
// Two Baileys sockets A and B in this one node process, each linked (fresh in-memory auth
// state) to its own simulator account through the simulator's control API, as
// link-bench.mjs does. A sends texts to B with `concurrency` sendMessage calls in flight;
// B's `messages.upsert` gives the receive instant of each text. Runs: a warm-up of 20
// (not printed), a burst of n, then n paced at 1,000 msg/s; then, with MSG_BENCH_SESSIONS
// set, that many sockets in this process as pairs (A_p sends to B_p): a burst of n in all
// (8 in flight per pair) and n paced at 1,000 msg/s in all. Prints one JSON line per run:
// {"label", "n", "wall_ms" (first send -> last upsert), "msg_per_s", "cpu_ms" (this
// process' user + system CPU time during the run), "latencies_ms" (per message,
// sendMessage call -> B's upsert)}.
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

// The run in progress: texts are `<tag>.<pair> <index>`; received[pair] maps index -> time.
let current = null; // { tag, received: Map<pair, Map<index, time>>, total, expected, done }
function onText(pair, text, at) {
  const head = `${current?.tag}.${pair} `;
  if (!current || !text.startsWith(head)) return;
  const i = Number(text.slice(head.length));
  const got = current.received.get(pair);
  if (!got.has(i)) {
    got.set(i, at);
    current.total += 1;
    if (current.total === current.expected) current.done();
  }
}

// `count` pairs: A of pair p sends to B of pair p.
async function pairs(count, first) {
  const out = [];
  for (let p = 0; p < count; p++) {
    const phoneA = `${prefix}${String(first + 2 * p).padStart(7, '0')}`;
    const phoneB = `${prefix}${String(first + 2 * p + 1).padStart(7, '0')}`;
    const a = await linked(phoneA, () => {});
    await linked(phoneB, (text, at) => onText(p, text, at));
    out.push({ a, to: `${phoneB}@s.whatsapp.net` });
  }
  return out;
}

// In every pair A sends n texts to B, `concurrency` in flight per pair, or each started at
// its slot of `rate` msg/s per pair; the pairs' slots interleave, so that all together the
// messages are evenly spaced at pairs × rate msg/s.
async function run(label, socks, n, concurrency, rate) {
  const sent = socks.map(() => new Array(n));
  let finished;
  const expected = n * socks.length;
  const all = new Promise((resolve, reject) => {
    finished = resolve;
    setTimeout(() => reject(new Error(`${label}: ${current.total} of ${expected} arrived in time`)), RUN_TIMEOUT_MS).unref();
  });
  const tag = label.replace(/ /g, '_');
  current = { tag, received: new Map(socks.map((_, p) => [p, new Map()])), total: 0, expected, done: () => finished() };
  const cpu = process.cpuUsage();
  const start = performance.now();
  async function worker(p) {
    const { a, to } = socks[p];
    while (next[p] < n) {
      const i = next[p]++;
      if (rate) {
        const wait = start + ((i + p / socks.length) * 1000) / rate - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
      sent[p][i] = performance.now();
      await a.sendMessage(to, { text: `${tag}.${p} ${i}` });
    }
  }
  const next = socks.map(() => 0);
  await Promise.all(socks.flatMap((_, p) => Array.from({ length: concurrency }, () => worker(p))));
  await all;
  let last = 0;
  const latencies = [];
  socks.forEach((_, p) => {
    const got = current.received.get(p);
    for (let i = 0; i < n; i++) {
      const r = got.get(i);
      last = Math.max(last, r);
      latencies.push(r - sent[p][i]);
    }
  });
  const wall = last - start;
  const used = process.cpuUsage(cpu);
  const cpu_ms = (used.user + used.system) / 1000;
  return { label, n: expected, pairs: socks.length, concurrency, wall_ms: wall, msg_per_s: (expected * 1000) / wall, cpu_ms, latencies_ms: latencies };
}

const n = Number(nArg);
const concurrency = Number(concurrencyArg);
// MSG_BENCH_SESSIONS (default 0: none) sessions in this process, as many pairs as halves.
const sessions = Number(process.env.MSG_BENCH_SESSIONS ?? 0);
try {
  const one = await pairs(1, 1);
  await run('warmup', one, 20, 1, null);
  console.log(JSON.stringify(await run('burst', one, n, concurrency, null)));
  console.log(JSON.stringify(await run('paced', one, n, 64, 1000)));
  if (sessions >= 2) {
    const many = await pairs(Math.floor(sessions / 2), 3);
    const count = many.length;
    await run('fleet warmup', many, 2, 1, null);
    console.log(JSON.stringify(await run('fleet burst', many, Math.floor(n / count), 8, null)));
    console.log(JSON.stringify(await run('fleet paced', many, Math.floor(n / count), 8, 1000 / count)));
  }
} catch (e) {
  console.error(e?.message ?? e);
  process.exit(1);
}
process.exit(0);
