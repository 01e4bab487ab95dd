-- _batch_count: a fragment, not a script.  scripts.py pastes it where a script has
-- the line "--@include _batch_count" (ack.lua, fetch.lua, batch_push.lua,
-- batch_cancel.lua), so the rule that fires a batch's callbacks exactly once lives in
-- one place.  It reads no KEYS or ARGV of
-- its own; the including script passes everything:
--
-- batch_counting(queues, qprefix, ttl, woke): returns count, fire.
-- count(bkey, t) adds one call's outcomes of a batch's members to the batch hash bkey
-- (batch:<bid>) and returns how many are still pending (-1: nothing counted):
--   t = {succeeded, failures, dead, ended} (ended = succeeded + dead: no longer pending)
-- fire(bkey) is what count does when the last one ended (batch_push.lua calls it for an
-- empty batch): when nothing of the batch is pending its callbacks are pushed, each once
-- (its *_at field marks it fired): to qprefix .. queue (LPUSH; SADD queues; woke(queue)
-- when the queue was empty: ack.lua PUBLISHes the wake, fetch.lua, which must not
-- publish, reports it), and the hash expires ttl seconds later.  An
-- unknown, expired or already finished batch (pending missing or <= 0) counts nothing
-- (a member retried by hand from dead after its batch finished).
local function batch_counting(queues, qprefix, ttl, woke)
  local stamp = nil
  local function now()
    if not stamp then
      local t = redis.call('TIME')
      stamp = string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000)
    end
    return stamp
  end
  local function push(queue, payload)
    redis.call('SADD', queues, queue)
    if redis.call('LPUSH', qprefix .. queue, payload) == 1 then woke(queue) end
  end
  local function fire(bkey)
    local st = redis.call('HMGET', bkey, 'dead', 'success_queue', 'success_job',
                          'complete_queue', 'complete_job', 'success_at', 'complete_at')
    if st[4] and st[4] ~= '' and not st[7] then
      redis.call('HSET', bkey, 'complete_at', now())
      push(st[4], st[5])
    end
    if st[2] and st[2] ~= '' and tonumber(st[1]) == 0 and not st[6] then
      redis.call('HSET', bkey, 'success_at', now())
      push(st[2], st[3])
    end
    redis.call('EXPIRE', bkey, ttl)
  end
  local function count(bkey, t)
    local pending = tonumber(redis.call('HGET', bkey, 'pending'))
    if not pending or pending <= 0 then return -1 end
    if t[1] > 0 then redis.call('HINCRBY', bkey, 'succeeded', t[1]) end
    if t[2] > 0 then redis.call('HINCRBY', bkey, 'failures', t[2]) end
    if t[3] > 0 then redis.call('HINCRBY', bkey, 'dead', t[3]) end
    if t[4] == 0 then return pending end
    pending = redis.call('HINCRBY', bkey, 'pending', -t[4])
    if pending <= 0 then fire(bkey) end
    return pending
  end
  return count, fire
end
