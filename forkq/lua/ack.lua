-- ack: settle a batch of jobs a pool had taken, atomically per job.  Used for
-- completions (success, retry, dead, drop) and for recovery of a dead pool's jobs
-- (requeue, dead as poison).  A job is only settled if its field is still in the
-- in-progress hash: if a reaper already requeued it, the late outcome is ignored
-- (the job will run again: at-least-once, never lost, never doubled into retry).
--
-- KEYS[1]  inprogress:<identity>   hash
-- KEYS[2]  retry                   zset
-- KEYS[3]  dead                    zset
-- KEYS[4]  queues                  set   (names of queues, Sidekiq's)
-- KEYS[5]  fence:<identity>        string: present once a reaper claimed this pool
-- KEYS[6..] pairs per job name referenced by the groups: queue:<name>, lease:<name>;
--          then the unique-guard keys of 'u' groups (unique:<name>:<suffix>), then the
--          batch hashes of the groups' batch members (batch:<bid>)
-- KEYS[last] cancelled             zset: a 'q'/'u' requeue of a jid in it is dropped
--          (the job was cancelled while running; cancel.lua); a batch member dropped
--          so counts as a failure and dead in its batch
-- ARGV[1]  lease member prefix of the pool owning KEYS[1] (a member is prefix .. field)
-- ARGV[2]  wake channel: PUBLISHed when a queue gets work a sleeping fetcher may want
-- ARGV[3]  dead set: drop entries older than this epoch
-- ARGV[4]  dead set: keep at most this many entries
-- ARGV[5]  unique-guard TTL (seconds) for 'u' groups
-- ARGV[6]  due message: PUBLISHed when a retry written here is due before every retry
--          that was already there (fetchers sleep until the earliest due time they know)
-- ARGV[7]  p: count of job-name pairs in KEYS
-- ARGV[8 .. 7+p] the job name of each pair (what SADD queues and the wake carry)
-- ARGV[8+p] n: count of plain successes that follow (no lease, nothing to write)
-- ARGV[9+p .. 8+p+n] their in-progress fields
-- ARGV[9+p+n] m: count of batch sections that follow: plain successes of batch members
--          (no lease, nothing to write), per batch: KEYS index of its batch hash, count c,
--          then c in-progress fields; one HDEL per batch counts how many really settled
-- ARGV[after the sections .. #ARGV-2] groups of 6: op, field, pair index (0 = none),
--          payload, score, batch (KEYS index of the job's batch hash, 0 = not in a batch)
--          op 'k' = done (drop lease), 'K' = dropped after failing (skip_dead),
--          'r' = ZADD retry score payload, 'd' = ZADD dead score payload (both failures),
--          'q' = RPUSH payload to its queue (runs next; recovery, not an execution),
--          'u' = 'q' for a unique job: it retakes its guard first (score = the guard's
--                index in KEYS).  If another copy holds the guard, that copy is queued
--                or scheduled already and this one is dropped: recovery never makes a
--                second copy of a unique job.
--          A batch member that is settled counts in its batch: 'k' succeeded, 'r' a
--          failure (still pending), 'd'/'K' a failure and dead; when nothing of the
--          batch is pending its callbacks are pushed, each once (lua/_batch_count.lua).
--          Fair groups: the pair index is "pair:gi" for a job of a group, KEYS[gi..gi+3] being
--          its glease:<name>:<group>, gqueue:<name>:<group>, groups:<name>, gparked:<name>:
--          its group lease is dropped (and a group parked at its cap gets its token back),
--          and a requeue goes to the head of its group (with a token, if it had none).
-- ARGV[#ARGV-1] queue key prefix ("<prefix>queue:"), where batch callbacks are pushed
-- ARGV[#ARGV]   seconds a finished batch is kept (its hash's TTL)
--
-- Returns {processed, failed, fenced}: executions really settled by this call (fields
-- that were still in progress), and 1 if this pool was claimed by a reaper (it must
-- stop: its jobs were handed to others; looked at when a field was no longer there).
-- A batch sent again after a lost reply settles nothing and counts nothing, so stats
-- built on this stay exact.

local p = tonumber(ARGV[7])
local n = tonumber(ARGV[8 + p])
local member_prefix = ARGV[1]
local processed, failed = 0, 0
-- Fields asked about, and how many of them were still in progress (see the end).
local asked, found = n, 0
if n > 0 then
  local start = 9 + p
  local last = 8 + p + n
  while start <= last do
    local stop = math.min(start + 999, last)
    processed = processed + redis.call('HDEL', KEYS[1], unpack(ARGV, start, stop))
    start = stop + 1
  end
  found = processed
end

--@include _batch_count
local count_in_batch = batch_counting(KEYS[4], ARGV[#ARGV - 1], ARGV[#ARGV],
  function(queue) redis.call('PUBLISH', ARGV[2], queue) end)
-- Outcomes of batch members, summed per batch over this call: one HINCRBY per
-- counter per batch, not per job.  {succeeded, failures, dead, ended}
local tallies = {}
local function tally(batch, op)
  local t = tallies[batch]
  if not t then
    t = {0, 0, 0, 0}
    tallies[batch] = t
  end
  if op == 'k' then
    t[1] = t[1] + 1
    t[4] = t[4] + 1
  else
    t[2] = t[2] + 1
    if op ~= 'r' then
      t[3] = t[3] + 1
      t[4] = t[4] + 1
    end
  end
end

--@include _groups

local settled = 0
local any_cancelled = nil
local wake = {}
local dead_written = false
local earliest_before, earliest_written = nil, nil
local i = 10 + p + n
for _ = 1, tonumber(ARGV[9 + p + n]) do
  local batch, c = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local ok = 0
  local start, last = i + 2, i + 1 + c
  while start <= last do
    local stop = math.min(start + 999, last)
    ok = ok + redis.call('HDEL', KEYS[1], unpack(ARGV, start, stop))
    start = stop + 1
  end
  asked, found = asked + c, found + ok
  if ok > 0 then
    processed = processed + ok
    local t = tallies[batch]
    if not t then
      t = {0, 0, 0, 0}
      tallies[batch] = t
    end
    t[1] = t[1] + ok
    t[4] = t[4] + ok
  end
  i = last + 1
end
local groups_end = #ARGV - 2
while i + 5 <= groups_end do
  local op, field, pair, payload, score = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4]
  local batch = tonumber(ARGV[i + 5])
  local gi, group = nil, nil
  if not pair then
    local a, b = string.match(ARGV[i + 2], '^(%d+):(%d+)$')
    pair, gi = tonumber(a), tonumber(b)
    group = string.match(KEYS[gi], ':([^:]*)$')
  end
  asked = asked + 1
  if redis.call('HDEL', KEYS[1], field) == 1 then
    settled = settled + 1
    found = found + 1
    if batch > 0 and op ~= 'q' and op ~= 'u' then tally(batch, op) end
    if op ~= 'q' and op ~= 'u' then processed = processed + 1 end
    if op == 'K' or op == 'r' or op == 'd' then failed = failed + 1 end
    local qkey, lkey
    if pair > 0 then
      qkey = KEYS[4 + 2 * pair]
      lkey = KEYS[5 + 2 * pair]
      if redis.call('ZREM', lkey, member_prefix .. field) == 1 then
        wake[pair] = true
      end
      if gi and redis.call('ZREM', KEYS[gi], member_prefix .. field) == 1
          and redis.call('ZREM', KEYS[gi + 3], group) == 1 then
        redis.call('LPUSH', qkey, token_of(ARGV[7 + pair], group))  -- unparked
        wake[pair] = true
      end
    end
    if op == 'r' then
      if earliest_written == nil then
        local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
        earliest_before = first[2] and tonumber(first[2]) or math.huge
        earliest_written = math.huge
      end
      if tonumber(score) < earliest_written then earliest_written = tonumber(score) end
      redis.call('ZADD', KEYS[2], score, payload)
    elseif op == 'd' then
      redis.call('ZADD', KEYS[3], score, payload)
      dead_written = true
    elseif op == 'q' or op == 'u' then
      local requeue = true
      if any_cancelled == nil then any_cancelled = redis.call('EXISTS', KEYS[#KEYS]) == 1 end
      if any_cancelled then
        local ok, data = pcall(cjson.decode, payload)
        local cjid = ok and type(data) == 'table' and data['jid']
        if type(cjid) == 'string' and redis.call('ZSCORE', KEYS[#KEYS], cjid) then
          requeue = false
          if batch > 0 then tally(batch, 'K') end
        end
      end
      if requeue and op == 'u' then
        local guard = KEYS[tonumber(score)]
        local jid = cjson.decode(payload)['jid']
        if not redis.call('SET', guard, jid, 'NX', 'EX', ARGV[5]) then
          requeue = redis.call('GET', guard) == jid
          if requeue then redis.call('EXPIRE', guard, ARGV[5]) end
        end
      end
      if requeue and gi then
        redis.call('RPUSH', KEYS[gi + 1], payload)
        if redis.call('SADD', KEYS[gi + 2], group) == 1 then
          redis.call('RPUSH', qkey, token_of(ARGV[7 + pair], group))
        end
        redis.call('SADD', KEYS[4], ARGV[7 + pair])
        wake[pair] = true
      elseif requeue then
        redis.call('RPUSH', qkey, payload)
        redis.call('SADD', KEYS[4], ARGV[7 + pair])
        wake[pair] = true
      end
    end
  end
  i = i + 6
end

for batch, t in pairs(tallies) do count_in_batch(KEYS[batch], t) end

-- A freed lease or a requeued job can unblock a fetcher that found nothing to take.
for pair, _ in pairs(wake) do
  local qkey = KEYS[4 + 2 * pair]
  if redis.call('LLEN', qkey) > 0 then
    redis.call('PUBLISH', ARGV[2], ARGV[7 + pair])
  end
end

if earliest_written ~= nil and earliest_written < earliest_before then
  redis.call('PUBLISH', ARGV[2], ARGV[6])
end

if dead_written then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[3])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[4]) + 1))
end
-- Fenced (claimed by a reaper, its jobs handed to others) is looked at only when a job
-- asked about was no longer in progress: a pool whose every job here was still its own
-- has not been recovered (if it was claimed a moment ago, its next fetch, which always
-- looks, stops it; what was settled here is settled once either way).
local fenced = 0
if found < asked or asked == 0 then fenced = redis.call('EXISTS', KEYS[5]) end
return {processed, failed, fenced}
