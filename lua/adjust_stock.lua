-- adjust_stock.lua: receive or remove a product's stock, with a reason (received, damaged,
-- correction, returned, ...). All changes or none. Reserved units can't be removed:
-- removing more than is available is refused.
--
-- KEYS[1] stock   KEYS[2] products   KEYS[3] outbox
-- KEYS[4] idem    idempotency record (unused when ARGV[6] is '')
-- KEYS[5] behind  the partition's flag: while it is set, nothing is decided (lib.lua fenced)
-- KEYS[6] live      the partition's live reservations
-- KEYS[7] expiry    the partition's live reservations by expires_at
-- KEYS[8] held      the partition's count of what each customer holds (limits.lua)
-- KEYS[9] waitlist  the partition's queues: returned units go to their heads (wait.lua)
-- KEYS[10] wait_due  the waitlist entries by when they leave unserved (wait.lua)
-- KEYS[11] wait_data the waitlist entries, and the hand-offs' records (wait.lua)
--
-- ARGV[1] product id
-- ARGV[2] changes, JSON [[warehouse, delta (units, non-zero; < 0 removes)], ...],
--         one per warehouse
-- ARGV[3] reason
-- ARGV[4] actor (user id)         ARGV[5] request id
-- ARGV[6] request fingerprint ('' = no idempotency key)
-- ARGV[7] idempotency record ttl (ms)
--
-- Returns JSON:
--   {"ok": true, "movements": [{product, warehouse, available_before, available_after,
--     reserved_before, reserved_after}]}  (+ "replayed": true)
--   {"err": "product_not_found", "product"} | {"err": "warehouse_not_found", ...}
--   {"err": "insufficient_stock", "lines": [{product, warehouse, requested, available}]}
--   {"err": "idempotency_mismatch"} | {"err": "redis_behind"} (KEYS[5] is set)
--   An ok reply also carries "event": the stream id of the last event written (lib.lua).
-- Events: stock_adjusted, one per call, with a movement per warehouse.

local stock, products, outbox, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local product, reason, actor, request_id, fp = ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

local opened = open_call(KEYS[5], nil, idem, fp, ARGV[7])
if opened then return opened end
use_waitlists(KEYS[1], KEYS[2], KEYS[6], KEYS[7], KEYS[3], KEYS[8], KEYS[9],
  KEYS[10], KEYS[11])

local meta = product_meta(products, product)
if not meta then return refuse('product_not_found', {product = product}) end
local known = {}
for _, wh in ipairs(meta.warehouses) do known[wh[1]] = true end
local changes = cjson.decode(ARGV[2])
local short = {}
for _, c in ipairs(changes) do
  if not known[c[1]] then
    return refuse('warehouse_not_found', {product = product, warehouse = c[1]})
  end
  local a = counts(stock, product, c[1])
  if a + c[2] < 0 then
    short[#short + 1] = {product = product, warehouse = c[1], requested = -c[2], available = a}
  end
end
if #short > 0 then return refuse('insufficient_stock', {lines = short}) end

local movements = {}
for _, c in ipairs(changes) do
  movements[#movements + 1] = move(stock, product, c[1], c[2], 0)
end
local reply = {movements = movements}
emit(outbox, 'stock_adjusted', now_ms(), actor, request_id,
     {product = product, reason = reason, movements = movements}, reply)
return idem_store(idem, fp, ARGV[7], ok(reply))
