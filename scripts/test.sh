#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test in the workspace
# (unit, integration, and the interop suite against Baileys / libsignal-node from npm).
# The bus tests run against a real NATS server that scripts/services.sh starts.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== oracle (npm: baileys 7.0.0-rc14, libsignal 6.0.0)"
bash scripts/install-oracle.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== fuzz targets compile"
if [ -f fuzz/Cargo.toml ]; then
  cargo check --quiet --manifest-path fuzz/Cargo.toml --bins
fi

echo "== services: NATS 2.15.1 with JetStream, PostgreSQL, S3 (scripts/services.sh)"
service_env="$(bash scripts/services.sh up)"   # fails the run if a service cannot start
eval "$service_env"

echo "== cargo test --workspace --no-run (builds every test and the wafleet binary)"
cargo test --workspace --no-run --quiet

echo "== deploy: manifests, alert rules and a real worker scrape (scripts/check-deploy.sh)"
WAFLEET_BIN="${CARGO_TARGET_DIR:-target}/debug/wafleet" bash scripts/check-deploy.sh

echo "== cargo test --workspace"
cargo test --workspace --no-fail-fast
