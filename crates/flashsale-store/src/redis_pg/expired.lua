-- expired.lua: lists reservations whose lease has run out (by Redis's clock).
--
-- KEYS[1] leases        zset  order id -> lease deadline (ms)
-- KEYS[2] reservations  hash  order id -> "user\nquantity\ncreated_us\nkey\nepoch"
-- ARGV[1] the most to return
-- Returns a flat array {order_id, record, order_id, record, ...}; nothing is changed.

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now_ms),
  'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do
  local rec = redis.call('HGET', KEYS[2], id)
  if rec then
    out[#out + 1] = id
    out[#out + 1] = rec
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
