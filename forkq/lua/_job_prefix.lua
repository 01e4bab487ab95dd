-- _job_prefix: a fragment, not a script (see _batch_count.lua), pasted by
-- "--@include _job_prefix" into promote_due.lua and fetch.lua: how a script reads a
-- scheduled job's queue from its payload without decoding it, written once.
--
-- queue_in_prefix(member): forkq writes jid, class and queue first (jobcodec.encode),
--   so an anchored match on that prefix gives the queue name.  nil when the payload
--   begins any other way (Sidekiq's clients, an escape in one of those fields): the
--   caller decodes it, or does without.
local function queue_in_prefix(member)
  return string.match(member, '^{"jid":"[^"\\]*","class":"[^"\\]*","queue":"([^"\\]+)"')
end
