#!/usr/bin/env bash
# System calls the server makes per request on one route, counted by strace (issue 15).
#
# Like the instruction count of scripts/instructions_per_request.sh, a count of system calls
# does not depend on what else the machine is doing; it shows the kernel work a route asks for
# that a CPU profile only shows as "kernel": a syscall inside a critical section, a wake-up per
# request, the writer's file locks. strace slows the server down, so the per-group calls of the
# embedded writer (WAL writes, fsync, locks) are spread over fewer requests than under real load:
# compare builds with one another and with the ceiling, not with a production figure.
#
# Usage: scripts/syscalls_per_request.sh BINARY ROUTE
#   BINARY  target/release/flashsale or target/release/flashsale-ceiling (or a saved copy)
#   ROUTE   status | sold-out | purchase (each request a new buyer, stock ample)
# Environment: SYSCALLS_SECONDS=3 (length of the counted load), SYSCALLS_CONNECTIONS=16.
# Prints the requests, then each system call made at least once per 200 requests, per request.
set -euo pipefail
BIN=$1
ROUTE=$2
SECS=${SYSCALLS_SECONDS:-3}
CONNS=${SYSCALLS_CONNECTIONS:-16}
PORT=$((19900 + RANDOM % 90))
WORK=$(mktemp -d)
TOKEN=syscalls-admin-token-$RANDOM$RANDOM
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
command -v strace >/dev/null || { echo "needs strace (Debian package strace)" >&2; exit 1; }

. "$(dirname "$0")/lib/route_sale.sh"
ready=/readyz
ceiling=0
if is_ceiling "$BIN"; then
  ceiling=1
  ready=/healthz
  "$BIN" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
else
  "$BIN" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --admin-token "$TOKEN" --demo-sale off \
    --rate-limit off >"$WORK/server.log" 2>&1 &
fi
PID=$!
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$PORT$ready" >/dev/null 2>&1 && break; sleep 0.1; done
id=1
if [ "$ceiling" = 0 ]; then
  id=$(route_sale "http://127.0.0.1:$PORT" "$TOKEN" "$ROUTE" syscalls)
  if [ "$ROUTE" = sold-out ]; then sell_one "http://127.0.0.1:$PORT" "$id"; fi
fi
route_request "$ROUTE" "$id"
# Warm up, then count only the measured load (strace attached to every thread, then detached).
wrk -t1 -c"$CONNS" -d1s "${lua[@]}" "http://127.0.0.1:$PORT$url" >/dev/null
timeout -s INT $((SECS + 1)) strace -f -c -o "$WORK/strace" -p "$PID" 2>/dev/null &
STRACE=$!
sleep 0.5
wrk -t1 -c"$CONNS" -d"${SECS}s" "${lua[@]}" "http://127.0.0.1:$PORT$url" -- "sc$RANDOM" >"$WORK/wrk.out"
wait "$STRACE" || true
requests=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
echo "$(basename "$BIN") $ROUTE: $requests requests; system calls per request:"
awk -v n="$requests" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $4 / n >= 0.005 { printf "  %-14s %.3f\n", $NF, $4 / n }' \
  "$WORK/strace" | sort -k2 -rn
