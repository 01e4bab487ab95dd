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
-- ARGV[2]  wake channel: the queue's name is PUBLISHed when it goes from empty to
--          non-empty
-- ARGV[3]  at most this many jobs per call
--
-- Returns {moved, more, bad1, bad2, ...}: more is 1 when due jobs remain after this
-- batch (call again at once); bad* are due members that are not jobs (not JSON, no
-- queue/class): left in place for the caller to bury in dead with their bytes.

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local limit = tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now), 'LIMIT', 0, limit)
local out = {0, 0}
if #due == 0 then return out end

-- forkq writes jid, class, queue first; an anchored match on that prefix reads the
-- queue without decoding.  Anything else (Sidekiq's clients, escapes) is decoded.
local function queue_of(member)
  local q = string.match(member, '^{"jid":"[^"\\]*","class":"[^"\\]*","queue":"([^"\\]+)"')
  if q then return q end
  local ok, data = pcall(cjson.decode, member)
  if not ok or type(data) ~= 'table' then return nil end
  if type(data['queue']) == 'string' and data['queue'] ~= '' then return data['queue'] end
  if type(data['class']) == 'string' and data['class'] ~= '' then return data['class'] end
  return nil
end

local order = {}
local groups = {}
local moving = {}
for _, member in ipairs(due) do
  local q = queue_of(member)
  if q then
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

if #moving > 0 then
  chunks(moving, function(...) redis.call('ZREM', KEYS[1], ...) end)
  for _, q in ipairs(order) do
    local g = groups[q]
    local qkey = ARGV[1] .. q
    redis.call('SADD', KEYS[2], q)
    local len = 0
    -- Earliest first: LPUSH puts it furthest right, where workers take from.
    chunks(g, function(...) len = redis.call('LPUSH', qkey, ...) end)
    if len == #g then
      redis.call('PUBLISH', ARGV[2], q)
    end
  end
end
out[1] = #moving
if #due >= limit then out[2] = 1 end
return out
