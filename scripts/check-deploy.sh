#!/usr/bin/env bash
# Checks deploy/: the kustomize base renders and every object validates (strict, k8s
# 1.33.0 schemas); the Prometheus rules load; a real `wafleet worker` scrape passes
# `promtool check metrics`; every metric rules.yml names is exported by the worker
# (in the scrape, or, for counters and histograms an idle worker has not observed yet,
# declared in crates/session-worker/src/fleet/metrics.rs); SIGTERM drains the worker
# and it exits 0.
#
#   bash scripts/check-deploy.sh
#
# Installs what it needs when missing (idempotent): kubernetes-validate in a venv under
# ${WAFLEET_STATE_DIR:-/var/tmp/wafleet}/venv-k8s, promtool from Debian's `prometheus`
# (as root). A step whose tool cannot be installed prints `SKIPPED: ...`.
# Env: WAFLEET_BIN (default: $CARGO_TARGET_DIR/debug/wafleet, target/debug/wafleet, else /var/tmp/wafleet-ci-target/debug/wafleet);
#      CHECK_DEPLOY_STRICT_SCRAPE=1 fails when a rules metric is absent from the scrape.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE_DIR="${WAFLEET_STATE_DIR:-/var/tmp/wafleet}"
VENV="$STATE_DIR/venv-k8s"
K8S_VERSION=1.33.0
RULES="${CHECK_DEPLOY_RULES:-deploy/prometheus/rules.yml}"
METRICS_SRC=crates/session-worker/src/fleet/metrics.rs

failures=0
summary=()
ok()   { summary+=("OK: $*"); echo "OK: $*" >&2; }
fail() { summary+=("FAIL: $*"); echo "FAIL: $*" >&2; failures=$((failures + 1)); }
skip() { summary+=("SKIPPED: $*"); echo "SKIPPED: $*" >&2; }

