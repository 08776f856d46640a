-- change.lua: an operator's change to a sale (edit, cancel), in the steps around its
-- PostgreSQL write (see change.rs). `freeze` stops admissions at one instant of Redis's clock
-- and reports the figures the change is decided against; until `apply` (or `thaw`, or the
-- lease running out) `admission.lua` answers "wait", so no purchase is decided between the
-- decision and the change taking effect.
--
-- KEYS[1] meta  hash  (fields of admission.lua, plus changing, changing_until, cancelled,
--                      revision)
-- ARGV[1] step: freeze | apply | thaw
-- ARGV[2] token: the change's id
-- freeze: ARGV[3] lease (ms). Returns {"missing"} (rebuild, then retry), {"busy"} (another
--         change holds a live lease) or {"frozen", now_us, stock, remaining, reserved,
--         onhold} (onhold: units of hold reservations waiting for payment, "0" if none). The
--         clock is guarded as in admission.lua and the decision instant recorded in clock_us.
-- apply:  ARGV[3..8] stock, limit, starts_us, ends_us, cancelled ("1" or ""), revision.
--         Free units move by the change of stock (units reserved meanwhile stay counted).
--         Returns {"ok", remaining, reserved} or {"lost"} (the freeze is not ours any more).
-- thaw:   ends the freeze without a change. Returns {"ok"} or {"lost"}.

local step, token = ARGV[1], ARGV[2]
local meta = redis.call('HMGET', KEYS[1], 'stock', 'remaining', 'reserved', 'clock_us',
  'changing', 'changing_until', 'onhold')
local function fmt(n) return string.format('%.0f', n) end

if step == 'freeze' then
  if not meta[1] then
    return {'missing'}
  end
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local clock = tonumber(meta[4] or '0')
  if now_us < clock then
    now_us = clock
  end
  local now_ms = math.floor(now_us / 1000)
  if meta[5] and meta[5] ~= token and tonumber(meta[6] or '0') > now_ms then
    return {'busy'}
  end
  redis.call('HSET', KEYS[1], 'changing', token, 'changing_until',
    fmt(now_ms + tonumber(ARGV[3])), 'clock_us', fmt(now_us))
  return {'frozen', fmt(now_us), meta[1], meta[2], meta[3] or '0', meta[7] or '0'}
end

if meta[5] ~= token then
  return {'lost'}
end
if step == 'thaw' then
  redis.call('HDEL', KEYS[1], 'changing', 'changing_until')
  return {'ok'}
end
if step ~= 'apply' then
  return redis.error_reply('unknown change step ' .. step)
end
local remaining = tonumber(meta[2]) + tonumber(ARGV[3]) - tonumber(meta[1])
redis.call('HSET', KEYS[1], 'stock', ARGV[3], 'limit', ARGV[4], 'starts_us', ARGV[5],
  'ends_us', ARGV[6], 'remaining', fmt(remaining), 'revision', ARGV[8])
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[1], 'cancelled', '1')
end
if remaining > 0 then
  redis.call('HDEL', KEYS[1], 'sold_out_us')
end
redis.call('HDEL', KEYS[1], 'changing', 'changing_until')
return {'ok', fmt(remaining), meta[3] or '0'}
