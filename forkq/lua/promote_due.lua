-- promote_due: move the due jobs of schedule or retry to their queues, in one batch,
-- by Redis's clock (TIME): a worker host whose clock is ahead cannot run a job early.
-- Members move unchanged (their enqueued_at was set to the due time when they were
-- scheduled), so no JSON is rewritten here.  Every job name is moved, known to the
-- calling pool or not.  Atomic: concurrent promoters never move one job twice.
--
-- KEYS[1]  schedule or retry   zset  member = job JSON, score = due time (epoch)
-- KEYS[2]  queues              set   names of queues (Sidekiq's)
-- ARGV[1]  queue key prefix ("{ns}:queue:", from keys.py): a job's queue key is
--          prefix .. its queue name (the names are data, so they cannot be KEYS;
--          every such key carries the namespace hash tag, so it is in this slot)
-- ARGV[2]  wake channel (every pool listens): the queue's name is PUBLISHed when it
--          goes from empty to non-empty and no registered idle pool took the wake
--          (pools that never register, or all of them gone), as enqueue.lua does
-- ARGV[3]  at most this many jobs per call
-- ARGV[4]  the namespace's key prefix ("{ns}:"): a job of a fair group (a valid "group"
--          field) goes to gqueue:<name>:<group>, and its group gets a token in the queue
--          if it has none (groups:<name>), as enqueue_group.lua does; names as keys.py
--          spells them.  A group that is not valid is ignored here (the job goes to its
--          queue, and the executor buries it with the reason).
-- ARGV[5]  a pool's own wake channel is this prefix .. its identity; idle:<name> is
--          ARGV[4] .. 'idle:' .. name (keys.py's spelling; in this slot too)
-- ARGV[6]  the calling pool's identity ("" for a caller that fetches nothing after)
-- ARGV[7]  how many jobs the caller's fetch, right after this call in the same round
--          trip, may take ("0" for none)
-- ARGV[8]  move only jobs due at least this many seconds ago ("0": all that are due).
--          A pool that is not the promoter looks only for what the promoter left
--          behind: jobs due a moment ago are the promoter's, not a sign it is gone.
--
-- Wakes: per queue it fills, as many registered idle pools (idle:<name>, see
-- enqueue.lua) as it moved jobs there, less what the caller takes itself when it is
-- registered idle for that name (it fetches next, so waking it or another pool for
-- those would cost a fetch that finds nothing); never the caller.  So a trickle of due
-- jobs costs the promoting pool's round trip alone, not a fetch of every pool.
-- Returns {moved, more, bad1, bad2, ...}: more is 1 when due jobs remain after this
-- batch (call again at once); bad* are due members that are not jobs (not JSON, no
-- queue/class): left in place for the caller to bury in dead with their bytes.

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local limit = tonumber(ARGV[3])
local cutoff = now - (tonumber(ARGV[8]) or 0)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', cutoff), 'LIMIT', 0, limit)
local out = {0, 0}
if #due == 0 then return out end

--@include _groups
--@include _job_prefix

-- The member's queue, and its fair group (nil if none or not valid).  The queue is
-- read from forkq's own prefix (_job_prefix); anything else (Sidekiq's clients,
-- escapes) is decoded.
local function queue_of(member)
  local q = queue_in_prefix(member)
  local grouped = string.find(member, '"group"', 1, true)
  if q and not grouped then return q, nil end
  local ok, data = pcall(cjson.decode, member)
  if not ok or type(data) ~= 'table' then return nil end
  local g = data['group']
  if not valid_group(g) then g = nil end
  if type(data['queue']) == 'string' and data['queue'] ~= '' then return data['queue'], g end
  if type(data['class']) == 'string' and data['class'] ~= '' then return data['class'], g end
  return nil
end


local order = {}
local groups = {}
local moving = {}
local gorder, glists = {}, {}  -- fair groups: {queue, group} in order, and their members
for _, member in ipairs(due) do
  local q, fg = queue_of(member)
  if q and fg then
    local id = q .. ':' .. fg
    if not glists[id] then
      glists[id] = {}
      gorder[#gorder + 1] = {q, fg, id}
    end
    local l = glists[id]
    l[#l + 1] = member
    moving[#moving + 1] = member
  elseif q then
    if not groups[q] then
      groups[q] = {}
      order[#order + 1] = q
    end
    local g = groups[q]
    g[#g + 1] = member
    moving[#moving + 1] = member
  else
    out[#out + 1] = member
  end
end

local function chunks(list, fn)
  local i = 1
  while i <= #list do
    local j = math.min(i + 999, #list)
    fn(unpack(list, i, j))
    i = j + 1
  end
end

--@include _wake
local caller, room = ARGV[6], tonumber(ARGV[7])
-- Wake pools for `jobs` new jobs of queue q (its queue was empty before when `was_empty`).
local function wake(q, jobs, was_empty)
  local idle = ARGV[4] .. 'idle:' .. q
  if caller ~= '' and room > 0 and redis.call('ZSCORE', idle, caller) then
    local mine = math.min(room, jobs)
    room = room - mine
    jobs = jobs - mine
  end
  local woken = wake_registered(idle, ARGV[5], q, jobs, caller)
  if jobs > 0 and woken == 0 and was_empty then
    redis.call('PUBLISH', ARGV[2], q)
  end
end

if #moving > 0 then
  chunks(moving, function(...) redis.call('ZREM', KEYS[1], ...) end)
  for _, q in ipairs(order) do
    local g = groups[q]
    local qkey = ARGV[1] .. q
    redis.call('SADD', KEYS[2], q)
    local len = 0
    -- Earliest first: LPUSH puts it furthest right, where workers take from.
    chunks(g, function(...) len = redis.call('LPUSH', qkey, ...) end)
    wake(q, #g, len == #g)
  end
  for _, e in ipairs(gorder) do
    local q, fg, l = e[1], e[2], glists[e[3]]
    redis.call('SADD', KEYS[2], q)
    local gq = ARGV[4] .. 'gqueue:' .. q .. ':' .. fg
    chunks(l, function(...) redis.call('LPUSH', gq, ...) end)
    if redis.call('SADD', ARGV[4] .. 'groups:' .. q, fg) == 1 then
      wake(q, 1, redis.call('LPUSH', ARGV[1] .. q, token_of(q, fg)) == 1)
    end
  end
end
out[1] = #moving
if #due >= limit then out[2] = 1 end
return out
