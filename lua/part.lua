-- part.lua: one part of a cart across partitions follows its home (lua/cart.lua,
-- engine/carts.py). A part is a reservation of its own partition (its units held and given
-- back there alone), whose record names the cart; no caller but the cart moves it.
--
-- KEYS[1] stock   KEYS[2] products   KEYS[3] live   KEYS[4] expiry   KEYS[5] outbox
-- KEYS[6] record  the part's hash; for 'return', the order's return mark in this partition
-- KEYS[7] behind  the partition's flag: while it is set, nothing is decided (lib.lua fenced)
-- KEYS[8] held    the partition's count of what each customer holds (limits.lua)
-- KEYS[9] waitlist  the partition's queues: returned units go to their heads (wait.lua)
-- KEYS[10] wait_due  the waitlist entries by when they leave unserved (wait.lua)
-- KEYS[11] wait_data the waitlist entries, and the hand-offs' records (wait.lua)
--
-- ARGV[1] action: 'align' | 'pin' | 'release' | 'commit' | 'return'
-- ARGV[2] reservation id: the part's
-- ARGV[3] cart id
-- ARGV[4] expires_at (ms): the home's (align)
-- ARGV[5] pin (ms): the part may not expire for this long (pin)
-- ARGV[6] order id (commit, return)
-- ARGV[7] lines: JSON [[product, warehouse, qty], ...] of the part in the order (return)
-- ARGV[8] owner (user id) of the order (return)
-- ARGV[9] actor (user id)         ARGV[10] request id
-- ARGV[11] record retention (ms) kept after the part ends; for 'return', the order's
-- ARGV[12] counted: JSON [product, ...], the products of `lines` the part counted against
--          the customer's limits (return; limits.lua); '' none
--
-- align: a live part takes the home's expires_at. {"ok", "status": "active", "lines"}.
-- pin: a live part that is not due is kept from expiring for `pin` ms while the cart is
--   committed; {"ok", "status", "lines": [[product, warehouse, qty, unit_price, currency]]}
--   priced from this partition's products, and "held": the products it counted against the
--   customer's limits (limits.lua), which go into the order with its lines.
-- release: a live part gives its units back; an ended one is left: {"ok", "status", "lines"}.
-- commit: a live part's units go into the home's order (reserved -> gone); a part committed
--   to that order already is left: {"ok", "status": "committed", "lines"}.
-- return: the part's units of a cancelled order go back to available, once (the mark), and
--   what it counted of them against the customer's limits goes.
-- Refusals: {"err": "reservation_not_found"} (no such part of this cart),
--   {"err": "reservation_not_live", "status"}, {"err": "reservation_expired"} (align, pin: a
--   due part is expired first), pricing's (pin), {"err": "redis_behind"}.
-- Events: reservation_extended, reservation_released, reservation_expired,
--   reservation_committed, order_part_returned; each names the cart.

local stock, products, live_hash, expiry, outbox, record =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local action, id, cart, order_id, actor, request_id =
  ARGV[1], ARGV[2], ARGV[3], ARGV[6], ARGV[9], ARGV[10]
local retention = tonumber(ARGV[11])

local blocked = fenced(KEYS[7])
if blocked then return blocked end
use_waitlists(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[8], KEYS[9],
  KEYS[10], KEYS[11])
local now = now_ms()

if action == 'return' then
  if rcall('EXISTS', record) == 1 then return ok({status = 'returned'}) end
  local movements = {}
  for _, l in ipairs(cjson.decode(ARGV[7])) do
    movements[#movements + 1] = move(stock, l[1], l[2], l[3], 0)
  end
  if ARGV[12] ~= '' then
    uncount(KEYS[8], ARGV[8], cjson.decode(ARGV[7]), cjson.decode(ARGV[12]))
  end
  rcall('SET', record, '1', 'PX', retention)
  emit(outbox, 'order_part_returned', now, actor, request_id,
       {order = order_id, part = id, cart = cart, user = ARGV[8], movements = movements})
  return ok({status = 'returned'})
end

local flat = rcall('HGETALL', record)
local rec = record_of(flat, id)
if #flat == 0 or rec.cart ~= cart then
  return refuse('reservation_not_found', {reservation = id})
end
local lines = rec.lines
local raw = rec.status == 'active' and rcall('HGET', live_hash, id) or nil

if action == 'commit' then
  if rec.status == 'committed' and rec.order_id == order_id then
    return ok({status = 'committed', lines = lines})
  end
  if not raw then return refuse('reservation_not_live', {reservation = id, status = rec.status}) end
  local movements = {}
  for _, l in ipairs(lines) do movements[#movements + 1] = move(stock, l[1], l[2], 0, -l[3]) end
  rcall('HDEL', live_hash, id)
  rcall('ZREM', expiry, id)
  rcall('HSET', record, 'status', 'committed', 'order_id', order_id, 'ended_at', now)
  rcall('PEXPIRE', record, retention)
  emit(outbox, 'reservation_committed', now, actor, request_id,
       {reservation = id, order = order_id, cart = cart, user = rec.owner,
        movements = movements})
  return ok({status = 'committed', lines = lines})
end

if action == 'release' then
  if not raw then return ok({status = rec.status, lines = lines}) end
  local movements = release_units(stock, live_hash, expiry, id, cjson.decode(raw), KEYS[8])
  rcall('HSET', record, 'status', 'released', 'ended_at', now)
  rcall('PEXPIRE', record, retention)
  emit(outbox, 'reservation_released', now, actor, request_id,
       {reservation = id, user = rec.owner, movements = movements, cart = cart})
  return ok({status = 'released', lines = lines})
end

-- align and pin: the part must still be live
if not raw then return refuse('reservation_not_live', {reservation = id, status = rec.status}) end
local old = tonumber(rec.expires_at)
if now >= old then
  local movements = release_units(stock, live_hash, expiry, id, cjson.decode(raw), KEYS[8])
  emit(outbox, 'reservation_expired', now, 'system', '', {
    reservation = id, user = rec.owner, expires_at = old, trigger = 'access',
    movements = movements, cart = cart})
  keep_expired(record, old, retention)
  return refuse('reservation_expired', {reservation = id, expires_at = old})
end
local new = old
if action == 'align' then new = tonumber(ARGV[4])
elseif action == 'pin' then new = math.max(old, now + tonumber(ARGV[5]))
else error('part.lua: unknown action ' .. action) end
if new ~= old then
  rcall('ZADD', expiry, int(new), id)
  rcall('HSET', record, 'expires_at', int(new))
  rcall('PEXPIREAT', record, int(new + retention))
  emit(outbox, 'reservation_extended', now, actor, request_id,
       {reservation = id, user = rec.owner, expires_at_before = old, expires_at_after = new,
        cart = cart})
end
if action == 'align' then return ok({status = 'active', lines = lines}) end
local priced, refusal, currency = price_lines(products, lines)
if not priced then return refusal end
for _, l in ipairs(priced) do l[5] = currency end
return ok({status = 'active', lines = priced, held = cjson.decode(raw).held or {}})
