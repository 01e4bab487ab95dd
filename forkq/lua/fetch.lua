-- fetch: take up to `want` ready jobs for one pool, across its job names, atomically
-- recording each taken job in the pool's in-progress hash (reliable fetch) and,
-- for names with max_concurrency, adding a lease.  Also reports when the next
-- scheduled/retry job is due, so idle pools need no separate poller.  Every time
-- here is Redis's (TIME): hosts whose clocks disagree agree on lease expiry.
--
-- KEYS[1]  inprogress:<identity>   hash  field -> job JSON
-- KEYS[2]  schedule                zset  read only: earliest score
-- KEYS[3]  retry                   zset  read only: earliest score
-- KEYS[4..] four keys per job name, in the pool's fixed order:
--          queue:<name> (list), paused:<name> (string), lease:<name> (zset),
--          rate:<name> (string: a rate-limited name's GCRA state, the epoch at which
--          its next job may start; expires when the bucket is full again)
-- KEYS[4+4n] fence:<identity>    string: present once a reaper claimed this pool; then
--          nothing is taken and the reply is {"fenced"}: the pool was frozen, not
--          dead, and must stop instead of running jobs now owned by others
-- KEYS[5+4n..4+5n] idle:<name> per job name, same order (zset, see enqueue.lua): a
--          fetch that leaves this pool with free slots registers it (ARGV[8]) under the
--          names of ARGV[10] whose queue it left empty, so an enqueue wakes it alone;
--          a fetch that fills the pool takes it out of all of them again (ARGV[9])
-- ARGV[1]  want: maximum number of jobs to take
-- ARGV[2]  lease TTL in seconds: leases taken now expire at TIME + this; leases
--          whose expiry is before TIME are dropped
-- ARGV[3]  lease member prefix ("<identity>:"): a lease member is prefix .. field
-- ARGV[4]  suspect threshold: a job whose "recovered" count is at least this is a
--          suspect (one constant in scripts.py, never repeated here)
-- ARGV[5]  start: 0-based position of the name to try first (the caller's priority
--          pick); the others follow in cyclic order.  The KEYS never change for a
--          pool, so the caller can send them pre-encoded.
-- ARGV[6]  "1" if the pool may take a suspect job now, "0" if it holds one already.
--          A suspect is a job whose pool died under it twice or more: it may be what
--          kills pools, so a pool runs at most one at a time, and jobs that merely
--          shared a pool with it are not buried with it.  Suspects this call may not
--          take go back to the head of their queue, without a wake: a pool that may
--          take them finds them at its next fetch, and pools that may not are not
--          woken to put them back again (no fetch loop between suspect holders).
-- ARGV[7]  "1" to report due_in (below), "0" to skip it: a busy pool that already knows
--          the due time (and is told by a wake when an earlier one is written) saves
--          the two ZRANGEs.  When skipped, due_in is "-" (unknown, not "none").
-- ARGV[8]  this pool's identity (its member in idle:<name>)
-- ARGV[9]  "1" if this pool's previous fetch registered it idle (then a fetch that
--          fills it removes it: a busy pool must not swallow a wake meant for a free one)
-- ARGV[10] the names (1-based positions, "2,5"; "*" = all) under which this pool is not
--          registered now: the caller knows where it is (a pool stays registered until
--          a fetch fills it), so a woken idle fetch writes nothing there
-- ARGV[11] names (1-based positions, "3,4") the caller believes empty (a recent fetch
--          found them so and no wake since named them): their queues join the EXISTS
--          over the fence and the paused flags, and when it says none has jobs they are
--          not looked at one by one, so a pool with many job names pays one command for
--          all of them and for its flags, and one RPOP for the name it was woken for
-- ARGV[12..11+n] limits per name, same order as the keys: max_concurrency (0 = unlimited),
--          or "max_concurrency:interval:tolerance" for a rate-limited name (seconds between
--          starts, and how far ahead of that a burst may run: (burst - 1) * interval).
--          A name over its rate takes nothing, and rate_in (below) says when its next
--          job may start, so the caller sleeps until then instead of asking again.
--          Either form may end in "/<group_concurrency>": running jobs per fair group.
-- ARGV[12+n] a: count of plain successes that follow
-- ARGV[13+n .. 12+n+a] in-progress fields of jobs this pool finished with plain success
--          (no lease, nothing to write): HDELed before anything is taken, so one call
--          acks a batch and refills it (what ack.lua does for them, minus a call).
-- ARGV[13+n+a] m: count of batch sections that follow (0: nothing more).  When m > 0:
--          batch hash prefix ("<prefix>batch:"), queue key prefix, the queues set key,
--          a finished batch's TTL (what _batch_count needs to push callbacks), then
--          per batch: its bid, count c, c in-progress fields of plain
--          successes of that batch's members, counted in batch:<bid> as ack.lua does.
--          The batch, queue and queues keys are built from these prefixes, all under
--          the namespace's hash tag (so the same slot in a Cluster).
-- ARGV[after the sections] split: "" for a pool whose jobs are all sync or all async;
--          else "S:A:positions": take at most S jobs of sync names and A of async ones
--          (positions: the 1-based positions of the async names, "2,5").
--
-- Fair groups: an entry of queue:<name> that starts with '{"class":"forkq.group",' is a
--          group's token (job.group_token): taking it takes what this call still wants
--          from gqueue:<name>:<group> and pushes the token back at the enqueue end, so the
--          groups of a name (and its ungrouped jobs) take turns, a fetch's worth each.  A
--          group found empty loses its token (and leaves groups:<name>); a group at its
--          cap is parked (its token moved to gparked:<name>, by group, scored with its
--          earliest lease expiry) until ack.lua frees a lease, or that expiry passes
--          (looked at here, for capped names only).  The group keys are built here from
--          the namespace's key prefix (what KEYS[2] has before "schedule"), as keys.py
--          spells them (a group is data: it comes in a token), all in this slot:
--          gqueue:<name>:<group> (the group's jobs), glease:<name>:<group> (leases under
--          group_concurrency), groups:<name> (groups with a token or parked),
--          gparked:<name> (group -> when to look again).  Ungrouped names pay one byte
--          compare per job taken.
--
-- Returns {due_in, suspects_left, acked, empty, rate_in, woke, idx1, field1, payload1, ...}:
-- due_in is how many
-- seconds (by Redis's clock, as a string) until the earliest job in schedule or retry
-- is due ("" when both are empty; <= 0 when one is due now; "-" when not asked), so a
-- caller can promote what is due and sleep exactly until the next one.  After it come
-- "|schedule's|retry's|queue": the same for each zset ("" for an empty one), so the
-- caller promotes only a zset that has a job due, and the queue name of the earliest
-- job ("" when not read), so its fetch after that promotion looks at that queue and
-- lets the others it believes empty share the EXISTS above (ARGV[11]); suspects_left is
-- 1 when suspects were put back; acked is how many of the acked fields (plain and batch
-- members) were still in progress (settled now: a batch sent again after a lost reply counts nothing); empty
-- lists the 1-based positions of the names whose queue this call found empty ("2,5"),
-- so the caller can start its next fetch at one that is not (fewer LLENs); rate_in is
-- the seconds until the soonest rate-limited name that took nothing may start a job
-- ("" when none waits); woke lists the queues a batch callback pushed here made
-- non-empty ("a,b"; fetch does not PUBLISH, so the caller relays the wake); idx
-- is the 1-based position of the job's name in the triples; field is the in-progress
-- field: the jid ("<jid>#2" when that jid is already held), or "malformed:<sha1>" for
-- an entry with no jid.

local want = tonumber(ARGV[1])
local want0 = want
local member_prefix = ARGV[3]
local suspect_after = tonumber(ARGV[4])
local out = {'', 0, 0, '', '', ''}
local empties = {}
local names = (#KEYS - 4) / 5
local fence = KEYS[4 + 4 * names]
local P = string.sub(KEYS[2], 1, #KEYS[2] - #'schedule')
local qprefix_len = #P + #'queue:'
local TOKEN = '{"class":"forkq.group",'
--@include _groups
--@include _job_prefix
-- One EXISTS over the fence, every paused flag and the queues the caller believes
-- empty (ARGV[11]): almost always 0, and then none needs a look of its own (one
-- command instead of one per queue taken from, and one for the belief).  Names believed
-- empty are skipped only when that says so (jobs promoted or requeued into a queue that
-- already had some wake nobody, so the belief can be stale); then one command stands
-- for their LLENs.
local flag_keys = {fence}
for i = 1, names do flag_keys[i + 1] = KEYS[4 * i + 1] end
local believed, skip = nil, {}
local probe = flag_keys
if ARGV[11] ~= '' then
  believed, probe = {}, {unpack(flag_keys)}
  for d in string.gmatch(ARGV[11], '%d+') do
    believed[tonumber(d)] = true
    probe[#probe + 1] = KEYS[4 * tonumber(d)]
  end
end
local found = redis.call('EXISTS', unpack(probe))
local flagged = found > 0
if flagged and believed then
  -- Something exists: a flag, a job in a queue believed empty, or both.
  local flags = redis.call('EXISTS', unpack(flag_keys))
  flagged = flags > 0
  if found == flags then skip = believed end
elseif believed then
  skip = believed
end
if flagged and redis.call('EXISTS', fence) == 1 then return {'fenced'} end
local may_take_suspect = ARGV[6] == '1'
local taken, taken_of

-- Redis's TIME, read only when something needs it (a lease, the due report).
local now = nil
local function clock()
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  return now
end

-- 0. Acks first (their jids may be taken again below, e.g. a job that re-enqueued itself).
local function hdel(first, last)
  local gone = 0
  while first <= last do
    local stop = math.min(first + 999, last)
    gone = gone + redis.call('HDEL', KEYS[1], unpack(ARGV, first, stop))
    first = stop + 1
  end
  return gone
end
local acks = tonumber(ARGV[12 + names])
out[3] = hdel(13 + names, 12 + names + acks)
local at = 13 + names + acks
local sections = tonumber(ARGV[at])
if sections > 0 then
--@include _batch_count
  local woke = {}
  local count = batch_counting(ARGV[at + 3], ARGV[at + 2], ARGV[at + 4],
                               function(queue) woke[#woke + 1] = queue end)
  local bprefix = ARGV[at + 1]
  at = at + 5
  for _ = 1, sections do
    local bid, c = ARGV[at], tonumber(ARGV[at + 1])
    local ok = hdel(at + 2, at + 1 + c)
    if ok > 0 then
      out[3] = out[3] + ok
      count(bprefix .. bid, {ok, 0, 0, ok})
    end
    at = at + 2 + c
  end
  out[6] = table.concat(woke, ',')
else
  at = at + 1
end

-- A pool with both sync and async jobs: how many of each it may take now (its free
-- threads, plus its prefetch, and its free async slots), so one kind never fills the
-- other's budget (sync jobs waiting in a child for a thread while other pools idle).
local split_s, split_a, is_async = nil, nil, nil
if ARGV[at] and ARGV[at] ~= '' then
  local s, a, pos = string.match(ARGV[at], '^(%d+):(%d+):([%d,]*)$')
  split_s, split_a, is_async = tonumber(s), tonumber(a), {}
  for p in string.gmatch(pos, '%d+') do is_async[tonumber(p)] = true end
end

-- A suspect carries a top-level "recovered" count.  The substring test is only a
-- cheap filter (almost no job has one); the decision is made on the decoded
-- object, so "recovered" inside the arguments never counts.
local function is_suspect(payload)
  if not string.find(payload, '"recovered":', 1, true) then return false end
  local ok, data = pcall(cjson.decode, payload)
  if not ok or type(data) ~= 'table' then return false end
  local n = data['recovered']
  return type(n) == 'number' and n >= suspect_after
end

-- The in-progress field of a taken job: its jid when that is plain printable ASCII
-- (forkq's and Sidekiq's are hex), else a digest, so a field is always valid UTF-8
-- and short (cjson turns an escaped lone surrogate into bytes that are not UTF-8).
local function plain(jid)
  return jid ~= '' and #jid <= 200 and not string.find(jid, '[^\32-\126]')
end

local function jid_of(payload)
  local jid = string.match(payload, '^{"jid":"([^"\\]+)"')
  if jid and plain(jid) then return jid end
  local ok, data = pcall(cjson.decode, payload)
  if ok and type(data) == 'table' and type(data['jid']) == 'string' and plain(data['jid']) then
    return data['jid']
  end
  return 'malformed:' .. redis.sha1hex(payload)
end

-- 1. Take jobs, queue by queue, in the caller's order.
taken = {}   -- {name index, field, payload, leased, group lease key}
taken_of = {}  -- name index -> how many taken now
local drained = {}  -- name indices whose queue this call left empty
-- One turn of fair group (token) of name i: up to `share` of its jobs (fewer under
-- its cap), added to `taken`.  Returns how many were taken, and true if a suspect it
-- may not take stopped it (then the caller stops taking from this name).
local function serve(i, base, maxc, gcap, gname, token, share)
  local ok, tdata = pcall(cjson.decode, token)
  local g = ok and type(tdata) == 'table' and type(tdata['args']) == 'table' and tdata['args'][1]
  if not valid_group(g) then return 0, false end  -- not a token forkq wrote: dropped
  local gq = P .. 'gqueue:' .. gname .. ':' .. g
  local n, gl, free = share, nil, nil
  if gcap > 0 then
    gl = P .. 'glease:' .. gname .. ':' .. g
    redis.call('ZREMRANGEBYSCORE', gl, '-inf', '(' .. string.format('%.6f', clock()))
    free = gcap - redis.call('ZCARD', gl)
    if free < n then n = free end
  end
  local count, stalled = 0, false
  if n > 0 then
    local jobs = redis.call('RPOP', gq, n)
    if not jobs then
      -- Empty: the token goes, and the group with it.
      redis.call('SREM', P .. 'groups:' .. gname, g)
      return 0, false
    end
    for k, payload in ipairs(jobs) do
      local suspect = is_suspect(payload)
      if suspect and not may_take_suspect then
        -- Back to the head of the group, in order; the token goes back too.
        for r = #jobs, k, -1 do redis.call('RPUSH', gq, jobs[r]) end
        out[2] = 1
        stalled = true
        break
      end
      if suspect then may_take_suspect = false end
      taken[#taken + 1] = {i, jid_of(payload), payload, maxc > 0, gl}
      taken_of[i] = (taken_of[i] or 0) + 1
      count = count + 1
    end
    want = want - count
    if #jobs < n and not stalled then
      redis.call('SREM', P .. 'groups:' .. gname, g)  -- emptied now: no token
      return count, false
    end
  end
  if gl and count >= free then
    -- At its cap: parked until a lease goes (ack.lua), or its earliest lease expires.
    local first = redis.call('ZRANGE', gl, 0, 0, 'WITHSCORES')
    local at = clock() + tonumber(ARGV[2])
    if first[2] and tonumber(first[2]) < at then at = tonumber(first[2]) end
    redis.call('ZADD', P .. 'gparked:' .. gname, string.format('%.6f', at), g)
  else
    redis.call('LPUSH', KEYS[base], token)
  end
  return count, stalled
end

local rate_due = nil  -- seconds until a rate-limited name may start its next job
local start = tonumber(ARGV[5])
for step = 0, names - 1 do
  if want <= 0 then break end
  local i = (start + step) % names + 1
  local base = 4 * i
  local before, cap = #taken, want
  if is_async then cap = is_async[i] and split_a or split_s end
  local limit = ARGV[11 + i]
  local maxc = tonumber(limit)
  local gcap, gname = 0, nil
  if not maxc then
    local rest, g = string.match(limit, '^(.-)/(%d+)$')
    if rest then
      limit, gcap = rest, tonumber(g)
      maxc = tonumber(limit)
      gname = string.sub(KEYS[base], qprefix_len + 1)
      -- Parked groups whose earliest lease has expired get their token back (the usual
      -- way back is ack.lua's, when a lease is released).
      local pkey = P .. 'gparked:' .. gname
      local back = redis.call('ZRANGEBYSCORE', pkey, '-inf', string.format('%.6f', clock()), 'LIMIT', 0, 100)
      for _, g in ipairs(back) do
        redis.call('ZREM', pkey, g)
        redis.call('LPUSH', KEYS[base], token_of(gname, g))
      end
    end
  end
  -- A name with no limit, not paused, with room: its RPOP below is the look (nil:
  -- empty), so taking costs no LLEN.  Others look first (LLEN), before their limits
  -- are read: an idle poll costs one command per empty queue either way.
  local len = 0
  local probing = not skip[i] and maxc == 0 and gcap == 0 and not flagged and cap > 0
  if probing then
    len = 1
  elseif not skip[i] then
    len = redis.call('LLEN', KEYS[base])
  end
  if len == 0 and not skip[i] then
    empties[#empties + 1] = i
    drained[#drained + 1] = i
  end
  if len > 0 and cap > 0 and not (flagged and redis.call('EXISTS', KEYS[base + 1]) == 1) then
    local take = math.min(want, cap)
    local interval, tolerance = nil, nil
    if not maxc then  -- "maxc:interval:tolerance": a rate limit too
      local m, e, t = string.match(limit, '^(%d+):([%d.e+-]+):([%d.e+-]+)$')
      maxc, interval, tolerance = tonumber(m), tonumber(e), tonumber(t)
    end
    if maxc > 0 then
      redis.call('ZREMRANGEBYSCORE', KEYS[base + 2], '-inf', '(' .. string.format('%.6f', clock()))
      local free = maxc - redis.call('ZCARD', KEYS[base + 2])
      if free < take then take = free end
    end
    local tat = nil
    if interval and take > 0 then
      -- GCRA over rate:<name> (the theoretical arrival time of the next job): a job
      -- may start at t when tat - tolerance <= t; each start moves tat by interval.
      tat = tonumber(redis.call('GET', KEYS[base + 3]) or 0)
      if tat < clock() then tat = clock() end
      local allowed = math.floor((clock() + tolerance - tat) / interval + 1e-9) + 1
      if allowed < take then take = math.max(allowed, 0) end
      if take == 0 then
        -- When this pool's free slots can be filled (up to a burst's worth), not when
        -- the next single start is allowed: pools sharing a limit wake once per several
        -- starts, not all of them for every one (GCRA keeps the rate exact either way).
        local k = math.min(want, math.floor(tolerance / interval + 1e-9) + 1)
        local wait = tat - tolerance - clock() + (k - 1) * interval
        if rate_due == nil or wait < rate_due then rate_due = wait end
      end
    end
    if take > 0 then
      local aside = {}
      local stalled = false
      while take > 0 and #aside < 16 and not stalled do
        local asked = take
        local got = redis.call('RPOP', KEYS[base], take)
        if not got then
          if probing and #aside == 0 and (taken_of[i] or 0) == 0 then
            empties[#empties + 1] = i  -- found empty (drained: below)
          end
          break
        end
        local tokens = nil
        for _, payload in ipairs(got) do
          -- byte 3 is 'c' ({"class"...) for a token, 'j' for forkq's jobs: no substring
          if string.byte(payload, 3) == 99 and string.sub(payload, 1, 23) == TOKEN then
            -- A group's turn comes after the jobs popped with it (see below).
            tokens = tokens or {}
            tokens[#tokens + 1] = payload
          else
            local suspect = is_suspect(payload)
            if suspect and not may_take_suspect then
              aside[#aside + 1] = payload
            else
              if suspect then may_take_suspect = false end
              taken[#taken + 1] = {i, jid_of(payload), payload, maxc > 0}
              taken_of[i] = (taken_of[i] or 0) + 1
              take = take - 1
              want = want - 1
            end
          end
        end
        if tokens then
          -- One group takes what this call still wants (a turn is a fetch's worth, so a
          -- turn costs a few commands, not a few per job); if it runs short (empty, at
          -- its cap) the next token popped serves the rest.  Tokens left unserved go
          -- back to the head, in order: they are next, for the next fetch.
          gname = gname or string.sub(KEYS[base], qprefix_len + 1)
          local k = 1
          while k <= #tokens and take > 0 and not stalled do
            local c, stop = serve(i, base, maxc, gcap, gname, tokens[k], take)
            take = take - c
            stalled = stop
            k = k + 1
          end
          if k <= #tokens then
            local back = {}
            for r = #tokens, k, -1 do back[#back + 1] = tokens[r] end
            redis.call('RPUSH', KEYS[base], unpack(back))
          end
        end
        if #got < asked then break end  -- the queue is empty now: no RPOP just to see nil
      end
      -- Asked for more than the queue held: it is empty now (suspects put back count
      -- as empty: a job pushed behind them must still wake this pool).
      if take > 0 and #aside < 16 then drained[#drained + 1] = i end
      if #aside > 0 then
        -- Back to the head, in their order, for a pool that holds no suspect.
        for k = #aside, 1, -1 do redis.call('RPUSH', KEYS[base], aside[k]) end
        out[2] = 1
      end
      if tat then
        local started = taken_of[i] or 0
        if started > 0 then
          tat = tat + started * interval
          -- Kept until the bucket is full again (then "no key" means the same).
          redis.call('SET', KEYS[base + 3], string.format('%.6f', tat),
                     'PX', math.max(1, math.ceil((tat - clock()) * 1000)))
        end
      end
    end
  end
  if is_async then
    if is_async[i] then split_a = split_a - (#taken - before) else split_s = split_s - (#taken - before) end
  end
end

if #taken > 0 then
  -- 2. In-progress fields are jids; two entries sharing a jid (a producer that pushed
  --    the same job twice) must not overwrite each other, or one outcome is lost.
  --    One HMGET finds collisions with jobs already held; suffixes make them unique.
  local fields = {}
  for k, t in ipairs(taken) do fields[k] = t[2] end
  local existing = redis.call('HMGET', KEYS[1], unpack(fields))
  local used = {}
  local hset = {}
  for k, t in ipairs(taken) do
    local field = t[2]
    if existing[k] or used[field] then
      local n = 2
      while used[field .. '#' .. n] or redis.call('HEXISTS', KEYS[1], field .. '#' .. n) == 1 do
        n = n + 1
      end
      field = field .. '#' .. n
    end
    used[field] = true
    hset[#hset + 1] = field
    hset[#hset + 1] = t[3]
    if t[4] then
      redis.call('ZADD', KEYS[4 * t[1] + 2], string.format('%.6f', clock() + tonumber(ARGV[2])),
                 member_prefix .. field)
    end
    if t[5] then  -- its group's lease (group_concurrency)
      redis.call('ZADD', t[5], string.format('%.6f', clock() + tonumber(ARGV[2])), member_prefix .. field)
    end
    out[#out + 1] = t[1]
    out[#out + 1] = field
    out[#out + 1] = t[3]
  end
  redis.call('HSET', KEYS[1], unpack(hset))
end

-- 3. The idle registry (enqueue.lua wakes registered pools one by one).
--    Score 0 for all: enqueue.lua's ZRANGE then picks by identity, so a trickle keeps
--    going to the same pool while it has free slots (warm) and the other pools sleep.
if #taken < want0 then
  local all, unregistered = ARGV[10] == '*', {}
  if not all then
    for d in string.gmatch(ARGV[10], '%d+') do unregistered[tonumber(d)] = true end
  end
  for _, i in ipairs(drained) do
    if all or unregistered[i] then redis.call('ZADD', KEYS[4 + 4 * names + i], 0, ARGV[8]) end
  end
elseif ARGV[9] == '1' then
  for i = 1, names do redis.call('ZREM', KEYS[4 + 4 * names + i], ARGV[8]) end
end

out[4] = table.concat(empties, ',')
-- A rate-limited name that took nothing: when it may start its next job.
if rate_due then out[5] = string.format('%.6f', rate_due) end

-- Delays travel as strings: a Lua number would be truncated to an integer reply.
if ARGV[7] ~= '1' then
  out[1] = '-'
  return out
end
local next_due, each, due_queue = nil, {'', ''}, ''
for k = 2, 3 do
  local first = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
  if first[2] then
    local at = tonumber(first[2])
    each[k - 1] = string.format('%.6f', at - clock())
    if next_due == nil or at < next_due then
      next_due = at
      -- Read from forkq's own prefix (_job_prefix); anything else, or a name the
      -- report's "|" would split: ''.
      local q = queue_in_prefix(first[1])
      due_queue = (q and not string.find(q, '|', 1, true)) and q or ''
    end
  end
end
if next_due then
  out[1] = string.format('%.6f', next_due - clock()) .. '|' .. each[1] .. '|' .. each[2] .. '|' .. due_queue
end
return out
