-- repair_stock.lua: reconcile's repairs on the Redis side of one partition, each recorded.
--
-- Counters: 'reserved' becomes the sum of the live reservations' lines (invariant 2) and the
-- difference moves to or from 'available', so total = available + reserved is kept (available
-- never goes below 0). A change that reached the counters without an outbox event (reconcile
-- measures it against the durable record and passes it in) is recorded in the same event:
-- the movement starts from the counters as recorded, so the ledger's sums end equal to the
-- counters (invariant 3). The expiry index is made to hold exactly the live reservations.
-- Every condition is checked again here, atomically: what is already right is left alone.
--
-- KEYS[1] stock   KEYS[2] live   KEYS[3] expiry   KEYS[4] outbox
-- KEYS[4 + i] the record hash of the i-th reservation in ARGV[2]
--
-- ARGV[1] counters, JSON [[product, warehouse, unrecorded available (units), unrecorded
--         reserved (units)], ...]: how far the counters stand from what the outbox recorded
-- ARGV[2] reservations whose expiry entry to check, JSON [id, ...]: a live one missing from
--         the index is added at its record's expires_at (ms; now when the record is gone),
--         an indexed one that is not live is removed
-- ARGV[3] actor   ARGV[4] request id
--
-- Returns JSON {"ok": true, "movements": [{product, warehouse, available_before,
--   available_after, reserved_before, reserved_after}], "reindexed": [{reservation,
--   expires_at_before, expires_at_after (ms, or null)}]}
--   An ok reply also carries "event": the stream id of the last event written (lib.lua).
-- Events: stock_reconciled per product x warehouse changed or recorded, with its movement
--   and the counters found ('found'); expiry_reconciled per reservation re-indexed.

local stock, live_hash, expiry, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local actor, request_id = ARGV[3], ARGV[4]
local now = now_ms()
local counters = cjson.decode(ARGV[1])

local held = {}
if #counters > 0 then
  for _, raw in ipairs(redis.call('HVALS', live_hash)) do
    for _, l in ipairs(cjson.decode(raw).lines) do
      local k = l[1] .. '|' .. l[2]
      held[k] = (held[k] or 0) + l[3]
    end
  end
end

local movements = {}
for _, c in ipairs(counters) do
  local p, w, unrecorded_a, unrecorded_r = c[1], c[2], c[3], c[4]
  local a, r = counts(stock, p, w)
  local r2 = held[p .. '|' .. w] or 0
  local a2 = math.max(0, a + r - r2)
  if a2 ~= a or r2 ~= r or unrecorded_a ~= 0 or unrecorded_r ~= 0 then
    redis.call('HSET', stock, 'a|' .. p .. '|' .. w, a2, 'r|' .. p .. '|' .. w, r2)
    local m = {product = p, warehouse = w,
               available_before = a - unrecorded_a, available_after = a2,
               reserved_before = r - unrecorded_r, reserved_after = r2}
    movements[#movements + 1] = m
    emit(outbox, 'stock_reconciled', now, actor, request_id,
         {product = p, warehouse = w, found = {available = a, reserved = r},
          live_reserved = r2, movements = {m}})
  end
end

local reindexed = {}
for i, id in ipairs(cjson.decode(ARGV[2])) do
  local is_live = redis.call('HEXISTS', live_hash, id) == 1
  local score = redis.call('ZSCORE', expiry, id)
  local fix = nil
  if is_live and not score then
    local at = tonumber(redis.call('HGET', KEYS[4 + i], 'expires_at')) or now
    redis.call('ZADD', expiry, at, id)
    fix = {reservation = id, expires_at_before = cjson.null, expires_at_after = at}
  elseif score and not is_live then
    redis.call('ZREM', expiry, id)
    fix = {reservation = id, expires_at_before = tonumber(score), expires_at_after = cjson.null}
  end
  if fix then
    reindexed[#reindexed + 1] = fix
    emit(outbox, 'expiry_reconciled', now, actor, request_id,
         {reservation = id, expires_at_before = fix.expires_at_before,
          expires_at_after = fix.expires_at_after})
  end
end

return ok({movements = movements, reindexed = reindexed})
