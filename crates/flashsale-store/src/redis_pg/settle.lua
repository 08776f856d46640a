-- settle.lua: resolves reservations once PostgreSQL has decided them.
--
-- KEYS[1..5] as in admission.lua (meta, held, leases, reservations, idempotency)
-- ARGV[1]    "confirm" (committed in PostgreSQL: keep the stock taken, finalise the key)
--            or "release" (fenced as released in PostgreSQL: give the stock back)
-- ARGV[2..]  order ids
-- Returns the number of reservations settled. Reservations no longer present (settled by
-- someone else, or lost with Redis's data) are skipped, so settling twice is harmless.

local function fmt(n) return string.format('%.0f', n) end

local settled = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local rec = redis.call('HGET', KEYS[4], id)
  if rec then
    local user, qty, created, key = string.match(rec, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)')
    redis.call('HDEL', KEYS[4], id)
    redis.call('ZREM', KEYS[3], id)
    if ARGV[1] == 'confirm' then
      if key ~= '' then
        redis.call('HSET', KEYS[5], key, 'C\n' .. user .. '\n' .. qty .. '\n' .. id .. '\n' .. created)
      end
    else
      local q = tonumber(qty)
      if redis.call('EXISTS', KEYS[1]) == 1 then
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
return settled
