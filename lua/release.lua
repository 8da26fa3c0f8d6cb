-- release.lua: give a live reservation's units back (its owner or staff cancels it).
--
-- KEYS[1] stock   KEYS[2] live   KEYS[3] expiry   KEYS[4] outbox
-- KEYS[5] record  the reservation's hash
-- KEYS[6] idem    idempotency record (unused when ARGV[5] is '')
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
-- ARGV[3] actor (user id)         ARGV[4] request id
-- ARGV[5] request fingerprint ('' = no idempotency key)
-- ARGV[6] idempotency record ttl (ms)
-- ARGV[7] record retention (ms) kept after the reservation ends
-- ARGV[8] hold (ms): a cart's parts are to follow within it (engine/carts.py)
--
-- Returns JSON:
--   {"ok": true, "reservation": {..., "status": "released"}}  (+ "replayed": true)
--   {"err": "reservation_not_found", "reservation"}
--   {"err": "reservation_not_live", "reservation", "status", "order"}
--   {"err": "reservation_expired", "reservation", "expires_at"}  (released first if it was due)
--   {"err": "idempotency_mismatch"} | {"err": "redis_behind"} (KEYS[7] is set)
--   An ok reply also carries "event": the stream id of the last event written (lib.lua).
--   The home of a cart across partitions also answers "parts" (its partitions) and
--   "deadline": its other parts are to be released (engine/carts.py).
-- Events: reservation_released, or reservation_expired when it was due.

local stock, live_hash, expiry, outbox, record, idem =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id, scope, actor, request_id, fp = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local opened = open_call(KEYS[7], nil, idem, fp, ARGV[6])
if opened then return opened end
use_waitlists(KEYS[1], KEYS[10], KEYS[2], KEYS[3], KEYS[4], KEYS[9], KEYS[11],
  KEYS[12], KEYS[13])

local now = now_ms()
local rec, live, err = live_reservation(stock, live_hash, expiry, outbox, record, id, scope, now,
  KEYS[9], tonumber(ARGV[7]))
if err then return err end

local movements = release_units(stock, live_hash, expiry, id, live, KEYS[9])
rcall('HSET', record, 'status', 'released', 'ended_at', now)
rcall('PEXPIRE', record, tonumber(ARGV[7]))
local reply = {reservation = reservation_view(rec, 'released')}
if rec.parts then
  reply.parts, reply.deadline = cjson.decode(rec.parts), cart_pending(KEYS[8], id, now, ARGV[8])
end
emit(outbox, 'reservation_released', now, actor, request_id,
     {reservation = id, user = rec.owner, movements = movements}, reply)
return idem_store(idem, fp, ARGV[6], ok(reply))
