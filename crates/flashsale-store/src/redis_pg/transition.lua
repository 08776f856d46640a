-- transition.lua: applies the unit move of one order's transition, committed in PostgreSQL
-- first (checkout.rs), to the sale's Redis figures, at most once per order.
--
-- KEYS[1] meta     hash  (admission.lua): remaining, onhold, epoch, sold_out_us, ...
-- KEYS[2] held     hash  user id -> units held (reserved + paid)
-- KEYS[3] applied  set   order ids whose move is applied under the current state
-- ARGV[1] order id
-- ARGV[2] the sale's epoch the transition committed under (PostgreSQL's `sales.epoch`)
-- ARGV[3] "pay" (onhold -> sold) or "release" (onhold -> remaining, the buyer's allowance back)
-- ARGV[4] the buyer's user id
-- ARGV[5] units
-- ARGV[6] when the transition was decided (microseconds, PostgreSQL's clock): the payment of
--         the last unit held is the sale's sold-out instant, as PostgreSQL records it too
-- ARGV[7..] release only: the waiters PostgreSQL offered one of the released units each, in
--         the same transaction (waitlist.rs): those k units stay on hold, now theirs, so only
--         q - k go back to remaining, and each offered buyer's allowance grows by one
-- Returns "applied" (moved now), "done" (moved before, or reflected already: Redis was rebuilt
-- from PostgreSQL after the commit, at a later epoch), or "later" (the sale's state is missing
-- or older than the commit's epoch: a rebuild is on its way and will reflect the move; nothing
-- done, ask again).
--
-- Why the epoch decides: a rebuild bumps `sales.epoch` under the sale row's lock, which every
-- transition takes too, so a rebuild at a later epoch read PostgreSQL after the commit.

local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  return 'later'
end
local current, committed = tonumber(epoch), tonumber(ARGV[2])
if current > committed then
  return 'done'
end
if current < committed then
  return 'later'
end
if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then
  return 'done'
end
local q = tonumber(ARGV[5])
if ARGV[3] == 'release' then
  -- Never a Lua "-0": HINCRBY refuses it (and a script's error keeps its earlier writes).
  local back = q - (#ARGV - 6)
  if back > 0 then
    redis.call('HINCRBY', KEYS[1], 'onhold', string.format('%d', -back))
    redis.call('HINCRBY', KEYS[1], 'remaining', string.format('%d', back))
  end
  redis.call('HDEL', KEYS[1], 'sold_out_us')
  if redis.call('HINCRBY', KEYS[2], ARGV[4], -q) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[4])
  end
  for i = 7, #ARGV do
    redis.call('HINCRBY', KEYS[2], ARGV[i], 1)
  end
else
  redis.call('HINCRBY', KEYS[1], 'onhold', -q)
  local m = redis.call('HMGET', KEYS[1], 'remaining', 'reserved', 'onhold')
  if tonumber(m[1] or '0') + tonumber(m[2] or '0') + tonumber(m[3] or '0') <= 0 then
    -- The last unit is paid: the sale is sold out from then on.
    redis.call('HSET', KEYS[1], 'sold_out_us', ARGV[6])
  end
end
return 'applied'
