-- wrk script: POST one unit per request, every request a distinct buyer.
-- usage: wrk -t4 -c256 -d10s -s scripts/wrk-distinct-buyers.lua http://127.0.0.1:8080/api/sales/1/orders
-- PREFIX (env) keeps buyer ids distinct across several wrk processes.
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local counter = 0
local prefix = os.getenv("PREFIX") or "w"
request = function()
  counter = counter + 1
  local body = '{"user_id":"' .. prefix .. tid .. '-' .. counter .. '"}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency)
  io.write(string.format("p50 %.2f ms  p99 %.2f ms\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
