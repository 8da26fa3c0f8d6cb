-- The reference of `inventory bench --scenario cost` (never loaded by the app): a reservation's
-- real work in Redis and nothing else — read the counter, move the units from available to
-- reserved, write the record with its expiry, index it, append one event. Five writes. What
-- each request of ours costs in Redis is set against what this costs per call.
--
-- KEYS[1]  the stock hash (the counters of one product × warehouse)
-- KEYS[2]  the reservation's record (a string that expires with the reservation)
-- KEYS[3]  the expiry index (sorted set: reservation id → expires_at, ms)
-- KEYS[4]  the outbox stream
-- ARGV[1]  the counter field of available units
-- ARGV[2]  the counter field of reserved units
-- ARGV[3]  quantity (units, > 0)
-- ARGV[4]  the reservation's id
-- ARGV[5]  ttl (ms)
-- ARGV[6]  the record and the event's body (JSON, made by the caller)
-- Returns: expires_at (ms, Redis clock) when held; -available (≤ 0) when short, nothing written.

local available = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local quantity = tonumber(ARGV[3])
if available < quantity then
    return -available
end
local now = redis.call('TIME')
local expires_at = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[5])
redis.call('HINCRBY', KEYS[1], ARGV[1], -quantity)
redis.call('HINCRBY', KEYS[1], ARGV[2], quantity)
redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[5])
redis.call('ZADD', KEYS[3], expires_at, ARGV[4])
redis.call('XADD', KEYS[4], '*', 'type', 'reservation_created', 'data', ARGV[6])
return expires_at
