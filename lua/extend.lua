-- extend.lua: push a live reservation's expires_at out to now + ttl, capped at
-- created_at + max lifetime so nobody can hold stock forever.
--
-- KEYS[1] stock   KEYS[2] live   KEYS[3] expiry   KEYS[4] outbox
-- KEYS[5] record  the reservation's hash
-- KEYS[6] idem    idempotency record (unused when ARGV[7] is '')
-- KEYS[7] behind  the partition's flag: while it is set, nothing is decided (lib.lua fenced)
-- KEYS[8] carts   the partition's carts whose parts have a step to follow (holds.lua)
-- KEYS[9] held    the partition's count of what each customer holds (limits.lua)
-- KEYS[10] products  the partition's products hash
-- KEYS[11] waitlist  the partition's queues: returned units go to their heads (wait.lua)
-- KEYS[12] wait_due  the waitlist entries by when they leave unserved (wait.lua)
-- KEYS[13] wait_data the waitlist entries, and the hand-offs' records (wait.lua)
--
-- ARGV[1] reservation id
-- ARGV[2] owner scope: '' = anyone (staff), else only this user's reservation is seen
-- ARGV[3] ttl (ms) from now
-- ARGV[4] max lifetime (ms) from created_at
-- ARGV[5] actor (user id)         ARGV[6] request id
-- ARGV[7] request fingerprint ('' = no idempotency key)
-- ARGV[8] idempotency record ttl (ms)
-- ARGV[9] record retention (ms) kept after the reservation ends
-- ARGV[10] hold (ms): a cart's parts are to follow within it (engine/carts.py)
--
-- Returns JSON:
--   {"ok": true, "reservation": {... new expires_at}}  (+ "replayed": true); when now + ttl
--     is not later than the current expires_at, nothing changes and no event is written
--   {"err": "extension_limit_reached", "reservation", "expires_at", "max_expires_at"}
--     when expires_at already sits at the cap
--   and the refusals of release.lua (not_found, not_live, expired, idempotency_mismatch,
--   redis_behind)
--   An ok reply also carries "event": the stream id of the last event written (lib.lua).
--   The home of a cart across partitions also answers "parts" and "deadline" (release.lua).
-- Events: reservation_extended (no counter moves), or reservation_expired when it was due.

local stock, live_hash, expiry, outbox, record, idem =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id, scope, actor, request_id, fp = ARGV[1], ARGV[2], ARGV[5], ARGV[6], ARGV[7]

local opened = open_call(KEYS[7], nil, idem, fp, ARGV[8])
if opened then return opened end
use_waitlists(KEYS[1], KEYS[10], KEYS[2], KEYS[3], KEYS[4], KEYS[9], KEYS[11],
  KEYS[12], KEYS[13])

local now = now_ms()
local rec, _, err = live_reservation(stock, live_hash, expiry, outbox, record, id, scope, now,
  KEYS[9], tonumber(ARGV[9]))
if err then return err end

local old = tonumber(rec.expires_at)
local cap = rec.created_at + tonumber(ARGV[4])
if old >= cap then
  return refuse('extension_limit_reached',
    {reservation = id, expires_at = old, max_expires_at = cap})
end
local new = math.min(now + tonumber(ARGV[3]), cap)
if new <= old then
  return idem_store(idem, fp, ARGV[8], ok({reservation = reservation_view(rec, 'active')}))
end
rcall('ZADD', expiry, new, id)
rcall('HSET', record, 'expires_at', new)
rcall('PEXPIREAT', record, new + tonumber(ARGV[9]))
rec.expires_at = new
local reply = {reservation = reservation_view(rec, 'active')}
if rec.parts then
  reply.parts, reply.deadline = cjson.decode(rec.parts), cart_pending(KEYS[8], id, now, ARGV[10])
end
emit(outbox, 'reservation_extended', now, actor, request_id,
     {reservation = id, user = rec.owner, expires_at_before = old, expires_at_after = new},
     reply)
return idem_store(idem, fp, ARGV[8], ok(reply))
