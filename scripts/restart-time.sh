#!/usr/bin/env bash
# Restart to ready (SPEC 5): starts `marketgov serve` on an existing data directory, times until
# /readyz answers 200, then until one customer stream has been loaded and answered.
# Usage: TENANT_KEY=<a key of the tenant> scripts/restart-time.sh DATA_DIR [CUSTOMER]
# The manual clock starts where `marketgov bench` ran, so no timer is due at start.
set -euo pipefail
DIR=$1
CUSTOMER=${2:-bench-12345}
BIN=${BIN:-target/release/marketgov}
PORT=${PORT:-8097}
: "${TENANT_KEY:?set TENANT_KEY (marketgov keys create --tenant bench --data-dir DATA_DIR)}"
export MARKETGOV_ADMIN_KEY=${MARKETGOV_ADMIN_KEY:-restart-check-admin-key-0001}
start=$(date +%s.%N)
"$BIN" serve --data-dir "$DIR" --listen "127.0.0.1:$PORT" --clock manual \
  --clock-start 2026-01-01T00:00:00Z >/dev/null 2>&1 &
pid=$!
# Stop the server and wait for it, so the next run finds the data directory free.
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
until curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz"; do
  kill -0 $pid 2>/dev/null || { echo "the server exited before it was ready" >&2; exit 1; }
  sleep 0.01
done
ready=$(date +%s.%N)
curl -sf -o /dev/null -H "Authorization: Bearer $TENANT_KEY" "http://127.0.0.1:$PORT/v1/customers/$CUSTOMER"
first=$(date +%s.%N)
echo "ready after $(echo "$ready - $start" | bc) s; customer $CUSTOMER answered after $(echo "$first - $start" | bc) s"
