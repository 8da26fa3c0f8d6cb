-- expire.lua: the sweep. Releases due reservations (expires_at <= now) up to a limit, and
-- hands the engine what else is due in the partition: the steps of carts across partitions
-- past their deadline (claimed: holds.lua claim_steps) and the direct orders pending past
-- ORDER_PENDING_TTL (engine/carts.py follow_cart, time_out_orders).
--
-- KEYS[1] stock   KEYS[2] live   KEYS[3] expiry   KEYS[4] outbox
-- KEYS[5] behind  the partition's flag: while it is set, nothing is released
-- KEYS[6] carts   the partition's carts whose parts have a step to follow (holds.lua)
-- KEYS[7] pending the partition's pending direct orders by when they time out (holds.lua)
-- KEYS[8] held    the partition's count of what each customer holds (limits.lua)
-- KEYS[9] products  the partition's products hash
-- KEYS[10] waitlist  the partition's queues: returned units go to their heads (wait.lua)
-- KEYS[11] wait_due  the waitlist entries by when they leave unserved (wait.lua)
-- KEYS[12] wait_data the waitlist entries, and the hand-offs' records (wait.lua)
--
-- ARGV[1] limit: at most this many reservations released, steps claimed, orders listed (each)
-- ARGV[2] hold (ms): a claimed step's new deadline is now + hold
-- ARGV[3] record retention (ms) kept after an expired reservation's expires_at
-- ARGV[4] records: the prefix of the partition's reservation records (holds.lua expire_due)
--
-- Returns JSON {"ok": true, "expired": n, "due": reservations still due after this call,
--   "claimed": [{"id", "deadline"}, ...], "orders_due": [order id, ...], "left_waitlist": n}
--   (waitlist entries past their time, recorded as waitlist_left, reason 'expired')
--   (+ "fenced": true, nothing done but "due" counted, while KEYS[5] is set)
--   An ok reply also carries "event": the stream id of the last event written (lib.lua).
-- Events: reservation_expired, one per released reservation; waitlist_left; the hand-offs of
--   the units that came back (wait.lua).

local stock, live_hash, expiry, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if rcall('EXISTS', KEYS[5]) == 1 then  -- (what is due is counted: the sweep reports it)
  local now = now_ms()
  local due = rcall('ZCOUNT', expiry, '-inf', now)
  return ok({expired = 0, due = due, fenced = true})
end
use_waitlists(KEYS[1], KEYS[9], KEYS[2], KEYS[3], KEYS[4], KEYS[8], KEYS[10],
  KEYS[11], KEYS[12])
local now, now_s = now_ms()
-- the steps first: a part is made to follow before its own hold (in its partition) runs out
local claimed = claim_steps(KEYS[6], now, now_s, ARGV[1], ARGV[2])
local n = expire_due(stock, live_hash, expiry, outbox, now, now_s, ARGV[1], 'sweep', KEYS[8],
  ARGV[4], tonumber(ARGV[3]))
-- waitlist entries past their time leave it (wait.lua): what they held back is served again
local gone = rcall('ZRANGEBYSCORE', KEYS[11], '-inf', now_s, 'LIMIT', '0', ARGV[1])
for _, id in ipairs(gone) do
  local raw = rcall('HGET', KEYS[12], 'e|' .. id)
  if raw then
    leave_waitlist(wait, cjson.decode(raw), 'expired', now, 'system', '')
  else
    rcall('ZREM', KEYS[11], id)
  end
end
return ok({expired = n, left_waitlist = #gone,
           due = rcall('ZCOUNT', expiry, '-inf', now_s), claimed = claimed,
           orders_due = rcall('ZRANGEBYSCORE', KEYS[7], '-inf', now_s, 'LIMIT', '0',
                                   ARGV[1])})
