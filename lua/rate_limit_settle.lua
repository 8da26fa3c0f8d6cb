-- rate_limit_settle.lua: settle the requests an API process admitted on its own copies of
-- clients' token buckets since it last settled (web/ratelimit.py), and say what each bucket
-- has left: many buckets in one call. The buckets are rate_limit.lua's: each refills
-- continuously at `rate` per second up to `burst`, and a missing bucket is full. The requests
-- are taken whatever a bucket holds: it may go below 0, a debt the refill pays back before the
-- next request is admitted.
--
-- KEYS[0 + i] bucket i  hash {tokens = tokens left (fractional, may be < 0), at = when counted (ms)}
--
-- ARGV[1] rate (requests per second, > 0, may be fractional)
-- ARGV[2] burst (requests, >= 1): the bucket's size
-- ARGV[3] settles (JSON [[spent, age], ...], one per bucket): spent = requests admitted by the
--         process since its last settle (0 only reads the bucket); age = ms since the first
--         of them was admitted: they count as taken then (or when the bucket was last counted,
--         if that is later), so the refill since is not lost
--
-- Returns JSON: {"ok": true, "tokens": [tokens left now in bucket i (fractional, may be < 0)]}
-- A settle of 0 writes nothing. No outbox event: a bucket is not stock.

local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local settles = cjson.decode(ARGV[3])

local now = now_ms()
local left = {}
for i, bucket in ipairs(KEYS) do
  local spent, age = settles[i][1], math.max(0, settles[i][2])
  local since = now - age
  local stored = rcall('HMGET', bucket, 'tokens', 'at')
  local tokens, at = tonumber(stored[1]), tonumber(stored[2])
  if not tokens or not at then
    tokens, at = burst, since
  end
  -- Redis TIME can step back after a failover: count no refill then, never a negative one.
  local taken_at = math.max(at, since)
  tokens = math.min(burst, tokens + math.max(0, taken_at - at) * rate / 1000) - spent
  tokens = math.min(burst, tokens + math.max(0, now - taken_at) * rate / 1000)
  if spent > 0 then
    -- Numbers go out through string.format: Lua would write a large one in exponent notation.
    rcall('HSET', bucket, 'tokens', string.format('%.17g', tokens), 'at', string.format('%d', now))
    -- Once it would be full again the bucket is the same as no bucket: let it go.
    rcall('PEXPIRE', bucket, string.format('%d', math.ceil((burst - tokens) * 1000 / rate) + 1))
  end
  left[i] = tokens
end
return ok({tokens = left})
