-- release_unique: drop the unique guards of jobs a worker has taken, each only if it
-- still holds that job's jid.  A job retried long after its guard expired must not
-- release the guard of a newer job with the same arguments.
--
-- KEYS[i]  unique:<name>:<args|key>   string guard holding the jid that set it
-- ARGV[i]  the jid of the taken job, for KEYS[i]
--
-- Returns the number of guards released.

local released = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('DEL', KEYS[i])
    released = released + 1
  end
end
return released
