-- enqueue_group: push jobs of one name and one fair group to the group's list, and
-- put the group's token in the name's queue if it has none (fetch.lua takes a token
-- as "one turn of this group": groups of a name are served round-robin).
--
-- KEYS[1]  queues                  set   names of queues (Sidekiq's)
-- KEYS[2]  queue:<name>            list  the token goes here (LPUSH, like a job)
-- KEYS[3]  gqueue:<name>:<group>   list  the jobs: LPUSH here; fetch takes from the right
-- KEYS[4]  groups:<name>           set   groups that have a token or are parked: a group
--                                        added here now gets its token now
-- ARGV[1]  job name
-- ARGV[2]  wake channel: PUBLISHed when queue:<name> goes from empty to non-empty
-- ARGV[3]  group
-- ARGV[4]  the group's token (job.group_token)
-- ARGV[5..] job payloads (JSON), oldest first
--
-- Returns the group list's length after the push.

redis.call('SADD', KEYS[1], ARGV[1])
local len = 0
local start = 5
while start <= #ARGV do
  local stop = math.min(start + 999, #ARGV)
  len = redis.call('LPUSH', KEYS[3], unpack(ARGV, start, stop))
  start = stop + 1
end
if redis.call('SADD', KEYS[4], ARGV[3]) == 1 then
  if redis.call('LPUSH', KEYS[2], ARGV[4]) == 1 then
    redis.call('PUBLISH', ARGV[2], ARGV[1])
  end
end
return len
