-- restore.lua: the last step of rebuilding a sale from PostgreSQL (see reconcile.rs).
--
-- KEYS[1] meta  hash (written last: its presence is what lets admissions through)
-- ARGV[1] stock  ARGV[2] limit  ARGV[3] starts_us  ARGV[4] ends_us  ARGV[5] remaining
-- ARGV[6] epoch  ARGV[7] sold_out_us or ""
-- Returns 1 if written, 0 if the meta already exists with an epoch at least as new (another
-- instance rebuilt first, so this one's view is not newer).

local cur = redis.call('HGET', KEYS[1], 'epoch')
if cur and tonumber(cur) >= tonumber(ARGV[6]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'stock', ARGV[1], 'limit', ARGV[2], 'starts_us', ARGV[3],
  'ends_us', ARGV[4], 'remaining', ARGV[5], 'epoch', ARGV[6])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'sold_out_us', ARGV[7])
end
return 1
