-- wrk script: POST /api/sales/{id}/orders with a distinct buyer per request.
--
-- Usage: wrk -t2 -c256 -d10s --latency -s "$PWD/scripts/wrk/orders.lua" \
--            http://127.0.0.1:8080/api/sales/1/orders -- <user-id prefix>
--
-- Each thread has its own id (given in setup) and its own counter, so buyer ids are
-- "<prefix>-<thread>-<n>": distinct across threads without any shared state. A new prefix
-- per run keeps runs against the same sale from colliding.
-- done() prints one machine-readable WRK_RESULT line (scripts/bench.sh parses it).

local next_thread = 1

function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  prefix = args[1] or "wrk"
  n = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  n = n + 1
  local body = string.format('{"user_id":"%s-%d-%d","quantity":1}', prefix, tid, n)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d socket_errors=%d non2xx=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
