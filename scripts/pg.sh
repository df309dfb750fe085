#!/usr/bin/env bash
# PostgreSQL for tests and local runs: the machine's server on 127.0.0.1:5432 (trust auth).
#
#   scripts/pg.sh check|url
#
# check  makes sure the server accepts connections (starting the cluster with pg_ctlcluster
#        when it is down and we are root; installing Debian's postgresql with trust auth on
#        loopback when none is installed and we are root), creates the database
#        wafleet_test if it is missing, and prints the URL.
# url    prints postgres://postgres@127.0.0.1:5432/wafleet_test.
set -euo pipefail

HOST=127.0.0.1
PORT=5432
DB=wafleet_test
USER_NAME=postgres
URL="postgres://$USER_NAME@$HOST:$PORT/$DB"

log() { echo "pg.sh: $*" >&2; }

is_root() { [ "$(id -u)" = 0 ]; }

accepting() { pg_isready -q -h "$HOST" -p "$PORT" 2>/dev/null; }

cluster_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

install_server() {
  is_root || { log "PostgreSQL is not installed and we are not root: install it (Debian package postgresql)"; return 1; }
  command -v apt-get > /dev/null || { log "PostgreSQL is not installed and there is no apt-get"; return 1; }
  log "installing Debian's postgresql"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
  local version hba
  version="$(cluster_version)"
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  # A test server: trust on loopback, as the project's machines have it.
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    log "setting trust auth for 127.0.0.1 in $hba"
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  fi
}

start_server() {
  local version
  version="$(cluster_version)"
  if [ -z "$version" ]; then
    install_server
    version="$(cluster_version)"
  fi
  is_root || { log "PostgreSQL is down on $HOST:$PORT and we are not root to start it"; return 1; }
  log "starting cluster $version/main"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  local i
  for i in $(seq 1 100); do
    accepting && return 0
    sleep 0.2
  done
  log "PostgreSQL does not accept connections on $HOST:$PORT after 20 s"
  return 1
}

psql_q() { psql -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PORT" -U "$USER_NAME" -d postgres -tA "$@"; }

check() {
  if ! command -v pg_isready > /dev/null; then
    install_server
  fi
  accepting || start_server
  if [ "$(psql_q -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    # Two callers at once: the loser's CREATE fails; check again rather than fail.
    if psql_q -c "CREATE DATABASE $DB" 2>/dev/null; then
      log "created database $DB"
    elif [ "$(psql_q -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
      log "could not create database $DB"
      return 1
    fi
  fi
  echo "$URL"
}

case "${1:-}" in
  check) check ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 check|url" >&2; exit 2 ;;
esac
