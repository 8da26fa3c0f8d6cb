-- reserve.lua: reserve one or more lines, all or nothing.
--
-- KEYS[1] stock     hash of counters
-- KEYS[2] products  hash of product meta (price, warehouses by priority)
-- KEYS[3] live      hash of live reservations
-- KEYS[4] expiry    zset of live reservations by expires_at
-- KEYS[5] outbox    stream
-- KEYS[6] idem      idempotency record (unused when ARGV[8] is '')
-- KEYS[7] record    the new reservation's hash
-- KEYS[8] behind    the partition's flag: while it is set, nothing is decided (lib.lua)
-- KEYS[9] carts     the partition's carts whose parts have a step to follow (holds.lua)
-- KEYS[10] held     the partition's count of what each customer holds (limits.lua)
-- KEYS[11] waitlist  the partition's queues: returned units go to their heads (wait.lua)
-- KEYS[12] wait_due  the waitlist entries by when they leave unserved (wait.lua)
-- KEYS[13] wait_data the waitlist entries, and the hand-offs' records (wait.lua)
--
-- ARGV[1]  reservation id (new, chosen by the engine)
-- ARGV[2]  lines, JSON [[product, warehouse or '', quantity (units, > 0)], ...],
--          one per product x warehouse (the engine sums repeats)
-- ARGV[3]  ttl (ms): expires_at = now + ttl
-- ARGV[4]  allow_split: '1' to split a line over warehouses by priority, '0' not to
-- ARGV[5]  owner (user id)
-- ARGV[6]  actor (user id, for the event)
-- ARGV[7]  request id (for the event)
-- ARGV[8]  request fingerprint ('' = no idempotency key)
-- ARGV[9]  idempotency record ttl (ms)
-- ARGV[10] expiry batch: at most this many due reservations released per round (count)
-- ARGV[11] record retention (ms) kept after the reservation ends
-- ARGV[12] cart: '' alone; else the id of the cart across partitions this reservation is a
--          part of (engine/carts.py), kept in the record and the event
-- ARGV[13] parts: '' but for the home of a cart across partitions, taken last, once every
--          other part is held: JSON [partition, ...] of the cart, kept in the record; the
--          cart is live from here (its commit point), and its other parts are to follow
-- ARGV[14] hold (ms): the other parts are to follow within it (with parts)
-- ARGV[15] max live: the owner may hold at most this many live reservations (a cart counts
--          once, in its home); 0 = no cap (limits.lua)
-- ARGV[16] records: the prefix of the partition's reservation records (holds.lua expire_due:
--          the due ones released first get their record's TTL)
--
-- Returns JSON:
--   {"ok": true, "reservation": {id, owner, status, created_at, expires_at (ms),
--                                lines [[product, warehouse, qty]]}}  (+ "replayed": true)
--   {"err": "insufficient_stock", "lines": [{product, warehouse?, requested, available}]}
--   {"err": "product_not_found", "product"} | {"err": "warehouse_not_found", "product", "warehouse"}
--   {"err": "idempotency_mismatch"} | {"err": "reservation_exists", "reservation"}
--   {"err": "redis_behind"} (KEYS[8] is set)
--   the limits' refusals (limits.lua): {"err": "invalid_quantity" | "limit_exceeded" |
--     "too_many_reservations", ...}, checked after due reservations are released and before
--     the stock
--   An ok reply also carries "event": the stream id of the last event written (lib.lua).
--   With parts, it also carries "deadline": the step recorded (holds.lua cart_pending).
-- Events: reservation_expired (for each due reservation released first), reservation_created.

local stock, products, live_hash, expiry, outbox, idem, record =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local id, owner, actor, request_id, fp = ARGV[1], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local ttl = tonumber(ARGV[3])

local opened, taken = open_call(KEYS[8], record, idem, fp, ARGV[9])
if opened then return opened end
use_waitlists(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[10], KEYS[11],
  KEYS[12], KEYS[13])

local held, lines, metas = KEYS[10], cjson.decode(ARGV[2]), {}
-- a cart's parts count once, in its home (the part that carries the parts)
local max_live = tonumber(ARGV[15])
local capped = (ARGV[12] == '' or ARGV[13] ~= '') and max_live > 0
local now, now_s = now_ms()
local retention = tonumber(ARGV[11])
local _, drained = expire_due(stock, live_hash, expiry, outbox, now, now_s, ARGV[10],
  'reserve', held, ARGV[16], retention)
-- the customer's limits, once the due reservations are released, before the stock
local refusal, counted, want = capped and check_live(held, owner, max_live) or nil, nil, nil
if not refusal then refusal, counted, want = check_limits(products, held, owner, lines, metas) end
if refusal then return refusal end
local alloc, err, counters = allocate_expiring(stock, products, live_hash, expiry, outbox, now,
  now_s, ARGV[10], lines, ARGV[4] == '1', held, metas, ARGV[16], retention, drained)
if err then return err end
if taken then return refuse('reservation_exists', {reservation = id}) end
count_held(held, owner, counted, want)
if capped then count_live(held, owner, 1) end

local moved = movement_json(stock, counters[1], -alloc[1][3], alloc[1][3])
for i = 2, #alloc do
  moved = moved .. ',' .. movement_json(stock, counters[i], -alloc[i][3], alloc[i][3])
end
local expires_at = now + ttl
local expires_at_s = int(expires_at)
local lines_json, owner_json = cjson.encode(alloc), cjson.encode(owner)
local counts = counted_json(counted, capped)
add_live(live_hash, expiry, id, '{"owner":' .. owner_json .. ',"lines":' .. lines_json
  .. counts .. '}', expires_at_s)
-- (the record keeps what the live entry counted, so that reconcile can put an entry back whole;
-- it has no TTL while the reservation is live: its end gives it one, lib.lua's layout)
rcall('HSET', record, 'owner', owner, 'status', 'active', 'expires_at', expires_at_s, 'data',
  record_data(now_s, lines_json, request_id, string.sub(counts, 2)))
local cart = ARGV[12]
if cart ~= '' then rcall('HSET', record, 'cart', cart) end
local step = ''
if ARGV[13] ~= '' then
  rcall('HSET', record, 'parts', ARGV[13])
  step = ',"deadline":' .. int(cart_pending(KEYS[9], id, now, ARGV[14]))
end

-- The event and the reply are written from the pieces already encoded (lib.lua emit_text),
-- each by one concatenation. The event holds the reply whole: with an idempotency key its
-- copy leaves the reply out (the drain rebuilds it). The id is the engine's (hex): written as
-- it is.
emit_text(outbox, 'reservation_created', '{"type":"reservation_created","ts":' .. now_s
  .. ',"actor":' .. (actor == owner and owner_json or cjson.encode(actor))
  .. ',"request_id":' .. cjson.encode(request_id) .. ',"reservation":"' .. id .. '","user":'
  .. owner_json .. ',"expires_at":' .. expires_at_s .. ',"lines":' .. lines_json
  .. ',"movements":[' .. moved .. ']' .. (cart ~= '' and ',"cart":"' .. cart .. '"' or '')
  .. idempotency_json(now_s) .. '}')
return idem_store(idem, fp, ARGV[9], '{"ok":true,"event":"' .. last_event .. '"' .. step
  .. ',"reservation":{"id":"' .. id .. '","owner":' .. owner_json
  .. ',"status":"active","created_at":' .. now_s .. ',"expires_at":' .. expires_at_s
  .. ',"lines":' .. lines_json .. '}}')
