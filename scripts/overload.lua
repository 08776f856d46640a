-- wrk script for the overload figures (docs/reliability.md): every request buys one unit of
-- sale 1 for a fresh buyer id; answers are counted by status and summed over threads.
local counter, threads = 0, {}
function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end
function init(args)
   statuses = {}
   run = os.time()
end
function request()
   counter = counter + 1
   local body = string.format('{"user_id":"w%d-%d-%d"}', run, id, counter)
   return wrk.format("POST", "/api/sales/1/orders", {["content-type"] = "application/json"}, body)
end
function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
   local total = {}
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses")) do
         total[status] = (total[status] or 0) + n
      end
   end
   local all = summary.requests
   for status, n in pairs(total) do
      io.write(string.format("status %d: %d (%.1f%%)\n", status, n, 100 * n / all))
   end
   io.write(string.format("answers/s %.0f, latency of all answers p50 %.2f ms p99 %.2f ms max %.2f ms\n",
      all / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
      latency.max / 1000))
end
