-- lib.lua: the helpers every operation shares. The engine (engine/scripts.py) assembles one
-- Redis Functions library:
--   <constants rendered from engine/states.py> .. lib.lua .. stock.lua (a product's counters
--   and settings) .. limits.lua .. holds.lua (the helpers of reservations and orders)
--   .. wait.lua .. many.lua (coalesced calls)
--   .. each lua/<operation>.lua as `local function(KEYS, ARGV) <file> end`, registered below
-- so the order state table has one home (Python) and no second copy to drift, and these
-- helpers are defined once, at FUNCTION LOAD. Load time runs nothing but definitions: Redis
-- gives the loading code no globals (no redis.call, no cjson, not even ipairs).
--
-- Data layout (all keys arrive in KEYS, but the records of the reservations a call expires
-- without being named them: holds.lua expire_due names them from the partition's `records`
-- prefix, an ARGV from engine/keys.py, in the same slot; no helper builds another key name):
--   stock     hash  'a|<product>|<warehouse>' -> available units
--                   'r|<product>|<warehouse>' -> reserved units
--                   (total = available + reserved; it is never stored, so it can't drift)
--   products  hash  <product> -> JSON {"price": minor units, "currency": "USD",
--                                      "warehouses": [[name, priority], ...] by priority}
--   live      hash  <reservation id> -> JSON {"owner": user, "lines": [[product, warehouse, qty]]}
--                   exactly the live reservations; 'reserved' is the sum of their lines
--   expiry    zset  <reservation id> scored by expires_at (ms, Redis clock)
--   outbox    stream, one entry per change: fields 'type' and 'data' (JSON)
--   record    hash  one reservation or order; key TTLs reclaim memory, never stock. A
--                   reservation's record has none while it is live (one write less on the hot
--                   path): it gets one as it ends — retention after it was committed or
--                   released, retention after its expires_at once it expired (expire_due,
--                   live_reservation) — and an extend sets one past the new expires_at.
--                   A reservation's: 'owner', 'status', 'expires_at' (what its calls read
--                   or change), 'data' (JSON {created_at, lines, request_id, counted}: what
--                   never changes, in one field: holds.lua record_of, record_data), later
--                   'order_id', 'ended_at', and a cart's 'cart', 'parts'; one written before
--                   kept 'id', 'created_at', 'lines', 'request_id', 'counted' as fields
--   idem      string <request fingerprint><first reply> (the fingerprint is hex, the reply a
--                   JSON object: it starts at the first '{'), with a TTL; the call's last event
--                   carries a copy ("idempotency": {key, fp, expires_at, reply}) so that the
--                   drain makes it durable and a restore can put it back (a reservation's
--                   and an order's leave the reply out: their events hold it whole,
--                   idempotency_json).
--                   (Before, a hash {fp, reply}: idem_lookup still reads one.)
--
-- Every script replies with one JSON string: {"ok": true, ...} or {"err": "<code>", ...}.
-- An ok reply also carries "event": the stream id of the last outbox event the call wrote
-- (left out when it wrote none); a replay returns the first reply, and so its event.

-- The globals the library uses, as its own locals. A function library's global table is an
-- empty one whose metatable's __index is the real globals (Redis 7 function_lua.c), so every
-- global read (tonumber, ipairs, redis, cjson, ...) costs a missed lookup and a metamethod's
-- before it finds the value; a local (an upvalue) costs one read. They are bound on the
-- library's first call (bind, from register and register_many): at FUNCTION LOAD the code has
-- no globals. `rcall`, `rpcall`: redis.call and redis.pcall (`redis` itself stays global: the
-- code that registers the functions runs at load).
local function globals()
  return tonumber, tostring, ipairs, pairs, type, next, unpack, select, pcall, error, cjson,
    string, table, math, redis.call, redis.pcall, setmetatable
end
local tonumber, tostring, ipairs, pairs, type, next, unpack, select, pcall, error, cjson,
  string, table, math, rcall, rpcall, setmetatable
local bound = false

local function bind()
  tonumber, tostring, ipairs, pairs, type, next, unpack, select, pcall, error, cjson,
    string, table, math, rcall, rpcall, setmetatable = globals()
  bound = true
end