work="$(mktemp -d)"
worker_pid=""
cleanup() {
  if [ -n "$worker_pid" ] && kill -0 "$worker_pid" 2>/dev/null; then
    kill -KILL "$worker_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- tools -------------------------------------------------------------------------
kv=""
if [ -x "$VENV/bin/kubernetes-validate" ]; then
  kv="$VENV/bin/kubernetes-validate"
else
  mkdir -p "$STATE_DIR"
  if python3 -m venv "$VENV" >&2 && "$VENV/bin/pip" install -q kubernetes-validate >&2; then
    kv="$VENV/bin/kubernetes-validate"
  fi
fi

promtool_bin="$(command -v promtool || true)"
if [ -z "$promtool_bin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing promtool (Debian prometheus) ..." >&2
  if apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >&2; then
    promtool_bin="$(command -v promtool || true)"
  fi
fi

bin="${WAFLEET_BIN:-}"
if [ -z "$bin" ]; then
  for b in "${CARGO_TARGET_DIR:-target}/debug/wafleet" target/debug/wafleet /var/tmp/wafleet-ci-target/debug/wafleet; do
    if [ -x "$b" ]; then bin="$b"; break; fi
  done
fi

# --- kustomize + kubernetes-validate -----------------------------------------------
if ! command -v kubectl >/dev/null; then
  skip "kubectl not found: deploy/k8s not rendered"
elif ! kubectl kustomize deploy/k8s >"$work/rendered.yaml" 2>"$work/kustomize.err"; then
  cat "$work/kustomize.err" >&2
  fail "kubectl kustomize deploy/k8s"
else
  objects="$(grep -c '^kind:' "$work/rendered.yaml" || true)"
  ok "kubectl kustomize deploy/k8s rendered $objects objects"
  if [ -z "$kv" ]; then
    skip "kubernetes-validate could not be installed into $VENV: manifests not validated"
  elif "$kv" --strict -k "$K8S_VERSION" "$work/rendered.yaml" >"$work/kv.out" 2>&1; then
    passed="$(grep -c 'passed for resource' "$work/kv.out" || true)"
    if [ "$passed" = "$objects" ]; then
      ok "kubernetes-validate --strict -k $K8S_VERSION: $passed/$objects objects valid"
    else
      cat "$work/kv.out" >&2
      fail "kubernetes-validate: $passed of $objects objects reported as passed"
    fi
  else
    cat "$work/kv.out" >&2
    fail "kubernetes-validate --strict -k $K8S_VERSION"
  fi
fi

# --- the NATS cluster's config (deploy/k8s/nats.yaml) loads in nats-server ----------
if [ -f "$work/rendered.yaml" ] && grep -q 'name: nats-config' "$work/rendered.yaml"; then
  nats_bin="$(bash scripts/nats.sh bin 2>/dev/null || true)"
  if [ -z "$nats_bin" ]; then
    skip "nats-server not installable: deploy/k8s/nats.yaml's nats.conf not checked"
  elif ! python3 - "$work/rendered.yaml" "$work/nats.conf" <<'PY' 2>"$work/natsconf.err"
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "nats-config":
        open(sys.argv[2], "w").write(doc["data"]["nats.conf"])
        break
else:
    sys.exit("no ConfigMap nats-config")
PY
  then
    cat "$work/natsconf.err" >&2
    fail "extract nats.conf from the rendered manifests"
  elif POD_NAME=nats-0 "$nats_bin" -t -c "$work/nats.conf" >"$work/natsconf.out" 2>&1; then
    ok "nats-server -t accepts the cluster's nats.conf"
  else
    cat "$work/natsconf.out" >&2
    fail "nats-server -t rejects deploy/k8s/nats.yaml's nats.conf"
  fi
fi

# --- promtool check rules ----------------------------------------------------------
if [ -z "$promtool_bin" ]; then
  skip "promtool not found and not installable (needs root and apt-get): rules and metrics not checked"
elif "$promtool_bin" check rules "$RULES" >"$work/rules.out" 2>&1; then
  ok "promtool check rules $RULES: $(grep -o '[0-9]* rules found' "$work/rules.out")"
else
  cat "$work/rules.out" >&2
  fail "promtool check rules $RULES"
fi

# --- a real worker scrape ----------------------------------------------------------
if [ -z "$bin" ]; then
  skip "no wafleet binary (set WAFLEET_BIN or build target/debug/wafleet): no scrape"
else
  eval "$(bash scripts/services.sh up)"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  key="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
  mkdir -p "$work/blobs"
  # --nats-url (a list of servers) where the worker knows it, else the older --nats.
  nats_flag=--nats
  if "$bin" worker --help 2>/dev/null | grep -q -- '--nats-url'; then
    nats_flag=--nats-url
  fi
  WAFLEET_MASTER_KEY="$key" "$bin" worker --worker-id check-deploy --blob-dir "$work/blobs" \
    "$nats_flag" "$WAFLEET_NATS_URL" --http "127.0.0.1:$port" >"$work/worker.out" 2>"$work/worker.err" &
  worker_pid=$!
  ready=""
  for _ in $(seq 1 300); do
    if grep -q '"event":"worker_ready"' "$work/worker.out" 2>/dev/null; then ready=1; break; fi
    kill -0 "$worker_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$ready" ]; then
    cat "$work/worker.out" "$work/worker.err" >&2
    fail "wafleet worker did not print worker_ready within 30 s"
  else
    ok "wafleet worker check-deploy ready on 127.0.0.1:$port (NATS $WAFLEET_NATS_URL)"
    if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null && curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null; then
      ok "/healthz and /readyz answer 200"
    else
      fail "/healthz or /readyz not 200"
    fi
    if ! curl -fsS "http://127.0.0.1:$port/metrics" >"$work/metrics.txt"; then
      fail "curl /metrics"
    else
      if [ -n "$promtool_bin" ]; then
        if "$promtool_bin" check metrics <"$work/metrics.txt" >"$work/pm.out" 2>&1; then
          ok "promtool check metrics: the scrape is clean"
        else
          cat "$work/pm.out" >&2
          fail "promtool check metrics"
        fi
      fi
      # Names in the scrape: sample lines and # TYPE lines.
      { grep -v '^#' "$work/metrics.txt" | grep -oE '^[a-zA-Z_:][a-zA-Z0-9_:]*' || true
        grep '^# TYPE ' "$work/metrics.txt" | awk '{print $3}' || true; } | sort -u >"$work/scraped.txt"
      grep -oE 'wafleet_[a-z0-9_]+' "$RULES" | sort -u >"$work/used.txt"
      scraped=(); declared=(); unknown=()
      while read -r name; do
        base="$(sed -E 's/_(bucket|sum|count)$//' <<<"$name")"
        if grep -qx "$name" "$work/scraped.txt"; then
          scraped+=("$name"); continue
        fi
        # Not in an idle worker's scrape: the code must export it under this name, with
        # the right kind (histogram for _bucket/_sum/_count, buckets set for _seconds).
        const="$(grep -E "pub const [A-Z_]+: &str = \"$base\";" "$METRICS_SRC" | sed -E 's/.*const ([A-Z_]+):.*/\1/' || true)"
        if [ -z "$const" ]; then
          unknown+=("$name"); continue
        fi
        flat="$(tr -d ' \n' <"$METRICS_SRC")"
        if [ "$name" != "$base" ]; then
          if ! grep -qF "describe_histogram!($const," <<<"$flat"; then
            unknown+=("$name (not a histogram in $METRICS_SRC)"); continue
          fi
          if [ "${name%_bucket}" != "$name" ] && { [ "${base%_seconds}" = "$base" ] || ! grep -qF 'Matcher::Suffix("_seconds"' "$METRICS_SRC"; }; then
            unknown+=("$name (no buckets set for it in $METRICS_SRC: it renders as a summary)"); continue
          fi
        elif ! grep -qE "describe_(counter|gauge)!\($const," <<<"$flat"; then
          unknown+=("$name (not a described counter or gauge in $METRICS_SRC)"); continue
        fi
        declared+=("$name")
      done <"$work/used.txt"
      total="$(wc -l <"$work/used.txt")"
      if [ "${#unknown[@]}" -gt 0 ]; then
        fail "rules.yml names metrics the worker does not export: ${unknown[*]}"
      fi
      ok "rules.yml metric names: $total used, ${#scraped[@]} in the live scrape (${scraped[*]:-none})"
      if [ "${#declared[@]}" -gt 0 ]; then
        msg="${#declared[@]} not in an idle worker's scrape (exported only once observed), found in $METRICS_SRC: ${declared[*]}"
        if [ "${CHECK_DEPLOY_STRICT_SCRAPE:-}" = 1 ]; then fail "$msg"; else ok "$msg"; fi
      fi
    fi
  fi
  if kill -0 "$worker_pid" 2>/dev/null; then
    kill -TERM "$worker_pid"
    rc=0
    wait "$worker_pid" || rc=$?
    worker_pid=""
    if [ "$rc" = 0 ]; then
      ok "SIGTERM: the worker drained and exited 0"
    else
      tail -n 20 "$work/worker.err" >&2
      fail "SIGTERM: the worker exited $rc"
    fi
  fi
fi

echo "--- check-deploy summary ---"
printf '%s\n' "${summary[@]}"
if [ "$failures" -gt 0 ]; then
  echo "check-deploy: $failures failure(s)"
  exit 1
fi
echo "check-deploy: passed"
