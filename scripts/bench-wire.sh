#!/usr/bin/env bash
# Wire-core benchmarks, wafleet beside Baileys 7.0.0-rc14 in the same run, on the same corpus:
# node encode/decode (criterion vs Baileys' encodeBinaryNode / decodeDecompressedBinaryNode)
# and the transport cipher (vs the AES-256-GCM calls of Baileys' noise handler).
# Prints a Markdown table for docs/BENCHMARKS.md. Pin to one core with `taskset -c 0` if
# the machine is busy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-oracle.sh
oracle=tests/interop/oracle
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
corpus="$work/corpus.json"
# Corpus: "random" (default; 500 random nodes from the oracle's generator, some with large
# byte contents and wide lists) or "stanzas" (the 11 Baileys byte vectors: small, typical
# stanzas such as ping, receipts, message headers).
case "${1:-random}" in
  random) (cd "$oracle" && node bench.mjs corpus "$corpus") ;;
  stanzas) python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))["binary_nodes"]; json.dump([e["node"] for e in v.values()], open(sys.argv[2],"w"))' \
             crates/protocol/tests/data/baileys-vectors.json "$corpus" ;;
  *) echo "usage: scripts/bench-wire.sh [random|stanzas]" >&2; exit 2 ;;
esac

target=${CARGO_TARGET_DIR:-target}
rm -rf "$target/criterion/codec" "$target/criterion/transport"
WAFLEET_CODEC_CORPUS="$corpus" cargo bench -q -p wafleet-protocol --bench wire -- --noplot >"$work/criterion.txt"
(cd "$oracle" && node bench.mjs codec "$corpus") >"$work/baileys-codec.json"
(cd "$oracle" && node bench.mjs transport) >"$work/baileys-transport.json"
grep '^corpus:' "$work/criterion.txt" || true

python3 - "$target/criterion" "$work/baileys-codec.json" "$work/baileys-transport.json" <<'PY'
import json, sys, os
crit, bc, bt = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
def mean_ns(group, name):
    with open(os.path.join(crit, group, name, "new", "estimates.json")) as f:
        return json.load(f)["mean"]["point_estimate"]
print(f"corpus: {bc['nodes']} nodes, {bc['bytes']} bytes (Baileys' encoding)")
print("| workload | wafleet | Baileys 7.0.0-rc14 | ratio |")
print("|---|---|---|---|")
for name, key in [("encode_corpus", "encode_corpus_per_s"), ("decode_corpus", "decode_corpus_per_s"), ("encode_decode_corpus", "encode_decode_corpus_per_s")]:
    ours = 1e9 / mean_ns("codec", name)
    theirs = bc[key]
    print(f"| codec {name} (corpus/s) | {ours:,.1f} | {theirs:,.1f} | {ours/theirs:,.1f}× |")
for size in (64, 1024, 65536):
    ours = 1e9 / mean_ns("transport", f"encrypt_decrypt_{size}")
    theirs = bt[f"encrypt_decrypt_pairs_per_s_{size}"]
    print(f"| transport encrypt+decrypt {size} B (pairs/s) | {ours:,.0f} | {theirs:,.0f} | {ours/theirs:,.2f}× |")
PY
