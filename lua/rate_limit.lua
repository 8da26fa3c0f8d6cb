-- rate_limit.lua: take one request from a client's token bucket, or say when to come back.
-- The bucket refills continuously at `rate` per second up to `burst`; a missing bucket is
-- full, so the key can expire once it would have refilled. One round trip per request.
--
-- KEYS[1] bucket  string '<tokens> <at>': tokens left (may be fractional), when counted (ms),
--                 with a TTL (read_bucket, write_bucket below)
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

local now, now_s = now_ms()
local tokens, at = read_bucket(bucket)
if not tokens then
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
write_bucket(bucket, string.format('%.17g', tokens), now_s, tokens, burst, rate)
return ok({remaining = math.floor(tokens)})
