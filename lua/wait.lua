-- wait.lua: the waitlists (issue 14, item 4), assembled after holds.lua (engine/scripts.py
-- HELPERS). A customer may join a sold-out product's waitlist (lua/waitlist.lua); while anyone
-- waits, the product's available units are held back for the waitlist (holds.lua held_back),
-- and the call that gives units back hands them, in the same atomic step, to the head of the
-- queue as a new reservation of its own (status active, source 'waitlist'): first come, first
-- served; an entry's quantity is never split unless it allows it.
--
-- Data layout (lib.lua's, and):
--   waitlist  zset, every score 0: '<product>|<joined: µs, 16 digits>|<entry id>', so each
--             product's queue is in the order its customers joined (ZRANGEBYLEX '<product>|')
--   wait_due  zset  entry id -> when the entry leaves the waitlist unserved (ms)
--   wait_data hash  'e|<entry id>' -> the entry, JSON {id, product, owner, quantity, partial,
--                                     ttl (ms, of the reservation it is handed), joined_at,
--                                     expires_at (ms), member (its waitlist member)}
--                   'o|<product>|<owner>' -> the customer's entry for the product
--                   'h|<reservation id>' -> a handed-off reservation's record fields (JSON)
--                                     until a call on the reservation makes its record
--   held      'w|<product>' -> entries waiting for the product (limits.lua's hash)
-- The reservation a customer is handed has the entry's id.
--
-- A call that may give units back registers the waitlist keys (use_waitlists); move_counter
-- notes each product whose available units grew, and after the call's body, register (lib.lua)
-- runs serve_waitlists for them.

local wait_keys = {}

local function use_waitlists(stock, products, live, expiry, outbox, held, queue, due, data)
  wait_keys.stock, wait_keys.products, wait_keys.live = stock, products, live
  wait_keys.expiry, wait_keys.outbox, wait_keys.held = expiry, outbox, held
  wait_keys.queue, wait_keys.due, wait_keys.data = queue, due, data
  wait = wait_keys
end

-- An entry leaves the waitlist (served, left, expired or over its customer's limit); with a
-- reason other than 'served' it is recorded (waitlist_left). What it held back may now serve
-- the next in line, or anyone: the product is served again after the call.
local function leave_waitlist(w, entry, reason, now, actor, request_id)
  rcall('ZREM', w.queue, entry.member)
  rcall('ZREM', w.due, entry.id)
  rcall('HDEL', w.data, 'e|' .. entry.id, 'o|' .. entry.product .. '|' .. entry.owner)
  adds(w.held, 'w|' .. entry.product, -1)
  batch.waiting[entry.product] = nil
  returned[entry.product] = true
  if reason ~= 'served' then
    emit(w.outbox, 'waitlist_left', now, actor, request_id,
         {entry = entry.id, product = entry.product, user = entry.owner,
          quantity = entry.quantity, reason = reason})
  end
end

-- The entry at the head of product's queue, or nil.
local function waitlist_head(w, product)
  local head = rcall('ZRANGEBYLEX', w.queue, '[' .. product .. '|', '[' .. product .. '|~',
                          'LIMIT', '0', '1')[1]
  if not head then return nil end
  local raw = rcall('HGET', w.data, 'e|' .. string.match(head, '|([^|]+)$'))
  if not raw then  -- (an entry without its data: never written so; dropped)
    rcall('ZREM', w.queue, head)
    return nil
  end
  return cjson.decode(raw)
end

-- Hands product's available units to the head of its queue. Returns true when the head left
-- the queue (served, expired, over its limit): the next may be served; false when it waits on.
local function hand_off(w, entry, now, now_s)
  if entry.expires_at <= now then
    leave_waitlist(w, entry, 'expired', now, 'system', '')
    return true
  end
  local meta = product_meta(w.products, entry.product)
  if not meta then return false end
  local free = 0
  for _, wh in ipairs(meta.warehouses) do
    free = free + counts(w.stock, entry.product, wh[1])
  end
  local q = entry.quantity
  local lim = meta.limits
  local counted = nil
  if lim then
    -- What the product's limits let the customer be handed now (they may have changed since
    -- the entry joined): at most max_per_order, and what max_per_customer leaves them, in
    -- whole increments and at least the minimum (limits.lua). An entry they leave nothing,
    -- or that may not be split and does not fit them whole, leaves the waitlist.
    local most = q
    if lim.max_per_order and lim.max_per_order < most then most = lim.max_per_order end
    if lim.max_per_customer then
      local h = tonumber(rcall('HGET', w.held, held_field(entry.product, entry.owner))) or 0
      if lim.max_per_customer - h < most then most = lim.max_per_customer - h end
      counted = {entry.product}
    end
    if lim.quantity_increment then most = most - most % lim.quantity_increment end
    if lim.min_quantity and most < lim.min_quantity then most = 0 end
    if most <= 0 or (most < q and not entry.partial) then
      leave_waitlist(w, entry, 'limit_exceeded', now, 'system', '')
      return true
    end
    q = most
  end
  if free < q then
    if not entry.partial or free <= 0 then return false end
    q = free
    -- a part is a reservation like any: a whole number of the product's increments, and
    -- at least its minimum (limits.lua), or the entry waits on
    if lim and lim.quantity_increment then q = q - q % lim.quantity_increment end
    if lim and lim.min_quantity and q < lim.min_quantity then q = 0 end
    if q <= 0 then return false end
  end
  serving = true
  local alloc, err, counters = allocate(w.stock, w.products, {{entry.product, '', q}}, true)
  serving = false
  if err then return false end
  local movements = {}
  for i, l in ipairs(alloc) do
    movements[i] = move_counter(w.stock, counters[i], -l[3], l[3])
  end
  if counted then count_held(w.held, entry.owner, counted, {[entry.product] = q}) end
  local id, expires_at = entry.id, now + entry.ttl
  rcall('HSET', w.live, id, cjson.encode({owner = entry.owner, lines = alloc,
                                                held = counted}))
  rcall('ZADD', w.expiry, int(expires_at), id)
  rcall('HSET', w.data, 'h|' .. id, cjson.encode({created_at = now, expires_at = expires_at,
                                                       counted = counted}))
  leave_waitlist(w, entry, 'served', now, 'system', '')
  emit(w.outbox, 'reservation_created', now, 'system', '',
       {reservation = id, user = entry.owner, expires_at = expires_at, lines = alloc,
        movements = movements, source = 'waitlist', entry = id})
  return true
end

serve_waitlists = function()
  local w = wait
  local now, now_s = now_ms()
  local products = returned
  returned = {}
  for product in pairs(products) do
    local n = tonumber(rcall('HGET', w.held, 'w|' .. product)) or 0
    while n > 0 do
      local entry = waitlist_head(w, product)
      if not entry then
        rcall('HDEL', w.held, 'w|' .. product)  -- (the count without its queue: mended)
        batch.waiting[product] = nil
        break
      end
      if not hand_off(w, entry, now, now_s) then break end
      n = n - 1
    end
  end
  returned = {}
end

-- A reservation handed off by a waitlist has no record until a call on it needs one: this
-- makes it from the live entry and the hand-off's fields (lua/holds.lua live_reservation).
-- Returns the record's fields as HGETALL would ({} when there is no such hand-off).
handed_record = function(record, id)
  if not wait then return {} end
  local raw = rcall('HGET', wait.data, 'h|' .. id)
  if not raw then return {} end
  rcall('HDEL', wait.data, 'h|' .. id)
  local live = rcall('HGET', wait.live, id)
  if not live then return {} end
  local h, entry = cjson.decode(raw), cjson.decode(live)
  local counted = entry.held and string.sub(cjson.encode({held = entry.held}), 2, -2) or ''
  local flat = {'owner', entry.owner, 'status', 'active', 'expires_at', int(h.expires_at),
                'data', record_data(int(h.created_at), cjson.encode(entry.lines), '', counted),
                'source', 'waitlist'}
  rcall('HSET', record, unpack(flat))
  rcall('PEXPIREAT', record, int(h.expires_at + 86400000))
  return flat
end
