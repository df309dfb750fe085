#!/usr/bin/env bash
# Signal benchmarks, wafleet-signal beside libsignal-node 6.0.0 (1:1) and Baileys' sender
# keys on libsignal-node's curve (group) in the same run, same workload: encrypt+decrypt
# pairs of a 64-byte plaintext on an established session, one core (both pinned with
# taskset to the same core). Prints a Markdown table for docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-oracle.sh
core=${BENCH_CORE:-0}
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo bench -q -p wafleet-signal --bench signal --no-run >/dev/null 2>&1
rm -rf "$target/criterion/signal"
taskset -c "$core" cargo bench -q -p wafleet-signal --bench signal -- --noplot >"$work/criterion.txt"
printf '%s\n' '{"op":"time","n":20000,"size":64}' '{"op":"time","n":400,"size":64,"group":true}' \
  | (cd tests/interop/oracle && taskset -c "$core" node signal-peer.mjs) >"$work/node.jsonl"
python3 - "$target/criterion" "$work/node.jsonl" <<'PY'
import json, sys, os
crit = sys.argv[1]
one, group = [json.loads(l)["ok"] for l in open(sys.argv[2])]
def per_s(name):
    with open(os.path.join(crit, "signal", name, "new", "estimates.json")) as f:
        return 1e9 / json.load(f)["mean"]["point_estimate"]
print("| workload (64 B, one core) | wafleet-signal | libsignal-node 6.0.0 / Baileys | ratio |")
print("|---|---|---|---|")
for label, name, node in [("1:1 encrypt+decrypt (pairs/s)", "1to1_encrypt_decrypt_pair_64B", one),
                          ("group encrypt+decrypt (pairs/s)", "group_encrypt_decrypt_pair_64B", group)]:
    ours = per_s(name)
    print(f"| {label} | {ours:,.0f} | {node['perSec']:,.0f} | {ours/node['perSec']:,.1f}× |")
block_ns = 1e9 / per_s("sha256_block_dependent")
print()
print(f"One dependent SHA-256 block compression: {block_ns:.1f} ns; 100x libsignal-node on 1:1 "
      f"would be {1e9 / (100 * one['perSec']):.0f} ns per pair.")
PY
