#!/usr/bin/env bash
# CI stress step (SPEC T-7..T-10, NF-1; issue 5 item 2): against a freshly started embedded
# flashsale server, run
#   - herd:       1,000 concurrent buyers released at the start instant vs 100 units;
#   - duplicates: 300 buyers x 5 concurrent attempts each, per-user limit 2, 1,000 units;
# and exit non-zero if any invariant fails (flashsale-load exits 1 on a failed check).
#
# Usage: scripts/stress.sh
# Environment: STRESS_PROFILE=release|debug (default debug: no extra build in CI),
#              STRESS_TARGETS=url[,url] to run against already running instances instead
#              (then FLASHSALE_ADMIN_TOKEN must be their admin token).
set -euo pipefail

cd "$(dirname "$0")/.."
PROFILE=${STRESS_PROFILE:-debug}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ "$PROFILE" = release ]; then
  cargo build --release -q -p flashsale-server -p flashsale-load
else
  cargo build -q -p flashsale-server -p flashsale-load
fi
BIN=target/$PROFILE

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${STRESS_TARGETS:-}" ]; then
  TARGETS=$STRESS_TARGETS
  TOKEN=${FLASHSALE_ADMIN_TOKEN:?FLASHSALE_ADMIN_TOKEN is needed with STRESS_TARGETS}
else
  TOKEN=stress-$RANDOM$RANDOM
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$BIN/flashsale" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --admin-token "$TOKEN" \
    --demo-sale false >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  TARGETS=http://127.0.0.1:$PORT
  deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "$TARGETS/readyz" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "flashsale did not become ready:" >&2
      cat "$WORK/server.log" >&2
      exit 2
    fi
    sleep 0.2
  done
fi

status=0
echo "== herd: 1,000 buyers vs 100 units"
"$BIN/flashsale-load" herd --target "$TARGETS" --admin-token "$TOKEN" \
  --buyers 1000 --stock 100 --limit 1 --start-in 2 || status=1

echo "== duplicates: 300 buyers x 5 concurrent attempts, limit 2, 1,000 units"
"$BIN/flashsale-load" duplicates --target "$TARGETS" --admin-token "$TOKEN" \
  --buyers 300 --attempts-per-buyer 5 --stock 1000 --limit 2 --start-in 2 || status=1

echo "== duplicates past sell-out: 500 buyers x 3 concurrent attempts, limit 1, 100 units"
"$BIN/flashsale-load" duplicates --target "$TARGETS" --admin-token "$TOKEN" \
  --buyers 500 --attempts-per-buyer 3 --stock 100 --limit 1 --start-in 2 || status=1

if [ $status -ne 0 ]; then
  echo "stress: FAILED" >&2
  [ -z "$SERVER_PID" ] || tail -50 "$WORK/server.log" >&2
else
  echo "stress: passed"
fi
exit $status
