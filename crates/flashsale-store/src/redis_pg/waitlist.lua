-- waitlist.lua: publishes a sale's waitlist length (PostgreSQL's `sales.waitlist_len`, see
-- waitlist.rs) into its meta hash, where status reads take it with the other figures.
--
-- KEYS[1] meta  hash  (admission.lua)
-- ARGV[1] the length  ARGV[2] its revision (`sales.waitlist_rev`, bumped by every change of
--         the list under the sale row's lock, so commits are ordered by it)
-- Writes only a newer revision than meta holds (publishes race: the older one loses), and
-- only while meta exists (a rebuild restores the pair from PostgreSQL). Returns 1 if written.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local cur = tonumber(redis.call('HGET', KEYS[1], 'waitlist_rev') or '0')
if cur >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'waitlist', ARGV[1], 'waitlist_rev', ARGV[2])
return 1
