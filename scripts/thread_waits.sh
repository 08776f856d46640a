#!/usr/bin/env bash
# Where each of the server's threads spends its time while one route is under load (issue 15):
# running, runnable but waiting for a core, and off the core, the last split by where in the
# kernel the thread left it (a futex: waiting for work or for a lock's holder; an fsync's disk
# I/O; epoll; a preemption or a `sched_yield`, which leave it runnable). Read from the
# scheduler's own events (`perf sched record`), so it shows what a CPU profile cannot: which
# thread the others wait for, and on what. Recording adds a little work per context switch;
# compare threads with one another, not the rate with an unrecorded run.
#
# Usage: scripts/thread_waits.sh BINARY ROUTE [CONNECTIONS]
#   BINARY  target/release/flashsale (or a saved copy), embedded store
#   ROUTE   purchase | sold-out | status
# Environment: WAITS_SECONDS=3 (length of the recording, inside a longer wrk run).
# Prints per thread name: context switches, ms running, ms waiting for a core, ms off the core;
# then the 16 largest (thread, kernel site) pairs of time off the core; then wrk's req/s.
set -euo pipefail
BIN=$1
ROUTE=$2
CONNS=${3:-256}
SECS=${WAITS_SECONDS:-3}
PORT=$((19100 + RANDOM % 300))
TOKEN=waits-admin-token-$RANDOM$RANDOM
WORK=$(mktemp -d)
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
command -v perf >/dev/null || { echo "needs perf (Debian package linux-perf)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

. "$(dirname "$0")/lib/route_sale.sh"
"$BIN" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --admin-token "$TOKEN" \
  --demo-sale false --rate-limit off >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
id=$(route_sale "http://127.0.0.1:$PORT" "$TOKEN" "$ROUTE" waits)
if [ "$ROUTE" = sold-out ]; then sell_one "http://127.0.0.1:$PORT" "$id"; fi
route_request "$ROUTE" "$id"

wrk -t2 -c"$CONNS" -d1s "${lua[@]}" "http://127.0.0.1:$PORT$url" >/dev/null
wrk -t2 -c"$CONNS" -d"$((SECS + 3))s" "${lua[@]}" "http://127.0.0.1:$PORT$url" >"$WORK/wrk.out" &
WRK=$!
sleep 1.5
perf sched record -q -g -o "$WORK/sched.data" -p "$PID" -- sleep "$SECS" >/dev/null 2>&1
wait $WRK
perf sched timehist -i "$WORK/sched.data" -g 2>/dev/null >"$WORK/timehist"

# timehist columns after its 3 header lines: time, cpu, task[tid/pid], wait (off the core
# until woken), sch delay (woken until running), run time, then the kernel callchain where
# the task left the core.
printf 'thread\tswitches\trunning ms\twaiting for a core ms\toff the core ms\n'
awk 'NR > 3 { t = $3; sub(/\[.*/, "", t); n[t]++; off[t] += $4; delay[t] += $5; run[t] += $6 }
  END { for (t in n) printf "%s\t%d\t%.0f\t%.0f\t%.0f\n", t, n[t], run[t], delay[t], off[t] }' \
  "$WORK/timehist" | sort
printf '\noff the core ms\tswitches\tthread | where (the kernel frames it left from)\n'
awk 'NR > 3 { t = $3; sub(/\[.*/, "", t); site = "";
    for (i = 7; i <= NF && i <= 11; i++) if ($i != "<-") site = site " " $i;
    k = t " |" site; off[k] += $4; n[k]++ }
  END { for (k in off) printf "%.0f\t%d\t%s\n", off[k], n[k], k }' "$WORK/timehist" |
  sort -rn | sed -n 1,16p
echo "req/s	$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out")"
