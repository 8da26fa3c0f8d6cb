-- cart.lua: the home's bookkeeping of carts across partitions (engine/carts.py). A cart whose
-- lines live in several partitions is one reservation per partition, each the cart's *part*
-- there, held and ended by that partition alone; the part of the lowest partition, the
-- *home*, carries the cart's id and decides for the cart: its status is the cart's, and every
-- other part follows it (lua/part.lua). The calls that decide for a cart (reserve.lua with
-- parts, release.lua, extend.lua, commit.lua, transition.lua) record in `carts` the step its
-- other parts are to follow (holds.lua cart_pending); this file looks up a cart's first
-- answer, clears a step once followed, and hands the sweep the steps past their deadline.
--
-- KEYS[1] carts   the partition's carts whose parts have a step to follow (holds.lua)
-- KEYS[2] idem    idempotency record of the cart (lookup; unused when ARGV[6] is '')
--
-- ARGV[1] action: 'lookup' | 'claim' | 'done'
-- ARGV[2] reservation id: the cart's, or a cart order's (done)
-- ARGV[3] hold (ms): a claimed step's new deadline is now + hold (claim)
-- ARGV[4] deadline (ms) of the step the caller has done (done)
-- ARGV[5] limit: at most this many steps claimed (claim)
-- ARGV[6] request fingerprint ('' = no idempotency key)
-- ARGV[7] idempotency record ttl (ms)
--
-- lookup: the first reply this idempotency key got, when it got one: {"ok", "replayed", ...};
--   {"err": "idempotency_mismatch"}; else {"ok": true}.
-- claim: the steps past their deadline, each given a new one (so a caller still at it is
--   refused: commit.lua cart_timeout): {"ok", "claimed": [{"id", "deadline"}, ...]}.
-- done: the step with this deadline is cleared (a newer one stays): {"ok": true}.

local carts, action, id = KEYS[1], ARGV[1], ARGV[2]

if action == 'done' then
  local score = redis.call('ZSCORE', carts, id)
  if score and tonumber(score) == tonumber(ARGV[4]) then redis.call('ZREM', carts, id) end
  return ok({})
end

if action == 'claim' then
  local now, now_s = now_ms()
  local due = redis.call('ZRANGEBYSCORE', carts, '-inf', now_s, 'LIMIT', '0', ARGV[5])
  local claimed = {}
  for i, cart in ipairs(due) do
    claimed[i] = {id = cart, deadline = cart_pending(carts, cart, now, ARGV[3])}
  end
  return ok({claimed = claimed})
end

if action ~= 'lookup' then error('cart.lua: unknown action ' .. action) end
local replay = idem_lookup(KEYS[2], ARGV[6], tonumber(ARGV[7]))
if replay then return replay end
return ok({})
