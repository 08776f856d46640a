#!/usr/bin/env bash
# Where the machine's CPU goes while one route is under load (issue 15): the CPU seconds that
# the server, Redis, PostgreSQL, the client (wrk) and everything else used during one wrk run,
# read from /proc (utime + stime of every process, children included, before and after).
#
# A ratio to the ceiling can only be as high as the share of the two cores left to the
# server once its stores and the client have taken theirs; this shows that share.
#
# Usage: scripts/cpu_split.sh BINARY STORE ROUTE [CONNECTIONS]
#   BINARY  target/release/flashsale (or a saved copy), or target/release/flashsale-ceiling
#           (the bare handler: STORE is ignored, and sold-out is its purchase route)
#   STORE   embedded | redis   (redis: the local Redis and PostgreSQL, own prefix and schema)
#   ROUTE   purchase | sold-out | status
# Environment: SPLIT_SECONDS=6, REDIS_URL, DATABASE_URL (default: local, database flashsale_bench).
# Prints one line per group: group, CPU seconds, share of the run's total, CPU µs per request
# (the server's also split into user space and kernel, and by thread name); `idle` is the time
# the cores were idle (or waiting on I/O) during the run; then req/s.
set -euo pipefail
BIN=$1
STORE=$2
ROUTE=$3
CONNS=${4:-256}
SECS=${SPLIT_SECONDS:-6}
PORT=$((19500 + RANDOM % 400))
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/flashsale_bench}
TOKEN=split-admin-token-$RANDOM$RANDOM
WORK=$(mktemp -d)
cleanup() {
  [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$WORK"
  if [ "$STORE" = redis ]; then # leave no schema or keys behind
    psql "$DATABASE_URL" -qc "DROP SCHEMA IF EXISTS ${TOKEN//-/_} CASCADE" >/dev/null 2>&1 || true
    redis-cli -u "$REDIS_URL" --scan --pattern "*$TOKEN*" | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

args=(--listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --admin-token "$TOKEN" --demo-sale false
  --rate-limit off)
if [ "$STORE" = redis ]; then
  db=${DATABASE_URL##*/}
  psql "${DATABASE_URL%/*}/postgres" -qtAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 ||
    psql "${DATABASE_URL%/*}/postgres" -qc "CREATE DATABASE $db"
  args+=(--store redis --redis-url "$REDIS_URL" --database-url "$DATABASE_URL"
    --redis-prefix "$TOKEN" --pg-schema "${TOKEN//-/_}")
fi
. "$(dirname "$0")/lib/route_sale.sh"
ceiling=0
is_ceiling "$BIN" && { ceiling=1; STORE=ceiling; args=(--listen "127.0.0.1:$PORT"); }
"$BIN" "${args[@]}" >"$WORK/server.log" 2>&1 &
PID=$!
ready=/readyz
[ "$ceiling" = 1 ] && ready=/healthz
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$PORT$ready" >/dev/null 2>&1 && break; sleep 0.1; done

id=1
if [ "$ceiling" = 0 ]; then
  id=$(route_sale "http://127.0.0.1:$PORT" "$TOKEN" "$ROUTE" split)
  if [ "$ROUTE" = sold-out ]; then sell_one "http://127.0.0.1:$PORT" "$id"; fi
fi
route_request "$ROUTE" "$id"

# Every process's CPU ticks, grouped by what it is.
ticks() {
  local server=0 user=0 redis=0 postgres=0 client=0 other=0 pid stat comm t
  for stat in /proc/[0-9]*/stat; do
    pid=${stat#/proc/}; pid=${pid%/stat}
    read -r line <"$stat" 2>/dev/null || continue
    comm=${line#*(}; comm=${comm%%)*}
    rest=${line##*) }
    # Fields after ") ": state is 1, utime 12, stime 13.
    set -- $rest
    t=$((${12} + ${13}))
    if [ "$pid" = "$PID" ]; then server=$((server + t)); user=${12}
    elif [[ $comm == redis-server* ]]; then redis=$((redis + t))
    elif [[ $comm == postgres* ]]; then postgres=$((postgres + t))
    elif [[ $comm == wrk* ]]; then client=$((client + t))
    else other=$((other + t)); fi
  done
  echo "$server $user $redis $postgres $client $other"
}
# The server's CPU ticks by thread name (tokio-rt-worker, flashsale-write, flashsale-sync, ...):
# one "name ticks" line per name, sorted.
threads() {
  local t line rest
  for t in /proc/"$PID"/task/*; do
    read -r line <"$t/stat" 2>/dev/null || continue
    rest=${line##*) }
    set -- $rest
    echo "$(cat "$t/comm" 2>/dev/null) $((${12} + ${13}))"
  done | awk '{ a[$1] += $2 } END { for (k in a) print k, a[k] }' | sort
}
# The machine's idle ticks, all cores (idle + iowait of /proc/stat): time no process could run.
# The bare handler leaves next to none; a server whose requests wait on something other than
# CPU (a disk flush, a timer, a lock's holder) leaves the cores idle while they wait.
idle_ticks() {
  local _cpu user nice system idle iowait
  read -r _cpu user nice system idle iowait _ </proc/stat
  echo $((idle + iowait))
}
# Warm up (connections, first admissions), then sample inside the measured run (wrk still
# running at both ends, so its own ticks count too).
wrk -t2 -c"$CONNS" -d1s "${lua[@]}" "http://127.0.0.1:$PORT$url" >/dev/null
wrk -t2 -c"$CONNS" -d"${SECS}s" "${lua[@]}" "http://127.0.0.1:$PORT$url" >"$WORK/wrk.out" &
WRK=$!
sleep 1
read -r s0 u0 r0 p0 c0 o0 < <(ticks)
i0=$(idle_ticks)
threads >"$WORK/threads0"
started=$(date +%s.%N)
sleep $((SECS - 2))
read -r s1 u1 r1 p1 c1 o1 < <(ticks)
i1=$(idle_ticks)
threads >"$WORK/threads1"
ended=$(date +%s.%N)
wait $WRK
hz=$(getconf CLK_TCK)
cores=$(nproc)
wall=$(awk -v a="$started" -v b="$ended" 'BEGIN {print b - a}')
total=$(awk -v w="$wall" -v c="$cores" -v hz="$hz" 'BEGIN {print w * c * hz}')
rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out")
requests=$(awk -v r="$rps" -v w="$wall" 'BEGIN {print r * w}')
printf 'group\tCPU s\tshare of %s cores x %.1f s\tCPU us per request\n' "$cores" "$wall"
for pair in "server $((s1 - s0))" "server-user $((u1 - u0))" "server-kernel $((s1 - s0 - u1 + u0))" "redis $((r1 - r0))" "postgres $((p1 - p0))" "client $((c1 - c0))" "other $((o1 - o0))" "idle $((i1 - i0))"; do
  set -- $pair
  awk -v n="$1" -v t="$2" -v hz="$hz" -v tot="$total" -v r="$requests" \
    'BEGIN { printf "%s\t%.2f\t%.0f%%\t%.1f\n", n, t / hz, 100 * t / tot, 1e6 * t / hz / r }'
done
# The server's share by thread (threads that used no CPU are left out).
join "$WORK/threads0" "$WORK/threads1" | awk -v hz="$hz" -v tot="$total" -v r="$requests" \
  '$3 > $2 { printf "server:%s\t%.2f\t%.0f%%\t%.1f\n", $1, ($3 - $2) / hz, 100 * ($3 - $2) / tot, 1e6 * ($3 - $2) / hz / r }'
echo "req/s	$rps"
