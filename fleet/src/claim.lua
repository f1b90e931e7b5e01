-- shardspawn fleet: one holder's claims on many shared keys, atomically.
--
-- KEYS: per claimed key, its lease hash, its rate string and its
--   rate's turns (PREFIX lease: KEY, PREFIX rate: KEY, PREFIX turn: KEY).
-- ARGV: holder, lease (ms), batch, then per key six numbers:
--   limit, running, want, interval (us, 0: no rate), tokens, unused.
-- Returns per key four numbers: allowed, fleet, waiting, tokens.
--
-- A lease hash maps holder -> "COUNT WANT EXPIRY_MS"; a holder's
-- leases share one expiry, in server time. The rate string is a GCRA's
-- theoretical arrival time (TAT) in microseconds of server time. The
-- turns hash maps a holder that asked for tokens and was given none to
-- "SINCE_MS ASKED_MS": tokens go to the one waiting longest, so a
-- relay slower to ask again is not always second.
-- Effects replication: the default from Redis 7, needed before it for
-- writes after TIME.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local holder = ARGV[1]
local lease = tonumber(ARGV[2])
local batch = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS / 3 do
  local lkey, rkey, tkey = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local a = 3 + (i - 1) * 6
  local limit = tonumber(ARGV[a + 1])
  local running = tonumber(ARGV[a + 2])
  local want = tonumber(ARGV[a + 3])
  local interval = tonumber(ARGV[a + 4])
  local tokens = tonumber(ARGV[a + 5])
  local unused = tonumber(ARGV[a + 6])

  -- Leases: drop the expired, count the others and what they lack.
  local others, deficit, wanting, waiting = 0, 0, 1, 0
  local latest = now + lease -- the last expiry of a live holder
  local fields = redis.call('HGETALL', lkey)
  for j = 1, #fields, 2 do
    local h = fields[j]
    local c, w, e = string.match(fields[j + 1], '^(%d+) (%d+) (%d+)$')
    c, w, e = tonumber(c), tonumber(w), tonumber(e)
    if c == nil or e <= now then
      redis.call('HDEL', lkey, h)
    elseif h ~= holder then
      latest = math.max(latest, e)
      others = others + c
      if w > c then
        deficit = deficit + (w - c)
        waiting = waiting + 1
      end
      if w > 0 then wanting = wanting + 1 end
    end
  end
  local free = math.max(0, limit - others)
  local allowed
  if deficit > 0 then
    -- Others wait: take no more than a fair share, or what is left
    -- once they have what they lack.
    allowed = math.min(want, free,
      math.max(math.ceil(limit / wanting), free - deficit))
  else
    allowed = math.min(want, free)
  end
  -- Running deliveries hold their leases whatever the answer: they
  -- started, and the fleet counts them until they end.
  local count = math.max(running, allowed)
  if count == 0 and want == 0 then
    redis.call('HDEL', lkey, holder)
  else
    redis.call('HSET', lkey, holder,
      string.format('%d %d %d', count, want, now + lease))
    -- The hash lives as long as its last holder's leases (a relay
    -- with a shorter lease setting must not cut the others').
    redis.call('PEXPIRE', lkey, latest - now)
  end

  -- Rate: a GCRA with a burst of `batch` (tau = (batch - 1) * T);
  -- unused tokens move the TAT back, never before now.
  local granted = 0
  if interval > 0 and tokens == 0 then
    -- Asks for none: waits for none.
    redis.call('HDEL', tkey, holder)
  end
  if interval > 0 and (tokens > 0 or unused > 0) then
    local tau = (batch - 1) * interval
    local tat = tonumber(redis.call('GET', rkey)) or now_us
    tat = math.max(now_us, tat - unused * interval)
    granted = math.floor((now_us + tau + interval - tat) / interval)
    granted = math.max(0, math.min(granted, tokens))
    -- Turns. A waiting holder asks again about once an interval (at
    -- least every 100 ms); one silent for two intervals and a second
    -- has given up its turn.
    local stale = now - (2 * interval / 1000 + 1000)
    local mine, queue = nil, {}
    local turns = redis.call('HGETALL', tkey)
    for j = 1, #turns, 2 do
      local since, asked = string.match(turns[j + 1], '^(%d+) (%d+)$')
      since, asked = tonumber(since), tonumber(asked)
      if since == nil or asked < stale then
        redis.call('HDEL', tkey, turns[j])
      elseif turns[j] == holder then
        mine = since
      else
        queue[#queue + 1] = since
      end
    end
    local ahead = false
    for _, since in ipairs(queue) do
      if since < (mine or now + 1) then ahead = true end
    end
    if ahead then granted = 0 end
    if tokens > 0 and granted == 0 then
      redis.call('HSET', tkey, holder,
        string.format('%d %d', mine or now, now))
      redis.call('PEXPIRE', tkey, math.ceil(now - stale))
    else
      redis.call('HDEL', tkey, holder)
    end
    tat = tat + granted * interval
    if tat > now_us then
      redis.call('SET', rkey, string.format('%d', tat), 'PX',
        math.ceil((tat - now_us) / 1000))
    else
      redis.call('DEL', rkey)
    end
  end

  out[#out + 1] = allowed
  out[#out + 1] = others + count
  out[#out + 1] = waiting
  out[#out + 1] = granted
end
return out
