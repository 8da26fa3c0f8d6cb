-- limits.lua: what one customer may hold (issue 14), assembled after lib.lua and before
-- holds.lua (engine/scripts.py HELPERS). The data layout is lib.lua's, and:
--
--   products  a product's meta may carry "limits": {"max_per_customer", "min_quantity",
--             "quantity_increment", "max_per_order"} (each left out when it has none)
--   held      hash, the partition's count of what its customers hold:
--             'u|<product>|<owner>' -> units of a product with a max_per_customer that the
--                                      customer holds in live reservations and in orders
--                                      not cancelled (an order that is delivered still counts)
--             'n|<owner>'           -> the customer's live reservations (a cart counts once,
--                                      in its home), while MAX_LIVE_RESERVATIONS_PER_CUSTOMER
--                                      is set
--             a field at 0 is removed.
--
-- A reservation or order records what it counted — its live entry's "held" (the products)
-- and "n" (1 when it is one of the customer's live reservations), an order's record field
-- 'held' (the products, JSON) — so ending it takes away exactly that, whatever the product's
-- limits are by then: a limit set later counts what is reserved or ordered from then on.
-- Every line of a product lives in the product's partition, so a customer's count of a
-- product is exact in one atomic step even on a Redis Cluster.

local function held_field(product, owner)
  return 'u|' .. product .. '|' .. owner
end

local function adds(held, field, delta)
  if rcall('HINCRBY', held, field, delta) <= 0 then rcall('HDEL', held, field) end
end

-- The request's lines [[product, warehouse, qty], ...] against their products' limits (the
-- units of a product summed over its lines). Returns nil and what the call is to count once it
-- succeeds: {product, ...} (nil when none) and the units per product; or the refusal:
--   {"err": "invalid_quantity", "product", "requested", "rule": "min_quantity" |
--     "quantity_increment", "min_quantity" | "quantity_increment"}
--   {"err": "limit_exceeded", "product", "rule": "max_per_order" | "max_per_customer",
--     "limit", "held", "requested"}
-- An unknown product is left for allocate to refuse. metas: the call's products read so far
-- (lib.lua meta_of), or nil.
local function check_limits(products, held, owner, lines, metas)
  metas = metas or {}
  if #lines == 1 then  -- (the common request: one line, of a product without limits)
    local meta = meta_of(metas, products, lines[1][1])
    if not (meta and meta.limits) then return nil end
  end
  local want, names = {}, {}
  for _, l in ipairs(lines) do
    local p = l[1]
    if not want[p] then
      want[p] = 0
      names[#names + 1] = p
    end
    want[p] = want[p] + l[3]
  end
  local counted = nil
  for _, p in ipairs(names) do
    local meta = meta_of(metas, products, p)
    local lim = meta and meta.limits
    if lim then
      local q = want[p]
      if lim.min_quantity and q < lim.min_quantity then
        return refuse('invalid_quantity', {product = p, requested = q, rule = 'min_quantity',
                                           min_quantity = lim.min_quantity})
      end
      if lim.quantity_increment and q % lim.quantity_increment ~= 0 then
        return refuse('invalid_quantity', {product = p, requested = q,
          rule = 'quantity_increment', quantity_increment = lim.quantity_increment})
      end
      if lim.max_per_order and q > lim.max_per_order then
        return refuse('limit_exceeded', {product = p, rule = 'max_per_order',
                                         limit = lim.max_per_order, held = 0, requested = q})
      end
      if lim.max_per_customer then
        local h = tonumber(rcall('HGET', held, held_field(p, owner))) or 0
        if h + q > lim.max_per_customer then
          return refuse('limit_exceeded', {product = p, rule = 'max_per_customer',
                                           limit = lim.max_per_customer, held = h,
                                           requested = q})
        end
        counted = counted or {}
        counted[#counted + 1] = p
      end
    end
  end
  return nil, counted, want
end

-- What check_limits found to count: the customer now holds these units too.
local function count_held(held, owner, counted, want)
  if not counted then return end
  for _, p in ipairs(counted) do
    rcall('HINCRBY', held, held_field(p, owner), want[p])
  end
end

-- Gives back what a reservation or order counted: the units of its lines [[product,
-- warehouse, qty, ...]] whose product is among `counted` (its "held"; nil: none).
local function uncount(held, owner, lines, counted)
  if not counted or #counted == 0 then return end
  local is = {}
  for _, p in ipairs(counted) do is[p] = true end
  for _, l in ipairs(lines) do
    if is[l[1]] then adds(held, held_field(l[1], owner), -l[3]) end
  end
end

-- MAX_LIVE_RESERVATIONS_PER_CUSTOMER: nil when the customer may hold another live reservation
-- (max: a number, or as the call's ARGV gives it; 0 = no cap), else the refusal
--   {"err": "too_many_reservations", "limit", "live"}.
local function check_live(held, owner, max)
  local cap = tonumber(max)
  if not cap or cap <= 0 then return nil end
  local n = tonumber(rcall('HGET', held, 'n|' .. owner)) or 0
  if n >= cap then return refuse('too_many_reservations', {limit = cap, live = n}) end
  return nil
end

-- One more, or one fewer, live reservation of the customer.
local function count_live(held, owner, delta)
  adds(held, 'n|' .. owner, delta)
end

-- The live entry's extra fields (lib.lua 'live'): what the reservation counted, as JSON text
-- to append after its lines ('' when nothing).
local function counted_json(counted, capped)
  local s = ''
  if counted then s = ',"held":' .. cjson.encode(counted) end
  if capped then s = s .. ',"n":1' end
  return s
end

-- A live reservation ends (released, expired, committed): its live-reservation count goes;
-- with `units` its units of limited products go too (not on commit: they go into the order).
local function uncount_live(held, live, units)
  if live.n then count_live(held, live.owner, -1) end
  if units then uncount(held, live.owner, live.lines, live.held) end
end
