-- transition.lua: move an order along the state machine. The table is TRANSITIONS,
-- rendered from engine/states.py into the prelude; STOCK_RETURNING names the status whose
-- entry gives the units back to 'available' (cancelled).
--
-- KEYS[1] stock   KEYS[2] outbox
-- KEYS[3] order   the order's hash
-- KEYS[4] idem    idempotency record (unused when ARGV[6] is '')
-- KEYS[5] behind  the partition's flag: while it is set, nothing is decided (lib.lua fenced)
-- KEYS[6] carts   the partition's carts whose parts have a step to follow (holds.lua)
-- KEYS[7] pending the partition's pending direct orders by when they time out (holds.lua)
-- KEYS[8] held    the partition's count of what each customer holds (limits.lua)
-- KEYS[9] products  the partition's products hash
-- KEYS[10] live      the partition's live reservations
-- KEYS[11] expiry    the partition's live reservations by expires_at
-- KEYS[12] waitlist  the partition's queues: returned units go to their heads (wait.lua)
-- KEYS[13] wait_due  the waitlist entries by when they leave unserved (wait.lua)
-- KEYS[14] wait_data the waitlist entries, and the hand-offs' records (wait.lua)
--
-- ARGV[1] order id
-- ARGV[2] requested status
-- ARGV[3] owner scope: '' = anyone (staff), else only this user's order is seen
-- ARGV[4] actor (user id)         ARGV[5] request id
-- ARGV[6] request fingerprint ('' = no idempotency key)
-- ARGV[7] idempotency record ttl (ms)
-- ARGV[8] retention (ms) of an order once it is terminal
-- ARGV[9] expected current status ('' = any): refuse if the order has moved meanwhile
-- ARGV[10] hold (ms): a cart's parts are to follow within it (engine/carts.py)
-- ARGV[11] reason: '' by a caller; 'timeout' when the sweep cancels a pending direct order
--          (kept in the record and the event)
--
-- Returns JSON:
--   {"ok": true, "order": {...}, "from": status}  (+ "replayed": true)
--   {"err": "order_not_found", "order"}
--   {"err": "invalid_transition", "order", "current", "requested", "allowed": [...]}
--   {"err": "status_changed", "order", "current", "expected"}
--   {"err": "idempotency_mismatch"} | {"err": "redis_behind"} (KEYS[5] is set)
--   An ok reply also carries "event": the stream id of the last event written (lib.lua).
-- The order of a cart across partitions gives back only the units this partition holds
-- ("own_lines"); on cancel the reply also carries "parts", "deadline" and "held" (the
-- products the order counted against its customer's limits, limits.lua): the other parts'
-- units are to be given back (lua/part.lua 'return').
-- A cancel gives back what the order counted of this partition's lines (its record's 'held').
-- Events: order_status_changed (with movements when units return to available).

local stock, outbox, order, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local order_id, to, scope, actor, request_id, fp =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

local opened = open_call(KEYS[5], nil, idem, fp, ARGV[7])
if opened then return opened end
use_waitlists(KEYS[1], KEYS[9], KEYS[10], KEYS[11], KEYS[2], KEYS[8], KEYS[12],
  KEYS[13], KEYS[14])

local flat = rcall('HGETALL', order)
if #flat == 0 then return refuse('order_not_found', {order = order_id}) end
local o = {}
for i = 1, #flat, 2 do o[flat[i]] = flat[i + 1] end
if scope ~= '' and o.owner ~= scope then return refuse('order_not_found', {order = order_id}) end

if ARGV[9] ~= '' and o.status ~= ARGV[9] then
  return refuse('status_changed', {order = order_id, current = o.status, expected = ARGV[9]})
end

local allowed = TRANSITIONS[o.status] or {}
local permitted = false
for _, s in ipairs(allowed) do if s == to then permitted = true end end
if not permitted then
  return refuse('invalid_transition',
    {order = order_id, current = o.status, requested = to, allowed = allowed})
end

local now = now_ms()
local lines = cjson.decode(o.lines)
local movements = {}
local counted = o.held and cjson.decode(o.held) or nil
if to == STOCK_RETURNING then
  local own = o.own_lines and cjson.decode(o.own_lines) or lines
  for _, l in ipairs(own) do
    movements[#movements + 1] = move(stock, l[1], l[2], l[3], 0)
  end
  uncount(KEYS[8], o.owner, own, counted)
end
rcall('HSET', order, 'status', to, 'updated_at', now)
rcall('ZREM', KEYS[7], order_id)  -- no longer pending: it can't time out
local reason = ARGV[11] ~= '' and ARGV[11] or nil
if reason then rcall('HSET', order, 'reason', reason) end
if TERMINAL[to] then rcall('PEXPIRE', order, tonumber(ARGV[8])) end
local view = {id = order_id, owner = o.owner, status = to, reservation = o.reservation_id,
              lines = lines, total = tonumber(o.total), currency = o.currency,
              created_at = tonumber(o.created_at), updated_at = now}
local reply = {order = view, from = o.status}
if o.parts and to == STOCK_RETURNING then
  reply.parts = cjson.decode(o.parts)
  reply.deadline = cart_pending(KEYS[6], order_id, now, ARGV[10])
  reply.held = counted or {}
end
emit(outbox, 'order_status_changed', now, actor, request_id,
     {order = order_id, user = o.owner, from = o.status, to = to, movements = movements,
      reason = reason}, reply)
return idem_store(idem, fp, ARGV[7], ok(reply))
