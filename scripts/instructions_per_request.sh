#!/usr/bin/env bash
# Instructions the server executes per request on one route, counted by callgrind (issue 15).
#
# Unlike req/s, an instruction count does not depend on what else the machine is doing, so two
# builds can be compared on a shared, noisy machine. It counts user space only (the kernel's
# TCP work is the same for every build) and includes the tokio workers' idle spinning, which
# is why the ceiling (a trivial axum handler) is measured the same way beside it.
#
# Usage: scripts/instructions_per_request.sh BINARY ROUTE [METHOD]
#   BINARY  target/release/flashsale or target/release/flashsale-ceiling (or a saved copy)
#   ROUTE   status | sold-out | featured | purchase (each request a new buyer, stock ample)
# Environment: IPR_SECONDS=4 (length of the counted load), IPR_CONNECTIONS=16.
# Prints: binary, route, requests, instructions, instructions per request, and allocations
# (and reallocations) per request: the call edges into the allocator from outside it in the
# same callgrind profile (scripts/callgrind_allocations.awk), so exact and just as noise-free.
set -euo pipefail
BIN=$1
ROUTE=$2
SECS=${IPR_SECONDS:-4}
CONNS=${IPR_CONNECTIONS:-16}
PORT=$((19000 + RANDOM % 500))
WORK=$(mktemp -d)
TOKEN=ipr-admin-token-$RANDOM$RANDOM
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || { echo "needs valgrind" >&2; exit 1; }

. "$(dirname "$0")/lib/route_sale.sh"
args=(--listen "127.0.0.1:$PORT")
ceiling=0
if is_ceiling "$BIN"; then
  ceiling=1
else
  args+=(--data-dir "$WORK/data" --admin-token "$TOKEN" --demo-sale off --rate-limit off)
fi
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" --instr-atstart=no \
  "$BIN" "${args[@]}" >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

body='{"user_id":"ipr-buyer","quantity":1}'
if [ "$ceiling" = 0 ]; then
  id=$(route_sale "http://127.0.0.1:$PORT" "$TOKEN" "$ROUTE" ipr)
  # Sell the one unit so every later purchase is a sold-out rejection.
  sell_one "http://127.0.0.1:$PORT" "$id" ipr-buyer
else
  id=1
fi
case $ROUTE in
  status) url=/api/sales/$id; lua= ;;
  featured) url=/api/sale; lua= ;;
  sold-out) url=/api/sales/$id/orders
    lua=$WORK/post.lua
    printf 'wrk.method = "POST"\nwrk.body = [[%s]]\nwrk.headers["Content-Type"] = "application/json"\n' "$body" >"$lua" ;;
  purchase) url=/api/sales/$id/orders
    lua=$WORK/post.lua
    cat >"$lua" <<'LUA'
local n = 0
local prefix = os.getenv("IPR_RUN") .. "-" .. tostring(math.random(1000000000))
request = function()
  n = n + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"},
    '{"user_id":"ipr-' .. prefix .. '-' .. n .. '","quantity":1}')
end
LUA
    ;;
  *) echo "unknown route $ROUTE" >&2; exit 2 ;;
esac
# Warm up (connections, lazily registered metrics), then count only the measured load.
IPR_RUN=warm wrk -t1 -c"$CONNS" -d1s ${lua:+-s "$lua"} "http://127.0.0.1:$PORT$url" >/dev/null
callgrind_control -i on "$PID" >/dev/null 2>&1
out=$(IPR_RUN=measure wrk -t1 -c"$CONNS" -d"${SECS}s" ${lua:+-s "$lua"} "http://127.0.0.1:$PORT$url")
callgrind_control -i off "$PID" >/dev/null 2>&1
callgrind_control -d "$PID" >/dev/null 2>&1
requests=$(awk '/requests in/ {print $1}' <<<"$out")
non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
ir=0
for _ in $(seq 1 100); do
  ir=$(awk '/^totals:/ {print $2; found=1} END {if (!found) print 0}' "$WORK"/cg.*.1 2>/dev/null || echo 0)
  [ "$ir" != 0 ] && break
  sleep 0.1
done
[ -n "${IPR_KEEP:-}" ] && cp "$WORK"/cg.*.1 "$IPR_KEEP"
read -r allocs reallocs < <(awk -f "$(dirname "$0")/callgrind_allocations.awk" "$WORK"/cg.*.1)
printf '%s\t%s\t%s requests (%s non-2xx)\t%s Ir\t%d Ir/request\t%s allocations/request\t%s reallocations/request\n' \
  "$(basename "$BIN")" "$ROUTE" "$requests" "${non2xx:-0}" "$ir" $((ir / requests)) \
  "$(awk -v n="$allocs" -v r="$requests" 'BEGIN { printf "%.1f", n / r }')" \
  "$(awk -v n="$reallocs" -v r="$requests" 'BEGIN { printf "%.1f", n / r }')"
