#!/usr/bin/env bash
# Reproduces docs/benchmarks.md in one run on one machine (docs/requirements.md#8-the-performance-bar, issue 5).
#
# Starts, on 127.0.0.1 only:
#   - the ceiling: flashsale-ceiling, a trivial axum handler (every figure is divided by it);
#   - flashsale with the embedded store (fresh temp data dir);
#   - flashsale with the Redis + PostgreSQL store, 1 and 2 instances, when the binary
#     supports `--store redis` and Redis/PostgreSQL answer (otherwise: skipped, and said so).
# Measures successful purchases (large stock), sold-out rejections and status reads at each
# connection count, with flashsale-load and with wrk, then the seed scenario (1,000 buyers,
# 100 units). Prints a table with req/s, p50, p99, errors and the ratio to the ceiling.
# With the embedded store it also starts two more embedded servers, one with `--identity
# accounts` and one without, and, right after the guest purchases at each connection count,
# measures purchases by 1,000 signed-in buyers on the first and by the same 1,000-buyer pool as
# guests on the second (same connections, same duration; the sign-ups and log-ins happen
# before the measured window), then prints
# guest vs accounts purchases/s, their ratio and the log-in time flashsale-load measured.
# With BENCH_BASELINE_BIN set (and the embedded store), it also starts that binary (an older
# build, e.g. main before a change) and the current one as two more fresh embedded servers, and
# measures instant purchases on both at each connection count in ABBA rounds (the same rounds
# and server-CPU sampling as the accounts comparison), then prints "baseline vs current":
# req/s each, their ratio, p99, and the server's CPU µs per purchase (steadier than req/s on a
# shared machine), and writes baseline.tsv and baseline-cpu.tsv.
#
# Usage: scripts/bench.sh   (about 5 minutes with the embedded store only, 10 with Redis too)
# Environment:
#   BENCH_DURATION=6           seconds per measurement
#   BENCH_CONNECTIONS="256 1000 10000"
#   BENCH_TOOLS="load wrk"
#   BENCH_STORES="embedded redis"
#   BENCH_OUT=target/bench     where raw outputs, results.tsv and accounts.tsv go
#   BENCH_ACCOUNTS_POOL=1000   signed-in buyers of the accounts purchase runs
#   BENCH_ACCOUNTS_ROUNDS=2    guest/accounts pairs per connection count (ABBA order)
#   BENCH_BASELINE_BIN=        a flashsale binary to compare the current build with (unset:
#                              no comparison), e.g. /work/baseline/flashsale-a6bdff1
#   BENCH_BASELINE_ROUNDS=4    baseline/current pairs per connection count (ABBA order)
#   BENCH_BASELINE_TABLE=      with BENCH_BASELINE_BIN, "yes" also puts the baseline binary's
#                              deployments (embedded, scale-out with 1 and 2 instances) in the
#                              main table as `<name>-before`, each measured right after the
#                              current one: a before/after of every route in one run
#   BENCH_IDLE_CONNECTIONS=10000  idle keep-alive connections for the memory figure (0: skip)
#   REDIS_URL, DATABASE_URL    for the redis store (defaults: local Redis, local PostgreSQL
#                              database flashsale_bench, created if missing)
#   BENCH_HOLD=                "yes" also runs the checkout scenario in hold mode (flashsale-load
#                              hold: 600 buyers, 100 units, 60 s payment window, half of the
#                              holders pay through the signed webhook, the rest expire, the
#                              waitlist takes the offers) on fresh servers of the current build,
#                              embedded and scale-out with 2 instances, after the seed scenario,
#                              and prints its figures (about 70 s per store)
# At the end it measures the resident memory per idle keep-alive connection
# (scripts/idle_rss.py) of the ceiling, of a fresh embedded server, and of the baseline's with
# BENCH_BASELINE_TABLE, and prints it under the tables.
# Every server it starts is killed on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DUR=${BENCH_DURATION:-6}
CONNS=${BENCH_CONNECTIONS:-"256 1000 10000"}
TOOLS=${BENCH_TOOLS:-"load wrk"}
STORES=${BENCH_STORES:-"embedded redis"}
OUT=${BENCH_OUT:-$ROOT/target/bench}
TOKEN=bench-admin-token-$RANDOM$RANDOM
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/flashsale_bench}
CEILING_PORT=18090
PORT_EMBEDDED=18080
PORT_REDIS_A=18081
PORT_REDIS_B=18082
PORT_ACCOUNTS=18083
PORT_GUESTS=18084
PORT_BASELINE=18085
PORT_CURRENT=18086
BASELINE_BIN=${BENCH_BASELINE_BIN:-}
BASELINE_ROUNDS=${BENCH_BASELINE_ROUNDS:-4}
BASELINE_TABLE=${BENCH_BASELINE_TABLE:-}
IDLE_CONNECTIONS=${BENCH_IDLE_CONNECTIONS:-10000}
HOLD=${BENCH_HOLD:-}
# The hold scenario's own servers (BENCH_HOLD), which sign payments with this secret.
PORT_HOLD_EMBEDDED=18092
PORT_HOLD_REDIS_A=18093
PORT_HOLD_REDIS_B=18094
HOLD_SECRET=bench-webhook-secret-$RANDOM$RANDOM
# Ports of the baseline's own deployments (BENCH_BASELINE_TABLE) and of the idle-memory server.
PORT_BEFORE_EMBEDDED=18087
PORT_BEFORE_REDIS_A=18088
PORT_BEFORE_REDIS_B=18089
PORT_IDLE=18091
# Accounts mode: buyers cycled through in the timed purchase runs (each is signed up and logged
# in, two password hashes, before the window), and the sale's per-user limit that covers each
# one's share (the API's maximum).
ACCOUNTS_POOL=${BENCH_ACCOUNTS_POOL:-1000}
ACCOUNTS_LIMIT=1000
ACCOUNTS_ROUNDS=${BENCH_ACCOUNTS_ROUNDS:-2}
LOAD=$ROOT/target/release/flashsale-load
CEILING=$ROOT/target/release/flashsale-ceiling
SERVER=$ROOT/target/release/flashsale
WRK_THREADS=${WRK_THREADS:-2}

