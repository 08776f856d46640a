#!/usr/bin/env bash
# POST /orders throughput (wrk, 256 connections, distinct buyers, large stock) for the
# scale-out store with one and with two instances, and for the embedded store, in one run.
# Needs a release build (cargo build --release), wrk, and the local Redis and PostgreSQL.
# Each run uses its own Redis key prefix and PostgreSQL schema, dropped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/flashsale
DUR=${DUR:-10s}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
NAME=bench_$(date +%s)
TOKEN=bench
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql "$DATABASE_URL" -qc "DROP SCHEMA IF EXISTS $NAME CASCADE" >/dev/null 2>&1 || true
    redis-cli -u "$REDIS_URL" --scan --pattern "{$NAME:*" | xargs -r redis-cli -u "$REDIS_URL" DEL >/dev/null || true
    rm -rf "${DATA:-}"
}
trap cleanup EXIT

start() { # port, extra args...
    local port=$1; shift
    RUST_LOG=warn "$BIN" --listen 127.0.0.1:"$port" --admin-token $TOKEN --demo-sale false "$@" >/dev/null &
    pids+=($!)
    for _ in $(seq 100); do curl -sf "127.0.0.1:$port/readyz" >/dev/null && return; sleep 0.1; done
    echo "instance on $port did not start" >&2; exit 1
}
sale() { # port -> sale id
    local from to
    from=$(date -u -d '-1 sec' +%FT%TZ); to=$(date -u -d '+1 hour' +%FT%TZ)
    curl -sf -X POST "127.0.0.1:$1/api/admin/sales" -H "Authorization: Bearer $TOKEN" \
        -H 'content-type: application/json' \
        -d "{\"name\":\"bench\",\"starts_at\":\"$from\",\"ends_at\":\"$to\",\"stock\":100000000}" |
        sed -E 's/.*"sale_id":([0-9]+).*/\1/'
}
run_wrk() { # label, urls...
    local label=$1; shift
    local c=$((256 / $#)) i=0 out=() wrks=()
    for url in "$@"; do
        out+=("$(mktemp)")
        PREFIX="$label$i-" wrk -t2 -c$c -d"$DUR" -s scripts/wrk-distinct-buyers.lua "$url" >"${out[$i]}" &
        wrks+=($!)
        i=$((i + 1))
    done
    wait "${wrks[@]}"
    local total=0
    for f in "${out[@]}"; do
        total=$(echo "$total + $(awk '/Requests\/sec/ {print $2}' "$f")" | bc)
        grep -E "p50|Non-2xx" "$f" | sed "s/^/  $label: /"
        rm -f "$f"
    done
    echo "$label: $total requests/s"
}

start 18081 --store redis --redis-url "$REDIS_URL" --database-url "$DATABASE_URL" --redis-prefix "$NAME" --pg-schema "$NAME"
id=$(sale 18081)
run_wrk redis-1 "http://127.0.0.1:18081/api/sales/$id/orders"
start 18082 --store redis --redis-url "$REDIS_URL" --database-url "$DATABASE_URL" --redis-prefix "$NAME" --pg-schema "$NAME"
id=$(sale 18081)
run_wrk redis-2 "http://127.0.0.1:18081/api/sales/$id/orders" "http://127.0.0.1:18082/api/sales/$id/orders"
DATA=$(mktemp -d)
start 18083 --store embedded --data-dir "$DATA"
id=$(sale 18083)
run_wrk embedded "http://127.0.0.1:18083/api/sales/$id/orders"
