-- rate_limit_settle.lua: settle the requests an API process admitted on its own copies of
-- clients' token buckets since it last settled (web/ratelimit.py), and say what each bucket
-- has left: many buckets in one call. The buckets are rate_limit.lua's: each refills
-- continuously at `rate` per second up to `burst`, and a missing bucket is full. The requests
-- are taken whatever a bucket holds: it may go below 0, a debt the refill pays back before the
-- next request is admitted.
--
-- KEYS[0 + i] bucket i  string '<tokens> <at>': tokens left (fractional, may be < 0), when
--              counted (ms) (rate_limit.lua read_bucket)
--
-- ARGV[1] rate (requests per second, > 0, may be fractional)
-- ARGV[2] burst (requests, >= 1): the bucket's size
-- ARGV[3] settles (JSON [spent, age, spent, age, ...], a pair per bucket, flat: one table to
--         decode, not one per bucket): spent = requests admitted by the process since its last
--         settle (0 only reads the bucket); age = ms since the first of them was admitted:
--         they count as taken then (or when the bucket was last counted, if that is later), so
--         the refill since is not lost
--
-- Returns JSON: {"ok": true, "tokens": [tokens left now in bucket i (fractional, may be < 0)]}
-- A settle of 0 writes nothing, nor does one that leaves its bucket full (the refill since the
-- requests were admitted made up for them: a client well within its rate): a missing bucket
-- is a full one, so a full bucket is deleted rather than written. No outbox event: a bucket is
-- not stock.

local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local settles = cjson.decode(ARGV[3])

local now, now_s = now_ms()
-- Every bucket read by one MGET. A bucket the previous version kept as a hash reads as none
-- there: only when one of those it found none of exists is each read on its own (read_bucket).
local found, missing = rcall('MGET', unpack(KEYS)), {}
for i, value in ipairs(found) do
  if not value then missing[#missing + 1] = KEYS[i] end
end
local legacy = #missing > 0 and rcall('EXISTS', unpack(missing)) > 0
-- (a number goes out through string.format: Lua would write a large one in exponent notation;
-- '%.17g' gives it back exactly, and is JSON as it is: it is never inf or nan. A full bucket,
-- most settles' answer, is formatted once.)
local full_text = string.format('%.17g', burst)
local left = {}
for i, bucket in ipairs(KEYS) do
  local spent, age = settles[2 * i - 1], math.max(0, settles[2 * i])
  local since = now - age
  local tokens, at
  local value = found[i]
  if value then
    tokens, at = string.match(value, '^(%S+) (%d+)$')
    tokens, at = tonumber(tokens), tonumber(at)
  elseif legacy then
    tokens, at = read_bucket(bucket)
  end
  local stored = tokens ~= nil and at ~= nil
  if not stored then
    tokens, at = burst, since
  end
  -- Redis TIME can step back after a failover: count no refill then, never a negative one.
  local taken_at = math.max(at, since)
  tokens = math.min(burst, tokens + math.max(0, taken_at - at) * rate / 1000) - spent
  tokens = math.min(burst, tokens + math.max(0, now - taken_at) * rate / 1000)
  local text = tokens == burst and full_text or string.format('%.17g', tokens)
  if spent > 0 then
    if tokens < burst then
      write_bucket(bucket, text, now_s, tokens, burst, rate)
    elseif stored then
      rcall('DEL', bucket)  -- full again: a missing bucket is a full one
    end  -- (and a full one missing stays so: most settles, one request refilled since)
  end
  left[i] = text
end
-- (written by hand: cjson would format each number again)
return '{"ok":true,"tokens":[' .. table.concat(left, ',') .. ']}'
