#!/usr/bin/env bash
# A 3-node NATS 2.15.1 cluster with JetStream, on loopback, for the fault tests and local
# runs: each node stoppable and restartable alone.
#
#   scripts/nats-cluster.sh start|stop|status|urls [options]
#   scripts/nats-cluster.sh start-node|stop-node|restart-node N [options]     (N = 1, 2 or 3)
#
# Options:
#   --ports P1,P2,P3          client ports (default 14231,14232,14233)
#   --cluster-ports C1,C2,C3  route ports (default: each client port + 1000)
#   --dir D                   state: node stores, logs, pid files (default
#                             $WAFLEET_STATE_DIR/nats-cluster/P1, state dir /var/tmp/wafleet)
#   --no-advertise            the nodes do not tell clients about the other nodes: a client
#                             knows only the URLs it was given (the fault tests cut one
#                             worker off by giving it only node 3 and stopping node 3)
#   --kill                    stop-node/restart-node/stop: SIGKILL instead of SIGTERM
#   --down-ms MS              restart-node: stay down this long before starting again
#   --no-wait-leader          start: return once every node accepts clients, without
#                             waiting for the JetStream meta leader (after all nodes were
#                             killed, the election takes seconds more)
#
# start         starts every node that is not running (idempotent), waits until each
#               accepts connections and the cluster has a JetStream meta leader, prints the
#               comma-separated client URLs.
# stop          stops every node (SIGTERM, SIGKILL after 10 s).
# start-node N  starts node N (same store, same ports) and waits until it accepts clients.
# stop-node N   stops node N.
# restart-node N  stop-node N, then start-node N.
# status        one line per node; exit 0 if all three run.
# urls          prints nats://127.0.0.1:P1,nats://127.0.0.1:P2,nats://127.0.0.1:P3.
#
# Nodes are named n1..n3 in cluster "wafleet"; JetStream stores under D/nN. The event
# stream should be created with 3 replicas in a cluster (workers: --stream-replicas 3).
set -euo pipefail

NATS_VERSION=2.15.1
HERE="$(cd "$(dirname "$0")" && pwd)"
STATE_DIR="${WAFLEET_STATE_DIR:-/var/tmp/wafleet}"
PORTS="14231,14232,14233"
CLUSTER_PORTS=""
DIR=""
NO_ADVERTISE=false
SIGNAL=TERM
DOWN_MS=0
WAIT_LEADER=true

usage() {
  sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[ $# -ge 1 ] || usage
ACTION="$1"
shift
NODE=""
case "$ACTION" in
  start-node|stop-node|restart-node)
    [ $# -ge 1 ] || usage
    NODE="$1"
    shift
    case "$NODE" in 1|2|3) ;; *) echo "nats-cluster.sh: node must be 1, 2 or 3, got '$NODE'" >&2; exit 2 ;; esac
    ;;
esac
while [ $# -gt 0 ]; do
  case "$1" in
    --ports) [ $# -ge 2 ] || usage; PORTS="$2"; shift 2 ;;
    --ports=*) PORTS="${1#--ports=}"; shift ;;
    --cluster-ports) [ $# -ge 2 ] || usage; CLUSTER_PORTS="$2"; shift 2 ;;
    --cluster-ports=*) CLUSTER_PORTS="${1#--cluster-ports=}"; shift ;;
    --dir) [ $# -ge 2 ] || usage; DIR="$2"; shift 2 ;;
    --dir=*) DIR="${1#--dir=}"; shift ;;
    --no-advertise) NO_ADVERTISE=true; shift ;;
    --kill) SIGNAL=KILL; shift ;;
    --no-wait-leader) WAIT_LEADER=false; shift ;;
    --down-ms) [ $# -ge 2 ] || usage; DOWN_MS="$2"; shift 2 ;;
    --down-ms=*) DOWN_MS="${1#--down-ms=}"; shift ;;
    *) usage ;;
  esac
done

IFS=, read -r -a CLIENT <<< "$PORTS"
[ "${#CLIENT[@]}" = 3 ] || { echo "nats-cluster.sh: --ports needs three ports, got '$PORTS'" >&2; exit 2; }
if [ -n "$CLUSTER_PORTS" ]; then
  IFS=, read -r -a ROUTE <<< "$CLUSTER_PORTS"
