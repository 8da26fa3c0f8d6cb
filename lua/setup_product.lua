-- setup_product.lua: create or update a product: its unit price, its currency, the
-- warehouses that stock it (each with a priority: lower is tried first) and, optionally,
-- opening stock added to those warehouses.
--
-- KEYS[1] stock   KEYS[2] products   KEYS[3] outbox
-- KEYS[4] idem    idempotency record (unused when ARGV[8] is '')
-- KEYS[5] behind  the partition's flag: while it is set, nothing is decided (lib.lua fenced)
--
-- ARGV[1] product id
-- ARGV[2] unit price (minor units, >= 0)
-- ARGV[3] currency (ISO 4217 code)
-- ARGV[4] warehouses, JSON [[name, priority (int)], ...]: added, or their priority updated;
--         warehouses not named keep theirs
-- ARGV[5] opening stock, JSON [[warehouse, quantity (units, > 0)], ...] (may be [])
-- ARGV[6] actor (user id)         ARGV[7] request id
-- ARGV[8] request fingerprint ('' = no idempotency key)
-- ARGV[9] idempotency record ttl (ms)
-- ARGV[10] default warehouse: stocks a new product for which ARGV[4] names none
-- ARGV[11] '1' = a create: only a new product is set up (so its opening stock is added
--          once however many creates race); '' = create or update
-- ARGV[12] limits: '' keeps the product's (a new one has none); else JSON {"max_per_customer",
--          "min_quantity", "quantity_increment", "max_per_order"}, each an integer or left
--          out (no such limit): the product's limits from now on (limits.lua)
--
-- Returns JSON {"ok": true, "product": {id, price, currency, warehouses [[name, priority]],
--   limits {...} (when it has any)}, "created": bool}  or {"err": "warehouse_not_found", "product", "warehouse"}
--   (opening stock for a warehouse the product doesn't have)
--   | {"err": "product_exists", "product"} (ARGV[11] is '1' and the product exists)
--   | {"err": "idempotency_mismatch"} | {"err": "redis_behind"} (KEYS[5] is set)
--   An ok reply also carries "event": the stream id of the last event written (lib.lua).
-- Events: product_updated when price, currency, warehouses or limits changed;
--         stock_adjusted (reason 'initial') when opening stock was given.

local stock, products, outbox, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local product, actor, request_id, fp = ARGV[1], ARGV[6], ARGV[7], ARGV[8]

local opened = open_call(KEYS[5], nil, idem, fp, ARGV[9])
if opened then return opened end

local old = product_meta(products, product)
if old and ARGV[11] == '1' then return refuse('product_exists', {product = product}) end
local meta = {price = tonumber(ARGV[2]), currency = ARGV[3], warehouses = {}}
if ARGV[12] == '' then
  meta.limits = old and old.limits or nil
else
  meta.limits = cjson.decode(ARGV[12])
  if next(meta.limits) == nil then meta.limits = nil end
end
local priority = {}
if old then
  for _, wh in ipairs(old.warehouses) do priority[wh[1]] = wh[2] end
end
for _, wh in ipairs(cjson.decode(ARGV[4])) do priority[wh[1]] = wh[2] end
if next(priority) == nil then priority[ARGV[10]] = 0 end
for name, prio in pairs(priority) do meta.warehouses[#meta.warehouses + 1] = {name, prio} end
table.sort(meta.warehouses, function(x, y)
  if x[2] ~= y[2] then return x[2] < y[2] end
  return x[1] < y[1]
end)

local opening = cjson.decode(ARGV[5])
for _, s in ipairs(opening) do
  if priority[s[1]] == nil then
    return refuse('warehouse_not_found', {product = product, warehouse = s[1]})
  end
end

local now = now_ms()
local reply = {created = old == nil,
               product = {id = product, price = meta.price, currency = meta.currency,
                          warehouses = meta.warehouses, limits = meta.limits}}
local changed = not old or old.price ~= meta.price or old.currency ~= meta.currency
  or #old.warehouses ~= #meta.warehouses
local was, now_limits = old and old.limits or {}, meta.limits or {}
for _, name in ipairs({'max_per_customer', 'min_quantity', 'quantity_increment',
                       'max_per_order'}) do
  if was[name] ~= now_limits[name] then changed = true end
end
if not changed then
  for i, wh in ipairs(meta.warehouses) do
    if old.warehouses[i][1] ~= wh[1] or old.warehouses[i][2] ~= wh[2] then changed = true end
  end
end
if changed then
  rcall('HSET', products, product, cjson.encode(meta))
  for _, wh in ipairs(meta.warehouses) do
    add_counters(stock, product, wh[1])
  end
  emit(outbox, 'product_updated', now, actor, request_id,
       {product = product, before = old or {}, after = meta}, #opening == 0 and reply or nil)
end
if #opening > 0 then
  local movements = {}
  for _, s in ipairs(opening) do
    movements[#movements + 1] = move(stock, product, s[1], s[2], 0)
  end
  emit(outbox, 'stock_adjusted', now, actor, request_id,
       {product = product, reason = 'initial', movements = movements}, reply)
end
return idem_store(idem, fp, ARGV[9], ok(reply))
