-- commit.lua: turn a live reservation into an order (status 'pending'). Its units leave
-- 'reserved' and so 'total'; prices come from the products hash at this moment.
--
-- KEYS[1] stock   KEYS[2] products   KEYS[3] live   KEYS[4] expiry   KEYS[5] outbox
-- KEYS[6] record  the reservation's hash
-- KEYS[7] order   the new order's hash
-- KEYS[8] idem    idempotency record (unused when ARGV[6] is '')
-- KEYS[9] behind  the partition's flag: while it is set, nothing is decided (lib.lua fenced)
--
-- ARGV[1] reservation id
-- ARGV[2] order id (new, chosen by the engine)
-- ARGV[3] owner scope: '' = anyone (staff), else only this user's reservation is seen
-- ARGV[4] actor (user id)         ARGV[5] request id
-- ARGV[6] request fingerprint ('' = no idempotency key)
-- ARGV[7] idempotency record ttl (ms)
-- ARGV[8] record retention (ms) kept for the reservation after it ends
--
-- Returns JSON:
--   {"ok": true, "order": {id, owner, status, reservation, lines [[product, warehouse, qty,
--     unit_price]], total (minor units), currency, created_at, updated_at (ms)}}
--   {"err": "reservation_not_found" | "reservation_not_live" | "reservation_expired", ...}
--     (a due reservation is released first, and recorded as expired)
--   {"err": "currency_mismatch", "currencies"} | {"err": "order_total_too_large"}
--   {"err": "order_exists", "order"} | {"err": "idempotency_mismatch"}
--   {"err": "redis_behind"} (KEYS[9] is set)
--   An ok reply also carries "event": the stream id of the last event written (lib.lua).
-- Events: order_created (with the reserved -> gone movements), or reservation_expired.

local stock, products, live_hash, expiry, outbox, record, order, idem =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local id, order_id, scope, actor, request_id, fp =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

local blocked, taken = fenced_or_exists(KEYS[9], order)
if blocked then return blocked end

local replay = idem_lookup(idem, fp, tonumber(ARGV[7]))
if replay then return replay end

local now = now_ms()
local rec, live, err = live_reservation(stock, live_hash, expiry, outbox, record, id, scope, now)
if err then return err end
local priced, total, currency = price_lines(products, live.lines)
if not priced then return total end
if taken then return refuse('order_exists', {order = order_id}) end

local movements = {}
for _, l in ipairs(live.lines) do
  movements[#movements + 1] = move(stock, l[1], l[2], 0, -l[3])
end
redis.call('HDEL', live_hash, id)
redis.call('ZREM', expiry, id)
redis.call('HSET', record, 'status', 'committed', 'order_id', order_id, 'ended_at', now)
redis.call('PEXPIRE', record, tonumber(ARGV[8]))
local reply = {order = write_order(order, order_id, rec.owner, id, priced, total, currency, now)}
emit(outbox, 'order_created', now, actor, request_id,
     {order = order_id, reservation = id, user = rec.owner, status = 'pending',
      lines = priced, total = total, currency = currency, movements = movements}, reply)
return idem_store(idem, fp, ARGV[7], ok(reply))
