-- place_order.lua: reserve and commit in one step — a direct order. Units go straight
-- from 'available' into the order (they leave 'total'); all or nothing.
--
-- KEYS[1] stock   KEYS[2] products   KEYS[3] live   KEYS[4] expiry   KEYS[5] outbox
-- KEYS[6] order   the new order's hash
-- KEYS[7] idem    idempotency record (unused when ARGV[7] is '')
-- KEYS[8] behind  the partition's flag: while it is set, nothing is decided (lib.lua fenced)
-- KEYS[9] pending the partition's pending direct orders by when they time out (holds.lua)
-- KEYS[10] held   the partition's count of what each customer holds (limits.lua)
-- KEYS[11] waitlist  the partition's queues: returned units go to their heads (wait.lua)
-- KEYS[12] wait_due  the waitlist entries by when they leave unserved (wait.lua)
-- KEYS[13] wait_data the waitlist entries, and the hand-offs' records (wait.lua)
--
-- ARGV[1] order id (new, chosen by the engine)
-- ARGV[2] lines, JSON [[product, warehouse or '', quantity (units, > 0)], ...]
-- ARGV[3] allow_split: '1' or '0' (see reserve.lua)
-- ARGV[4] owner (user id)
-- ARGV[5] actor (user id)         ARGV[6] request id
-- ARGV[7] request fingerprint ('' = no idempotency key)
-- ARGV[8] idempotency record ttl (ms)
-- ARGV[9] expiry batch: due reservations released per round (count)
-- ARGV[10] pending ttl (ms): the order is cancelled if still pending after it (0: never)
-- ARGV[11] record retention (ms) kept after a due reservation released first expired
-- ARGV[12] records: the prefix of the partition's reservation records (holds.lua expire_due)
--
-- Returns JSON: {"ok": true, "order": {...as commit.lua}}, or the refusals of reserve.lua
--   plus currency_mismatch, order_total_too_large, order_exists; and the limits' refusals
--   (limits.lua): invalid_quantity, limit_exceeded. The order's record keeps what it counted
--   ('held': the products, JSON), which its cancel gives back.
--   An ok reply also carries "event": the stream id of the last event written (lib.lua).
-- Events: reservation_expired (due ones released first), order_created.

local stock, products, live_hash, expiry, outbox, order, idem =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local order_id, owner, actor, request_id, fp = ARGV[1], ARGV[4], ARGV[5], ARGV[6], ARGV[7]

local opened, taken = open_call(KEYS[8], order, idem, fp, ARGV[8])
if opened then return opened end
use_waitlists(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[10], KEYS[11],
  KEYS[12], KEYS[13])

local held, lines, metas = KEYS[10], cjson.decode(ARGV[2]), {}
local now, now_s = now_ms()
local retention = tonumber(ARGV[11])
local _, drained = expire_due(stock, live_hash, expiry, outbox, now, now_s, ARGV[9],
  'reserve', held, ARGV[12], retention)
-- the customer's limits, once the due reservations are released, before the stock
local refusal, counted, want = check_limits(products, held, owner, lines, metas)
if refusal then return refusal end
local alloc, err, counters = allocate_expiring(stock, products, live_hash, expiry, outbox, now,
  now_s, ARGV[9], lines, ARGV[3] == '1', held, metas, ARGV[12], retention, drained)
if err then return err end
local priced, total, currency = price_lines(products, alloc, metas)
if not priced then return total end
if taken then return refuse('order_exists', {order = order_id}) end

-- The movements, the order, its event and the reply as text (holds.lua write_order,
-- emit_order_created), each by one concatenation.
local moved = {}
for i, l in ipairs(alloc) do
  moved[i] = movement_json(stock, counters[i], -l[3], 0)
end
local order_json, lines_json, owner_json, total_s =
  write_order(order, order_id, owner, '', priced, total, currency, now_s)
count_held(held, owner, counted, want)
if counted then rcall('HSET', order, 'held', cjson.encode(counted)) end
pending_until(KEYS[9], order_id, now, ARGV[10])
emit_order_created(outbox, now_s, actor, request_id, order_id, '', owner, owner_json,
  lines_json, total_s, currency, moved)
return idem_store(idem, fp, ARGV[8], '{"ok":true,"event":"' .. last_event .. '","order":'
  .. order_json .. '}')
