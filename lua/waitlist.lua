-- waitlist.lua: a customer joins a product's waitlist, leaves it, or lists their entries
-- (wait.lua: the data and the hand-off).
--
-- KEYS[1] stock   KEYS[2] products   KEYS[3] live   KEYS[4] expiry   KEYS[5] outbox
-- KEYS[6] held       the partition's count of what each customer holds (limits.lua)
-- KEYS[7] waitlist   the partition's queues (wait.lua)
-- KEYS[8] wait_due   the entries by when they leave unserved (wait.lua)
-- KEYS[9] wait_data  the entries, and the hand-offs' records (wait.lua)
-- KEYS[10] behind    the partition's flag: while it is set, nothing is decided (lib.lua fenced)
--
-- ARGV[1] action: 'join' | 'leave' | 'list'
-- ARGV[2] entry id (join: new, chosen by the engine; it becomes the reservation's id)
-- ARGV[3] product (join, leave)
-- ARGV[4] quantity (join: units, > 0)
-- ARGV[5] partial: '1' if the entry takes fewer units than it asks for, '0' not (join)
-- ARGV[6] owner (user id)
-- ARGV[7] ttl (ms) of the reservation the entry is handed (join)
-- ARGV[8] wait ttl (ms): the entry leaves unserved after it (join)
-- ARGV[9] actor (user id)         ARGV[10] request id
--
-- join: {"ok", "entry": {id, product, owner, quantity, partial, joined_at, expires_at},
--   "position": n (1: first in line)}; refused {"err": "in_stock", "product", "available"}
--   (nobody waits and units are there: reserve them), {"err": "already_waiting", "entry"},
--   {"err": "product_not_found", "product"}, the limits' (limits.lua), {"err": "redis_behind"}.
--   While anyone waits, the product's available units are held back for the waitlist.
-- leave: {"ok", "entry"}; {"err": "not_waiting", "product"}; {"err": "product_not_found",
--   "product"} (no entry, and no such product).
-- list: {"ok", "entries": [entry + "position", ...]}, the owner's, oldest first.
-- Events: waitlist_joined; waitlist_left (leave, reason 'left'). A hand-off, when units come
--   back in any call, is a reservation_created with "source": "waitlist" (wait.lua).

local stock, products, outbox, held = KEYS[1], KEYS[2], KEYS[5], KEYS[6]
local queue, due, data = KEYS[7], KEYS[8], KEYS[9]
local action, id, product, owner = ARGV[1], ARGV[2], ARGV[3], ARGV[6]
local actor, request_id = ARGV[9], ARGV[10]

local function position(entry)
  return rcall('ZLEXCOUNT', queue, '[' .. entry.product .. '|', '[' .. entry.member)
end

local function view(entry)
  return {id = entry.id, product = entry.product, owner = entry.owner,
          quantity = entry.quantity, partial = entry.partial, joined_at = entry.joined_at,
          expires_at = entry.expires_at}
end

if action == 'list' then
  local entries = {}
  local flat = rcall('HGETALL', data)
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 2) == 'e|' then
      local entry = cjson.decode(flat[i + 1])
      if entry.owner == owner then
        local v = view(entry)
        v.position = position(entry)
        entries[#entries + 1] = v
      end
    end
  end
  table.sort(entries, function(a, b) return a.joined_at < b.joined_at end)
  return ok({entries = entries})
end

local blocked = fenced(KEYS[10])
if blocked then return blocked end
use_waitlists(stock, products, KEYS[3], KEYS[4], outbox, held, queue, due, data)
local now = now_ms()

if action == 'leave' then
  local mine = rcall('HGET', data, 'o|' .. product .. '|' .. owner)
  local raw = mine and rcall('HGET', data, 'e|' .. mine)
  if not raw then
    if not product_meta(products, product) then
      return refuse('product_not_found', {product = product})
    end
    return refuse('not_waiting', {product = product})
  end
  local entry = cjson.decode(raw)
  leave_waitlist(wait, entry, 'left', now, actor, request_id)
  return ok({entry = view(entry)})
end

if action ~= 'join' then error('waitlist.lua: unknown action ' .. action) end
local meta = product_meta(products, product)
if not meta then return refuse('product_not_found', {product = product}) end
local mine = rcall('HGET', data, 'o|' .. product .. '|' .. owner)
if mine then return refuse('already_waiting', {entry = mine}) end
local q = tonumber(ARGV[4])
local refusal = check_limits(products, held, owner, {{product, '', q}})
if refusal then return refusal end
local waiting = tonumber(rcall('HGET', held, 'w|' .. product)) or 0
if waiting == 0 then  -- nobody waits: what is there is anyone's to reserve
  -- A waitlist is for a sold-out product: an entry that asked for more than is there would
  -- hold back, for as long as it waited, the units that are (one customer asking for a
  -- million would stop every sale of the product), so any unit there refuses the join.
  local free = 0
  for _, wh in ipairs(meta.warehouses) do free = free + counts(stock, product, wh[1]) end
  if free > 0 then
    return refuse('in_stock', {product = product, available = free})
  end
end

local t = rcall('TIME')
local member = product .. '|' .. t[1] .. string.sub('00000' .. t[2], -6) .. '|' .. id
local entry = {id = id, product = product, owner = owner, quantity = q,
               partial = ARGV[5] == '1', ttl = tonumber(ARGV[7]), joined_at = now,
               expires_at = now + tonumber(ARGV[8]), member = member}
rcall('HSET', data, 'e|' .. id, cjson.encode(entry), 'o|' .. product .. '|' .. owner, id)
rcall('ZADD', queue, 0, member)
rcall('ZADD', due, int(entry.expires_at), id)
rcall('HINCRBY', held, 'w|' .. product, 1)
emit(outbox, 'waitlist_joined', now, actor, request_id,
     {entry = id, product = product, user = owner, quantity = q, partial = entry.partial,
      expires_at = entry.expires_at})
return ok({entry = view(entry), position = position(entry)})
