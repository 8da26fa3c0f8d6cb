-- holds.lua: the helpers of reservations and orders, assembled after lib.lua (whose locals
-- they use) and before the operations (engine/scripts.py HELPERS): ending a live reservation,
-- the expiry of due ones, routing lines to warehouses (allocate), loading a reservation to act
-- on it, and pricing and writing an order. The data layout is lib.lua's.
-- Ends a live reservation: its units go from reserved back to available, and what it counted
-- against its customer's limits goes (limits.lua, `held`).
local function release_units(stock, live_hash, expiry, id, live, held)
  local movements = {}
  for _, l in ipairs(live.lines) do
    movements[#movements + 1] = move(stock, l[1], l[2], l[3], -l[3])
  end
  uncount_live(held, live, true)
  rcall('HDEL', live_hash, id)
  rcall('ZREM', expiry, id)
  return movements
end

-- An expired reservation's record is kept `retention` ms (a number) after its expires_at, as
-- lib.lua's layout says (a record has no TTL while its reservation is live). A hand-off never
-- used has no record: PEXPIREAT then does nothing.
local function keep_expired(record, expires_at, retention)
  rcall('PEXPIREAT', record, int(expires_at + retention))
end

-- Releases up to `limit` due reservations (expires_at <= now) and records each one.
-- Returns how many it released, and whether none is left due (it found fewer than `limit`).
-- now_s: now's text (now_ms); limit: as the call's ARGV gives it. records: the prefix of the
-- partition's reservation records (engine/keys.py PartitionKeys.records; a record's key is it
-- .. id), for keep_expired.
-- In a batch (lib.lua `batch`), once a call has found fewer than `limit` due in `expiry`, none
-- is due there for the batch's later calls: they run at the same instant, and nothing they
-- make is due at once (a TTL is at least 1 ms).
local function expire_due(stock, live_hash, expiry, outbox, now, now_s, limit, trigger, held,
                          records, retention)
  if batch.swept == expiry and batch.now_s == now_s then return 0, true end
  local ids = rcall('ZRANGEBYSCORE', expiry, '-inf', now_s, 'WITHSCORES', 'LIMIT', '0',
                         limit)
  local drained = #ids < 2 * tonumber(limit)
  if drained and batch.now_s == now_s then batch.swept = expiry end  -- (set in a batch only)
  local n = 0
  for i = 1, #ids, 2 do
    local id = ids[i]
    local raw = rcall('HGET', live_hash, id)
    if raw then
      local live = cjson.decode(raw)
      if wait then rcall('HDEL', wait.data, 'h|' .. id) end  -- (a hand-off never used)
      local movements = release_units(stock, live_hash, expiry, id, live, held)
      local expires_at = tonumber(ids[i + 1])
      keep_expired(records .. id, expires_at, retention)
      emit(outbox, 'reservation_expired', now, 'system', '', {
        reservation = id, user = live.owner, expires_at = expires_at,
        trigger = trigger, movements = movements})
      n = n + 1
    else
      rcall('ZREM', expiry, id)
    end
  end
  return n, drained
end

-- The counter of p x w for this allocation, read the first time it is asked for.
local function alloc_counter(counters, stock, p, w)
  local k = p .. '|' .. w
  local c = counters[k]
  if not c then
    c = read_counter(stock, p, w)
    counters[k] = c
  end
  return c
end

