-- rebuild.lua: the steps of rebuilding a sale from PostgreSQL (see reconcile.rs), each one
-- guarded by the rebuild lock's token, so a rebuilder whose lock expired (it was slow, another
-- took over) changes nothing any more.
--
-- KEYS[1] rebuild lock  string  the token of the instance rebuilding
-- KEYS[2] meta          hash    (begin: also held, leases, reservations, idempotency,
--                               refused, reserving follow)
-- ARGV[1] token  ARGV[2] lock ms (extended at every step)  ARGV[3] step
--
-- step "begin":   ARGV[4] the new epoch. KEYS[2..8] meta, held, leases, reservations,
--                 idempotency, refused, reserving. Refuses ("newer") if meta already holds that epoch or a later
--                 one (a faster rebuilder restored it), before anything is deleted; otherwise
--                 deletes the sale's state, meta first, so admissions wait for the rebuild.
-- step "fill":    KEYS[2] a hash; ARGV[4..] field, value pairs to write into it.
-- step "restore": KEYS[2] meta; ARGV[4..11] stock, limit, starts_us, ends_us, remaining,
--                 epoch, sold_out_us or "", clock_us (the clock guard, carried over from the
--                 lost state or PostgreSQL's last order), ARGV[12] cancelled ("1" or ""),
--                 ARGV[13] revision (of the operator's changes), ARGV[14] hold ("1" for a
--                 hold-mode sale, or ""), ARGV[15] onhold (units of the reservations
--                 PostgreSQL holds as `reserved`), ARGV[16] waitlist length, ARGV[17] its
--                 revision (waitlist.lua). Nothing is in flight after a rebuild.
--                 Writes meta last (its presence lets admissions in).
-- step "unlock":  deletes the lock.
-- Returns "ok", "lost" (the lock is not ours: stop) or "newer" (begin only).

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 'lost'
end
local step = ARGV[3]
if step == 'unlock' then
  redis.call('DEL', KEYS[1])
  return 'ok'
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if step == 'begin' then
  local cur = redis.call('HGET', KEYS[2], 'epoch')
  if cur and tonumber(cur) >= tonumber(ARGV[4]) then
    return 'newer'
  end
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
elseif step == 'fill' then
  if #ARGV > 3 then
    redis.call('HSET', KEYS[2], unpack(ARGV, 4))
  end
elseif step == 'restore' then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'stock', ARGV[4], 'limit', ARGV[5], 'starts_us', ARGV[6],
    'ends_us', ARGV[7], 'remaining', ARGV[8], 'epoch', ARGV[9], 'reserved', '0',
    'clock_us', ARGV[11], 'revision', ARGV[13], 'waitlist', ARGV[16],
    'waitlist_rev', ARGV[17])
  if ARGV[14] == '1' then
    redis.call('HSET', KEYS[2], 'hold', '1', 'onhold', ARGV[15])
  end
  if ARGV[12] == '1' then
    redis.call('HSET', KEYS[2], 'cancelled', '1')
  end
  if ARGV[10] ~= '' then
    redis.call('HSET', KEYS[2], 'sold_out_us', ARGV[10])
  end
else
  return redis.error_reply('unknown rebuild step ' .. step)
end
return 'ok'
