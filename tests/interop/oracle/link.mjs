// Links stock Baileys (makeWASocket) to a WhatsApp server at a given URL: the wafleet
// simulator in the interop tests.
//
//   node link.mjs --url ws://127.0.0.1:PORT/ws/chat --root <hex root public key>
//                 [--pairing-phone <E.164 digits>]
//
// Nothing in Baileys is patched except WA_CERT_DETAILS.PUBLIC_KEY (the pinned root of the
// server's certificate chain), set to the simulator's root. Auth state lives in a temp dir.
//
// Prints one JSON object per line on stdout:
//   {"event":"qr","qr":"https://wa.me/settings/linked_devices#…"}
//   {"event":"pairing_code","code":"ABCD1234"}        (with --pairing-phone, after the first QR)
//   {"event":"paired","me":"<jid>"}                    (creds.me after pair-success)
//   {"event":"close","code":515,"reason":"…"}          (reconnects itself after 515)
//   {"event":"open","me":"<jid>","lid":"<lid>"}
//   {"event":"error","message":"…"}
// Runs until killed (or stdin closes). Baileys' own logs go to stderr (LINK_LOG=debug|info).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import makeWASocket, { Browsers, DisconnectReason, WA_CERT_DETAILS, useMultiFileAuthState } from 'baileys';
import pino from 'pino';

const args = process.argv.slice(2);
const arg = (name) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
};
const url = arg('--url');
const root = arg('--root');
const pairingPhone = arg('--pairing-phone');
if (!url || !root || !/^[0-9a-f]{64}$/.test(root)) {
    console.error('usage: node link.mjs --url ws://… --root <64 hex> [--pairing-phone digits]');
    process.exit(2);
}

const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n');

// The one patch: trust the simulator's root instead of WhatsApp's.
WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(root, 'hex');

const dir = mkdtempSync(join(tmpdir(), 'wafleet-baileys-'));
const cleanup = () => rmSync(dir, { recursive: true, force: true });
process.on('exit', cleanup);
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();

const logger = pino({ level: process.env.LINK_LOG || 'silent' }, pino.destination(2));
const { state, saveCreds } = await useMultiFileAuthState(dir);
let codeRequested = false;

function connect() {
    const sock = makeWASocket({
        waWebSocketUrl: url,
        auth: state,
        logger,
        browser: Browsers.ubuntu('Chrome'),
        markOnlineOnConnect: false,
        syncFullHistory: false,
    });
    sock.ev.on('creds.update', async (update) => {
        if (update.me?.id && update.platform !== undefined) {
            emit({ event: 'paired', me: update.me.id });
        }
        await saveCreds();
    });
    sock.ev.on('connection.update', async (update) => {
        const { connection, lastDisconnect, qr } = update;
        if (qr) {
            emit({ event: 'qr', qr });
            if (pairingPhone && !codeRequested) {
                codeRequested = true;
                try {
                    const code = await sock.requestPairingCode(pairingPhone);
                    emit({ event: 'pairing_code', code });
                } catch (e) {
                    emit({ event: 'error', message: 'requestPairingCode: ' + e.message });
                }
            }
        }
        if (connection === 'open') {
            emit({ event: 'open', me: sock.user?.id ?? null, lid: sock.user?.lid ?? null });
        }
        if (connection === 'close') {
            const code = lastDisconnect?.error?.output?.statusCode ?? null;
            emit({ event: 'close', code, reason: lastDisconnect?.error?.message ?? null });
            if (code === DisconnectReason.restartRequired) {
                connect();
            }
        }
    });
}

connect();
