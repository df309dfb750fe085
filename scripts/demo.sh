#!/usr/bin/env bash
# The README's first command: the fleet demo on real services.
#
# Starts what is missing (NATS 2.15.1 with JetStream, SeaweedFS S3; checks PostgreSQL) with
# scripts/services.sh, then runs `wafleet demo`: the simulator, a coordinator and two
# workers; a session created over the bus, its QR drawn and scanned by a simulated phone,
# a customer's message as a bus event and a send command answered and read on the phone,
# the worker holding it killed with SIGKILL and the session back on the other worker
# without a QR, a message each way still decrypting. Extra arguments go to `wafleet demo` (e.g. --no-qr).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/services.sh up)"
cargo build -q -p wafleet --bin wafleet
exec "${CARGO_TARGET_DIR:-target}/debug/wafleet" demo "$@"
