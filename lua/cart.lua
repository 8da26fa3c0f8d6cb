-- cart.lua: the home's bookkeeping of carts across partitions (engine/carts.py). A cart whose
-- lines live in several partitions is one reservation per partition, each the cart's *part*
-- there, held and ended by that partition alone; the part of the lowest partition, the
-- *home*, carries the cart's id and decides for the cart: its status is the cart's, and every
-- other part follows it (lua/part.lua). The calls that decide for a cart (reserve.lua with
-- parts, release.lua, extend.lua, commit.lua, transition.lua) record in `carts` the step its
-- other parts are to follow (holds.lua cart_pending); this file looks up a cart's first
-- answer and clears a step once followed.
--
-- KEYS[1] carts   the partition's carts whose parts have a step to follow (holds.lua)
-- KEYS[2] idem    idempotency record of the cart (lookup; unused when ARGV[4] is '')
--
-- ARGV[1] action: 'lookup' | 'done'
-- ARGV[2] reservation id: the cart's, or a cart order's (done)
-- ARGV[3] deadline (ms) of the step the caller has done (done)
-- ARGV[4] request fingerprint ('' = no idempotency key)
-- ARGV[5] idempotency record ttl (ms)
--
-- lookup: the first reply this idempotency key got, when it got one: {"ok", "replayed", ...};
--   {"err": "idempotency_mismatch"}; else {"ok": true}.
-- done: the step with this deadline is cleared (a newer one stays): {"ok": true}. (The sweep
--   claims the steps past their deadline: lua/expire.lua.)

local carts, action, id = KEYS[1], ARGV[1], ARGV[2]

if action == 'done' then
  local score = rcall('ZSCORE', carts, id)
  if score and tonumber(score) == tonumber(ARGV[3]) then rcall('ZREM', carts, id) end
  return ok({})
end

if action ~= 'lookup' then error('cart.lua: unknown action ' .. action) end
local replay = idem_lookup(KEYS[2], ARGV[4], ARGV[5])
if replay then return replay end
return ok({})
