-- many.lua: coalesced calls (engine/coalesce.py). Assembled after lib.lua, before the
-- operations; register_many is called for each operation whose spec names its own keys
-- (engine/specs.py ScriptSpec.own_keys): reserve, place_order and commit.
--
-- `<name>_many_<VERSION>` runs N calls of one operation, in the order given, each exactly as
-- the operation's own function would run it alone: its own KEYS and ARGV, its own per-call
-- state (the last event, the idempotency record), its own reply. A call's refusal is its own
-- reply; a call that raises (a Lua error) gets that error as its reply, prefixed with '!',
-- and the calls after it still run — what it wrote before raising stays, as it would alone.
--
-- What every call of the batch writes again and again (the stock counters, the new live
-- entries) is written once, at the batch's end, and the products' settings are read once
-- (lib.lua `batch`, flush_batch).
--
-- KEYS: the keys every call shares (the operation's keys other than its own, in its header's
--       order), then each call's own keys in order (`own` positions, in order).
-- ARGV[1]: N; then the values of the batch args (the spec's batch_args: the settings every
--          call of the batch has alike, `batch` positions of the operation's ARGV, in order);
--          then each call's other args (`nargs` minus the batch args' values each, in order).
-- Returns: a list of N replies (or, before any runs, the error UNVERIFIED, as register's).
-- `fence`: as register's.

-- The positions 1..n but those in `taken`, in order (run at load: no ipairs, lib.lua).
local function positions_but(n, taken)
  local is, rest = {}, {}
  for j = 1, #taken do is[taken[j]] = true end
  for i = 1, n do
    if not is[i] then rest[#rest + 1] = i end
  end
  return rest
end

local function register_many(name, body, own, nkeys, nargs, batch, fence)
  -- where each of a call's keys and args comes from: the shared ones are set once per batch,
  -- a call's own ones per call, in one KEYS table and one ARGV table the calls share (no
  -- operation keeps or writes its KEYS or its ARGV)
  local shared_at, call_at = positions_but(nkeys, own), positions_but(nargs, batch)
  local nshared, nown, nbatch, ncall = #shared_at, #own, #batch, #call_at
  redis.register_function{
    function_name = name .. '_many_' .. VERSION,
    flags = {},
    callback = function(keys, args)
      if not bound then bind() end
      local n = tonumber(args[1])
      local out, k, a = {}, {}, {}
      for j = 1, nshared do k[shared_at[j]] = keys[j] end
      if fence then  -- one of the shared keys: the batch is one partition's (register)
        local refused = unverified(k[fence])
        if refused then return refused end
      end
      new_batch(true)
      for j = 1, nbatch do a[batch[j]] = args[1 + j] end
      for r = 1, n do
        local oi, base = nshared + (r - 1) * nown, 1 + nbatch + (r - 1) * ncall
        for j = 1, nown do k[own[j]] = keys[oi + j] end
        for j = 1, ncall do a[call_at[j]] = args[base + j] end
        new_call()
        local ok, reply = pcall(body, k, a)
        if ok and wait and next(returned) then
          local served, problem = pcall(serve_waitlists)
          if not served then ok, reply = false, problem end
        end
        if ok then
          out[r] = reply
        elseif type(reply) == 'table' and reply.err then  -- a command's error (redis.call)
          out[r] = '!' .. reply.err
        else
          out[r] = '!' .. tostring(reply)
        end
      end
      flush_batch()
      new_batch(false)
      return out
    end,
  }
end
