-- verify.lua: check this Redis against the database's record for one partition, before its
-- first write since Redis loaded the library (lib.lua `verified`; engine/scripts.py runs it
-- when a write was refused UNVERIFIED). The test is the drain's (persistence/behind.py
-- is_behind): a Redis that holds the checkpoint's event, or trimmed it (its applied marker is
-- at or past it), has everything the database has; one that has neither came back from an
-- older copy, and the flag is raised as the drain raises it: nothing is decided there until
-- `inventory reconcile --fix`. Either way the partition counts as checked: the flag decides.
--
-- KEYS[1] outbox   stream
-- KEYS[2] applied  string: id of the last event the database applied (trim_outbox.lua)
-- KEYS[3] behind   the partition's flag (lib.lua fenced)
--
-- ARGV[1] checkpoint  the database's: the id of the partition's last event it applied ('0-0':
--                     none yet)
-- ARGV[2] partition   the partition's number (for the flag's JSON)
--
-- Returns JSON {"ok": true, "behind": false} or {"ok": true, "behind": true, "found": what
-- showed it (the flag's JSON), "flagged": whether this call raised the flag}

local outbox, applied, flag = KEYS[1], KEYS[2], KEYS[3]
local checkpoint = ARGV[1]
verified[flag] = true
if rcall('EXISTS', flag) == 1 then
  return ok({behind = true, flagged = false, found = cjson.decode(rcall('GET', flag))})
end
if checkpoint == '0-0' or #rcall('XRANGE', outbox, checkpoint, checkpoint) > 0 then
  return ok({behind = false})
end
local last
local info = rpcall('XINFO', 'STREAM', outbox)
if type(info) == 'table' and not info.err then
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
local marker = rcall('GET', applied)
local behind = last == nil or id_less(last, checkpoint) or (marker and id_less(marker, checkpoint))
if not behind then return ok({behind = false}) end
local now = rcall('TIME')
local found = {
  partition = tonumber(ARGV[2]),
  checkpoint = checkpoint,
  last_id = last or cjson.null,
  applied = marker or cjson.null,
  at_ms = now[1] * 1000 + math.floor(now[2] / 1000),
}
rcall('SET', flag, cjson.encode(found), 'NX')
return ok({behind = true, flagged = true, found = found})
