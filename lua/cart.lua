-- cart.lua: the home of a cart across partitions (engine/carts.py). A cart whose lines live
-- in several partitions is one reservation per partition, each the cart's *part* there, held
-- and ended by that partition alone; the part of the lowest partition, the *home*, carries
-- the cart's id and decides for the cart: its status is the cart's, and every other part
-- follows it (lua/part.lua). A step the other parts are to follow is recorded in `carts`
-- (holds.lua cart_pending) until the engine has made them follow; past its deadline the
-- sweep does (claim).
--
-- KEYS[1] stock   KEYS[2] live   KEYS[3] expiry   KEYS[4] outbox
-- KEYS[5] record  the home's hash (claim and done read none)
-- KEYS[6] carts   the partition's carts whose parts have a step to follow (holds.lua)
-- KEYS[7] idem    idempotency record of the cart (unused when ARGV[13] is '')
-- KEYS[8] behind  the partition's flag: while it is set, nothing is decided (lib.lua fenced)
--
-- ARGV[1] action: 'lookup' | 'activate' | 'claim' | 'done'
-- ARGV[2] reservation id: the cart's (its home's)
-- ARGV[3] parts: JSON [partition, ...], the cart's, ascending (activate)
-- ARGV[4] lines: JSON [[product, warehouse, qty], ...], every part's (activate)
-- ARGV[5] ttl (ms) of the cart from now (activate)
-- ARGV[6] max lifetime (ms) from created_at (activate)
-- ARGV[7] hold (ms): the other parts are to follow within it (activate, claim)
-- ARGV[8] deadline (ms) of the step the caller has done (done)
-- ARGV[9] limit: at most this many steps claimed (claim)
-- ARGV[10] record retention (ms) kept after the reservation ends
-- ARGV[11] actor (user id)         ARGV[12] request id
-- ARGV[13] request fingerprint ('' = no idempotency key)
-- ARGV[14] idempotency record ttl (ms)
--
-- lookup: the cart's first reply when this idempotency key made one: {"ok", "replayed",
--   "reservation", ...}; {"err": "idempotency_mismatch"}; else {"ok": true}.
-- activate: every part is held; the home becomes the cart: its expires_at now + ttl (capped
--   at created_at + max lifetime), its parts recorded, the step recorded (the others are to
--   take the same expires_at). The cart's commit point. Returns {"ok", "reservation": {...,
--   every line}, "deadline"} (+ "replayed"); or the refusals of extend.lua when the home is no
--   longer live. Event: reservation_extended (with "cart").
-- claim: the steps past their deadline, each given a new one (so a caller still at it is
--   refused: commit.lua cart_timeout): {"ok", "claimed": [{"id", "deadline"}, ...]}.
-- done: the step with this deadline is cleared (a newer one stays): {"ok": true}.

local stock, live_hash, expiry, outbox, record, carts, idem =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local action, id, fp = ARGV[1], ARGV[2], ARGV[13]

if action == 'done' then
  local score = redis.call('ZSCORE', carts, id)
  if score and tonumber(score) == tonumber(ARGV[8]) then redis.call('ZREM', carts, id) end
  return ok({})
end

if action == 'claim' then
  local now, now_s = now_ms()
  local due = redis.call('ZRANGEBYSCORE', carts, '-inf', now_s, 'LIMIT', '0', ARGV[9])
  local claimed = {}
  for i, cart in ipairs(due) do
    claimed[i] = {id = cart, deadline = cart_pending(carts, cart, now, ARGV[7])}
  end
  return ok({claimed = claimed})
end

local replay = idem_lookup(idem, fp, tonumber(ARGV[14]))
if replay then return replay end
if action == 'lookup' then return ok({}) end
if action ~= 'activate' then error('cart.lua: unknown action ' .. action) end

local blocked = fenced(KEYS[8])
if blocked then return blocked end
local now = now_ms()
local rec, _, err = live_reservation(stock, live_hash, expiry, outbox, record, id, '', now)
if err then return err end
local old = tonumber(rec.expires_at)
local new = math.min(now + tonumber(ARGV[5]), tonumber(rec.created_at) + tonumber(ARGV[6]))
redis.call('ZADD', expiry, int(new), id)
redis.call('HSET', record, 'expires_at', int(new), 'parts', ARGV[3])
redis.call('PEXPIREAT', record, int(new + tonumber(ARGV[10])))
local deadline = cart_pending(carts, id, now, ARGV[7])
rec.expires_at = int(new)
local view = reservation_view(rec, 'active')
view.lines = cjson.decode(ARGV[4])
local reply = {reservation = view}
emit(outbox, 'reservation_extended', now, ARGV[11], ARGV[12],
     {reservation = id, user = rec.owner, expires_at_before = old, expires_at_after = new,
      cart = id}, reply)
idem_store(idem, fp, ARGV[14], ok(reply))
reply.deadline = deadline
return ok(reply)
