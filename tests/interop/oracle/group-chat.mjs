// A stock Baileys companion (makeWASocket) that links to the wafleet simulator, then takes
// chat and group commands on stdin and reports what Baileys emits, for the group interop
// tests.
//
//   node group-chat.mjs --url ws://127.0.0.1:PORT/ws/chat --root <hex root public key>
//
// Nothing in Baileys is patched except WA_CERT_DETAILS.PUBLIC_KEY (the pinned root of the
// server's certificate chain), set to the simulator's root. Auth state lives in a temp dir.
//
// Commands, one JSON object per line on stdin (each answered by one event with the same
// "ref", or by {"event":"error","ref",…}):
//   {"cmd":"group_create","ref":"r1","subject":"…","participants":["<jid>",…]}
//       → {"event":"group_created","ref","id","subject","participants":[{"id","admin"}]}
//   {"cmd":"send","ref":"r2","to":"<jid>","text":"…"}
//       → {"event":"sent","ref","id","to"}
//   {"cmd":"group_participants","ref":"r3","jid":"<group jid>","action":"add|remove|promote|demote",
//    "participants":["<jid>",…]}
//       → {"event":"participants_updated","ref","result":[{"jid","status"}]}
//   {"cmd":"group_metadata","ref":"r4","jid":"<group jid>"}
//       → {"event":"group_metadata","ref","id","subject","participants":[{"id","admin"}]}
//
// Events printed as they happen, one JSON object per line on stdout:
//   {"event":"qr","qr":"…"} {"event":"paired","me"} {"event":"close","code","reason"}
//   {"event":"open","me","lid"}
//   {"event":"message","upsert":"notify|append","chat","id","from_me","participant","text","stub"}
//   {"event":"groups_upsert","groups":[{"id","subject","participants":[{"id","admin"}]}]}
//   {"event":"group_participants","id","author","action","participants":["<jid>",…]}
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
if (!url || !root || !/^[0-9a-f]{64}$/.test(root)) {
    console.error('usage: node group-chat.mjs --url ws://… --root <64 hex>');
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

const logger = pino({ level: process.env.LINK_LOG || 'silent' }, pino.destination(2));
const { state, saveCreds } = await useMultiFileAuthState(dir);
let sock;

const participantsOf = (meta) => (meta.participants || []).map((p) => ({ id: p.id, admin: p.admin ?? null }));

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
                upsert: type,
                chat: m.key.remoteJid,
                id: m.key.id,
                from_me: !!m.key.fromMe,
                participant: m.key.participant ?? null,
                text: textOf(m.message),
                stub: m.messageStubType ?? null,
            });
        }
    });
    sock.ev.on('groups.upsert', (groups) => {
        emit({
            event: 'groups_upsert',
            groups: groups.map((g) => ({ id: g.id, subject: g.subject, participants: participantsOf(g) })),
        });
    });
    sock.ev.on('group-participants.update', (update) => {
        emit({
            event: 'group_participants',
            id: update.id,
            author: update.author ?? null,
            action: update.action,
            participants: (update.participants || []).map((p) => (typeof p === 'string' ? p : p.id)),
        });
    });
}

async function run(cmd) {
    switch (cmd.cmd) {
        case 'group_create': {
            const meta = await sock.groupCreate(cmd.subject, cmd.participants);
            return { event: 'group_created', id: meta.id, subject: meta.subject, participants: participantsOf(meta) };
        }
        case 'send': {
            const sent = await sock.sendMessage(cmd.to, { text: cmd.text });
            return { event: 'sent', id: sent?.key?.id ?? null, to: cmd.to };
        }
        case 'group_participants': {
            const result = await sock.groupParticipantsUpdate(cmd.jid, cmd.participants, cmd.action);
            return { event: 'participants_updated', result: result.map((r) => ({ jid: r.jid, status: r.status })) };
        }
        case 'group_metadata': {
            const meta = await sock.groupMetadata(cmd.jid);
            return { event: 'group_metadata', id: meta.id, subject: meta.subject, participants: participantsOf(meta) };
        }
        default:
            throw new Error(`unknown command ${cmd.cmd}`);
    }
}

connect();

// Commands run one at a time, in order.
let queue = Promise.resolve();
const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
    if (!line.trim()) {
        return;
    }
    queue = queue.then(async () => {
        let cmd;
        try {
            cmd = JSON.parse(line);
            emit({ ...(await run(cmd)), ref: cmd.ref ?? null });
        } catch (e) {
            emit({ event: 'error', ref: cmd?.ref ?? null, message: String(e?.message ?? e) });
        }
    });
});
lines.on('close', () => queue.then(() => process.exit(0)));
