-- audit.lua: what Redis holds of a sale, for the reconciler to compare with PostgreSQL
-- (see reconcile.rs). Read-only, one atomic snapshot.
--
-- KEYS[1] meta  KEYS[2] held  KEYS[3] reservations  KEYS[4] idempotency  KEYS[5] reserving
-- ARGV[1] the most holdings + idempotency records to sum (a script blocks Redis while it runs)
-- Returns {"missing", now_us} if meta is gone, else
-- {"ok", now_us, epoch, stock, remaining, held_sum, confirmed_keys, reserved_units,
--  meta_reserved, reserving_sum, revision, frozen, onhold, order_id, order_id, ...} with the
-- order id of every live reservation; meta_reserved is meta's `reserved` counter; onhold the
-- units of committed hold reservations waiting for payment ("0" for an instant sale); revision the
-- operator's change Redis last took ("0" if none); frozen "1" while a change's freeze lease
-- is live (change.lua), else "0"; held_sum, confirmed_keys and
-- reserving_sum are "" when there are more records than ARGV[1] (then only the epoch, the
-- stock taken and the reserved counter are compared, which is what a real partial loss, a
-- lost suffix of writes, changes anyway).
-- Cost: one pass over the live reservations, and over the holdings and records if few.

local function fmt(n) return string.format('%.0f', n) end

local t = redis.call('TIME')
local now = fmt(tonumber(t[1]) * 1000000 + tonumber(t[2]))
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'stock', 'remaining', 'reserved',
  'revision', 'changing_until', 'onhold')
if not meta[1] then
  return {'missing', now}
end
local held, confirmed, reserving = '', '', ''
if redis.call('HLEN', KEYS[2]) + redis.call('HLEN', KEYS[4]) <= tonumber(ARGV[1]) then
  local h, c, r = 0, 0, 0
  for _, v in ipairs(redis.call('HVALS', KEYS[2])) do
    h = h + tonumber(v)
  end
  for _, v in ipairs(redis.call('HVALS', KEYS[4])) do
    if string.sub(v, 1, 1) == 'C' then
      c = c + 1
    end
  end
  for _, v in ipairs(redis.call('HVALS', KEYS[5])) do
    r = r + tonumber(v)
  end
  held, confirmed, reserving = fmt(h), fmt(c), fmt(r)
end
local frozen = '0'
if tonumber(meta[6] or '0') > math.floor(tonumber(now) / 1000) then
  frozen = '1'
end
local out = {'ok', now, meta[1], meta[2], meta[3], held, confirmed, '0', meta[4] or '0',
  reserving, meta[5] or '0', frozen, meta[7] or '0'}
local reserved = 0
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  out[#out + 1] = all[i]
  reserved = reserved + tonumber(string.match(all[i + 1], '^[^\n]*\n([^\n]*)'))
end
out[8] = fmt(reserved)
return out