local function take(order, c, q)
  if c.taken == 0 then order[#order + 1] = c end
  c.taken = c.taken + q
end

-- Whether product p's available units are held back for its waitlist (wait.lua): someone
-- waits for it, and this call is not the hand-off. Such units are no caller's to take.
local function held_back(p)
  if not wait or serving then return false end
  local n = batch.on and batch.waiting[p]  -- (read once a batch: lib.lua `batch`)
  if not n then
    n = tonumber(rcall('HGET', wait.held, 'w|' .. p)) or 0
    if batch.on then batch.waiting[p] = n end
  end
  return n > 0
end

-- Routes request lines [[product, warehouse or '', quantity], ...] to warehouses.
-- A named warehouse serves its line alone; otherwise warehouses are taken by priority,
-- splitting a line over several unless allow_split is false. Each counter is read once.
-- Returns allocations [[product, warehouse, qty]] (one per product x warehouse), nil, and
-- their counters (for move_counter); or nil, a refusal (unknown product or warehouse, or
-- the shortage of every short line). metas: the call's products read so far (lib.lua
-- meta_of), or nil.
local function allocate(stock, products, lines, allow_split, metas)
  metas = metas or {}
  -- The common request, one line of a product kept in one warehouse, none named: the same
  -- answer as the general way below (where, with one warehouse, splitting or not takes the
  -- same units), without its tables and passes.
  local first = lines[1]
  if #lines == 1 and first[2] == '' and first[3] > 0 then
    local p, q = first[1], first[3]
    local meta = meta_of(metas, products, p)
    if not meta then return nil, refuse('product_not_found', {product = p}) end
    local whs = meta.warehouses
    if #whs == 1 then
      local c = read_counter(stock, p, whs[1][1])
      local back = held_back(p)
      if (back and 0 or c.available) < q then
        -- (the refusal of a sold-out product, the common one in a sale, written as text as
        -- refuse would write it: product names need no escaping, engine/validation.py NAME)
        return nil, '{"err":"insufficient_stock","lines":[{"product":"' .. p
          .. '","requested":' .. int(q) .. ',"available":' .. (back and '0' or c.as_) .. '}]}'
      end
      c.taken = q
      return {{p, c.warehouse, q}}, nil, {c}
    end
  end
  local counters, order, short, back = {}, {}, {}, {}
  -- named warehouses first, so a line routed by priority can't take their units
  for pass = 1, 2 do
    for _, l in ipairs(lines) do
      local p, w, q = l[1], l[2], l[3]
      if (pass == 1) == (w ~= '') then
        local meta = meta_of(metas, products, p)
        if not meta then return nil, refuse('product_not_found', {product = p}) end
        if back[p] == nil then back[p] = held_back(p) end
        local whs = meta.warehouses
        if w ~= '' then
          local known = false
          for _, wh in ipairs(whs) do
            if wh[1] == w then known = true end
          end
          if not known then
            return nil, refuse('warehouse_not_found', {product = p, warehouse = w})
          end
          local c = alloc_counter(counters, stock, p, w)
          local f = back[p] and 0 or c.available - c.taken
          if f >= q then take(order, c, q)
          else short[#short + 1] = {product = p, warehouse = w, requested = q, available = f} end
        elseif allow_split then
          local total_free = 0
          for _, wh in ipairs(whs) do
            local c = alloc_counter(counters, stock, p, wh[1])
            total_free = total_free + (back[p] and 0 or c.available - c.taken)
          end
          if total_free >= q then
            local left = q
            for _, wh in ipairs(whs) do
              local c = counters[p .. '|' .. wh[1]]
              local f = back[p] and 0 or c.available - c.taken
              if left > 0 and f > 0 then
                local n = math.min(f, left)
                take(order, c, n)
                left = left - n
              end
            end
          else
            short[#short + 1] = {product = p, requested = q, available = total_free}
          end
        else
          local best, chosen = 0, nil
          for _, wh in ipairs(whs) do
            local c = alloc_counter(counters, stock, p, wh[1])
            local f = back[p] and 0 or c.available - c.taken
            if not chosen and f >= q then chosen = c end
            if f > best then best = f end
          end
          if chosen then take(order, chosen, q)
          else short[#short + 1] = {product = p, requested = q, available = best} end
        end
      end
    end
  end
  if #short > 0 then return nil, refuse('insufficient_stock', {lines = short}) end
  local out = {}
  for i, c in ipairs(order) do out[i] = {c.product, c.warehouse, c.taken} end
  return out, nil, order
end

-- Allocates (allocate) after the call has released the due reservations (expire_due, which
-- said whether it left none due: `drained`) and checked the request against its customer's
-- limits (limits.lua): when stock is short while more reservations are due, it keeps
-- expiring (bounded) so a due reservation never blocks the next buyer. A refusal costs no
-- look at the index once none is due: no call of this instant makes one (a TTL is at least
-- 1 ms). Returns what allocate returns. metas: as allocate's; the rest as expire_due's.
local function allocate_expiring(stock, products, live_hash, expiry, outbox, now, now_s,
                                 limit, lines, allow_split, held, metas, records, retention,
                                 drained)
  local alloc, err, counters = allocate(stock, products, lines, allow_split, metas)
  local rounds = 0
  while err and not drained and rounds < 10 do
    local _
    _, drained = expire_due(stock, live_hash, expiry, outbox, now, now_s, limit, 'reserve',
      held, records, retention)
    alloc, err, counters = allocate(stock, products, lines, allow_split, metas)
    rounds = rounds + 1
  end
  return alloc, err, counters
end

-- A reservation's record as HGETALL gives it (`flat`), as a table of its fields: what never
-- changes after its start is packed in one field, 'data' (JSON {created_at, lines,
-- request_id, counted}: reserve.lua, one field rather than five on the hot path), unpacked
-- on first use (a commit reads none of it: its lines are the live entry's); a record written
-- before kept them as fields of their own ('lines' as JSON text). Either way rec.lines is a
-- table, rec.created_at a number, rec.id the id.
local packed = {created_at = true, lines = true, request_id = true}
local unpack_data = {__index = function(rec, name)
  if not packed[name] then return nil end
  local d = cjson.decode(rec.data)
  rec.created_at, rec.lines, rec.request_id = d.created_at, d.lines, d.request_id
  return d[name]
end}

local function record_of(flat, id)
  local rec = {}
  for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
  rec.id = id
  if rec.data then
    setmetatable(rec, unpack_data)
  elseif rec.lines then
    rec.created_at, rec.lines = tonumber(rec.created_at), cjson.decode(rec.lines)
  end
  return rec
end

-- A live reservation's record data ('data', record_of), as reserve.lua writes it: the texts
-- given are JSON already (lines, counted: an object's members, without its braces).
local function record_data(now_s, lines_json, request_id, counted_members)
  return '{"created_at":' .. now_s .. ',"lines":' .. lines_json .. ',"request_id":'
    .. cjson.encode(request_id) .. ',"counted":{' .. counted_members .. '}}'
end

-- Loads a reservation record and checks it can be acted on by `scope` ('' = anyone).
-- Returns rec, live (decoded), nil; or nil, nil, refusal. A due reservation that is still
-- live is released here (and recorded as expired) before the refusal; its record is then kept
-- (keep_expired).
local function live_reservation(stock, live_hash, expiry, outbox, record, id, scope, now, held,
                                retention)
  local flat = rcall('HGETALL', record)
  if #flat == 0 then flat = handed_record(record, id) end  -- (a waitlist's hand-off: wait.lua)
  if #flat == 0 then return nil, nil, refuse('reservation_not_found', {reservation = id}) end
  local rec = record_of(flat, id)
  if (scope ~= '' and rec.owner ~= scope) or (rec.cart and rec.cart ~= id) then
    -- (a part of a cart is moved by its cart alone: lua/part.lua)
    return nil, nil, refuse('reservation_not_found', {reservation = id})
  end
  if rec.status ~= 'active' then
    return nil, nil, refuse('reservation_not_live',
      {reservation = id, status = rec.status, order = rec.order_id or ''})
  end
  local expires_at = tonumber(rec.expires_at)
  local raw = rcall('HGET', live_hash, id)
  if now >= expires_at or not raw then
    if raw then
      local live = cjson.decode(raw)
      local movements = release_units(stock, live_hash, expiry, id, live, held)
      emit(outbox, 'reservation_expired', now, 'system', '', {
        reservation = id, user = live.owner, expires_at = expires_at,
        trigger = 'access', movements = movements})
    end
    keep_expired(record, expires_at, retention)
    return nil, nil, refuse('reservation_expired', {reservation = id, expires_at = expires_at})
  end
  return rec, cjson.decode(raw), nil
end

local function reservation_view(rec, status)
  return {id = rec.id, owner = rec.owner, status = status,
          created_at = rec.created_at, expires_at = tonumber(rec.expires_at),
          lines = rec.lines, order = rec.order_id or '',
          source = rec.source}  -- 'waitlist' for a waitlist's hand-off (wait.lua), else none
end

-- Prices order lines [[product, warehouse, qty]] from the products hash.
-- Returns priced lines, total (minor units), currency; or nil, refusal. metas: as allocate's.
local function price_lines(products, alloc, metas)
  local priced, total, currency = {}, 0, nil
  metas = metas or {}
  for _, l in ipairs(alloc) do
    local meta = meta_of(metas, products, l[1])
    if not meta then return nil, refuse('product_not_found', {product = l[1]}) end
    if currency and meta.currency ~= currency then
      return nil, refuse('currency_mismatch', {currencies = {currency, meta.currency}})
    end
    currency = meta.currency
    priced[#priced + 1] = {l[1], l[2], l[3], meta.price}
    total = total + l[3] * meta.price
  end
  -- cjson keeps 14 significant digits; refuse rather than round money
  if total > 99999999999999 then return nil, refuse('order_total_too_large', {}) end
  return priced, total, currency
end

-- Writes a new order's record (pending; reservation '' for a direct order), as text: its
-- numbers written by int (whole numbers: cjson's and Redis's '%.14g'/'%.17g' give the same
-- digits, at several times the cost). Returns the order's JSON (the reply's "order"), its
-- lines' JSON, the owner's JSON and the total's text, for the event and the reply (commit.lua,
-- place_order.lua). now_s: now_ms's text. Product and warehouse names need no escaping
-- (engine/validation.py NAME); ids are the engine's (hex).
local function write_order(record, id, owner, reservation, priced, total, currency, now_s)
  local lines = {}
  for i, l in ipairs(priced) do
    lines[i] = '["' .. l[1] .. '","' .. l[2] .. '",' .. int(l[3]) .. ',' .. int(l[4]) .. ']'
  end
  local lines_json, owner_json, total_s = '[' .. table.concat(lines, ',') .. ']',
    cjson.encode(owner), int(total)
  rcall('HSET', record, 'id', id, 'owner', owner, 'status', 'pending',
             'reservation_id', reservation, 'lines', lines_json, 'total', total_s,
             'currency', currency, 'created_at', now_s, 'updated_at', now_s)
  return '{"id":"' .. id .. '","owner":' .. owner_json .. ',"status":"pending","reservation":"'
    .. reservation .. '","lines":' .. lines_json .. ',"total":' .. total_s .. ',"currency":'
    .. cjson.encode(currency) .. ',"created_at":' .. now_s .. ',"updated_at":' .. now_s .. '}',
    lines_json, owner_json, total_s
end

-- An order's order_created event, written as text (lib.lua emit_text): commit.lua's and
-- place_order.lua's (reservation '' for a direct order). The texts are write_order's;
-- moved: the movements' JSON (stock.lua movement_json). Its idempotency copy leaves the reply
-- out: the event holds it whole (persistence/event_replies.py created_reply).
local function emit_order_created(outbox, now_s, actor, request_id, order_id, reservation,
                                  owner, owner_json, lines_json, total_s, currency, moved)
  return emit_text(outbox, 'order_created', '{"type":"order_created","ts":' .. now_s
    .. ',"actor":' .. (actor == owner and owner_json or cjson.encode(actor))
    .. ',"request_id":' .. cjson.encode(request_id) .. ',"order":"' .. order_id
    .. '","reservation":"' .. reservation .. '","user":' .. owner_json
    .. ',"status":"pending","lines":' .. lines_json .. ',"total":' .. total_s
    .. ',"currency":' .. cjson.encode(currency) .. ',"movements":[' .. table.concat(moved, ',')
    .. ']' .. idempotency_json(now_s) .. '}')
end

-- A direct order waits in `pending` (an index: order id -> the time it times out, ms) until it
-- leaves 'pending'; the sweep cancels it past that time (engine/orders.py, ORDER_PENDING_TTL).
-- ttl_ms: as the call's ARGV gives it; 0: never.
local function pending_until(pending, order_id, now, ttl_ms)
  local ttl = tonumber(ttl_ms)
  if ttl and ttl > 0 then rcall('ZADD', pending, int(now + ttl), order_id) end
end

-- The sweep (lua/expire.lua): the carts' steps past their deadline, each given a new one (so a
-- caller still at it is refused: commit.lua cart_timeout), for the engine to make their parts
-- follow (engine/carts.py). Returns [{id, deadline}, ...]. now_s: now's text (now_ms).
local function claim_steps(carts, now, now_s, limit, hold)
  local due = rcall('ZRANGEBYSCORE', carts, '-inf', now_s, 'LIMIT', '0', limit)
  local claimed = {}
  for i, cart in ipairs(due) do
    local deadline = now + tonumber(hold)
    rcall('ZADD', carts, int(deadline), cart)
    claimed[i] = {id = cart, deadline = deadline}
  end
  return claimed
end

-- A cart across partitions (lua/cart.lua): its home records that its other parts have a step
-- to follow (`carts`: cart id -> the step's deadline, ms): the engine clears the entry once
-- they have; past the deadline the sweep makes them follow (engine/carts.py). Returns the
-- deadline.
local function cart_pending(carts, id, now, hold)
  local deadline = now + tonumber(hold)
  rcall('ZADD', carts, int(deadline), id)
  return deadline
end
