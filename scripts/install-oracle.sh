#!/usr/bin/env bash
# Installs the pinned oracle peers (Baileys 7.0.0-rc14, libsignal-node 6.0.0, and the NATS
# JavaScript client 2.29.3 as a non-Rust reader of JSON bus events) from npm into
# tests/interop/oracle/node_modules. Idempotent: does nothing when the lock file's versions
# are already installed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir="$here/tests/interop/oracle"
command -v node >/dev/null || { echo "install-oracle: node is required (apt-get install nodejs npm)" >&2; exit 1; }
stamp="$dir/node_modules/.wafleet-lock.sha256"
want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && [ -f "$dir/node_modules/baileys/package.json" ] \
   && [ -f "$dir/node_modules/nats/package.json" ]; then
  exit 0
fi
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
v=$(node -p "require('$dir/node_modules/baileys/package.json').version")
[ "$v" = "7.0.0-rc14" ] || { echo "install-oracle: got baileys $v, want 7.0.0-rc14" >&2; exit 1; }
echo "$want" > "$stamp"
echo "install-oracle: baileys $v installed in $dir"
