// Restart of a stock Baileys 7.0.0-rc14 gateway process against the wafleet simulator: the
// peer figure beside crates/cli/benches/fleet.rs. What today's single-process gateways do
// when their process dies: it is restarted, and Baileys logs in again from its saved auth
// state (useMultiFileAuthState, one directory per session).
//
//   node restart-bench.mjs link  <ws_url> <root_key_hex> <auth_dir> <sessions>
//   node restart-bench.mjs login <ws_url> <root_key_hex> <auth_dir> <sessions>
//
// link: for each session in turn (one at a time), a fresh auth state in <auth_dir>/s<i>;
// start -> first `qr` is printed as {"event":"qr","session":i,"qr":…,"to_qr_ms":…} and the
// caller (the bench) scans it with the simulator's phone; after the 515 restart Baileys logs
// in and {"event":"open","session":i} follows. When every session is open and every
// creds/keys write has finished, prints {"event":"linked"} and keeps the sockets open until
// killed (the bench sends SIGKILL).
// login: opens every session from its saved state at once; prints
// {"event":"started","ms":…} when the script runs (ms since the process started, i.e.
// node's own start-up and module loading) and {"event":"open","session":i,"ms":…} per
// session (ms since the process started). A QR in login mode is a failure: prints
// {"event":"qr",…} and the bench fails.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import makeWASocket, { DisconnectReason, useMultiFileAuthState } from 'baileys';
import { WA_CERT_DETAILS } from 'baileys/lib/Defaults/index.js';
import P from 'pino';

const [mode, wsUrl, rootHex, authDir, sessionsArg] = process.argv.slice(2);
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n');
emit({ event: 'started', ms: performance.now() });
WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(rootHex, 'hex');
const logger = P({ level: 'silent' });
const sessions = Number(sessionsArg);
let pending = Promise.resolve();

function run(index) {
  return new Promise(async (resolve, reject) => {
    const dir = join(authDir, `s${index}`);
    mkdirSync(dir, { recursive: true });
    const { state, saveCreds } = await useMultiFileAuthState(dir);
    const start = performance.now();
    let qrSeen = false;
    const open = () => {
      const sock = makeWASocket({
        auth: state,
        logger,
        waWebSocketUrl: wsUrl,
        printQRInTerminal: false,
        markOnlineOnConnect: false,
        syncFullHistory: false,
      });
      sock.ev.on('creds.update', () => {
        pending = pending.then(saveCreds);
      });
      sock.ev.on('connection.update', ({ connection, lastDisconnect, qr }) => {
        if (qr && !qrSeen) {
          qrSeen = true;
          emit({ event: 'qr', session: index, qr, to_qr_ms: performance.now() - start });
        }
        if (connection === 'open') {
          emit({ event: 'open', session: index, ms: performance.now() });
          resolve(sock);
        }
        if (connection === 'close') {
          const code = lastDisconnect?.error?.output?.statusCode;
          if (code === DisconnectReason.restartRequired) open();
          else reject(new Error(`session ${index} closed: ${code}`));
        }
      });
    };
    open();
  });
}

if (mode === 'link') {
  for (let i = 0; i < sessions; i++) await run(i);
  // Let every write Baileys started (creds, prekeys, sessions) finish before the kill.
  await new Promise((r) => setTimeout(r, 500));
  await pending;
  emit({ event: 'linked' });
  setInterval(() => {}, 1 << 30);
} else if (mode === 'login') {
  await Promise.all(Array.from({ length: sessions }, (_, i) => run(i)));
  emit({ event: 'all_open', ms: performance.now() });
  setInterval(() => {}, 1 << 30);
} else {
  console.error('usage: node restart-bench.mjs link|login <ws_url> <root_hex> <auth_dir> <sessions>');
  process.exit(2);
}
