-- trim_outbox.lua: once the database has committed a batch, the outbox drops the batch and
-- the partition's applied marker moves up to the batch's last event, in one step.
--
-- The marker is how a Redis tells that it is behind the database: a copy restored from
-- before a drain (or a replica that lagged) holds an older marker and lacks the event the
-- database's checkpoint names (persistence/behind.py). It never moves down: a drainer whose
-- lease lapsed may trim after a newer batch was trimmed.
--
-- KEYS[1] outbox   stream
-- KEYS[2] applied  string: id of the last event the database applied
--
-- ARGV[1] id of the last event of the committed batch (stream id 'ms-seq')
--
-- Returns JSON {"ok": true, "trimmed": entries removed (count), "applied": the marker after}

local outbox, applied = KEYS[1], KEYS[2]
local last = ARGV[1]

local ms, seq = string.match(last, '^(%d+)-(%d+)$')
if not ms then return refuse('bad_id', {id = last}) end
local trimmed = rcall('XTRIM', outbox, 'MINID', ms .. '-' .. (tonumber(seq) + 1))
local marker = rcall('GET', applied)
if not marker or id_less(marker, last) then
  rcall('SET', applied, last)
  marker = last
end
return ok({trimmed = trimmed, applied = marker})
