-- admission.lua: decides one purchase attempt atomically, mirroring flashsale_core::decide.
--
-- KEYS[1] meta          hash  stock, limit, starts_us, ends_us, remaining, epoch, sold_out_us
-- KEYS[2] held          hash  user id -> units held (committed + reserved)
-- KEYS[3] leases        zset  order id -> lease deadline (ms, Redis clock)
-- KEYS[4] reservations  hash  order id -> "user\nquantity\ncreated_us\nkey\nepoch"
-- KEYS[5] idempotency   hash  key -> first outcome (records below)
-- ARGV[1] user id (trimmed, no control characters, so "\n" is a safe separator)
-- ARGV[2] quantity (1..limit, checked by the caller against the same limit)
-- ARGV[3] idempotency key, or "" for none
-- ARGV[4] order id to use if admitted (UUID v7 chosen by the caller)
-- ARGV[5] lease in milliseconds
--
-- The clock is Redis's own (TIME): one clock for every instance.
-- Returns an array whose first two items are {status, now_us}:
--   {"missing", now}                          the sale's state is gone: rebuild it, retry
--   {"admit", now, epoch, remaining}          stock taken, reservation recorded with a lease
--   {"reject", now, code, arg}                code: upcoming | ended | sold_out | already |
--                                             limit (arg = allowed) | insufficient (arg = left)
--   {"reused", now}                           the key was first used by another user/quantity
--   {"pending", now}                          the key's first attempt is still being committed
--   {"replay", now, record}                   the key's first outcome, one of
--                                             "C\nuser\nq\norder_id\ncreated_us" (confirmed)
--                                             "R\nuser\nq\ncode\narg" (rejected)
-- Idempotency records: "P\nuser\nq\norder_id" while pending, then C or R as above.

local function fmt(n) return string.format('%.0f', n) end

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = fmt(now_us)

local meta = redis.call('HMGET', KEYS[1], 'limit', 'starts_us', 'ends_us', 'remaining', 'epoch')
if not meta[1] then
  return {'missing', now}
end

local user, qty, key, order_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local q = tonumber(qty)

if key ~= '' then
  local rec = redis.call('HGET', KEYS[5], key)
  if rec then
    local kind, ruser, rq = string.match(rec, '^(%a)\n([^\n]*)\n([^\n]*)')
    if ruser ~= user or rq ~= qty then
      return {'reused', now}
    end
    if kind == 'P' then
      return {'pending', now}
    end
    return {'replay', now, rec}
  end
end

local limit = tonumber(meta[1])
local starts = tonumber(meta[2])
local ends = tonumber(meta[3])
local remaining = tonumber(meta[4])
local epoch = meta[5]

-- State first (upcoming, sold out, ended), then the buyer's limit, then the quantity.
local code, arg = nil, 0
if now_us < starts then
  code = 'upcoming'
elseif remaining <= 0 then
  code = 'sold_out'
elseif now_us >= ends then
  code = 'ended'
else
  local held = tonumber(redis.call('HGET', KEYS[2], user) or '0')
  local allowed = limit - held
  if allowed <= 0 then
    code = 'already'
  elseif q > allowed then
    code, arg = 'limit', allowed
  elseif q > remaining then
    code, arg = 'insufficient', remaining
  end
end

if code then
  if key ~= '' then
    redis.call('HSET', KEYS[5], key, 'R\n' .. user .. '\n' .. qty .. '\n' .. code .. '\n' .. fmt(arg))
  end
  return {'reject', now, code, fmt(arg)}
end

remaining = remaining - q
redis.call('HSET', KEYS[1], 'remaining', fmt(remaining))
if remaining == 0 then
  redis.call('HSET', KEYS[1], 'sold_out_us', now)
end
redis.call('HINCRBY', KEYS[2], user, q)
redis.call('ZADD', KEYS[3], fmt(math.floor(now_us / 1000) + tonumber(ARGV[5])), order_id)
redis.call('HSET', KEYS[4], order_id, user .. '\n' .. qty .. '\n' .. now .. '\n' .. key .. '\n' .. epoch)
if key ~= '' then
  redis.call('HSET', KEYS[5], key, 'P\n' .. user .. '\n' .. qty .. '\n' .. order_id)
end
return {'admit', now, epoch, fmt(remaining)}