# 10,000 connections need 10,000+ descriptors in the client and in each server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10240 ]; then
  echo "warning: ulimit -n is $(ulimit -n); the 10,000-connection runs will fail" >&2
fi

mkdir -p "$OUT"
WORK=$(mktemp -d)
RESULTS=$OUT/results.tsv
: > "$RESULTS"
PIDS=()
declare -A SERVER_PIDS # start_server name -> pid
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
  # The scale-out deployments' schemas and keys (named after this run's token): none left.
  local schema
  for schema in "${TOKEN//-/_}" "before_${TOKEN//-/_}" "hold_${TOKEN//-/_}"; do
    psql "$DATABASE_URL" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  done
  redis-cli -u "$REDIS_URL" --scan --pattern "*$TOKEN*" 2>/dev/null |
    xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "== $*" >&2; }

wait_up() { # url path seconds
  local deadline=$((SECONDS + $3))
  until curl -fsS -o /dev/null "$1$2" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

log "building release binaries"
# One invocation for both, so dependencies are built once with the same features.
if ! cargo build --release -q -p flashsale-server -p flashsale-load 2>"$OUT/build.log"; then
  cargo build --release -q -p flashsale-load
  echo "flashsale server binary not available (see $OUT/build.log): only the ceiling is measured" >&2
  SERVER=""
fi
[ -z "$SERVER" ] || [ -x "$SERVER" ] || SERVER=""

{
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p') x $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r)"
  echo "rustc: $(rustc --version)"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "duration ${DUR}s per run; connections: $CONNS; ulimit -n $(ulimit -n)"
} | tee "$OUT/machine.txt" >&2

"$CEILING" --listen "127.0.0.1:$CEILING_PORT" 2>"$OUT/ceiling.log" &
PIDS+=($!)
wait_up "http://127.0.0.1:$CEILING_PORT" /healthz 10

start_server() { # name port extra-args...; fails at once if the server exits
  local name=$1 port=$2
  shift 2
  # One client address sends every buyer here: per-address rate limits would measure the
  # limiter, not the service. SERVER_BIN, if set, is run instead of the current build.
  "${SERVER_BIN:-$SERVER}" --listen "127.0.0.1:$port" --admin-token "$TOKEN" --demo-sale false --rate-limit off "$@" \
    >"$OUT/server-$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  SERVER_PIDS[$name]=$pid
  local deadline=$((SECONDS + 30))
  until curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

# Creates a sale starting in 2 s (so it is active when the run begins); prints its id.
create_sale() { # base-url stock
  local starts ends
  starts=$(date -u -d '+2 seconds' +%Y-%m-%dT%H:%M:%SZ)
  ends=$(date -u -d '+2 hours' +%Y-%m-%dT%H:%M:%SZ)
  curl -fsS -X POST "$1/api/admin/sales" -H "Authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' \
    -d "{\"name\":\"bench\",\"starts_at\":\"$starts\",\"ends_at\":\"$ends\",\"stock\":$2,\"per_user_limit\":1}" |
    jq -r .sale_id || echo 0
}

# Appends: target scenario tool conns rps p50_ms p99_ms errors note
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RESULTS"; }

# One flashsale-load run; $1 target label, $2 scenario label, $3 conns, $4... load args.
run_load() {
  local label=$1 scen=$2 c=$3
  shift 3
  local file="$OUT/load-$label-$scen-$c.json"
  log "load  $label $scen c=$c"
  "$LOAD" --json --allow-errors -c "$c" "$@" >"$file" 2>"$file.stderr" || true
  if ! jq -e . "$file" >/dev/null 2>&1; then
    record "$label" "$scen" load "$c" 0 0 0 "failed" "$(tail -1 "$file.stderr")"
    return
  fi
  local errors shed note
  errors=$(jq '[.errors[]] | add // 0' "$file")
  shed=$(jq '[.shed[]] | add // 0' "$file")
  note=$(jq -r '[.by_op[] | .outcomes | to_entries[] | "\(.key)=\(.value)"] | join(" ")' "$file")
  [ "$shed" = 0 ] || note="$note shed=$shed"
  record "$label" "$scen" load "$c" \
    "$(jq '.throughput | floor' "$file")" "$(jq .latency.p50_ms "$file")" "$(jq .latency.p99_ms "$file")" \
    "$errors" "$note"
}

# One wrk run; $1 target label, $2 scenario label, $3 conns, $4 url, $5 lua script, $6 prefix.
run_wrk() {
  local label=$1 scen=$2 c=$3 url=$4 script=$5 prefix=${6:-}
  local file="$OUT/wrk-$label-$scen-$c.txt"
  log "wrk   $label $scen c=$c"
  local threads=$WRK_THREADS
  [ "$c" -ge "$threads" ] || threads=$c
  wrk -t"$threads" -c"$c" -d"${DUR}s" --timeout 10s --latency -s "$ROOT/scripts/wrk/$script" "$url" \
    -- "$prefix" >"$file" 2>&1 || true
  local line
  line=$(grep '^WRK_RESULT' "$file" || true)
  if [ -z "$line" ]; then
    record "$label" "$scen" wrk "$c" 0 0 0 "failed" "$(tail -1 "$file")"
    return
  fi
  field() { echo "$line" | sed -n "s/.* $1=\([0-9]*\).*/\1/p"; }
  local req dur p50 p99 err non2xx
  req=$(field requests) dur=$(field duration_us) p50=$(field p50_us) p99=$(field p99_us)
  err=$(field socket_errors) non2xx=$(field non2xx)
  record "$label" "$scen" wrk "$c" "$((req * 1000000 / dur))" \
    "$(awk "BEGIN{print $p50/1000}")" "$(awk "BEGIN{print $p99/1000}")" "$err" "non2xx=$non2xx"
}

# The three measurements against one flashsale deployment (one or more instances) with one
# tool at one connection count.
bench_service() { # label url1[,url2] conns tool
  local label=$1 targets=$2 c=$3 tool=$4
  local first=${targets%%,*}
  if [ "$tool" = load ]; then
    run_load "$label" purchase "$c" sustained --target "$targets" --admin-token "$TOKEN" \
      --stock 100000000 --start-in 1 -d "$DUR" --verify-max 1000 --verify-sample 50
    run_load "$label" sold_out "$c" sustained --target "$targets" --admin-token "$TOKEN" \
      --stock 1 --start-in 1 -d "$DUR" --verify-max 10 --verify-sample 50
    run_load "$label" status "$c" status --target "$targets" --admin-token "$TOKEN" \
      --stock 100 --start-in 1 -d "$DUR"
  else
    # wrk talks to one URL: with two instances it measures the first (noted in the doc).
    local id
    id=$(create_sale "$first" 100000000)
    sleep 2.2
    run_wrk "$label" purchase "$c" "$first/api/sales/$id/orders" orders.lua "wrk$RANDOM-$c"
    id=$(create_sale "$first" 1)
    sleep 2.2
    curl -fsS -o /dev/null -X POST "$first/api/sales/$id/orders" -H 'content-type: application/json' \
      -d '{"user_id":"the-only-buyer","quantity":1}' || true
    run_wrk "$label" sold_out "$c" "$first/api/sales/$id/orders" orders.lua "wrk$RANDOM-$c"
    run_wrk "$label" status "$c" "$first/api/sales/$id" report.lua
  fi
}

# The ceiling with one tool at one connection count: purchases and sold-out rejections are
# the same POST handler there, status reads the GET one.
bench_ceiling() { # conns tool
  local c=$1 tool=$2 ceil=http://127.0.0.1:$CEILING_PORT
  if [ "$tool" = load ]; then
    run_load ceiling purchase "$c" sustained --target "$ceil" --sale-id 1 --no-verify -d "$DUR"
    run_load ceiling status "$c" status --target "$ceil" --sale-id 1 --no-verify -d "$DUR"
  else
    run_wrk ceiling purchase "$c" "$ceil/api/sales/1/orders" orders.lua "wrk$RANDOM"
    run_wrk ceiling status "$c" "$ceil/api/sales/1" report.lua
  fi
}

# Runs $3 rounds of one load run on each of two sides, $4 and $5, at $2 connections, in ABBA
# order (A-B, then B-A, ...), so a drift in the background load during the runs weighs on both
# sides alike; each run goes through with_server_cpu into $OUT/$1.tsv and $OUT/$1-cpu.tsv. $6 is
# the function that runs one side's run, called as "$6 side round conns".
abba_rounds() { # pair conns rounds side-a side-b run-function
  local pair=$1 c=$2 rounds=$3 a=$4 b=$5 run=$6 round order who
  for round in $(seq 1 "$rounds"); do
    order="$a $b"
    [ $((round % 2)) = 1 ] || order="$b $a"
    for who in $order; do
      PAIR=$pair "$run" "$who" "$round" "$c"
    done
  done
}

# Purchases by a pool of signed-in buyers vs the same pool as guests, at one connection count
# (results in accounts.tsv, not in the ceiling table), each with the server's CPU time per
# purchase (in accounts-cpu.tsv): on a machine shared with other work, req/s moves with the
# neighbours' load, but the CPU the server spends on one purchase barely does.
bench_accounts() { # conns
  abba_rounds accounts "$1" "$ACCOUNTS_ROUNDS" guest accounts accounts_side
}

accounts_side() { # guest|accounts round conns
  local who=$1 round=$2 c=$3
  local pool=(--buyer-pool "$ACCOUNTS_POOL" --limit "$ACCOUNTS_LIMIT" --stock 100000000
    --start-in 1 -d "$DUR" --verify-max 1000 --verify-sample 50 --prepare-concurrency "$(nproc)")
  if [ "$who" = guest ]; then
    with_server_cpu "${SERVER_PIDS[embedded-guests]}" guest "purchase_pool_$round" "$c" \
      run_load guest "purchase_pool_$round" "$c" sustained \
      --target "http://127.0.0.1:$PORT_GUESTS" --admin-token "$TOKEN" "${pool[@]}"
  else
    with_server_cpu "${SERVER_PIDS[embedded-accounts]}" accounts "purchase_pool_$round" "$c" \
      run_load accounts "purchase_pool_$round" "$c" sustained --identity accounts \
      --target "http://127.0.0.1:$PORT_ACCOUNTS" --admin-token "$TOKEN" "${pool[@]}"
  fi
}

# Instant purchases (embedded store, large stock) on the baseline binary vs the current build,
# each on a fresh server of its own, at one connection count (baseline.tsv, baseline-cpu.tsv).
bench_baseline() { # conns
  abba_rounds baseline "$1" "$BASELINE_ROUNDS" baseline current baseline_side
}

baseline_side() { # baseline|current round conns
  local who=$1 round=$2 c=$3 port=$PORT_CURRENT
  [ "$who" = current ] || port=$PORT_BASELINE
  with_server_cpu "${SERVER_PIDS[embedded-$who]}" "$who" "purchase_$round" "$c" \
    run_load "$who" "purchase_$round" "$c" sustained --target "http://127.0.0.1:$port" \
    --admin-token "$TOKEN" --stock 100000000 --start-in 1 -d "$DUR" --verify-max 1000 \
    --verify-sample 50
}

# Runs one load run (the command after $4) into $PAIR.tsv (default accounts.tsv) while sampling
# the CPU ticks of server $1 every 0.1 s, then appends "label scenario conns
# cpu_us_per_purchase" to $PAIR-cpu.tsv. Only the samples inside the measured window count (the load tool reports
# its length; it ends when the tool exits): the sign-ups and log-ins before it, two password
# hashes per buyer, are preparation, not purchases.
with_server_cpu() { # pid label scenario conns command...
  local pid=$1 label=$2 scen=$3 c=$4
  shift 4
  local samples="$WORK/cpu-$label-$scen-$c"
  (while kill -0 "$pid" 2>/dev/null; do
    echo "$(date +%s.%N) $(awk '{print $14 + $15}' "/proc/$pid/stat")"
    sleep 0.1
  done) >"$samples" 2>/dev/null &
  local sampler=$!
  RESULTS=$OUT/${PAIR:-accounts}.tsv "$@"
  local end
  end=$(date +%s.%N)
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  local file="$OUT/load-$label-$scen-$c.json"
  jq -e . "$file" >/dev/null 2>&1 || return 0
  awk -v end="$end" -v el="$(jq .elapsed_s "$file")" -v n="$(jq .attempts "$file")" \
    -v hz="$(getconf CLK_TCK)" -v label="$label" -v scen="$scen" -v c="$c" '
    BEGIN { from = end - el + 0.3; to = end - 0.3 }
    $1 >= from && t0 == "" { t0 = $1; k0 = $2 }
    $1 <= to { t1 = $1; k1 = $2 }
    END { if (t1 > t0 && n > 0) printf "%s\t%s\t%s\t%.1f\n", label, scen, c, (k1 - k0) / hz * 1e6 / (n * (t1 - t0) / el) }
  ' "$samples" >>"$OUT/${PAIR:-accounts}-cpu.tsv"
}

# The accounts section: guest vs accounts purchases/s per connection count (means over the
# rounds), the server's CPU per purchase, and log-in times.
accounts_table() {
  [ -s "$OUT/accounts.tsv" ] || return 0
  echo
  echo "Embedded store, purchases by a pool of $ACCOUNTS_POOL buyers (per-user limit $ACCOUNTS_LIMIT):"
  echo "guests (\`--identity guest\`) vs signed-in buyers (\`--identity accounts\`, sign-ups and"
  echo "log-ins before the window); flashsale-load, same connections and duration, $ACCOUNTS_ROUNDS"
  echo "rounds in ABBA order, means; server CPU per purchase sampled from /proc inside the window."
  echo
  echo "| conns | guest req/s | accounts req/s | accounts / guest | guest p99 ms | accounts p99 ms | errors (guest, accounts) | server CPU µs per purchase (guest, accounts) | log-in p50 ms | log-in p99 ms | accounts prepared in s |"
  echo "|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"
  for c in $CONNS; do
    local file="$OUT/load-accounts-purchase_pool_1-$c.json"
    awk -F'\t' -v c="$c" \
      -v lp50="$(jq '.preparation.login.p50_ms // 0' "$file" 2>/dev/null || echo 0)" \
      -v lp99="$(jq '.preparation.login.p99_ms // 0' "$file" 2>/dev/null || echo 0)" \
      -v prep="$(jq '.preparation.elapsed_s // 0' "$file" 2>/dev/null || echo 0)" '
      FILENAME ~ /cpu/ { if ($3 == c) { cpu[$1] += $4; ncpu[$1]++ }; next }
      $4 == c { rps[$1] += $5; p99[$1] += $7; err[$1] += $8; n[$1]++ }
      END {
        if (!n["guest"] || !n["accounts"]) exit
        g = rps["guest"] / n["guest"]; a = rps["accounts"] / n["accounts"]
        printf "| %s | %d | %d | %.3f | %.2f | %.2f | %d, %d | %.1f, %.1f | %.2f | %.2f | %.1f |\n",
          c, g, a, (g > 0 ? a / g : 0), p99["guest"] / n["guest"], p99["accounts"] / n["accounts"],
          err["guest"], err["accounts"],
          ncpu["guest"] ? cpu["guest"] / ncpu["guest"] : 0,
          ncpu["accounts"] ? cpu["accounts"] / ncpu["accounts"] : 0, lp50, lp99, prep }
    ' "$OUT/accounts-cpu.tsv" "$OUT/accounts.tsv"
  done
}

# The baseline section: baseline vs current purchases/s per connection count (means over the
# rounds) and the server's CPU per purchase.
baseline_table() {
  [ -s "$OUT/baseline.tsv" ] || return 0
  echo
  echo "Embedded store, instant purchases (large stock): baseline \`$BASELINE_BIN\` vs the current"
  echo "build, each on a fresh server; flashsale-load, same connections and duration, $BASELINE_ROUNDS"
  echo "rounds in ABBA order, means; server CPU per purchase sampled from /proc inside the window."
  echo
  echo "| conns | baseline req/s | current req/s | current / baseline | baseline p99 ms | current p99 ms | errors (baseline, current) | server CPU µs per purchase (baseline, current) | CPU current / baseline |"
  echo "|---:|---:|---:|---:|---:|---:|---|---|---:|"
  for c in $CONNS; do
    awk -F'\t' -v c="$c" '
      FILENAME ~ /cpu/ { if ($3 == c) { cpu[$1] += $4; ncpu[$1]++ }; next }
      $4 == c { rps[$1] += $5; p99[$1] += $7; err[$1] += $8; n[$1]++ }
      END {
        if (!n["baseline"] || !n["current"]) exit
        b = rps["baseline"] / n["baseline"]; k = rps["current"] / n["current"]
        cb = ncpu["baseline"] ? cpu["baseline"] / ncpu["baseline"] : 0
        ck = ncpu["current"] ? cpu["current"] / ncpu["current"] : 0
        printf "| %s | %d | %d | %.3f | %.2f | %.2f | %d, %d | %.1f, %.1f | %.3f |\n",
          c, b, k, (b > 0 ? k / b : 0), p99["baseline"] / n["baseline"], p99["current"] / n["current"],
          err["baseline"], err["current"], cb, ck, (cb > 0 ? ck / cb : 0) }
    ' "$OUT/baseline-cpu.tsv" "$OUT/baseline.tsv"
  done
}

seed_scenario() { # label url1[,url2] [extra flashsale-load options]
  local file="$OUT/seed-$1.json" label=$1 url=$2
  shift 2
  log "seed  $label: 1,000 buyers, 100 units"
  "$LOAD" herd --json --target "$url" --admin-token "$TOKEN" --buyers 1000 --stock 100 --start-in 2 \
    "$@" >"$file" 2>"$file.stderr" || true
  if jq -e . "$file" >/dev/null 2>&1; then
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$(jq .time_to_sell_out_s "$file")" \
      "$(jq .latency.p50_ms "$file")" "$(jq .latency.p99_ms "$file")" "$(jq .latency.max_ms "$file")" \
      "$(jq -r 'if .passed then "PASS" else "FAIL" end' "$file")" >> "$OUT/seed.tsv"
  else
    printf '%s\tfailed\t\t\t\t%s\n' "$label" "$(tail -1 "$file.stderr")" >> "$OUT/seed.tsv"
  fi
}

# The hold scenario on fresh servers of the current build ($1 label, $2 targets), into
# hold-$1.json and a line of hold.tsv.
hold_scenario() { # label url1[,url2]
  local file="$OUT/hold-$1.json"
  log "hold  $1: 600 buyers, 100 units, 60 s window, half pay"
  "$LOAD" hold --json --target "$2" --admin-token "$TOKEN" --webhook-secret "$HOLD_SECRET" \
    --buyers 600 --stock 100 --pay-share 0.5 --payment-window 60 --start-in 2 \
    >"$file" 2>"$file.stderr" || true
  if ! jq -e . "$file" >/dev/null 2>&1; then
    printf '%s\tfailed: %s\n' "$1" "$(tail -1 "$file.stderr")" >>"$OUT/hold.tsv"
    return
  fi
  jq -r --arg dep "$1" '
    def lat(op): (.latency[op][1] // {p50_ms: 0, p99_ms: 0}) | "\(.p50_ms * 10 | round / 10) / \(.p99_ms * 10 | round / 10)";
    [$dep, "\(.buyers) / \(.units)", "\(.holders_paid) / \(.holds_expired)",
     "\(.offers_made) / \(.offers_taken) / \(.offers_released)", "\(.still_waiting)",
     "\(.join_retries)", "\(.status_reads)", "\(.duration_s * 10 | round / 10)",
     lat("reserve"), lat("join"), lat("pay"), lat("place"),
     (if .passed then "PASS (\(.checks | length) checks)" else "FAIL: " + ([.checks[] | select(.passed | not) | .name] | join(", ")) end)]
    | @tsv' "$file" >>"$OUT/hold.tsv" || printf '%s\tunreadable report %s\n' "$1" "$file" >>"$OUT/hold.tsv"
}

hold_table() {
  [ -s "$OUT/hold.tsv" ] || return 0
  echo
  echo "Checkout in hold mode (flashsale-load hold, current build, fresh servers with"
  echo "--payment-webhook-secret): 600 buyers, 100 units, 60 s payment window, half the holders"
  echo "and half the offers paid through the signed webhook, the rest expire or are released;"
  echo "latencies in ms (p50 / p99)."
  echo
  echo "| deployment | buyers / units | holders paid / expired | offers made / taken / released | still waiting | joins retried | status reads | run s | reserve | join | pay | place | verifier |"
  echo "|---|---|---|---|---:|---:|---:|---:|---|---|---|---|---|"
  awk -F'\t' 'NF == 2 { printf "| %s | %s |\n", $1, $2; next }
    { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 }' "$OUT/hold.tsv"
}

# Start every deployment first; "label targets" lines.
DEPLOYS=()
ACCOUNTS=no
BASELINE=no
: > "$OUT/accounts.tsv"
: > "$OUT/accounts-cpu.tsv"
: > "$OUT/baseline.tsv"
: > "$OUT/baseline-cpu.tsv"
if [ -n "$SERVER" ]; then
  for store in $STORES; do
    case $store in
      embedded)
        if start_server embedded $PORT_EMBEDDED --data-dir "$WORK/embedded"; then
          DEPLOYS+=("embedded http://127.0.0.1:$PORT_EMBEDDED")
          if [ -n "$BASELINE_TABLE" ] && [ -x "$BASELINE_BIN" ]; then
            if SERVER_BIN=$BASELINE_BIN start_server embedded-before $PORT_BEFORE_EMBEDDED \
              --data-dir "$WORK/embedded-before"; then
              DEPLOYS+=("embedded-before http://127.0.0.1:$PORT_BEFORE_EMBEDDED")
            else
              echo "embedded store, baseline: SKIPPED (see $OUT/server-embedded-before.log)" >&2
            fi
          fi
          # `--rate-limit off` (start_server) lifts the log-in limits too: every sign-up
          # and log-in comes from 127.0.0.1.
          # The guest side of that comparison has a server of its own too, so both start
          # empty and see the same runs (the main one also takes the ceiling table's).
          if start_server embedded-accounts $PORT_ACCOUNTS --data-dir "$WORK/embedded-accounts" \
            --identity accounts &&
            start_server embedded-guests $PORT_GUESTS --data-dir "$WORK/embedded-guests"; then
            ACCOUNTS=yes
          else
            echo "embedded store, accounts: SKIPPED (server not ready; see $OUT/server-embedded-accounts.log)" >&2
          fi
        else
          echo "embedded store: SKIPPED (server not ready; see $OUT/server-embedded.log)" >&2
        fi
        if [ -n "$BASELINE_BIN" ]; then
          if [ ! -x "$BASELINE_BIN" ]; then
            echo "baseline comparison: SKIPPED ($BASELINE_BIN is not an executable)" >&2
          elif SERVER_BIN=$BASELINE_BIN start_server embedded-baseline $PORT_BASELINE \
            --data-dir "$WORK/embedded-baseline" &&
            start_server embedded-current $PORT_CURRENT --data-dir "$WORK/embedded-current"; then
            BASELINE=yes
          else
            echo "baseline comparison: SKIPPED (server not ready; see $OUT/server-embedded-baseline.log)" >&2
          fi
        fi
        ;;
      redis)
        if ! "$SERVER" --help 2>/dev/null | grep -q -- '--redis-url'; then
          echo "redis store: SKIPPED (this flashsale binary has no --store redis)" >&2
          continue
        fi
        if ! redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
          echo "redis store: SKIPPED (Redis at $REDIS_URL does not answer)" >&2
          continue
        fi
        db=${DATABASE_URL##*/}
        if ! { psql "${DATABASE_URL%/*}/postgres" -qtAc "SELECT 1 FROM pg_database WHERE datname='$db'" |
          grep -q 1 || psql "${DATABASE_URL%/*}/postgres" -qc "CREATE DATABASE $db"; }; then
          echo "redis store: SKIPPED (PostgreSQL at ${DATABASE_URL%/*} not usable)" >&2
          continue
        fi
        common=(--store redis --redis-url "$REDIS_URL" --database-url "$DATABASE_URL")
        # A key prefix and schema of its own: no keys or rows of an earlier run in the way.
        if "$SERVER" --help 2>/dev/null | grep -q -- '--redis-prefix'; then
          common+=(--redis-prefix "$TOKEN" --pg-schema "${TOKEN//-/_}")
        fi
        if ! start_server redis-1 $PORT_REDIS_A "${common[@]}" --data-dir "$WORK/redis-1"; then
          echo "redis store: SKIPPED (server not ready; see $OUT/server-redis-1.log)" >&2
          continue
        fi
        DEPLOYS+=("redis-1 http://127.0.0.1:$PORT_REDIS_A")
        if start_server redis-2 $PORT_REDIS_B "${common[@]}" --data-dir "$WORK/redis-2"; then
          DEPLOYS+=("redis-2 http://127.0.0.1:$PORT_REDIS_A,http://127.0.0.1:$PORT_REDIS_B")
        else
          echo "redis store, 2 instances: SKIPPED (second instance not ready)" >&2
        fi
        if [ -n "$BASELINE_TABLE" ] && [ -x "$BASELINE_BIN" ]; then
          # The baseline's own key prefix and schema: it shares nothing with the current build.
          before=(--store redis --redis-url "$REDIS_URL" --database-url "$DATABASE_URL"
            --redis-prefix "before-$TOKEN" --pg-schema "before_${TOKEN//-/_}")
          if SERVER_BIN=$BASELINE_BIN start_server redis-1-before $PORT_BEFORE_REDIS_A \
            "${before[@]}" --data-dir "$WORK/redis-1-before"; then
            DEPLOYS+=("redis-1-before http://127.0.0.1:$PORT_BEFORE_REDIS_A")
            if SERVER_BIN=$BASELINE_BIN start_server redis-2-before $PORT_BEFORE_REDIS_B \
              "${before[@]}" --data-dir "$WORK/redis-2-before"; then
              DEPLOYS+=("redis-2-before http://127.0.0.1:$PORT_BEFORE_REDIS_A,http://127.0.0.1:$PORT_BEFORE_REDIS_B")
            fi
          else
            echo "redis store, baseline: SKIPPED (see $OUT/server-redis-1-before.log)" >&2
          fi
        fi
        ;;
    esac
  done
fi

# Ceiling and deployments back to back for each (connections, tool), so that the ratios
# compare runs minutes apart at most on a machine whose background load moves.
for c in $CONNS; do
  for tool in $TOOLS; do
    bench_ceiling "$c" "$tool"
    for d in "${DEPLOYS[@]}"; do
      bench_service ${d% *} ${d#* } "$c" "$tool"
    done
    if [ "$tool" = load ] && [ "$ACCOUNTS" = yes ]; then
      bench_accounts "$c"
    fi
    if [ "$tool" = load ] && [ "$BASELINE" = yes ]; then
      bench_baseline "$c"
    fi
  done
done

: > "$OUT/seed.tsv"
# The bare handler's herd: the same 1,000 buyers at once against its fixed sale (it confirms
# every one; what it gives is the tail of 1,000 simultaneous requests, the p99 ratios' base).
seed_scenario ceiling "http://127.0.0.1:$CEILING_PORT" --sale-id 1 --no-verify
for d in "${DEPLOYS[@]}"; do
  seed_scenario ${d% *} ${d#* }
done

# Checkout in hold mode (issue 12), after the throughput runs so its servers take no CPU from
# them: fresh servers of the current build, stopped once measured.
: > "$OUT/hold.tsv"
if [ "$HOLD" = yes ] && [ -n "$SERVER" ]; then
  for store in $STORES; do
    case $store in
      embedded)
        if start_server hold-embedded $PORT_HOLD_EMBEDDED --data-dir "$WORK/hold-embedded" \
          --payment-webhook-secret "$HOLD_SECRET"; then
          hold_scenario embedded "http://127.0.0.1:$PORT_HOLD_EMBEDDED"
          kill "${SERVER_PIDS[hold-embedded]}" 2>/dev/null || true
        else
          printf 'embedded\tfailed: server not ready\n' >>"$OUT/hold.tsv"
        fi
        ;;
      redis)
        [ -n "${common[*]:-}" ] || continue # the scale-out store was skipped above
        hold=(--store redis --redis-url "$REDIS_URL" --database-url "$DATABASE_URL"
          --redis-prefix "hold-$TOKEN" --pg-schema "hold_${TOKEN//-/_}"
          --payment-webhook-secret "$HOLD_SECRET")
        if start_server hold-redis-1 $PORT_HOLD_REDIS_A "${hold[@]}" --data-dir "$WORK/hold-redis-1" &&
          start_server hold-redis-2 $PORT_HOLD_REDIS_B "${hold[@]}" --data-dir "$WORK/hold-redis-2"; then
          hold_scenario redis-2 "http://127.0.0.1:$PORT_HOLD_REDIS_A,http://127.0.0.1:$PORT_HOLD_REDIS_B"
        else
          printf 'redis-2\tfailed: servers not ready\n' >>"$OUT/hold.tsv"
        fi
        kill "${SERVER_PIDS[hold-redis-1]:-}" "${SERVER_PIDS[hold-redis-2]:-}" 2>/dev/null || true
        ;;
    esac
  done
fi

# Resident memory per idle keep-alive connection (issue 15): a server of its own, which keeps
# idle connections open for the whole measurement (by default the header-read timeout closes
# them after 10 s) and takes them all from one address.
idle_memory() { # label bin port
  local label=$1 bin=$2 port=$3 pid
  if [ "$label" = ceiling ]; then
    pid=$(pgrep -f "flashsale-ceiling --listen 127.0.0.1:$CEILING_PORT" | head -1)
  else
    SERVER_BIN=$bin start_server "idle-$label" "$port" --data-dir "$WORK/idle-$label" \
      --header-read-timeout-ms 600000 --max-connections-per-ip $((IDLE_CONNECTIONS + 100)) || return 0
    pid=${SERVER_PIDS[idle-$label]}
    create_sale "http://127.0.0.1:$port" 100 >/dev/null
  fi
  local path=/api/sales/1
  printf '%s\t%s\n' "$label" \
    "$(python3 "$ROOT/scripts/idle_rss.py" "127.0.0.1:$port" "$pid" "$path" "$IDLE_CONNECTIONS" 2>>"$OUT/idle.log" ||
      echo failed)" >>"$OUT/idle.tsv"
  [ "$label" = ceiling ] || kill "$pid" 2>/dev/null || true
}
: > "$OUT/idle.tsv"
if [ "$IDLE_CONNECTIONS" -gt 0 ] && [ -n "$SERVER" ]; then
  idle_memory ceiling "" $CEILING_PORT
  idle_memory current "$SERVER" $PORT_IDLE
  if [ -n "$BASELINE_TABLE" ] && [ -x "$BASELINE_BIN" ]; then
    idle_memory before "$BASELINE_BIN" $((PORT_IDLE + 1))
  fi
fi
idle_table() {
  [ -s "$OUT/idle.tsv" ] || return 0
  echo
  echo "Resident memory per idle keep-alive connection ($IDLE_CONNECTIONS connections, each served one status read, scripts/idle_rss.py):"
  echo
  echo "| server | connections | RSS before KiB | RSS after KiB | KiB per connection |"
  echo "|---|---:|---:|---:|---:|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }' "$OUT/idle.tsv"
}

{
  python3 "$ROOT/scripts/bench_table.py" "$RESULTS" "$OUT/seed.tsv"
  accounts_table
  baseline_table
  hold_table
  idle_table
} | tee "$OUT/table.md"
