#!/usr/bin/env bash
# CI stress step (T-7..T-10, NF-1 in docs/requirements.md; issue 5 item 2): against a freshly started embedded
# flashsale server, run
#   - herd:       1,000 concurrent buyers released at the start instant vs 100 units;
#   - duplicates: 300 buyers x 5 concurrent attempts each, per-user limit 2, 1,000 units;
# and exit non-zero if any invariant fails (flashsale-load exits 1 on a failed check).
# Then checkout in hold mode (issue 12): 600 buyers race for 100 units as reservations with a
# 60 s payment window; half the holders pay through the signed webhook, the rest let their hold
# expire; the buyers who found nothing join the waitlist and pay or release the offers; the
# verifier checks sold = paid <= stock, offers once each in join order, released units offered
# or returned, limits, the summary, and that every status read adds up (about 70 s a run).
# Then the same invariants with `--identity accounts` (issue 13): an embedded server started
# that way, where flashsale-load signs up and logs in every buyer before the sale starts
# (outside the measured window) and buys with their session tokens;
#   - herd:       400 signed-in buyers released at the start instant vs 100 units;
#   - duplicates: 100 signed-in buyers x 5 concurrent attempts, limit 2, 150 units
# (fewer buyers than the guest runs: each account costs two argon2 hashes, slow in debug).
#
# Usage: scripts/stress.sh
# Then, where this build has `--store redis` and Redis/PostgreSQL answer, the same (guest and
# accounts, the accounts pair sharing one `--session-key`) against two instances sharing them
# (skipped, and said so, otherwise).
# Environment: STRESS_PROFILE=release|debug (default debug: no extra build in CI),
#              STRESS_TARGETS=url[,url] to run against already running instances instead
#              (then FLASHSALE_ADMIN_TOKEN must be their admin token),
#              REDIS_URL / DATABASE_URL for the scale-out run.
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
SERVER_PIDS=()
SCALE_OUT_SPACE=
cleanup() {
  for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${SERVER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
  # The scale-out runs' own key prefix and schema (named after the token): leave nothing behind
  # in the shared Redis and PostgreSQL.
  if [ -n "$SCALE_OUT_SPACE" ]; then
    redis-cli -u "$REDIS_URL" --scan --pattern "{$SCALE_OUT_SPACE:*" |
      xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
    psql "$DATABASE_URL" -qc "DROP SCHEMA IF EXISTS ${SCALE_OUT_SPACE//-/_} CASCADE" \
      >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts one instance and sets STARTED_URL (no command substitution: the pid must reach
# SERVER_PIDS in this shell); fails if it exits or is not ready within 60 s.
start_server() { # name token extra-args...
  local name=$1 token=$2 port
  shift 2
  port=$(free_port)
  "$BIN/flashsale" --listen "127.0.0.1:$port" --data-dir "$WORK/$name" --admin-token "$token" \
    --demo-sale false --rate-limit off "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  SERVER_PIDS+=("$pid")
  local deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$pid" 2>/dev/null; then
      echo "flashsale ($name) did not become ready:" >&2
      tail -20 "$WORK/$name.log" >&2
      return 1
    fi
    sleep 0.2
  done
  STARTED_URL="http://127.0.0.1:$port"
}

status=0
# The three scenarios against one deployment ($1 label, $2 targets, $3 admin token).
stress() {
  local label=$1 targets=$2 token=$3
  echo "== [$label] herd: 1,000 buyers vs 100 units"
  "$BIN/flashsale-load" herd --target "$targets" --admin-token "$token" \
    --buyers 1000 --stock 100 --limit 1 --start-in 2 || status=1

  echo "== [$label] duplicates: 300 buyers x 5 concurrent attempts, limit 2, 1,000 units"
  "$BIN/flashsale-load" duplicates --target "$targets" --admin-token "$token" \
    --buyers 300 --attempts-per-buyer 5 --stock 1000 --limit 2 --start-in 2 || status=1

  echo "== [$label] duplicates past sell-out: 500 buyers x 3 concurrent attempts, limit 1, 100 units"
  "$BIN/flashsale-load" duplicates --target "$targets" --admin-token "$token" \
    --buyers 500 --attempts-per-buyer 3 --stock 100 --limit 1 --start-in 2 || status=1
}

# Checkout in hold mode with the waitlist ($1 label, $2 targets, $3 admin token; the
# deployment runs with --payment-webhook-secret "$WEBHOOK_SECRET", or the demo route is used).
stress_hold() {
  local label=$1 targets=$2 token=$3
  echo "== [$label] hold: 600 buyers vs 100 units, 60 s window, half pay, the rest expire, the waitlist takes the offers"
  "$BIN/flashsale-load" hold --target "$targets" --admin-token "$token" \
    --buyers 600 --stock 100 --pay-share 0.5 --payment-window 60 --start-in 2 || status=1
}

# The seed scenarios with signed-in buyers, against a deployment started with
# `--identity accounts` ($1 label, $2 targets, $3 admin token).
stress_accounts() {
  local label=$1 targets=$2 token=$3
  echo "== [$label accounts] herd: 400 signed-in buyers vs 100 units"
  "$BIN/flashsale-load" herd --identity accounts --target "$targets" --admin-token "$token" \
    --buyers 400 --stock 100 --limit 1 --start-in 2 || status=1

  echo "== [$label accounts] duplicates: 100 signed-in buyers x 5 concurrent attempts, limit 2, 150 units"
  "$BIN/flashsale-load" duplicates --identity accounts --target "$targets" --admin-token "$token" \
    --buyers 100 --attempts-per-buyer 5 --stock 150 --limit 2 --start-in 2 || status=1
}

if [ -n "${STRESS_TARGETS:-}" ]; then
  stress given "$STRESS_TARGETS" "${FLASHSALE_ADMIN_TOKEN:?FLASHSALE_ADMIN_TOKEN is needed with STRESS_TARGETS}"
  stress_hold given "$STRESS_TARGETS" "$FLASHSALE_ADMIN_TOKEN"
else
  TOKEN=stress-admin-token-$RANDOM$RANDOM
  # The load tool signs its payments with it (flashsale-load reads the same variable).
  export FLASHSALE_PAYMENT_WEBHOOK_SECRET=stress-webhook-secret-$RANDOM$RANDOM
  start_server embedded "$TOKEN" --payment-webhook-secret "$FLASHSALE_PAYMENT_WEBHOOK_SECRET" || exit 2
  stress embedded "$STARTED_URL" "$TOKEN"
  stress_hold embedded "$STARTED_URL" "$TOKEN"
  # `--rate-limit off` (start_server) also lifts the log-in limits: every buyer signs up
  # and logs in from 127.0.0.1.
  start_server embedded-accounts "$TOKEN" --identity accounts || exit 2
  stress_accounts embedded "$STARTED_URL" "$TOKEN"

  # The scale-out store with two instances sharing Redis + PostgreSQL, where this build has
  # it and the services answer (REDIS_URL / DATABASE_URL, default the local ones).
  REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
  DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
  redis_args=(--store redis --redis-url "$REDIS_URL" --database-url "$DATABASE_URL"
    --payment-webhook-secret "$FLASHSALE_PAYMENT_WEBHOOK_SECRET")
  # A key prefix and schema of its own: no keys or rows of an earlier run in the way.
  if "$BIN/flashsale" --help 2>/dev/null | grep -q -- '--redis-prefix'; then
    redis_args+=(--redis-prefix "$TOKEN" --pg-schema "${TOKEN//-/_}")
    SCALE_OUT_SPACE=$TOKEN
  fi
  if ! "$BIN/flashsale" --help 2>/dev/null | grep -q -- '--redis-url'; then
    echo "== [redis x2] SKIPPED: this build has no --store redis"
  elif ! start_server redis-a "$TOKEN" "${redis_args[@]}" 2>/dev/null; then
    why=$(grep -m1 -i 'error' "$WORK/redis-a.log" || tail -1 "$WORK/redis-a.log")
    echo "== [redis x2] SKIPPED: the scale-out store did not start: $why"
  else
    a=$STARTED_URL
    if start_server redis-b "$TOKEN" "${redis_args[@]}"; then
      stress "redis x2" "$a,$STARTED_URL" "$TOKEN"
      stress_hold "redis x2" "$a,$STARTED_URL" "$TOKEN"
    else
      echo "== [redis x2] second instance did not start" >&2
      status=1
    fi
    # The accounts pair: one session key, so a token from either instance is good on both.
    session_key=$(printf '%s' "$TOKEN-session-key-0123456789abcdef" | sha256sum | cut -c1-64)
    accounts_args=(--identity accounts --session-key "$session_key")
    if start_server redis-accounts-a "$TOKEN" "${redis_args[@]}" "${accounts_args[@]}" &&
      a=$STARTED_URL &&
      start_server redis-accounts-b "$TOKEN" "${redis_args[@]}" "${accounts_args[@]}"; then
      stress_accounts "redis x2" "$a,$STARTED_URL" "$TOKEN"
    else
      echo "== [redis x2 accounts] an instance did not start" >&2
      status=1
    fi
  fi
fi

if [ $status -ne 0 ]; then
  echo "stress: FAILED" >&2
  for f in "$WORK"/*.log; do
    [ -e "$f" ] && { echo "--- $f" >&2; tail -30 "$f" >&2; }
  done
else
  echo "stress: passed"
fi
exit $status
