// Stock Baileys (makeWASocket) as a chat client of a WhatsApp server at a given URL: the
// wafleet simulator in the interop tests. Links like link.mjs (the test scans the QR with a
// simulated phone), then sends what it is told on stdin and reports what it receives.
//
//   node chat.mjs --url ws://127.0.0.1:PORT/ws/chat --root <hex root public key> [--name N]
//                 [--auth DIR]
//
// With --auth, the auth state lives in DIR and is kept (run again with the same DIR to log
// in again without linking); otherwise in a temp dir removed at exit.
//
// With --name, once connected it takes N as its push name (what WhatsApp's app-state sync
// would give it; Baileys then announces it with <presence name>) and goes online
// (sendPresenceUpdate('available')), so its delivery receipts are active ones: an offline
// client sends type=inactive receipts, which reach the sender but show no delivery there.
//
// Nothing in Baileys is patched except WA_CERT_DETAILS.PUBLIC_KEY (the pinned root of the
// server's certificate chain), set to the simulator's root. Config differs from the defaults
// only in `shouldSyncHistoryMessage: () => false`: a simulated phone sends no history sync,
// and Baileys would otherwise hold every event back for 20 s waiting for one on its first
// connection. Auth state lives in a temp dir.
//
// stdin, one JSON object per line:
//   {"cmd":"send","to":"<jid>","text":"…"}      -> {"event":"sent","id":"…","to":"<jid>"}
//   {"cmd":"read","to":"<jid>","id":"…"}         -> {"event":"read_sent","id":"…"}
// stdout, one JSON object per line (besides link.mjs' qr/paired/close/open/error):
//   {"event":"online","name":"N"}                                           (with --name)
//   {"event":"message","id","remoteJid","fromMe","text","pushName","status","upsert","stub"}
//                                                                            (messages.upsert)
//   {"event":"update","id","remoteJid","fromMe","status"}                    (messages.update)
//   {"event":"receipt","id","remoteJid","userJid","receiptTimestamp","readTimestamp"}
//                                                                            (message-receipt.update)
// Runs until killed (or stdin closes). Baileys' own logs go to stderr (LINK_LOG=debug|info).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import makeWASocket, { Browsers, DisconnectReason, WA_CERT_DETAILS, useMultiFileAuthState } from 'baileys';
import pino from 'pino';

const args = process.argv.slice(2);
const arg = (name) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
};
const url = arg('--url');
const root = arg('--root');
const name = arg('--name');
const authDir = arg('--auth');
if (!url || !root || !/^[0-9a-f]{64}$/.test(root)) {
    console.error('usage: node chat.mjs --url ws://… --root <64 hex>');
    process.exit(2);
}

const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n');

// The one patch: trust the simulator's root instead of WhatsApp's.
WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(root, 'hex');

const dir = authDir ?? mkdtempSync(join(tmpdir(), 'wafleet-baileys-chat-'));
if (!authDir) {
    process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
}
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));

const logger = pino({ level: process.env.LINK_LOG || 'silent' }, pino.destination(2));
const { state, saveCreds } = await useMultiFileAuthState(dir);
let sock;

const textOf = (message) =>
    message?.conversation ?? message?.extendedTextMessage?.text ?? null;

function connect() {
    sock = makeWASocket({
        waWebSocketUrl: url,
        auth: state,
        logger,
        browser: Browsers.ubuntu('Chrome'),
        markOnlineOnConnect: false,
        syncFullHistory: false,
        shouldSyncHistoryMessage: () => false,
    });
    sock.ev.on('creds.update', async (update) => {
        if (update.me?.id && update.platform !== undefined) {
            emit({ event: 'paired', me: update.me.id });
        }
        await saveCreds();
    });
    sock.ev.on('connection.update', (update) => {
        const { connection, lastDisconnect, qr } = update;
        if (qr) {
            emit({ event: 'qr', qr });
        }
        if (connection === 'open') {
            emit({ event: 'open', me: sock.user?.id ?? null, lid: sock.user?.lid ?? null });
            if (name) {
                sock.ev.emit('creds.update', { me: { ...state.creds.me, name } });
                sock.sendPresenceUpdate('available')
                    .then(() => emit({ event: 'online', name }))
                    .catch((e) => emit({ event: 'error', message: 'presence: ' + e.message }));
            }
        }
        if (connection === 'close') {
            const code = lastDisconnect?.error?.output?.statusCode ?? null;
            emit({ event: 'close', code, reason: lastDisconnect?.error?.message ?? null });
            if (code === DisconnectReason.restartRequired) {
                connect();
            }
        }
    });
    sock.ev.on('messages.upsert', ({ messages, type }) => {
        for (const m of messages) {
            emit({
                event: 'message',
                id: m.key.id,
                remoteJid: m.key.remoteJid,
                fromMe: !!m.key.fromMe,
                text: textOf(m.message),
                pushName: m.pushName ?? null,
                // Baileys folds a receipt that arrives while the upsert is still buffered
                // into the message's status.
                status: m.status ?? null,
                upsert: type,
                stub: m.messageStubType ? [m.messageStubType, ...(m.messageStubParameters ?? [])] : null,
            });
        }
    });
    sock.ev.on('messages.update', (updates) => {
        for (const { key, update } of updates) {
            if (update.status === undefined) continue;
            emit({ event: 'update', id: key.id, remoteJid: key.remoteJid, fromMe: !!key.fromMe, status: update.status });
        }
    });
    sock.ev.on('message-receipt.update', (updates) => {
        for (const { key, receipt } of updates) {
            emit({
                event: 'receipt',
                id: key.id,
                remoteJid: key.remoteJid,
                userJid: receipt.userJid,
                receiptTimestamp: receipt.receiptTimestamp ?? null,
                readTimestamp: receipt.readTimestamp ?? null,
            });
        }
    });
}

connect();

// Commands are run one at a time, in order.
let chain = Promise.resolve();
const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
    chain = chain.then(async () => {
        let cmd;
        try {
            cmd = JSON.parse(line);
        } catch {
            emit({ event: 'error', message: 'not JSON: ' + line });
            return;
        }
        try {
            if (cmd.cmd === 'send') {
                const sent = await sock.sendMessage(cmd.to, { text: cmd.text });
                emit({ event: 'sent', id: sent?.key?.id ?? null, to: cmd.to });
            } else if (cmd.cmd === 'read') {
                await sock.readMessages([{ remoteJid: cmd.to, id: cmd.id, fromMe: false }]);
                emit({ event: 'read_sent', id: cmd.id });
            } else {
                emit({ event: 'error', message: 'unknown command ' + cmd.cmd });
            }
        } catch (e) {
            emit({ event: 'error', message: `${cmd.cmd}: ${e?.message ?? e}` });
        }
    });
});
lines.on('close', () => {
    chain.then(() => process.exit(0));
});
