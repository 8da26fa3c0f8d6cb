-- expire.lua: the sweep. Releases due reservations (expires_at <= now) up to a limit.
--
-- KEYS[1] stock   KEYS[2] live   KEYS[3] expiry   KEYS[4] outbox
-- KEYS[5] behind  the partition's flag: while it is set, nothing is released
--
-- ARGV[1] limit: at most this many reservations released (count)
--
-- Returns JSON {"ok": true, "expired": n, "due": reservations still due after this call}
--   (+ "fenced": true, nothing released, while KEYS[5] is set)
--   An ok reply also carries "event": the stream id of the last event written (lib.lua).
-- Events: reservation_expired, one per released reservation.

local stock, live_hash, expiry, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('EXISTS', KEYS[5]) == 1 then
  return ok({expired = 0, due = 0, fenced = true})
end
local now, now_s = now_ms()
local n = expire_due(stock, live_hash, expiry, outbox, now, now_s, ARGV[1], 'sweep')
return ok({expired = n, due = redis.call('ZCOUNT', expiry, '-inf', now_s)})
