-- _wake: a fragment, not a script (see _batch_count.lua): the targeted wake of idle
-- pools, pasted by "--@include _wake" into the scripts that make a queue non-empty
-- (enqueue, wake_idle, promote_due), so the registry walk is written once.
--
-- wake_registered(idle, prefix, name, jobs, skip): PUBLISH `name` on prefix .. pool to
--   as many pools of the zset `idle` (idle:<name>, fetch.lua registers them) as there
--   are `jobs`, in rank order, never to `skip` (a pool identity, or nil).  A pool no
--   subscriber answers for (PUBLISH reaches nobody: it died) is removed and the next
--   one is taken, so a dead pool never swallows a wake.  Pools stay registered (a
--   fetch that fills a pool takes it out), so a trickle costs no registry write per
--   job.  Returns how many were woken; the caller decides whether to fall back to the
--   shared wake channel.
local function wake_registered(idle, prefix, name, jobs, skip)
  local woken, rank = 0, 0
  while woken < jobs do
    -- The pools woken so far and `skip` hold the ranks before `rank` (the dead are gone).
    local pools = redis.call('ZRANGE', idle, rank, rank + (jobs - woken) - 1)
    if #pools == 0 then break end
    for _, pool in ipairs(pools) do
      if pool == skip then
        rank = rank + 1
      elseif redis.call('PUBLISH', prefix .. pool, name) > 0 then
        woken = woken + 1
        rank = rank + 1
      else
        redis.call('ZREM', idle, pool)
      end
    end
  end
  return woken
end