-- The per-call state. A library's locals live as long as the library, across calls: every
-- function call starts by resetting these (register, at the end of this file). Written after
-- load besides: two caches that no call's outcome depends on (the products' decoded settings,
-- product_meta).
-- Set by emit(), read by ok().
local last_event = nil
-- This call's idempotency record, set by idem_lookup: emit() copies it, with the reply the
-- call is about to give, into the event that ends the call.
local idem_call = {key = '', fp = '', ttl = 0}
-- The waitlists (wait.lua): this call's keys of them (use_waitlists; nil: a call that hands
-- nothing off), the products whose available units grew in this call (move_counter), and
-- whether the call is handing units off now (allocate then sees what the waitlist holds).
local wait = nil
local returned = {}
local serving = false
-- Hands returned units to the waitlists' heads (wait.lua sets it at load): run after each call
-- that registered its waitlist keys and gave units back (register, many.lua).
local serve_waitlists = nil
-- A handed-off reservation's record, made on its first use (wait.lua sets it at load).
local handed_record = nil
-- The per-batch state of a coalesced call (many.lua), reset before each batch and off
-- outside one: the batch's calls run at one instant (its clock is read once, `now`, `now_s`),
-- and `swept` names the expiry index whose due reservations an earlier call of the batch has
-- all released at that instant (holds.lua expire_due), so the later calls need not look again.
--
-- A batch also writes back what every call of it writes again and again (what one call writes
-- there, the next reads or overwrites), once at its end (flush_batch) rather than once a call:
-- `stock` names the stock hash whose counters it keeps (`counters`: field -> its value's text,
-- as read or as written since; `moved`: available field -> reserved field of the counters
-- written), `products` the products hash whose settings it has read (`raws`: product -> its
-- JSON text, false: none), and `live` the reservations it has made (add_live: their live
-- entries and index entries, to be written). Every read of those counters and settings in a
-- batch goes through these helpers (read_counter, counts, product_meta), so a call sees what
-- the calls before it wrote, as alone; the entries made wait, as no call of the batch reads
-- them (add_live). `waiting`: product -> how many wait for it (holds.lua held_back; wait.lua
-- forgets a product's count when it changes it). Kept at most for one batch, which runs to its end with nothing between.
local batch = {on = false, now = nil, now_s = nil, swept = nil,
               stock = nil, counters = {}, moved = {}, products = nil, raws = {}, waiting = {},
               live = {hash = nil, expiry = nil, entries = {}, index = {}}}

-- A batch starts (on) or ends (off); a call alone runs with it off.
local function new_batch(on)
  batch.on, batch.now, batch.now_s, batch.swept = on, nil, nil, nil
  batch.stock, batch.products = nil, nil
  if next(batch.counters) then batch.counters, batch.moved = {}, {} end
  if next(batch.raws) then batch.raws = {} end
  if next(batch.waiting) then batch.waiting = {} end
  local live = batch.live
  live.hash, live.expiry = nil, nil
  if #live.entries > 0 then live.entries, live.index = {}, {} end
end

-- at most this many values go into one command when a batch writes back (unpack's bound)
local FLUSH_CHUNK = 500

local function write_all(command, key, values)
  for i = 1, #values, FLUSH_CHUNK do
    rcall(command, key, unpack(values, i, math.min(i + FLUSH_CHUNK - 1, #values)))
  end
end

-- Writes what the batch kept (the counters moved, the reservations made): at its end, and
-- before anything that would read or write them behind the helpers' back (set_counts).
local function flush_batch()
  if batch.stock and next(batch.moved) then
    local values, counters = {}, batch.counters
    for a, r in pairs(batch.moved) do
      local n = #values
      values[n + 1], values[n + 2], values[n + 3], values[n + 4] = a, counters[a], r, counters[r]
    end
    batch.moved = {}
    write_all('HSET', batch.stock, values)
  end
  local live = batch.live
  if #live.entries > 0 then
    local entries, index = live.entries, live.index
    live.entries, live.index = {}, {}
    write_all('HSET', live.hash, entries)
    write_all('ZADD', live.expiry, index)
  end
end

-- Fresh per-call state, before each call (register; many.lua for each call of a batch).
local function new_call()
  last_event = nil
  idem_call.key, idem_call.fp, idem_call.ttl = '', '', 0
  wait, serving = nil, false
  if next(returned) then returned = {} end
end

-- An integer as Redis and JSON write it. A Lua number given to redis.call (or concatenated)
-- is written with printf's '%.17g', a float conversion that costs several times this one.
local function int(n)
  return string.format('%d', n)
end

-- Redis's clock in ms: the number, and its text written from TIME's own digits (seconds, then
-- the microseconds' first three of six), which costs no number formatting. The calls of one
-- batch (many.lua) read it once: they run at one instant, as calls made one after another
-- within the same millisecond would (a batch takes well under one).
local function now_ms()
  if batch.now then return batch.now, batch.now_s end
  local t = rcall('TIME')
  local text = t[1] .. string.sub('00000' .. t[2], -6, -4)
  local now = tonumber(text)
  if batch.on then batch.now, batch.now_s = now, text end
  return now, text
end

-- Stream ids 'ms-seq' in order (exact: ms fits a double's 53 bits).
local function id_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end

local function ok(body)
  body.ok = true
  body.event = last_event
  return cjson.encode(body)
end

local function refuse(code, body)
  body = body or {}
  body.err = code
  return cjson.encode(body)
end

-- The partitions this Redis has checked against the database's record since it loaded this
-- library (lua/verify.lua), by their behind flag's key. It is held in the library, in no key,
-- so that no copy of Redis's files carries it: a Redis that starts — from its own files, from
-- an older copy, or a replica promoted — knows none, and refuses each partition's writes with
-- the error UNVERIFIED <flag> (register, register_many) until a caller has checked it
-- (engine/scripts.py): a copy that lost what the database holds is fenced before its first
-- write, not when the drain next runs.
local verified = {}

-- The error that refuses a write to a partition not checked yet (nil: checked).
local function unverified(flag)
  if verified[flag] then return nil end
  return redis.error_reply('UNVERIFIED ' .. flag)
end

-- A Redis that came back behind the database (persistence/behind.py) decides nothing until
-- `inventory reconcile --fix` has restored it: the drain (or verify.lua) raises this flag when
-- it finds it. Returns the refusal, or nil when the partition may change.
local function fenced(flag)
  if rcall('EXISTS', flag) == 1 then return refuse('redis_behind', {}) end
  return nil
end

-- Idempotency: a repeat with the same fingerprint gets the first reply (marked replayed);
-- another fingerprint under the same key is refused. fp == '' means no key was given.
-- ttl_ms is how long the first reply is kept (idem_store), as the call's ARGV gives it. Without
-- a key the call's record stays as new_call left it (none). `absent`: the caller knows the
-- record is not there (open_call): nothing to read.
local function idem_lookup(key, fp, ttl_ms, absent)
  if fp == '' then return nil end
  idem_call.key, idem_call.fp, idem_call.ttl = key, fp, tonumber(ttl_ms)
  if absent then return nil end
  local stored = rpcall('GET', key)
  if not stored then return nil end
  local stored_fp, reply
  if type(stored) == 'table' then  -- WRONGTYPE: a record kept as a hash before
    stored = rcall('HMGET', key, 'fp', 'reply')
    stored_fp, reply = stored[1], stored[2]
  else
    local i = string.find(stored, '{', 1, true)
    stored_fp, reply = string.sub(stored, 1, i - 1), string.sub(stored, i)
  end
  if stored_fp ~= fp then return refuse('idempotency_mismatch', {}) end
  return '{"replayed":true,' .. string.sub(reply, 2)
end

-- A call's opening checks: fenced(flag); whether `key`, the record the call is to create,
-- exists already (nil: the call creates none); and idem_lookup(idem, fp, ttl_ms). One EXISTS of
-- them all answers for the call that finds none of them, as all do but a replay, a fence or
-- a taken id; those are then asked one by one. Returns the refusal or the replay (nil: the
-- call goes on), then whether `key` exists.
local function open_call(flag, key, idem, fp, ttl_ms)
  local found
  if fp == '' then
    found = key and rcall('EXISTS', flag, key) or rcall('EXISTS', flag)
  else
    found = key and rcall('EXISTS', flag, key, idem) or rcall('EXISTS', flag, idem)
  end
  if found == 0 then return idem_lookup(idem, fp, ttl_ms, true), false end
  local blocked = fenced(flag)
  if blocked then return blocked, false end
  local replay = idem_lookup(idem, fp, ttl_ms)
  if replay then return replay, false end
  return nil, key ~= nil and rcall('EXISTS', key) == 1
end

-- ttl_ms: as the call's ARGV gives it (text: Redis reads it as written).
local function idem_store(key, fp, ttl_ms, reply)
  if fp ~= '' then rcall('SET', key, fp .. reply, 'PX', ttl_ms) end
  return reply
end

-- A client's token bucket (rate_limit.lua, rate_limit_settle.lua): one string, '<tokens> <at>'
-- (tokens left, fractional, may be < 0; when counted, ms), whose TTL lets it go once it would
-- be full again (it is then the same as no bucket). One write with its TTL, where a hash took
-- two fields and a PEXPIRE. Returns tokens, at (numbers), or nil when there is none. A bucket
-- kept as a hash {tokens, at} before is read as it was; the next write replaces it.
local function read_bucket(bucket)
  local stored = rpcall('GET', bucket)
  local tokens, at
  if type(stored) == 'string' then
    tokens, at = string.match(stored, '^(%S+) (%d+)$')
  elseif type(stored) == 'table' then  -- WRONGTYPE: a hash, from before
    stored = rcall('HMGET', bucket, 'tokens', 'at')
    tokens, at = stored[1], stored[2]
  end
  tokens, at = tonumber(tokens), tonumber(at)
  if not tokens or not at then return nil end
  return tokens, at
end

-- text: the tokens as string.format('%.17g') writes them (exact); now_s: now_ms's text.
local function write_bucket(bucket, text, now_s, tokens, burst, rate)
  rcall('SET', bucket, text .. ' ' .. now_s, 'PX',
    string.format('%d', math.ceil((burst - tokens) * 1000 / rate) + 1))
end

-- Appends one event. `reply` is given to the last event of a call that answers with a
-- success: when the call carries an idempotency key, the event takes the reply along (its
-- 'event' field is this event's id), and the drain writes the durable idempotency record.
local function emit(outbox, etype, ts, actor, request_id, body, reply)
  body.type = etype
  body.ts = ts
  body.actor = actor
  body.request_id = request_id
  if reply and idem_call.fp ~= '' then
    body.idempotency = {key = idem_call.key, fp = idem_call.fp,
                        expires_at = ts + idem_call.ttl, reply = reply}
  end
  last_event = rcall('XADD', outbox, '*', 'type', etype, 'data', cjson.encode(body))
  return last_event
end

-- emit() for an event written as JSON text by its caller (reserve.lua, on the hot path): the
-- text is made by one concatenation of pieces already encoded — cjson would format every
-- number again (printf's '%.14g', ~3k instructions a number), and a table of pieces, joined,
-- costs several times one concatenation. It must decode to what emit() would write: the same
-- fields, "type", "ts", "actor", "request_id", and the idempotency copy (idempotency_json) on
-- the call's last event (tests/test_units_events.py reads the fields off the call).
local function emit_text(outbox, etype, text)
  last_event = rcall('XADD', outbox, '*', 'type', etype, 'data', text)
  return last_event
end

-- The idempotency copy of emit_text's event, as JSON text to append to its members ('' when
-- the call has no key), for a call whose last event holds its success whole (a reservation
-- or an order made: its reply is the event's reservation or order, persistence/event_replies.py
-- created_reply): key,
-- fingerprint and expiry go along without the reply, which the drain rebuilds from the event
-- — the same reply, not written twice. ts: the time's text (now_ms). The key and fingerprint
-- are the engine's (hex, braces, colons) and are written as they are.
local function idempotency_json(ts)
  if idem_call.fp == '' then return '' end
  return ',"idempotency":{"key":"' .. idem_call.key .. '","fp":"' .. idem_call.fp
    .. '","expires_at":' .. int(tonumber(ts) + idem_call.ttl) .. '}'
end

-- Registers one operation, `body(KEYS, ARGV)`, as the library's function `name`_<VERSION>
-- (VERSION: the library's content hash, set above this file by engine/scripts.py, so two
-- versions of the app can be loaded side by side). A read-only one is flagged 'no-writes'
-- and called with FCALL_RO. Each call starts with fresh per-call state. `fence`: the position
-- of the partition's behind flag among its KEYS when the operation writes what the record
-- must agree with (nil: it is called whatever this Redis is), refused until it is verified.
local function register(name, body, read_only, fence)
  redis.register_function{
    function_name = name .. '_' .. VERSION,
    flags = read_only and {'no-writes'} or {},
    callback = function(keys, args)
      if fence then
        local refused = unverified(keys[fence])
        if refused then return refused end
      end
      if not bound then bind() end
      new_batch(false)
      new_call()
      local reply = body(keys, args)
      if wait and next(returned) then serve_waitlists() end
      return reply
    end,
  }
end
