// Times Baileys 7.0.0-rc14 on the same workloads as wafleet's criterion benches, so the two
// are measured in one run (scripts/bench-wire.sh drives both).
//
//   node bench.mjs corpus CORPUS.json   write a corpus of random nodes (wafleet JSON form)
//   node bench.mjs codec CORPUS.json    encode + decode throughput of Baileys' codec
//   node bench.mjs transport            Baileys' transport AES-256-GCM (noise-handler's cipher)
//
// Prints one JSON line of results.
import { readFileSync, writeFileSync } from 'node:fs';
import { encodeBinaryNode } from 'baileys/lib/WABinary/encode.js';
import { decodeDecompressedBinaryNode } from 'baileys/lib/WABinary/decode.js';
import * as constants from 'baileys/lib/WABinary/constants.js';
import { aesEncryptGCM, aesDecryptGCM } from 'baileys/lib/Utils/crypto.js';
import { fromJson, randomNodes } from './nodes.mjs';

const [mode, file] = process.argv.slice(2);

// Runs `fn` repeatedly for at least `ms` milliseconds; returns iterations per second.
function rate(fn, ms = 3000) {
    for (let i = 0; i < 3; i++) fn(); // warm-up (JIT)
    let n = 0;
    const start = process.hrtime.bigint();
    let elapsed = 0;
    while (elapsed < ms) {
        fn();
        n++;
        elapsed = Number(process.hrtime.bigint() - start) / 1e6;
    }
    return (n * 1000) / elapsed;
}

if (mode === 'corpus') {
    writeFileSync(file, JSON.stringify(randomNodes(20261123, 500)));
} else if (mode === 'codec') {
    const nodes = JSON.parse(readFileSync(file, 'utf8')).map(fromJson);
    const encoded = nodes.map((n) => encodeBinaryNode(n));
    const bytes = encoded.reduce((a, b) => a + b.length, 0);
    // Baileys' fastest decode path: the synchronous decoder on the body after the flag byte.
    const bodies = encoded.map((b) => b.subarray(1));
    const enc = rate(() => { for (const n of nodes) encodeBinaryNode(n); });
    const dec = rate(() => { for (const b of bodies) decodeDecompressedBinaryNode(b, constants); });
    const both = rate(() => { for (const n of nodes) decodeDecompressedBinaryNode(encodeBinaryNode(n).subarray(1), constants); });
    console.log(JSON.stringify({
        peer: 'baileys@7.0.0-rc14', nodes: nodes.length, bytes,
        encode_corpus_per_s: enc, decode_corpus_per_s: dec, encode_decode_corpus_per_s: both,
        encode_decode_mib_per_s: (both * bytes) / 1048576,
    }));
} else if (mode === 'transport') {
    const out = {};
    for (const size of [64, 1024, 65536]) {
        const key = Buffer.alloc(32, 7);
        const plain = Buffer.alloc(size, 1);
        const iv = new Uint8Array(12);
        let c = 0;
        const pairs = rate(() => {
            c++;
            iv[8] = (c >>> 24) & 0xff; iv[9] = (c >>> 16) & 0xff; iv[10] = (c >>> 8) & 0xff; iv[11] = c & 0xff;
            const ct = aesEncryptGCM(plain, key, iv, Buffer.alloc(0));
            aesDecryptGCM(ct, key, iv, Buffer.alloc(0));
        }, 2000);
        out[`encrypt_decrypt_pairs_per_s_${size}`] = pairs;
        out[`mib_per_s_${size}`] = (pairs * size) / 1048576;
    }
    console.log(JSON.stringify({ peer: 'baileys@7.0.0-rc14 (node crypto)', ...out }));
} else {
    console.error('usage: node bench.mjs corpus|codec|transport [FILE]');
    process.exit(2);
}
