-- stock.lua: a product's counters and settings, as every operation reads and writes them.
-- Assembled right after lib.lua (engine/scripts.py HELPERS). In a coalesced call these go
-- through the batch's write-back (lib.lua `batch`): the counters read once and written once
-- at the batch's end (flush_batch), the settings read once, the new live entries written once.

-- The stock hash's fields of one product x warehouse: available, reserved (the same names as
-- engine/keys.py's stock_fields).
local function stock_fields(product, warehouse)
  return 'a|' .. product .. '|' .. warehouse, 'r|' .. product .. '|' .. warehouse
end

-- A new reservation's live entry (`entry`, JSON) and its place in the expiry index (`score`,
-- its expires_at's text). In a batch they are written at its end (flush_batch): its later calls
-- read neither — they run at the same instant, at which the new reservation is not due (a TTL is
-- at least 1 ms), and read the live entries and the index only for the due ones
-- (holds.lua expire_due, allocate_expiring); each call's own record tells if it exists.
local function add_live(live_hash, expiry, id, entry, score)
  local live = batch.live
  if batch.on and (live.hash == nil or (live.hash == live_hash and live.expiry == expiry)) then
    live.hash, live.expiry = live_hash, expiry
    local entries, index = live.entries, live.index
    local n = #entries
    entries[n + 1], entries[n + 2] = id, entry
    index[n + 1], index[n + 2] = score, id
  else
    rcall('HSET', live_hash, id, entry)
    rcall('ZADD', expiry, score, id)
  end
end

-- The texts of a product x warehouse's counters (available, reserved; '0' when none): from
-- what the batch keeps of `stock` (keeping what it reads), else from Redis.
local function counter_texts(stock, a, r)
  local kept = batch.on and (batch.stock == nil or batch.stock == stock)
  if kept then
    batch.stock = stock
    local counters = batch.counters
    local as_, rs_ = counters[a], counters[r]
    if as_ and rs_ then return as_, rs_ end
    local v = rcall('HMGET', stock, a, r)
    as_, rs_ = v[1] or '0', v[2] or '0'
    counters[a], counters[r] = as_, rs_
    return as_, rs_
  end
  local v = rcall('HMGET', stock, a, r)
  return v[1] or '0', v[2] or '0'
end

local function counts(stock, product, warehouse)
  local as_, rs_ = counter_texts(stock, stock_fields(product, warehouse))
  return tonumber(as_), tonumber(rs_)
end

-- (no batch runs set_counts or add_counters: a batch's calls make reservations and orders,
-- and change no stock levels; were one to, what it kept is written first and forgotten)
local function unkeep_stock()
  if batch.stock then flush_batch() batch.stock, batch.counters = nil, {} end
end

local function set_counts(stock, product, warehouse, available, reserved)
  unkeep_stock()
  local a, r = stock_fields(product, warehouse)
  rcall('HSET', stock, a, available, r, reserved)
end

-- Gives a product's warehouse its counters, at 0, unless it has them already.
local function add_counters(stock, product, warehouse)
  unkeep_stock()
  local a, r = stock_fields(product, warehouse)
  rcall('HSETNX', stock, a, 0)
  rcall('HSETNX', stock, r, 0)
end

-- One product x warehouse's counters as read in this call: its field names, the values, and
-- (while allocating) the units taken so far. move_counter keeps the values current.
-- The values' texts (as_, rs_: as Redis holds them, decimal integers as every writer writes
-- them) serve an event written as text (movement_json).
local function read_counter(stock, product, warehouse)
  local a, r = stock_fields(product, warehouse)
  local as_, rs_ = counter_texts(stock, a, r)
  return {product = product, warehouse = warehouse, a = a, r = r, as_ = as_, rs_ = rs_,
          available = tonumber(as_), reserved = tonumber(rs_), taken = 0}
end

-- Moves one product x warehouse's counters (read in this call, nothing moved them since).
-- Callers check before they write; this refuses to write a negative counter all the same.
local function write_counter(stock, c, d_available, d_reserved)
  local a2, r2 = c.available + d_available, c.reserved + d_reserved
  if a2 < 0 or r2 < 0 then
    error('invariant: negative counter for ' .. c.product .. '|' .. c.warehouse)
  end
  local as_, rs_ = int(a2), int(r2)
  if batch.on and batch.stock == stock then  -- (written at the batch's end: flush_batch)
    batch.counters[c.a], batch.counters[c.r] = as_, rs_
    batch.moved[c.a] = c.r
  else
    rcall('HSET', stock, c.a, as_, c.r, rs_)
  end
  if d_available > 0 and wait then returned[c.product] = true end
  c.available, c.reserved, c.as_, c.rs_ = a2, r2, as_, rs_
end

-- write_counter, and the movement for the event.
local function move_counter(stock, c, d_available, d_reserved)
  local a, r = c.available, c.reserved
  write_counter(stock, c, d_available, d_reserved)
  return {product = c.product, warehouse = c.warehouse,
          available_before = a, available_after = c.available,
          reserved_before = r, reserved_after = c.reserved}
end

-- write_counter for an event written as text (lib.lua emit_text): the movement's JSON, the
-- same fields and values as move_counter's, made by one concatenation. Product and warehouse
-- names need no escaping (engine/validation.py NAME).
local function movement_json(stock, c, d_available, d_reserved)
  local as_, rs_ = c.as_, c.rs_
  write_counter(stock, c, d_available, d_reserved)
  return '{"product":"' .. c.product .. '","warehouse":"' .. c.warehouse
    .. '","available_before":' .. as_ .. ',"available_after":' .. c.as_
    .. ',"reserved_before":' .. rs_ .. ',"reserved_after":' .. c.rs_ .. '}'
end

local function move(stock, product, warehouse, d_available, d_reserved)
  return move_counter(stock, read_counter(stock, product, warehouse), d_available, d_reserved)
end

-- Products' settings decoded, by their JSON text. The text is read on every call (it is the
-- truth); only a text not seen before is decoded. Kept across calls (a library's locals
-- live as long as the library), which is safe because the key is the whole content; at most
-- META_CACHE entries, then it starts afresh. Nobody writes into a decoded meta.
local META_CACHE = 1024
local metas_by_text, metas_cached = {}, 0

local function product_meta(products, product)
  local raw
  if batch.on and (batch.products == nil or batch.products == products) then
    -- (read once a batch: no call of a batch writes a product's settings)
    batch.products = products
    raw = batch.raws[product]
    if raw == nil then
      raw = rcall('HGET', products, product)
      batch.raws[product] = raw
    end
  else
    raw = rcall('HGET', products, product)
  end
  if not raw then return nil end
  local meta = metas_by_text[raw]
  if not meta then
    if metas_cached >= META_CACHE then metas_by_text, metas_cached = {}, 0 end
    meta = cjson.decode(raw)
    metas_by_text[raw], metas_cached = meta, metas_cached + 1
  end
  return meta
end

-- product_meta, read once per call: `metas` is the call's table of what it has read so far
-- (false: no such product). A call that writes a product's settings does not use it.
local function meta_of(metas, products, product)
  local meta = metas[product]
  if meta == nil then
    meta = product_meta(products, product) or false
    metas[product] = meta
  end
  return meta or nil
end
