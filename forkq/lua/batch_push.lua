-- batch_push: create a batch (or add to an open one) and push its jobs, atomically.
-- The counts and the jobs arrive together, so no job of the batch can finish before
-- the batch knows how many it has: its callbacks cannot fire early.
--
-- KEYS[1]  queues         set   names of queues (Sidekiq's)
-- KEYS[2]  batch:<bid>    hash  total, pending, succeeded, failures, dead, created_at,
--                               description, success_queue/success_job,
--                               complete_queue/complete_job (callback payloads),
--                               success_at / complete_at once fired
-- KEYS[3]  batches        zset  bid -> created-at (Redis's TIME)
-- KEYS[4..3+g] queue:<name> of each name group below, same order
-- ARGV[1]  wake channel: PUBLISHed for each queue that goes from empty to non-empty
-- ARGV[2]  bid
-- ARGV[3]  "new": create the batch (an error if the bid exists); "add": add to an
--          open batch (an error if it is unknown or already finished)
-- ARGV[4]  on_success queue name ("" for none)    \  used by "new" only; the
-- ARGV[5]  on_success job payload (JSON)           |  payloads are built by the
-- ARGV[6]  on_complete queue name ("" for none)    |  client (forkq/job.py owns
-- ARGV[7]  on_complete job payload (JSON)          |  the job format)
-- ARGV[8]  description                            /
-- ARGV[9]  seconds a finished batch is kept (its hash's TTL once the callbacks fired;
--          batch ids older than twice this leave the batches zset)
-- ARGV[10] queue key prefix ("<prefix>queue:"): where a callback job is pushed
-- ARGV[11] g: number of name groups
-- ARGV[12..] per group: name, n, then n payloads (JSON)
--
-- Returns the batch's pending count after the push.

local bkey = KEYS[2]
local bid = ARGV[2]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local stamp = string.format('%.6f', now)

-- A finished batch fires its callbacks once (lua/_batch_count.lua).
--@include _batch_count
local _, fire = batch_counting(KEYS[1], ARGV[10], ARGV[9],
  function(queue) redis.call('PUBLISH', ARGV[1], queue) end)

local total = 0
local g = tonumber(ARGV[11])
local i = 12
for k = 1, g do
  local n = tonumber(ARGV[i + 1])
  total = total + n
  i = i + 2 + n
end

if ARGV[3] == 'new' then
  if redis.call('EXISTS', bkey) == 1 then
    return redis.error_reply('BATCH batch ' .. bid .. ' exists already')
  end
  redis.call('HSET', bkey, 'total', total, 'pending', total, 'succeeded', 0, 'failures', 0,
             'dead', 0, 'created_at', stamp, 'description', ARGV[8],
             'success_queue', ARGV[4], 'success_job', ARGV[5],
             'complete_queue', ARGV[6], 'complete_job', ARGV[7])
  redis.call('ZADD', KEYS[3], stamp, bid)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. string.format('%.6f', now - 2 * tonumber(ARGV[9])))
else
  local pending = tonumber(redis.call('HGET', bkey, 'pending'))
  if not pending or pending <= 0 then
    return redis.error_reply('BATCH batch ' .. bid .. ' is unknown or finished: no job can be added')
  end
  redis.call('HINCRBY', bkey, 'total', total)
  redis.call('HINCRBY', bkey, 'pending', total)
end

i = 12
for k = 1, g do
  local name, n = ARGV[i], tonumber(ARGV[i + 1])
  if n > 0 then
    redis.call('SADD', KEYS[1], name)
    local len = 0
    local start = i + 2
    local last = i + 1 + n
    while start <= last do
      local stop = math.min(start + 999, last)
      len = redis.call('LPUSH', KEYS[3 + k], unpack(ARGV, start, stop))
      start = stop + 1
    end
    if len == n then redis.call('PUBLISH', ARGV[1], name) end
  end
  i = i + 2 + n
end

if total == 0 and tonumber(redis.call('HGET', bkey, 'pending')) == 0 then
  fire(bkey)  -- an empty batch is done at once
end
return tonumber(redis.call('HGET', bkey, 'pending'))
