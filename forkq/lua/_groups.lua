-- _groups: a fragment, not a script (see _batch_count.lua): fair groups' two rules,
-- pasted by "--@include _groups" into every script that handles group tokens, so they
-- are written once beside their Python twins in forkq/job.py.
--
-- valid_group(g): job.valid_group's rule (a non-empty string of at most 128 bytes, no
--   braces, colons or control characters), so a key built from it stays in the slot.
-- token_of(name, g): the group's token in queue:<name>, byte for byte job.group_token
--   (a Sidekiq-shaped entry of class forkq.group).
local function valid_group(g)
  return type(g) == 'string' and #g > 0 and #g <= 128 and not string.find(g, '[{}:%c]')
end
local function token_of(name, g)
  return '{"class":"forkq.group","queue":' .. cjson.encode(name) .. ',"args":[' .. cjson.encode(g)
    .. '],"jid":' .. cjson.encode('forkq-group-' .. g) .. ',"retry":false}'
end
