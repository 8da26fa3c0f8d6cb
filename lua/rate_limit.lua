-- rate_limit.lua: take one request from a client's token bucket, or say when to come back.
-- The bucket refills continuously at `rate` per second up to `burst`; a missing bucket is
-- full, so the key can expire once it would have refilled. One round trip per request.
--
-- KEYS[1] bucket  hash {tokens = tokens left (may be fractional), at = when counted (ms)}
--
-- ARGV[1] rate (requests per second, > 0, may be fractional)
-- ARGV[2] burst (requests, >= 1): the bucket's size
--
-- Returns JSON:
--   {"ok": true, "remaining": whole requests left in the bucket}
--   {"err": "rate_limited", "retry_after_ms": ms until one request's worth has refilled}
-- A refused request takes nothing and writes nothing. No outbox event: a bucket is not stock.

local bucket = KEYS[1]
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])

local now = now_ms()
local stored = rcall('HMGET', bucket, 'tokens', 'at')
local tokens, at = tonumber(stored[1]), tonumber(stored[2])
if not tokens or not at then
  tokens, at = burst, now
end
-- Redis TIME can step back after a failover: count no refill then, never a negative one.
local elapsed = math.max(0, now - at)
tokens = math.min(burst, tokens + elapsed * rate / 1000)

if tokens < 1 then
  return refuse('rate_limited', {retry_after_ms = math.ceil((1 - tokens) * 1000 / rate)})
end
tokens = tokens - 1
-- Numbers go out through string.format: Lua would write a large one in exponent notation.
rcall('HSET', bucket, 'tokens', string.format('%.17g', tokens), 'at', string.format('%d', now))
-- Once it would be full again the bucket is the same as no bucket: let it go.
rcall('PEXPIRE', bucket, string.format('%d', math.ceil((burst - tokens) * 1000 / rate) + 1))
return ok({remaining = math.floor(tokens)})
