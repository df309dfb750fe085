#!/usr/bin/env bash
# A private PostgreSQL server for tests that stop and restart it: the machine's binaries
# (/usr/lib/postgresql/*/bin), a fresh cluster (initdb) in a directory of its own, trust
# auth on 127.0.0.1, on a port of its own. Never the machine's own server on 5432.
#
#   scripts/pg-private.sh start|stop|status|url --port P --dir D [--kill]
#
# start   initdb D/data (once, as the postgres user when run as root: initdb refuses root),
#         starts the server on 127.0.0.1:P (socket directory D), waits until it accepts
#         connections, prints postgres://postgres@127.0.0.1:P/postgres. Idempotent: a
#         server already running from D is reused; a stopped one is started again with its
#         data (the fault tests stop and restart it).
# stop    fast shutdown (pg_ctl -m fast; with --kill: -m immediate, as a crash would).
# status  "running URL" (exit 0) or "stopped" (exit 1).
# url     prints the URL.
set -euo pipefail

PORT=""
DIR=""
MODE=fast

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[ $# -ge 1 ] || usage
ACTION="$1"
shift
while [ $# -gt 0 ]; do
  case "$1" in
    --port) [ $# -ge 2 ] || usage; PORT="$2"; shift 2 ;;
    --port=*) PORT="${1#--port=}"; shift ;;
    --dir) [ $# -ge 2 ] || usage; DIR="$2"; shift 2 ;;
    --dir=*) DIR="${1#--dir=}"; shift ;;
    --kill) MODE=immediate; shift ;;
    *) usage ;;
  esac
done
case "$PORT" in ''|*[!0-9]*) echo "pg-private.sh: --port P is required (a number)" >&2; exit 2 ;; esac
[ "$PORT" != 5432 ] || { echo "pg-private.sh: 5432 is the machine's own server; pick another port" >&2; exit 2; }
[ -n "$DIR" ] || { echo "pg-private.sh: --dir D is required" >&2; exit 2; }
DIR="$(realpath -m "$DIR")"
DATA="$DIR/data"
LOG="$DIR/postgres.log"
URL="postgres://postgres@127.0.0.1:$PORT/postgres"

log() { echo "pg-private.sh: $*" >&2; }

bindir() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -x "$d/initdb" ] || { log "no PostgreSQL binaries under /usr/lib/postgresql/*/bin (Debian package postgresql)"; return 1; }
  echo "$d"
}

# Runs a command as the postgres user when we are root (initdb and postgres refuse root).
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

accepting() { pg_isready -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; }

running() {
  local bin
  bin="$(bindir)"
  [ -f "$DATA/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$DATA" status > /dev/null 2>&1
}

start() {
  local bin i
  bin="$(bindir)"
  mkdir -p "$DIR"
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$DIR"
  fi
  if [ ! -f "$DATA/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$DATA" -U postgres --auth=trust --no-sync -E UTF8 > "$DIR/initdb.log" 2>&1 \
      || { log "initdb failed; see $DIR/initdb.log"; tail -n 20 "$DIR/initdb.log" >&2; return 1; }
  fi
  if running && accepting; then
    echo "$URL"
    return 0
  fi
  if accepting; then
    log "port $PORT already answers, but not from $DATA; pick another port"
    return 1
  fi
  # fsync off: a test server; short checkpoints keep restarts quick.
  as_owner "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=100" \
    start > /dev/null 2>&1 || { log "the server did not start; last lines of $LOG:"; tail -n 20 "$LOG" >&2; return 1; }
  for i in $(seq 1 100); do
    accepting && { echo "$URL"; return 0; }
    sleep 0.1
  done
  log "the server does not accept connections on 127.0.0.1:$PORT"
  return 1
}

stop() {
  local bin
  bin="$(bindir)"
  if [ ! -f "$DATA/postmaster.pid" ]; then
    echo "stopped"
    return 0
  fi
  as_owner "$bin/pg_ctl" -D "$DATA" -m "$MODE" -w -t 30 stop > /dev/null 2>&1 || true
  echo "stopped"
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  status)
    if running && accepting; then echo "running $URL"; else echo "stopped"; exit 1; fi
    ;;
  url) echo "$URL" ;;
  *) usage ;;
esac
