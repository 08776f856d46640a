#!/usr/bin/env bash
# The one command that runs every test of flashsale (README: "Test").
#
# Every suite runs even when an earlier one fails; a summary of each suite's result ends the
# output, and the exit status is non-zero when any suite failed. Adding a suite is one
# `run_suite name command...` line at the end.
#
# On a fresh machine of our kind it installs what the tests need and is missing (Debian's
# chromium + chromium-driver for the browser tests), makes sure the local PostgreSQL and Redis
# that the scale-out tests use are running, then runs the whole workspace's tests and the
# stress scenarios and schemathesis. Tests isolate themselves (own data dir, schema, key prefix, private
# redis-server/postgres for the ones that stop or flush a service).
set -uo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_pkgs+=(chromium-driver)
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
if ((${#need_pkgs[@]})); then
    if [ "$(id -u)" = 0 ]; then
        echo "test.sh: installing ${need_pkgs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
    else
        echo "test.sh: please install: ${need_pkgs[*]} (Debian packages)" >&2
        exit 1
    fi
fi

# The shared local services (CI: 127.0.0.1:5432 and :6379). Start them if they stopped.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
for _ in $(seq 1 50); do
    pg_isready -q -h 127.0.0.1 -p 5432 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
    sleep 0.2
done

SUITE_RESULTS=()
failed=0
# Runs one suite to the end whatever its result, and remembers the result for the summary.
run_suite() { # name command...
    local name=$1 started=$SECONDS rc
    shift
    echo "== test.sh: suite $name: $*"
    "$@"
    rc=$?
    local took=$((SECONDS - started))
    if [ $rc -eq 0 ]; then
        SUITE_RESULTS+=("passed  $name (${took} s)")
    else
        SUITE_RESULTS+=("FAILED  $name (exit $rc, ${took} s)")
        failed=1
    fi
}

run_suite cargo-test cargo test --workspace --all-targets --no-fail-fast
# T-7..T-10: the herd and duplicates scenarios against real servers (embedded, then two
# scale-out instances), invariants checked from the server's own endpoints.
run_suite stress scripts/stress.sh
# The OpenAPI document against the running server: no response may violate it.
run_suite schemathesis scripts/schemathesis.sh
# The README's quickstart, extracted from README.md and run as written against a fresh server.
run_suite readme-quickstart scripts/readme_quickstart.sh
# deploy/ checked by the real tools (compose, checkov, promtool, nginx -t), then run for real.
run_suite deploy-check scripts/deploy-check.sh
run_suite deploy-test scripts/deploy-test.sh

echo
echo "== test.sh: summary"
printf '  %s\n' "${SUITE_RESULTS[@]}"
exit $failed
