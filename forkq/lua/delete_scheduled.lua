-- delete_scheduled: remove one scheduled job and, in the same step, release the unique
-- guard it holds (only if the guard still names this job: a newer job with the same
-- arguments may have taken it since).  Replaces a WATCH/MULTI loop in the client.
--
-- KEYS[1]  schedule                     zset  the job's member
-- KEYS[2]  unique:<name>:<args|key>     string guard (optional: absent for plain jobs)
-- ARGV[1]  the exact member to remove
-- ARGV[2]  the job's jid (what the guard holds if it is this job's)
--
-- Returns 1 if the member was removed, 0 if it was not there (then nothing is touched).

local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 and KEYS[2] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
end
return removed
