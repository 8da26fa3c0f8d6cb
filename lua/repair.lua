-- repair.lua: reconcile's repairs on the Redis side of one partition (`inventory reconcile
-- --fix`), in one atomic step, each recorded by an event.
--
-- The durable record (the database plus the events still in the outbox) is the truth; this
-- script brings Redis back to it. The caller worked out what differs from a snapshot; every
-- condition is checked again here, and what is already right by now is left alone:
--   - a Redis behind the database (restored from an older copy) gets its stream id and applied
--     marker moved up to the database's checkpoint FIRST, so that no event written from here
--     on sorts before it (the drain would skip it), and its 'behind' flag is removed;
--   - product settings missing or different are put back;
--   - live reservations the record holds are put back (entry, expiry index, record hash), and
--     live ones the record says ended (or never made) are ended, without moving units;
--   - orders missing or in another status are put back;
--   - counters are rolled back to the record: each loses the offset the caller measured
--     (what no event explains), so changes made meanwhile, with their events, are kept. A
--     roll-back that would leave a counter below zero is refused and reported as a conflict:
--     units were promised twice, and only an operator can choose whom to disappoint;
--   - the expiry index is made to hold exactly the live reservations;
--   - after a restore, ended records and idempotency records missing in Redis are put back.
--
-- KEYS[1] stock   KEYS[2] products   KEYS[3] live   KEYS[4] expiry   KEYS[5] outbox
-- KEYS[6] applied (string: last event the database applied)   KEYS[7] behind (flag)
-- KEYS[8] held (limits.lua: what each customer holds against their limits)
-- KEYS[8 + i] the record or idempotency keys the plan names by their index i (1-based)
--
-- ARGV[1] the plan, JSON (every list may be empty or missing; times in ms, Redis clock):
--   "checkpoint":  the database's checkpoint ('' = the partition is not behind)
--   "products":    [[product, meta JSON], ...]
--   "restore":     [[reservation, key i, live entry JSON, expires_at, [record field, value,
--                    ...], record expires at (ms)], ...]   put back unless live
--   "end":         [[reservation, key i, status ('' = delete the record: nobody made it),
--                    ended_at, order id, record ttl (ms)], ...]   ended if live
--   "orders":      [[order, key i, status found ('' = missing), [field, value, ...],
--                    record ttl (ms, 0 = keep)], ...]   written if still as found
--   "counters":    [[product, warehouse, offset available, offset reserved (units)], ...]
--   "reindex":     [[reservation, key i], ...]
--   "records":     [[key i, [field, value, ...], expires at (ms)], ...]   written if missing
--   "idempotency": [[key i, fingerprint, reply, expires at (ms)], ...]   written if missing
-- ARGV[2] actor   ARGV[3] request id
--
-- Returns JSON {"ok": true, "moved_to": checkpoint or null, "products": [product],
--   "restored": [reservation], "ended": [reservation], "orders": [order],
--   "movements": [{product, warehouse, available_before, available_after, reserved_before,
--   reserved_after}] (each counter as it was found, and as the repair left it), "conflicts": [{product, warehouse, available, reserved, offset_available,
--   offset_reserved}], "reindexed": [{reservation, expires_at_before, expires_at_after}],
--   "records": n, "idempotency": n}
--   An ok reply also carries "event": the stream id of the last event written (lib.lua).
-- Events: record_reconciled per product, reservation or order put right; stock_reconciled
--   per counter rolled back (its movement starts and ends at the recorded counters, with
--   the counters found); expiry_reconciled per reservation re-indexed; redis_restored once
--   when ended records or idempotency records were put back.

local stock, products, live_hash, expiry, outbox, applied, behind =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local held_hash = KEYS[8]
local plan = cjson.decode(ARGV[1])
local actor, request_id = ARGV[2], ARGV[3]
local now = now_ms()
local function key(i) return KEYS[8 + i] end
local function stream_last_id(stream)
  local info = rcall('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return info[i + 1] end
  end
end
local function record_event(object_type, id, found, restored)
  emit(outbox, 'record_reconciled', now, actor, request_id,
       {object_type = object_type, object_id = id, found = found, restored = restored})
end

local moved_to = cjson.null
local checkpoint = plan.checkpoint or ''
if checkpoint ~= '' then
  if rcall('EXISTS', outbox) == 0 then
    -- an entry trimmed as it is added (MAXLEN 0) creates the stream with that last id
    rcall('XADD', outbox, 'MAXLEN', 0, checkpoint, 'type', 'restore')
    moved_to = checkpoint
  elseif id_less(stream_last_id(outbox), checkpoint) then
    rcall('XSETID', outbox, checkpoint)
    moved_to = checkpoint
  end
  local marker = rcall('GET', applied)
  if not marker or id_less(marker, checkpoint) then rcall('SET', applied, checkpoint) end
  rcall('DEL', behind)
end

local fixed_products = {}
for _, pm in ipairs(plan.products or {}) do
  local found = rcall('HGET', products, pm[1])
  if found ~= pm[2] then
    rcall('HSET', products, pm[1], pm[2])
    for _, wh in ipairs(cjson.decode(pm[2]).warehouses) do
      add_counters(stock, pm[1], wh[1])
    end
    fixed_products[#fixed_products + 1] = pm[1]
    record_event('product', pm[1], found and cjson.decode(found) or cjson.null,
                 cjson.decode(pm[2]))
  end
end

local restored = {}
for _, r in ipairs(plan.restore or {}) do
  local id, record = r[1], key(r[2])
  if rcall('HEXISTS', live_hash, id) == 0 then
    local kept = rcall('HMGET', record, 'status', 'counted', 'data')
    local found, entry = kept[1] or cjson.null, r[3]
    -- a live record's counts (lua/limits.lua) still count it: its entry counts them again
    -- (JSON text of an object; a record kept them in 'data' or, written before, in 'counted')
    local counted = nil
    if found == 'active' then
      counted = kept[2] or (kept[3] and cjson.encode(cjson.decode(kept[3]).counted)) or nil
      if counted == '{}' then counted = nil end  -- (nothing counted: nothing to add)
    end
    if counted then entry = string.sub(entry, 1, -2) .. ',' .. string.sub(counted, 2) end
    rcall('HSET', live_hash, id, entry)
    rcall('ZADD', expiry, r[4], id)
    rcall('DEL', record)
    rcall('HSET', record, unpack(r[5]))
    if counted then  -- the record keeps what its entry counts (holds.lua record_of)
      local d = cjson.decode(rcall('HGET', record, 'data'))
      rcall('HSET', record, 'data', record_data(int(d.created_at), cjson.encode(d.lines),
        d.request_id, string.sub(counted, 2, -2)))
    end
    rcall('PEXPIREAT', record, r[6])
    restored[#restored + 1] = id
    record_event('reservation', id, {live = false, status = found},
                 {live = true, status = 'active', expires_at = r[4]})
  end
end

local ended = {}
for _, e in ipairs(plan['end'] or {}) do
  local id, record = e[1], key(e[2])
  local raw = rcall('HGET', live_hash, id)
  if raw then
    rcall('HDEL', live_hash, id)
    rcall('ZREM', expiry, id)
    -- what it counted against its customer's limits goes, as its release or expiry would
    -- give it back; committed, its units stay counted by its order (limits.lua)
    uncount_live(held_hash, cjson.decode(raw), e[3] ~= 'committed')
    if e[3] == '' then
      rcall('DEL', record)
    elseif rcall('EXISTS', record) == 1 then
      rcall('HSET', record, 'status', e[3], 'ended_at', e[4], 'order_id', e[5])
      rcall('PEXPIRE', record, e[6])
    end
    ended[#ended + 1] = id
    record_event('reservation', id, {live = true, entry = cjson.decode(raw)},
                 {live = false, status = e[3] ~= '' and e[3] or cjson.null})
  end
end

local orders = {}
for _, o in ipairs(plan.orders or {}) do
  local id, record = o[1], key(o[2])
  local status = rcall('HGET', record, 'status') or ''
  if status == o[3] then
    if status == '' then rcall('DEL', record) end
    rcall('HSET', record, unpack(o[4]))
    if o[5] > 0 then rcall('PEXPIRE', record, o[5]) end
    orders[#orders + 1] = id
    record_event('order', id, {status = status ~= '' and status or cjson.null},
                 {status = rcall('HGET', record, 'status')})
  end
end

local movements, conflicts = {}, {}
local held = {}
if #(plan.counters or {}) > 0 then
  for _, raw in ipairs(rcall('HVALS', live_hash)) do
    for _, l in ipairs(cjson.decode(raw).lines) do
      local k = l[1] .. '|' .. l[2]
      held[k] = (held[k] or 0) + l[3]
    end
  end
end
for _, c in ipairs(plan.counters or {}) do
  local p, w, off_a, off_r = c[1], c[2], c[3], c[4]
  local a, r = counts(stock, p, w)
  local a2, r2 = a - off_a, r - off_r
  if a2 < 0 or r2 < 0 then
    conflicts[#conflicts + 1] = {product = p, warehouse = w, available = a, reserved = r,
                                 offset_available = off_a, offset_reserved = off_r}
    -- Units promised twice: rolled back as far as they go. What is available closes (0),
    -- so none of the units the record says are sold is sold again; the rest waits for an
    -- operator (a reserved count stays, as the live reservations hold it).
    a2, r2 = math.max(a2, 0), r2 < 0 and r or r2
  end
  if a2 ~= a or r2 ~= r then
    set_counts(stock, p, w, a2, r2)
    local m = {product = p, warehouse = w, available_before = a2, available_after = a2,
               reserved_before = r2, reserved_after = r2}
    -- (the event's movement is the ledger's, which never counted the offset; the reply says
    -- what the counter was and is)
    movements[#movements + 1] = {product = p, warehouse = w, available_before = a,
                                 available_after = a2, reserved_before = r, reserved_after = r2}
    emit(outbox, 'stock_reconciled', now, actor, request_id,
         {product = p, warehouse = w, found = {available = a, reserved = r},
          live_reserved = held[p .. '|' .. w] or 0, movements = {m}})
  end
end

local reindexed = {}
for _, x in ipairs(plan.reindex or {}) do
  local id = x[1]
  local is_live = rcall('HEXISTS', live_hash, id) == 1
  local score = rcall('ZSCORE', expiry, id)
  local fix = nil
  if is_live and not score then
    local at = tonumber(rcall('HGET', key(x[2]), 'expires_at')) or now
    rcall('ZADD', expiry, at, id)
    fix = {reservation = id, expires_at_before = cjson.null, expires_at_after = at}
  elseif score and not is_live then
    rcall('ZREM', expiry, id)
    fix = {reservation = id, expires_at_before = tonumber(score), expires_at_after = cjson.null}
  end
  if fix then
    reindexed[#reindexed + 1] = fix
    emit(outbox, 'expiry_reconciled', now, actor, request_id,
         {reservation = id, expires_at_before = fix.expires_at_before,
          expires_at_after = fix.expires_at_after})
  end
end

local records, idempotency = 0, 0
for _, r in ipairs(plan.records or {}) do
  if r[3] > now and rcall('EXISTS', key(r[1])) == 0 then
    rcall('HSET', key(r[1]), unpack(r[2]))
    rcall('PEXPIREAT', key(r[1]), r[3])
    records = records + 1
  end
end
for _, r in ipairs(plan.idempotency or {}) do
  if r[4] > now and rcall('EXISTS', key(r[1])) == 0 then
    rcall('SET', key(r[1]), r[2] .. r[3], 'PXAT', int(r[4]))
    idempotency = idempotency + 1
  end
end
if records + idempotency > 0 then
  emit(outbox, 'redis_restored', now, actor, request_id,
       {records = records, idempotency_records = idempotency})
end

return ok({moved_to = moved_to, products = fixed_products, restored = restored, ended = ended,
           orders = orders, movements = movements, conflicts = conflicts,
           reindexed = reindexed, records = records, idempotency = idempotency})
