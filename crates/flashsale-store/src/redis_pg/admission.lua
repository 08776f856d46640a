-- admission.lua: decides a batch of purchase attempts of one sale atomically, one after the
-- other in the order given, each exactly as if it had been the only one in its own call
-- (mirroring flashsale_core::decide; a batch of one is the single-attempt case).
--
-- KEYS[1] meta          hash  stock, limit, starts_us, ends_us, remaining, reserved, epoch,
--                             sold_out_us, clock_us, cancelled, changing_until (change.lua),
--                             hold ("1": a hold-mode sale), onhold (units of committed
--                             reservations waiting for payment, moved by transition.lua)
-- KEYS[2] held          hash  user id -> units held (committed + reserved)
-- KEYS[3] leases        zset  order id -> lease deadline (ms, Redis clock)
-- KEYS[4] reservations  hash  order id -> "user\nquantity\ncreated_us\nkey\nepoch"
-- KEYS[5] idempotency   hash  key -> first outcome (records below)
-- KEYS[6] refused       zset  key of each remembered refusal -> when (ms)
-- KEYS[7] reserving     hash  user id -> units of the buyer's live reservations
-- ARGV[1] lease in milliseconds
-- ARGV[2] how long a refusal is remembered by its key (ms)
-- ARGV[3] the most refusals remembered per sale (the oldest is forgotten first)
-- ARGV[4..] four items per attempt, in arrival order:
--           user id (trimmed, no control characters, so "\n" is a safe separator),
--           quantity (1..limit, checked by the caller against the same limit),
--           idempotency key or "" for none,
--           order id to use if admitted (UUID v7 chosen by the caller)
--
-- Hold mode (mirroring flashsale_core::decide_units): the sale's state is read from its unsold
-- units (remaining + onhold: a sale whose every unit is held is still active), what may be
-- taken is `remaining`, and nothing remaining while units are on hold is a `sold_out` that is
-- not final (a release may bring units back). `held` counts the buyer's reserved + paid units.
--
-- The clock is Redis's own (TIME): one clock for every instance, guarded so that it never
-- goes back for a sale: an instant before `clock_us` (the clock stepped back, or a failover
-- to a host whose clock is behind) is taken as `clock_us`, so an ended sale stays ended.
-- Every attempt of a batch is decided at the same instant (one TIME per call).
-- Returns one reply per attempt, in the order given; each reply is an array whose first two
-- items are {status, now_us}:
--   {"missing", now}                          the sale's state is gone: rebuild it, retry
--   {"admit", now, epoch, remaining}          stock taken, reservation recorded with a lease
--   {"reject", now, code, arg, final}         code: upcoming | ended | sold_out | already |
--                                             limit (arg = allowed) | insufficient (arg = left);
--                                             final "1": no later decision can differ (ended,
--                                             sold out)
--   {"wait", now}                             an operator's change is being made (change.lua
--                                             froze the sale), or a refusal that reservations
--                                             still in flight could make untrue (sold out while
--                                             units are reserved;
--                                             the limit while the buyer's own are): nothing
--                                             done, retry once they are settled
--   {"reused", now}                           the key was first used by another user/quantity
--   {"pending", now}                          the key's first attempt is still being committed
--   {"replay", now, record}                   the key's first outcome, one of
--                                             "C\nuser\nq\norder_id\ncreated_us" (confirmed)
--                                             "R\nuser\nq\ncode\narg" (rejected)
-- Idempotency records: "P\nuser\nq\norder_id" while pending, then C or R as above. A refusal
-- is remembered only while a later decision could differ; final refusals are not stored (the
-- same answer is decided again), and stored ones are forgotten after ARGV[2], beyond ARGV[3],
-- and once the sale has ended (by time, or sold out with nothing in flight): from then on a
-- refused key gets the sale's final answer, the same for every key (docs/api.md).

local function fmt(n) return string.format('%.0f', n) end

local lease_ms = tonumber(ARGV[1])
local retention_ms = tonumber(ARGV[2])
local max_refused = tonumber(ARGV[3])
local t = redis.call('TIME')
local time_us = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- Forgets up to `n` remembered refusals, oldest first, among those scored up to `upto`.
local function forget(upto, n)
  local old = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', upto, 'LIMIT', 0, n)
  for _, k in ipairs(old) do
    local rec = redis.call('HGET', KEYS[5], k)
    if rec and string.sub(rec, 1, 1) == 'R' then
      redis.call('HDEL', KEYS[5], k)
    end
    redis.call('ZREM', KEYS[6], k)
  end
end

-- Decides one attempt against the sale as the attempts before it in the batch left it: meta
-- is read afresh, so each decision sees its predecessors' writes.
local function decide(user, qty, key, order_id)
  local meta = redis.call('HMGET', KEYS[1], 'limit', 'starts_us', 'ends_us', 'remaining',
    'epoch', 'reserved', 'clock_us', 'cancelled', 'changing_until', 'hold', 'onhold')
  local clock = tonumber(meta[7] or '0')
  local now_us = time_us
  if now_us < clock then
    now_us = clock
  end
  local now = fmt(now_us)
  local now_ms = math.floor(now_us / 1000)

  if not meta[1] then
    return {'missing', now}
  end

  if meta[9] and tonumber(meta[9]) > now_ms then
    -- Decided after the operator's change, against the sale it makes (a few ms away).
    return {'wait', now}
  end

  local q = tonumber(qty)
  local limit = tonumber(meta[1])
  local starts = tonumber(meta[2])
  local ends = tonumber(meta[3])
  local remaining = tonumber(meta[4])
  local epoch = meta[5]
  local reserved = tonumber(meta[6] or '0')
  local cancelled = meta[8] == '1'
  local hold = meta[10] == '1'
  -- Units held by committed reservations: unsold, but not to be taken (0 in instant mode).
  local onhold = tonumber(meta[11] or '0')

  -- Once the sale has ended (as `Sale::state` says, counting reserved units as not yet sold),
  -- every decision is its final answer, the same for every key: a remembered refusal (say
  -- `upcoming`) would now be untrue, so it is forgotten before the key is looked up, and the
  -- attempt decided again, as the embedded store does.
  local ended = cancelled or (now_us >= starts and (now_us >= ends or remaining + reserved + onhold <= 0))
  if ended and redis.call('ZCARD', KEYS[6]) > 0 then
    forget('+inf', 64)
  end

  if key ~= '' then
    local rec = redis.call('HGET', KEYS[5], key)
    if rec and ended and string.sub(rec, 1, 1) == 'R' then
      -- Beyond the 64 forgotten above: this one is forgotten now.
      redis.call('HDEL', KEYS[5], key)
      redis.call('ZREM', KEYS[6], key)
      rec = nil
    end
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

  -- State first (upcoming, sold out, ended), then the buyer's limit, then the quantity.
  local code, arg, final = nil, 0, false
  if cancelled then
    -- As Sale::state: a cancellation ends the sale whatever the clock or the stock says.
    code, final = 'ended', true
  elseif now_us < starts then
    code = 'upcoming'
  elseif remaining + onhold <= 0 then
    code, final = 'sold_out', true
  elseif now_us >= ends then
    code, final = 'ended', true
    if clock < ends then
      -- The first decision past the end: from now on no step of the clock re-opens the sale.
      redis.call('HSET', KEYS[1], 'clock_us', now)
    end
  else
    local held = tonumber(redis.call('HGET', KEYS[2], user) or '0')
    local allowed = limit - held
    if allowed <= 0 then
      code = 'already'
    elseif q > allowed then
      code, arg = 'limit', allowed
    elseif remaining <= 0 then
      -- Every unsold unit is on hold (hold mode): a release may bring some back.
      code = 'sold_out'
    elseif q > remaining then
      code, arg = 'insufficient', remaining
    end
    if (code == 'already' or code == 'limit')
        and tonumber(redis.call('HGET', KEYS[7], user) or '0') > 0 then
      -- Part of what the buyer holds is still being committed: if it fails, this refusal
      -- would be untrue (and the buyer would be told about orders that do not exist).
      return {'wait', now}
    end
  end
  if code == 'sold_out' and reserved > 0 then
    -- Units are reserved but not yet confirmed: if their commit fails they come back, and
    -- "no unit is left" would have been untrue. Their outcome is a few ms away. (A refusal
    -- for too few units says how many are free now, which is true whatever happens next: it
    -- does not wait, as in the embedded store.)
    return {'wait', now}
  end

  if code then
    -- A final refusal is not stored (the sale has ended: refusals were forgotten above).
    if not final and key ~= '' then
      forget(fmt(now_ms - retention_ms), 16)
      local over = redis.call('ZCARD', KEYS[6]) - max_refused + 1
      if over > 0 then
        local oldest = redis.call('ZRANGE', KEYS[6], 0, math.min(over, 16) - 1, 'WITHSCORES')
        if #oldest > 0 then
          forget(oldest[#oldest], math.min(over, 16))
        end
      end
      redis.call('HSET', KEYS[5], key,
        'R\n' .. user .. '\n' .. qty .. '\n' .. code .. '\n' .. fmt(arg))
      redis.call('ZADD', KEYS[6], now_ms, key)
    end
    return {'reject', now, code, fmt(arg), final and '1' or '0'}
  end

  remaining = remaining - q
  redis.call('HSET', KEYS[1], 'remaining', fmt(remaining), 'reserved', fmt(reserved + q),
    'clock_us', now)
  if remaining == 0 and not hold then
    -- (A hold sale sells out when its last unit is paid: transition.lua.)
    redis.call('HSET', KEYS[1], 'sold_out_us', now)
  end
  redis.call('HINCRBY', KEYS[2], user, q)
  redis.call('HINCRBY', KEYS[7], user, q)
  redis.call('ZADD', KEYS[3], fmt(now_ms + lease_ms), order_id)
  redis.call('HSET', KEYS[4], order_id,
    user .. '\n' .. qty .. '\n' .. now .. '\n' .. key .. '\n' .. epoch)
  if key ~= '' then
    redis.call('HSET', KEYS[5], key, 'P\n' .. user .. '\n' .. qty .. '\n' .. order_id)
  end
  return {'admit', now, epoch, fmt(remaining)}
end

local replies = {}
for i = 4, #ARGV - 3, 4 do
  replies[#replies + 1] = decide(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
end
return replies
