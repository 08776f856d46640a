-- settle.lua: resolves reservations once PostgreSQL has decided them.
--
-- KEYS[1..7] as in admission.lua (meta, held, leases, reservations, idempotency, refused,
--            reserving)
-- ARGV[1]    "confirm" (committed in PostgreSQL: keep the stock taken, finalise the key)
--            or "release" (fenced as released in PostgreSQL: give the stock back)
-- ARGV[2..]  order ids
-- In a hold-mode sale (meta `hold` = "1") a confirmed reservation's units go on hold
-- (`onhold`): committed as `reserved` in PostgreSQL, waiting for payment (transition.lua).
-- Returns {settled, unconfirmed, sold_out_us}: the number of reservations settled, the sale's
-- units not yet sold (remaining + reserved + onhold; -1 if the sale's state is gone), and when the
-- last unit was taken ("" if not sold out). Reservations no longer
-- present (settled by someone else, or lost with Redis's data) are skipped, so settling twice
-- is harmless.
--
-- A release gives the units back to `remaining`; the units shown by status (remaining +
-- reserved) do not change, so a release never makes a sold-out sale look open again.

local function fmt(n) return string.format('%.0f', n) end

local has_meta = redis.call('EXISTS', KEYS[1]) == 1
local hold = has_meta and redis.call('HGET', KEYS[1], 'hold') == '1'
local settled = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local rec = redis.call('HGET', KEYS[4], id)
  if rec then
    local user, qty, created, key = string.match(rec, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)')
    local q = tonumber(qty)
    redis.call('HDEL', KEYS[4], id)
    redis.call('ZREM', KEYS[3], id)
    if redis.call('HINCRBY', KEYS[7], user, -q) <= 0 then
      redis.call('HDEL', KEYS[7], user)
    end
    if has_meta then
      redis.call('HINCRBY', KEYS[1], 'reserved', -q)
    end
    if ARGV[1] == 'confirm' then
      if hold then
        redis.call('HINCRBY', KEYS[1], 'onhold', q)
      end
      if key ~= '' then
        redis.call('HSET', KEYS[5], key, 'C\n' .. user .. '\n' .. qty .. '\n' .. id .. '\n' .. created)
      end
    else
      if has_meta then
        redis.call('HINCRBY', KEYS[1], 'remaining', q)
        redis.call('HDEL', KEYS[1], 'sold_out_us')
      end
      if redis.call('HINCRBY', KEYS[2], user, -q) <= 0 then
        redis.call('HDEL', KEYS[2], user)
      end
      if key ~= '' then
        local k = redis.call('HGET', KEYS[5], key)
        if k and string.sub(k, 1, 1) == 'P' and string.sub(k, -#id) == id then
          redis.call('HDEL', KEYS[5], key)
        end
      end
    end
    settled = settled + 1
  end
end
local unconfirmed, sold_out = -1, ''
if has_meta then
  local m = redis.call('HMGET', KEYS[1], 'remaining', 'reserved', 'sold_out_us', 'onhold')
  unconfirmed = tonumber(m[1] or '0') + tonumber(m[2] or '0') + tonumber(m[4] or '0')
  sold_out = m[3] or ''
end
return {settled, unconfirmed, sold_out}