else
  ROUTE=($((CLIENT[0] + 1000)) $((CLIENT[1] + 1000)) $((CLIENT[2] + 1000)))
fi
[ "${#ROUTE[@]}" = 3 ] || { echo "nats-cluster.sh: --cluster-ports needs three ports" >&2; exit 2; }
for p in "${CLIENT[@]}" "${ROUTE[@]}" "$DOWN_MS"; do
  case "$p" in ''|*[!0-9]*) echo "nats-cluster.sh: not a number: '$p'" >&2; exit 2 ;; esac
done
DIR="$(realpath -m "${DIR:-$STATE_DIR/nats-cluster/${CLIENT[0]}}")"

log() { echo "nats-cluster.sh: $*" >&2; }

url_of() { echo "nats://127.0.0.1:${CLIENT[$(($1 - 1))]}"; }

urls() {
  echo "$(url_of 1),$(url_of 2),$(url_of 3)"
}

pid_file() { echo "$DIR/n$1.pid"; }
log_file() { echo "$DIR/n$1.log"; }

# A process that exists and is not a zombie (nothing may reap the detached servers).
alive() {
  local state
  state="$(sed -n 's/^[0-9]* (.*) \([A-Z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null)"
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

running_pid() {
  local f pid
  f="$(pid_file "$1")"
  [ -f "$f" ] || return 1
  pid="$(tr -dc '0-9' < "$f")"
  [ -n "$pid" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "nats-server" ] || return 1
  alive "$pid" || return 1
  echo "$pid"
}

# The INFO line of node N, if it speaks NATS.
server_info() {
  local line=""
  { exec 3<>"/dev/tcp/127.0.0.1/${CLIENT[$(($1 - 1))]}"; } 2>/dev/null || return 1
  IFS= read -r -t 2 line <&3 || true
  exec 3<&- 3>&- || true
  case "$line" in
    INFO*) echo "$line" ;;
    *) return 1 ;;
  esac
}

wait_node() {
  local n="$1" i info
  for i in $(seq 1 150); do
    if info="$(server_info "$n")"; then
      case "$info" in
        *"\"version\":\"$NATS_VERSION\""*) return 0 ;;
        *) log "node $n answers but is not nats-server $NATS_VERSION: $info"; return 1 ;;
      esac
    fi
    if ! running_pid "$n" >/dev/null; then
      log "node $n exited; last log lines:"
      tail -n 20 "$(log_file "$n")" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  log "node $n did not accept connections within 15 s"
  return 1
}

start_node() {
  local n="$1" bin routes="" i pid
  if pid="$(running_pid "$n")"; then
    wait_node "$n"
    return 0
  fi
  if server_info "$n" >/dev/null; then
    log "port ${CLIENT[$((n - 1))]} is taken by a server this script did not start"
    return 1
  fi
  bin="$(bash "$HERE/nats.sh" bin)"
  for i in 1 2 3; do
    [ "$i" = "$n" ] && continue
    routes="${routes:+$routes,}nats://127.0.0.1:${ROUTE[$((i - 1))]}"
  done
  mkdir -p "$DIR/n$n"
  rm -f "$(pid_file "$n")"
  local extra=()
  if [ "$NO_ADVERTISE" = true ]; then
    extra+=(--no_advertise=true)
  fi
  # Detached, without fd 9 (the lock).
  setsid nohup "$bin" -a 127.0.0.1 -p "${CLIENT[$((n - 1))]}" \
    --server_name "n$n" --cluster_name wafleet \
    --cluster "nats://127.0.0.1:${ROUTE[$((n - 1))]}" --routes "$routes" \
    -js -sd "$DIR/n$n" -P "$(pid_file "$n")" -l "$(log_file "$n")" "${extra[@]}" \
    < /dev/null > /dev/null 2>&1 9>&- &
  for i in $(seq 1 50); do
    [ -s "$(pid_file "$n")" ] && break
    sleep 0.1
  done
  [ -s "$(pid_file "$n")" ] || { log "node $n did not start; see $(log_file "$n")"; return 1; }
  wait_node "$n"
  log "node $n up (pid $(running_pid "$n")) on $(url_of "$n")"
}

