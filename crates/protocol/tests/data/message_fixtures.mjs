import { createHash } from 'crypto';
const { proto } = await import('../../../../tests/interop/oracle/node_modules/baileys/WAProto/index.js');
const enc = (m) => Buffer.from(proto.Message.encode(proto.Message.fromObject(m)).finish()).toString('hex');
const key = { remoteJid: '15550001111@s.whatsapp.net', fromMe: false, id: '3EB0AABBCCDDEEFF001122', participant: '15550002222@s.whatsapp.net' };
const b = (n, v) => Buffer.alloc(n, v);
const out = {
  conversation: enc({ conversation: 'hello 👋' }),
  extended_reply: enc({ extendedTextMessage: { text: 'a reply', contextInfo: { stanzaId: 'ABC123', participant: '15550002222@s.whatsapp.net', quotedMessage: { conversation: 'original' } } } }),
  reaction: enc({ reactionMessage: { key, text: '👍', senderTimestampMs: 1700000000000 } }),
  revoke: enc({ protocolMessage: { key, type: 0 } }),
  edit: enc({ protocolMessage: { key, type: 14, editedMessage: { conversation: 'fixed typo' }, timestampMs: 1700000000001 } }),
  edit_wrapped: enc({ editedMessage: { message: { protocolMessage: { key, type: 14, editedMessage: { conversation: 'fixed typo' } } } } }),
  image: enc({ imageMessage: { url: 'https://mmg.whatsapp.net/x', mimetype: 'image/jpeg', caption: 'a cat', fileSha256: b(32, 1), fileLength: 12345, height: 10, width: 20, mediaKey: b(32, 2), fileEncSha256: b(32, 3), directPath: '/v/t62/x', mediaKeyTimestamp: 1700000000 } }),
  video: enc({ videoMessage: { mimetype: 'video/mp4', fileSha256: b(32, 4), fileLength: 99999, seconds: 7, mediaKey: b(32, 5), caption: 'clip', fileEncSha256: b(32, 6), directPath: '/v/video' } }),
  audio_ptt: enc({ audioMessage: { mimetype: 'audio/ogg; codecs=opus', fileSha256: b(32, 7), fileLength: 4242, seconds: 3, ptt: true, mediaKey: b(32, 8), fileEncSha256: b(32, 9), directPath: '/v/audio' } }),
  document: enc({ documentMessage: { mimetype: 'application/pdf', title: 'doc', fileSha256: b(32, 10), fileLength: 5000000000, mediaKey: b(32, 11), fileName: 'report.pdf', fileEncSha256: b(32, 12), directPath: '/v/doc', caption: 'the report' } }),
  sticker: enc({ stickerMessage: { url: 'https://mmg.whatsapp.net/s', fileSha256: b(32, 13), fileEncSha256: b(32, 14), mediaKey: b(32, 15), mimetype: 'image/webp', directPath: '/v/sticker', fileLength: 777 } }),
  location: enc({ locationMessage: { degreesLatitude: 52.52, degreesLongitude: -13.405, name: 'Somewhere', address: '1 Road' } }),
  contact: enc({ contactMessage: { displayName: 'Alice', vcard: 'BEGIN:VCARD\nVERSION:3.0\nFN:Alice\nEND:VCARD' } }),
  skdm_with_text: enc({ senderKeyDistributionMessage: { groupId: '120363000000000000@g.us', axolotlSenderKeyDistributionMessage: b(40, 0x33) }, conversation: 'group hi' }),
  skdm_only: enc({ senderKeyDistributionMessage: { groupId: '120363000000000000@g.us', axolotlSenderKeyDistributionMessage: b(40, 0x33) }, messageContextInfo: { messageSecret: b(32, 0x44) } }),
  device_sent: enc({ deviceSentMessage: { destinationJid: '15550003333@s.whatsapp.net', message: { conversation: 'sent from phone' }, phash: '2:abcdef' }, messageContextInfo: { messageSecret: b(32, 0x55) } }),
  ephemeral: enc({ ephemeralMessage: { message: { extendedTextMessage: { text: 'disappearing' } } } }),
  poll: enc({ pollCreationMessage: { name: 'lunch?', options: [{ optionName: 'yes' }], selectableOptionsCount: 1 }, messageContextInfo: { messageSecret: b(32, 1) } }),
  history_notification: enc({ protocolMessage: { type: 5, historySyncNotification: { fileLength: 10 } } }),
  metadata_only: enc({ messageContextInfo: { messageSecret: b(32, 1) } }),
};
// message id: 8-byte BE seconds, "<user>@c.us" in 20 bytes, 16 random bytes; sha256; 3EB0 + 18 hex.
const data = Buffer.alloc(44);
data.writeBigUInt64BE(1700000000n);
data.write('15550001111', 8); data.write('@c.us', 8 + 11);
Buffer.alloc(16, 0xab).copy(data, 28);
out.message_id = '3EB0' + createHash('sha256').update(data).digest('hex').toUpperCase().substring(0, 18);
const d2 = Buffer.alloc(44); d2.writeBigUInt64BE(1n); Buffer.from([...Array(16).keys()]).copy(d2, 28);
out.message_id_anon = '3EB0' + createHash('sha256').update(d2).digest('hex').toUpperCase().substring(0, 18);
for (const [k, v] of Object.entries(out)) console.log(`${k}=${v}`);
