-- commit.lua: turn a live reservation into an order (status 'pending'). Its units leave
-- 'reserved' and so 'total'; prices come from the products hash at this moment.
--
-- KEYS[1] stock   KEYS[2] products   KEYS[3] live   KEYS[4] expiry   KEYS[5] outbox
-- KEYS[6] record  the reservation's hash
-- KEYS[7] order   the new order's hash
-- KEYS[8] idem    idempotency record (unused when ARGV[6] is '')
-- KEYS[9] behind  the partition's flag: while it is set, nothing is decided (lib.lua fenced)
-- KEYS[10] carts  the partition's carts whose parts have a step to follow (holds.lua)
-- KEYS[11] pending the partition's pending direct orders by when they time out (holds.lua)
-- KEYS[12] held   the partition's count of what each customer holds (limits.lua)
-- KEYS[13] waitlist  the partition's queues: returned units go to their heads (wait.lua)
-- KEYS[14] wait_due  the waitlist entries by when they leave unserved (wait.lua)
-- KEYS[15] wait_data the waitlist entries, and the hand-offs' records (wait.lua)
--
-- ARGV[1] reservation id
-- ARGV[2] order id (new, chosen by the engine)
-- ARGV[3] owner scope: '' = anyone (staff), else only this user's reservation is seen
-- ARGV[4] actor (user id)         ARGV[5] request id
-- ARGV[6] request fingerprint ('' = no idempotency key)
-- ARGV[7] idempotency record ttl (ms)
-- ARGV[8] record retention (ms) kept for the reservation after it ends
-- ARGV[9] foreign lines: '' alone; for the home of a cart across partitions, the other
--         parts' lines as they priced them, JSON [[product, warehouse, qty, unit_price,
--         currency], ...] (engine/carts.py)
-- ARGV[10] deadline (ms) of the cart's commit, as the first call answered it ('' alone)
-- ARGV[11] hold (ms): a cart's parts are to follow within it
-- ARGV[12] pending ttl (ms): a direct order across partitions (made through its cart) is
--          cancelled if still pending after it; '' or 0 for the order of a reservation
-- ARGV[13] foreign held: JSON [product, ...] of the foreign lines' products that their parts
--          counted against the customer's limits (part.lua pin; '' or [] alone)
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
-- What the reservation counted against its customer's limits (limits.lua) goes into the
-- order (its record's 'held': the products, JSON, with the foreign held), but for its count
-- of live reservations, which goes.
-- The home of a cart across partitions is committed in two calls. The first (no foreign
-- lines) only answers {"err": "cart_parts", "parts", "deadline"}, and records the cart's
-- step (holds.lua cart_pending): the engine pins the other parts (lua/part.lua) and calls
-- again with their priced lines and that deadline; past it, or after the sweep took the step
-- over, {"err": "cart_timeout"}. The order holds every line; "own_lines" (its record) those
-- whose units this partition holds, "parts" the cart's partitions.
-- Events: order_created (with the reserved -> gone movements), or reservation_expired.

local stock, products, live_hash, expiry, outbox, record, order, idem =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local id, order_id, scope, actor, request_id, fp =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

local opened, taken = open_call(KEYS[9], order, idem, fp, ARGV[7])
if opened then return opened end
use_waitlists(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[12], KEYS[13],
  KEYS[14], KEYS[15])

local now, now_s = now_ms()
local rec, live, err = live_reservation(stock, live_hash, expiry, outbox, record, id, scope, now,
  KEYS[12], tonumber(ARGV[8]))
if err then return err end
local priced, total, currency = price_lines(products, live.lines)
if not priced then return total end
if taken then return refuse('order_exists', {order = order_id}) end
local own = priced
if rec.parts then
  if ARGV[9] == '' then
    return refuse('cart_parts', {parts = cjson.decode(rec.parts),
                                 deadline = cart_pending(KEYS[10], id, now, ARGV[11])})
  end
  local pending = rcall('ZSCORE', KEYS[10], id)
  if not pending or tonumber(pending) ~= tonumber(ARGV[10]) or now >= tonumber(ARGV[10]) then
    return refuse('cart_timeout', {reservation = id})
  end
  own = {}
  for i, l in ipairs(priced) do own[i] = l end
  for _, l in ipairs(cjson.decode(ARGV[9])) do
    if l[5] ~= currency then
      return refuse('currency_mismatch', {currencies = {currency, l[5]}})
    end
    priced[#priced + 1] = {l[1], l[2], l[3], l[4]}
    total = total + l[3] * l[4]
  end
  if total > 99999999999999 then return refuse('order_total_too_large', {}) end
end

-- The movements, the order, its event and the reply are written as text, each by one
-- concatenation (as reserve.lua's: cjson would format every number again); the event holds
-- the reply whole, so its idempotency copy leaves it out (the drain rebuilds it).
local moved = {}
for i, l in ipairs(live.lines) do
  moved[i] = movement_json(stock, read_counter(stock, l[1], l[2]), 0, -l[3])
end
rcall('HDEL', live_hash, id)
rcall('ZREM', expiry, id)
rcall('HSET', record, 'status', 'committed', 'order_id', order_id, 'ended_at', now_s)
rcall('PEXPIRE', record, ARGV[8])
local order_json, lines_json, owner_json, total_s =
  write_order(order, order_id, rec.owner, id, priced, total, currency, now_s)
if rec.parts then
  rcall('HSET', order, 'own_lines', cjson.encode(own), 'parts', rec.parts)
end
pending_until(KEYS[11], order_id, now, ARGV[12])
uncount_live(KEYS[12], live, false)
local counted = live.held or {}
if ARGV[13] ~= '' then
  for _, p in ipairs(cjson.decode(ARGV[13])) do counted[#counted + 1] = p end
end
if #counted > 0 then rcall('HSET', order, 'held', cjson.encode(counted)) end
emit_order_created(outbox, now_s, actor, request_id, order_id, id, rec.owner, owner_json,
  lines_json, total_s, currency, moved)
return idem_store(idem, fp, ARGV[7], '{"ok":true,"event":"' .. last_event .. '","order":'
  .. order_json .. '}')
