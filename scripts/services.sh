#!/usr/bin/env bash
# The services the fleet's tests need: NATS with JetStream (scripts/nats.sh), PostgreSQL
# (scripts/pg.sh) and, when scripts/s3.sh exists, an S3 server.
#
#   scripts/services.sh up|down|env
#
# up    starts what is not running, then prints the env lines below (progress on stderr),
#       so `eval "$(bash scripts/services.sh up)"` sets them in the calling shell.
# down  stops NATS and S3 (PostgreSQL is the machine's own server and stays up).
# env   prints, without starting anything:
#         export WAFLEET_NATS_URL=nats://127.0.0.1:14222
#         export WAFLEET_NATS_SERVER=/var/tmp/wafleet/venv/bin/nats-server   (the binary, for
#                tests that start a server with their own config)
#         export WAFLEET_PG_URL=postgres://postgres@127.0.0.1:5432/wafleet_test
#         export WAFLEET_S3_ENDPOINT=http://127.0.0.1:18333     (only with scripts/s3.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

has_s3() { [ -f scripts/s3.sh ]; }

print_env() {
  echo "export WAFLEET_NATS_URL=$1"
  echo "export WAFLEET_NATS_SERVER=$(bash scripts/nats.sh bin)"
  echo "export WAFLEET_PG_URL=$2"
  if [ -n "${3:-}" ]; then
    echo "export WAFLEET_S3_ENDPOINT=$3"
  fi
}

case "${1:-}" in
  up)
    nats_url="$(bash scripts/nats.sh start | tail -n 1)"
    pg_url="$(bash scripts/pg.sh check | tail -n 1)"
    s3_endpoint=""
    if has_s3; then
      s3_endpoint="$(bash scripts/s3.sh start | tail -n 1)"
    fi
    print_env "$nats_url" "$pg_url" "$s3_endpoint"
    ;;
  down)
    bash scripts/nats.sh stop
    if has_s3; then
      bash scripts/s3.sh stop
    fi
    ;;
  env)
    s3_endpoint=""
    if has_s3; then
      s3_endpoint="$(bash scripts/s3.sh endpoint | tail -n 1)"
    fi
    print_env "$(bash scripts/nats.sh url)" "$(bash scripts/pg.sh url)" "$s3_endpoint"
    ;;
  *)
    echo "usage: $0 up|down|env" >&2
    exit 2
    ;;
esac
