#!/usr/bin/env bash
# The seed herd (1,000 buyers released at the start instant against 100 units, flashsale-load
# herd) on two flashsale builds, alternately, each on a fresh embedded server of its own: one
# herd is one sample and moves by tens of percent from run to run on a shared machine, so this
# takes several of each, interleaved (A, B, A, B, ...), and prints each and the means.
#
# Usage: scripts/herd_ab.sh BINARY_A BINARY_B [ROUNDS]
#   BINARY_A, BINARY_B  flashsale binaries (e.g. a saved build of main before a change, and
#                       target/release/flashsale)
#   ROUNDS              herds per binary (default 4)
# Environment: HERD_HISTORY=1 first loads each server with 5 s of purchases at 256 connections
# (some 250,000 orders), so the herds run against a store that already holds a sale's worth.
# Prints: side, time to sell out (s), p50 ms, p99 ms, whether the herd's invariants passed.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1
B=$2
ROUNDS=${3:-4}
LOAD=$PWD/target/release/flashsale-load
TOKEN=herd-admin-token-$RANDOM$RANDOM
WORK=$(mktemp -d)
PORT_A=$((19900 + RANDOM % 40))
PORT_B=$((PORT_A + 50))
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ -x "$LOAD" ] || cargo build --release -q -p flashsale-load

for side in a:"$A":$PORT_A b:"$B":$PORT_B; do
  IFS=: read -r name bin port <<<"$side"
  "$bin" --listen "127.0.0.1:$port" --admin-token "$TOKEN" --demo-sale false --rate-limit off \
    --data-dir "$WORK/$name" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
done
for port in $PORT_A $PORT_B; do
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null && break
    sleep 0.2
  done
done
if [ -n "${HERD_HISTORY:-}" ]; then
  for port in $PORT_A $PORT_B; do
    "$LOAD" --json --allow-errors -c 256 sustained --target "http://127.0.0.1:$port" \
      --admin-token "$TOKEN" --stock 100000000 --start-in 1 -d 5 --verify-max 10 \
      --verify-sample 5 2>/dev/null | jq -r --arg p "$port" '"history on :\($p): \(.confirmed) orders"'
  done
fi
results=$WORK/results.tsv
for _ in $(seq 1 "$ROUNDS"); do
  for side in A:$PORT_A B:$PORT_B; do
    "$LOAD" herd --json --target "http://127.0.0.1:${side#*:}" --admin-token "$TOKEN" \
      --buyers 1000 --stock 100 --start-in 2 2>/dev/null |
      jq -r --arg s "${side%%:*}" '"\($s)\t\(.time_to_sell_out_s)\t\(.latency.p50_ms)\t\(.latency.p99_ms)\t\(.passed)"' |
      tee -a "$results"
  done
done
awk -F'\t' '{ t[$1] += $2; p50[$1] += $3; p99[$1] += $4; n[$1]++ }
  END { for (s in n) printf "mean %s: sold out in %.1f ms, p50 %.1f ms, p99 %.1f ms (%d herds)\n",
    s, t[s] / n[s] * 1000, p50[s] / n[s], p99[s] / n[s], n[s] }' "$results" | sort
