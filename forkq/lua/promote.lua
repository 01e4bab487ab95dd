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
--           payload to push, job name.  A job of a fair group has "qi:gi" as its index:
--           KEYS[2+gi] is its gqueue:<name>:<group> (pushed to), KEYS[3+gi] groups:<name>;
--           a group added to that set gets its token in the queue (enqueue_group.lua).
--
-- Returns the number of jobs moved.

--@include _groups

local moved = 0
local woken = {}
local i = 2
while i + 3 <= #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    local qi, gi = tonumber(ARGV[i + 1]), nil
    if not qi then
      local a, b = string.match(ARGV[i + 1], '^(%d+):(%d+)$')
      qi, gi = tonumber(a), tonumber(b)
    end
    local qkey = KEYS[2 + qi]
    redis.call('SADD', KEYS[2], ARGV[i + 3])
    local entry = ARGV[i + 2]
    local pushed = true
    if gi then
      local g = string.match(KEYS[2 + gi], ':([^:]*)$')
      redis.call('LPUSH', KEYS[2 + gi], entry)
      entry = token_of(ARGV[i + 3], g)
      pushed = redis.call('SADD', KEYS[3 + gi], g) == 1
    end
    if pushed and redis.call('LPUSH', qkey, entry) == 1 and not woken[qkey] then
      woken[qkey] = true
      redis.call('PUBLISH', ARGV[1], ARGV[i + 3])
    end
    moved = moved + 1
  end
  i = i + 4
end
return moved
