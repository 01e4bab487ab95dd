-- release_lock: delete a lock only if it still holds our token (compare-and-delete).
-- A GET then DEL from the client could delete a lock that expired and was taken by
-- another reaper in between.
--
-- KEYS[1]  the lock   string
-- ARGV[1]  our token
--
-- Returns 1 when released, 0 when the lock was not ours (any more).

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
