#!/usr/bin/env bash
# Soak (issue 7): mixed traffic at a steady, open-loop rate across several sales for a bounded
# time, sampling the server's resident memory (VmRSS) and open file descriptors every few
# seconds. Fails if either grows past its threshold between the end of the warm-up and the
# end, if any request failed at the connection level or got a 5xx, or if a sale's books do not
# balance (confirmed units = stock taken).
#
#   scripts/soak.sh                       # 10 minutes at 300 requests/s over 4 sales
#   SOAK_SECS=300 SOAK_RATE=500 scripts/soak.sh
#
# Knobs: SOAK_SECS (600), SOAK_RATE (300/s), SOAK_SALES (4), SOAK_SAMPLE_SECS (10),
# SOAK_MAX_RSS_GROWTH_KIB (65536), SOAK_MAX_FD_GROWTH (64). The embedded store keeps every
# order in memory (by design: admission is decided there), so RSS grows slowly with the orders
# confirmed, about 0.3 KiB each: 20% of 300/s for 10 min is 36,000 orders, ~11 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${SOAK_SECS:-600}
rate=${SOAK_RATE:-300}
nsales=${SOAK_SALES:-4}
every=${SOAK_SAMPLE_SECS:-10}
max_rss_growth=${SOAK_MAX_RSS_GROWTH_KIB:-65536}
max_fd_growth=${SOAK_MAX_FD_GROWTH:-64}
token=soak-admin-token

cargo build --release -q -p flashsale-server --bin flashsale --example traffic
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d)
FLASHSALE_LISTEN=127.0.0.1:$port FLASHSALE_DATA_DIR="$work/db" FLASHSALE_ADMIN_TOKEN=$token \
    FLASHSALE_DEMO_SALE=false FLASHSALE_RATE_LIMIT=off RUST_LOG=warn \
    target/release/flashsale >"$work/server.log" 2>&1 &
pid=$!
traffic_pid=
cleanup() {
    [ -n "$traffic_pid" ] && kill "$traffic_pid" 2>/dev/null
    kill "$pid" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
base=http://127.0.0.1:$port
for _ in $(seq 1 100); do curl -fs "$base/healthz" >/dev/null && break; sleep 0.1; done

now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ends=$(date -u -d "+$((secs + 3600)) seconds" +%Y-%m-%dT%H:%M:%SZ)
ids=()
for i in $(seq 1 "$nsales"); do
    id=$(curl -fs -X POST "$base/api/admin/sales" -H "authorization: Bearer $token" \
        -H 'content-type: application/json' \
        -d "{\"name\":\"soak $i\",\"starts_at\":\"$now\",\"ends_at\":\"$ends\",\"stock\":1000000}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["sale_id"])')
    ids+=("$id")
done
sale_list=$(IFS=,; echo "${ids[*]}")

target/release/examples/traffic "$base" "$rate" "$secs" "$sale_list" mixed >"$work/traffic.txt" 2>&1 &
traffic_pid=$!

sample() {
    local rss fds threads
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    threads=$(awk '/^Threads/ {print $2}' "/proc/$pid/status")
    fds=$(ls "/proc/$pid/fd" | wc -l)
    echo "$rss $fds $threads"
}
echo "soak: $secs s at $rate req/s (mixed: 20% purchases, 80% reads) over sales $sale_list; pid $pid"
printf '%8s %12s %8s %8s\n' elapsed_s rss_kib fds threads
warmup=$((secs / 10 < 30 ? secs / 10 : 30))
base_rss=; base_fds=; last_rss=; last_fds=
start=$(date +%s)
while kill -0 "$traffic_pid" 2>/dev/null; do
    read -r rss fds threads < <(sample)
    elapsed=$(($(date +%s) - start))
    printf '%8d %12d %8d %8d\n' "$elapsed" "$rss" "$fds" "$threads"
    if [ -z "$base_rss" ] && [ "$elapsed" -ge "$warmup" ]; then base_rss=$rss; base_fds=$fds; fi
    last_rss=$rss; last_fds=$fds
    sleep "$every"
done
wait "$traffic_pid" || true
traffic_pid=
read -r rss fds threads < <(sample)
printf '%8d %12d %8d %8d  (after the traffic)\n' "$(($(date +%s) - start))" "$rss" "$fds" "$threads"
echo
cat "$work/traffic.txt"

status=0
base_rss=${base_rss:-$last_rss}; base_fds=${base_fds:-$last_fds}
rss_growth=$((last_rss - base_rss)); fd_growth=$((fds - base_fds))
echo
echo "RSS after warm-up ${base_rss} KiB -> end ${last_rss} KiB (growth ${rss_growth} KiB, limit ${max_rss_growth})"
echo "FDs after warm-up ${base_fds} -> after the traffic ${fds} (growth ${fd_growth}, limit ${max_fd_growth})"
[ "$rss_growth" -le "$max_rss_growth" ] || { echo "FAIL: memory grew"; status=1; }
[ "$fd_growth" -le "$max_fd_growth" ] || { echo "FAIL: file descriptors grew"; status=1; }
if grep -qE '^ +(err|5[0-9][0-9]):' "$work/traffic.txt"; then
    echo "FAIL: connection errors or 5xx answers"; status=1
fi
for id in "${ids[@]}"; do
    curl -fs "$base/api/admin/sales/$id/summary" -H "authorization: Bearer $token" |
        python3 -c 'import json,sys; s=json.load(sys.stdin); taken=s["stock_total"]-s["stock_remaining"]; print("sale %d: confirmed_units %d, stock taken %d" % (s["sale_id"], s["confirmed_units"], taken)); sys.exit(0 if taken==s["confirmed_units"] else 1)' ||
        { echo "FAIL: sale $id does not balance"; status=1; }
done
[ "$status" = 0 ] && echo "soak: PASS" || echo "soak: FAIL"
exit $status
