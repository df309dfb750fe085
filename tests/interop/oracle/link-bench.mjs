// Link latency of stock Baileys 7.0.0-rc14 (makeWASocket) against the wafleet simulator, the
// peer figure beside crates/session-worker/benches/link_latency.rs.
//
//   node link-bench.mjs <ws_url> <root_key_hex> <control_url> <links> <concurrency> <phone_prefix>
//
// Per link: a fresh in-memory auth state; start -> first `qr`; POST the QR to the
// simulator's control API (the phone scans); then Baileys gets pair-success, the 515
// restart closes the socket, a new socket logs in, and `connection: open` follows (Baileys
// emits it after the prekey upload was acknowledged). Prints one JSON line per link:
// {"to_qr_ms":…, "scan_to_open_ms":…}.
import makeWASocket, { initAuthCreds, DisconnectReason } from 'baileys';
import { WA_CERT_DETAILS } from 'baileys/lib/Defaults/index.js';
import P from 'pino';

const [wsUrl, rootHex, control, linksArg, concurrencyArg, prefix] = process.argv.slice(2);
WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(rootHex, 'hex');
const logger = P({ level: 'silent' });

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

function link(index) {
  const phone = `${prefix}${String(index).padStart(6, '0')}`;
  return new Promise(async (resolve, reject) => {
    await post('/phones', { phone });
    const auth = memoryAuth();
    const start = performance.now();
    let toQr, scanned;
    const open = () => {
      const sock = makeWASocket({
        auth,
        logger,
        waWebSocketUrl: wsUrl,
        printQRInTerminal: false,
        markOnlineOnConnect: false,
        syncFullHistory: false,
      });
      sock.ev.on('creds.update', (u) => Object.assign(auth.creds, u));
      sock.ev.on('connection.update', async ({ connection, lastDisconnect, qr }) => {
        if (qr && toQr === undefined) {
          toQr = performance.now() - start;
          scanned = performance.now();
          post(`/phones/${phone}/scan`, { qr }).catch(reject);
        }
        if (connection === 'open') {
          const scanToOpen = performance.now() - scanned;
          sock.end(undefined);
          resolve({ to_qr_ms: toQr, scan_to_open_ms: scanToOpen });
        }
        if (connection === 'close') {
          const code = lastDisconnect?.error?.output?.statusCode;
          // After `open` resolved the promise, the close of `sock.end` changes nothing.
          if (code === DisconnectReason.restartRequired) open();
          else reject(new Error(`link ${index} closed: ${code}`));
        }
      });
    };
    open();
  });
}

const links = Number(linksArg);
const concurrency = Number(concurrencyArg);
let next = 0;
async function worker() {
  while (next < links) {
    const i = next++;
    const r = await link(i);
    console.log(JSON.stringify(r));
  }
}
await Promise.all(Array.from({ length: concurrency }, worker));
process.exit(0);
