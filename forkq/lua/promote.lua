-- promote: move due jobs from schedule or retry to their queues.  The caller read
-- the due members (ZRANGEBYSCORE) and rewrote them (enqueued_at); ZREM guards the
-- move, so concurrent promoters never move one job twice.  Every job name is moved,
-- known to this pool or not.
--
-- KEYS[1]  schedule or retry   zset
-- KEYS[2]  queues              set
-- KEYS[3..] queue:<name> for each distinct name in this batch
-- ARGV[1]  wake channel
-- ARGV[2..] groups of 4: original member, queue key index (1-based into KEYS[3..]),
--           payload to push, job name
--
-- Returns the number of jobs moved.

local moved = 0
local woken = {}
local i = 2
while i + 3 <= #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    local qkey = KEYS[2 + tonumber(ARGV[i + 1])]
    redis.call('SADD', KEYS[2], ARGV[i + 3])
    if redis.call('LPUSH', qkey, ARGV[i + 2]) == 1 and not woken[qkey] then
      woken[qkey] = true
      redis.call('PUBLISH', ARGV[1], ARGV[i + 3])
    end
    moved = moved + 1
  end
  i = i + 4
end
return moved