# Signals node N (no wait); prints its pid, nothing when it does not run.
signal_node() {
  local n="$1" pid
  pid="$(running_pid "$n")" || return 0
  kill "-$SIGNAL" "$pid" 2>/dev/null || true
  echo "$pid"
}

# Waits until node N's process `pid` is gone (SIGKILL after 10 s).
wait_gone() {
  local n="$1" pid="$2" i
  for i in $(seq 1 200); do
    alive "$pid" || break
    sleep 0.05
  done
  if alive "$pid"; then
    log "node $n (pid $pid) still there after 10 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
      alive "$pid" || break
      sleep 0.1
    done
  fi
  rm -f "$(pid_file "$n")"
  log "node $n stopped (pid $pid, SIG$SIGNAL)"
}

stop_node() {
  local pid
  pid="$(signal_node "$1")"
  if [ -z "$pid" ]; then
    rm -f "$(pid_file "$1")"
    return 0
  fi
  wait_gone "$1" "$pid"
}

# JetStream is usable once the cluster elected a meta leader: /healthz on a monitor port
# would say so, but the nodes run without one; a node without a meta leader answers
# $JS.API.INFO with an error. Waiting for all three nodes' routes is close enough: poll the
# log for the meta leader election.
# Only log lines written after this start count (a restart appends to the same logs).
declare -a LOG_OFFSET=(0 0 0)
note_log_offsets() {
  local n
  for n in 1 2 3; do
    LOG_OFFSET[$((n - 1))]="$(stat -c %s "$(log_file "$n")" 2>/dev/null || echo 0)"
  done
}

wait_meta_leader() {
  local i n
  for i in $(seq 1 150); do
    for n in 1 2 3; do
      if tail -c "+$((LOG_OFFSET[n - 1] + 1))" "$(log_file "$n")" 2>/dev/null \
        | grep -q -E "JetStream cluster new metadata leader|Self is new JetStream cluster metadata leader"; then
        return 0
      fi
    done
    sleep 0.1
  done
  log "no JetStream meta leader within 15 s (see $DIR/n*.log)"
  return 1
}

status() {
  local n all=0 pid
  for n in 1 2 3; do
    if pid="$(running_pid "$n")" && server_info "$n" >/dev/null; then
      echo "n$n running pid $pid $(url_of "$n")"
    else
      echo "n$n not running $(url_of "$n")"
      all=1
    fi
  done
  return $all
}

lock() {
  mkdir -p "$DIR"
  exec 9> "$DIR/cluster.lock"
  flock 9
}

case "$ACTION" in
  start)
    lock
    all_running=true
    for n in 1 2 3; do running_pid "$n" >/dev/null || all_running=false; done
    note_log_offsets
    # Start all three before waiting: a lone node cannot elect a JetStream leader.
    for n in 1 2 3; do start_node "$n" & done
    wait_ok=0
    for job in $(jobs -p); do wait "$job" || wait_ok=1; done
    [ "$wait_ok" = 0 ] || { log "a node failed to start"; exit 1; }
    # Already running: the leader was elected when they started.
    if [ "$all_running" = false ] && [ "$WAIT_LEADER" = true ]; then
      wait_meta_leader
    fi
    urls
    ;;
  stop)
    lock
    # All three at once (all of NATS down), then wait for each.
    pids=("$(signal_node 1)" "$(signal_node 2)" "$(signal_node 3)")
    for n in 1 2 3; do
      if [ -n "${pids[$((n - 1))]}" ]; then
        wait_gone "$n" "${pids[$((n - 1))]}"
      else
        rm -f "$(pid_file "$n")"
      fi
    done
    ;;
  start-node) lock; start_node "$NODE" ;;
  stop-node) lock; stop_node "$NODE" ;;
  restart-node)
    lock
    stop_node "$NODE"
    if [ "$DOWN_MS" -gt 0 ]; then
      sleep "$(awk "BEGIN { print $DOWN_MS / 1000 }")"
    fi
    start_node "$NODE"
    ;;
  status) status ;;
  urls) urls ;;
  *) usage ;;
esac
