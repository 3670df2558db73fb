-- Native seat inventory of one departure (the platform's unified station system).
--
-- Every script of this file gets the same six keys, all sharing the departure's hash tag so
-- a script stays on one Redis Cluster slot:
--   KEYS[1] inv:{dep:D}        hash: n (seats), segs, status, release_at (ms), ver,
--                               s:<seat> -> occupied segment mask (held or sold)
--   KEYS[2] inv:{dep:D}:alloc  hash: a:<channel> allotment, u:<channel> seats in use,
--                               c:<channel> cap, x:<channel> closed
--   KEYS[3] inv:{dep:D}:holds  hash: hold id -> "channel|expires_ms|from|to|s1,s2"
--   KEYS[4] inv:{dep:D}:hexp   zset: hold id -> expires_ms
--   KEYS[5] inv:{dep:D}:sold   hash: sale id -> "channel|from|to|s1,s2"
--   KEYS[6] ev:{dep:D}         stream: the departure topic's last events (s = seq, f = frame),
--                               for clients resuming with since=<seq>
-- ARGV[1] is always the departure id. A sale from stop i to stop j occupies segments
-- i .. j-1: a seat is free for a trip when its mask and the trip's mask share no bit.
-- Errors come back as {'ERR', code, detail}; success as {'OK', ...}.
-- @@PRELUDE@@ (everything above the first '-- @@SCRIPT' line is prepended to each script)
local K, ALLOC, HOLDS, HEXP, SOLD, EV = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6]
local EVENTS_KEPT = 500
local DEP = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function seg_mask(from, to)
  local m = 0
  for i = from, to - 1 do m = bit.bor(m, bit.lshift(1, i)) end
  return m
end

local function split(s, sep)
  local out = {}
  for p in string.gmatch(s or '', '([^' .. sep .. ']+)') do out[#out + 1] = p end
  return out
end

local function numbers(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = tonumber(v) end
  return out
end

local function parse_hold(v)
  local p = split(v, '|')
  return {channel = p[1], exp = tonumber(p[2]), from = tonumber(p[3]), to = tonumber(p[4]),
          seats = split(p[5], ',')}
end

local function parse_sale(v)
  local p = split(v, '|')
  return {channel = p[1], from = tonumber(p[2]), to = tonumber(p[3]), seats = split(p[4], ',')}
end

local function occupancy()
  local n = tonumber(redis.call('HGET', K, 'n'))
  local fields = {}
  for s = 1, n do fields[s] = 's:' .. s end
  local raw = redis.call('HMGET', K, unpack(fields))
  local occ = {}
  for s = 1, n do occ[s] = tonumber(raw[s] or '0') or 0 end
  return occ, n
end

local function remaining_full(occ)
  local c = 0
  for _, m in ipairs(occ) do if m == 0 then c = c + 1 end end
  return c
end

-- A seat event, written once as the final WebSocket frame: kept in the topic's stream and
-- published on its channel (server processes forward the text as is). seq = ver.
local function publish(kind, seats, from, to)
  local ver = redis.call('HINCRBY', K, 'ver', 1)
  local occ = occupancy()
  local masks = {}
  for i, s in ipairs(seats) do masks[i] = occ[tonumber(s)] or 0 end
  local limits = {}
  local a = redis.call('HGETALL', ALLOC)
  for i = 1, #a, 2 do
    local what, ch = string.sub(a[i], 1, 1), string.sub(a[i], 3)
    limits[ch] = limits[ch] or {}
    if what == 'a' then limits[ch].allotment = tonumber(a[i + 1])
    elseif what == 'u' then limits[ch].in_use = tonumber(a[i + 1])
    elseif what == 'c' then limits[ch].cap = tonumber(a[i + 1])
    elseif what == 'x' then limits[ch].closed = true end
  end
  local channels = next(limits) and cjson.encode(limits) or '{}'
  local frame = '{"type":"event","topic":' .. cjson.encode('departure:' .. DEP) ..
    ',"seq":' .. ver .. ',"event":"seats","data":{"change":"' .. kind ..
    '","seats":[' .. table.concat(seats, ',') .. '],"masks":[' .. table.concat(masks, ',') ..
    '],"from_seq":' .. from .. ',"to_seq":' .. to .. ',"remaining":' .. remaining_full(occ) ..
    ',"status":' .. cjson.encode(redis.call('HGET', K, 'status')) ..
    ',"release_at":' .. (redis.call('HGET', K, 'release_at') or '0') ..
    ',"channels":' .. channels .. ',"at":' .. now_ms() .. '}}'
  redis.call('XADD', EV, 'MAXLEN', '~', EVENTS_KEPT, '*', 's', ver, 'f', frame)
  if redis.call('PTTL', EV) == -1 then
    local ttl = redis.call('PTTL', K)
    if ttl > 0 then redis.call('PEXPIRE', EV, ttl) end
  end
  redis.call('PUBLISH', 'ev:departure:' .. DEP, frame)
  return ver
end

local function free_seats(seats, mask, channel)
  for _, s in ipairs(seats) do
    local f = 's:' .. s
    local m = tonumber(redis.call('HGET', K, f) or '0')
    redis.call('HSET', K, f, bit.band(m, bit.bnot(mask)))
  end
  local left = redis.call('HINCRBY', ALLOC, 'u:' .. channel, -#seats)
  if left < 0 then redis.call('HSET', ALLOC, 'u:' .. channel, 0) end
end

-- Release every hold whose time is up; each is released by exactly one script run.
local function expire_due(now)
  local due = redis.call('ZRANGEBYSCORE', HEXP, '-inf', now)
  local released = {}
  for _, id in ipairs(due) do
    local v = redis.call('HGET', HOLDS, id)
    if v then
      local h = parse_hold(v)
      free_seats(h.seats, seg_mask(h.from, h.to), h.channel)
      redis.call('HDEL', HOLDS, id)
      released[#released + 1] = id
      publish('expired', h.seats, h.from, h.to)
    end
    redis.call('ZREM', HEXP, id)
  end
  return released
end

-- keys created after the load live as long as the departure's main key
local function keep_ttl()
  local pttl = redis.call('PTTL', K)
  if pttl > 0 then
    for _, key in ipairs({ALLOC, HOLDS, HEXP, SOLD}) do
      if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, pttl) end
    end
  end
end

local function next_expiry()
  local first = redis.call('ZRANGE', HEXP, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) end
  return 0
end

-- @@SCRIPT hold
-- ARGV: dep, hold_id, channel, from, to, ttl_ms, count, seats_csv ('' = choose),
--       limited ('0': the channel's allotments and caps do not apply, e.g. the window)
local hold_id, channel, limited = ARGV[2], ARGV[3], ARGV[9] ~= '0'

local from, to, ttl, count = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]),
                             tonumber(ARGV[7])
if redis.call('EXISTS', K) == 0 then return {'ERR', 'NOT_LOADED', ''} end
local now = now_ms()
local released = expire_due(now)
local existing = redis.call('HGET', HOLDS, hold_id)
if existing then  -- a retried hold: same answer, nothing taken twice
  local h = parse_hold(existing)
  return {'OK', table.concat(h.seats, ','), h.exp, tonumber(redis.call('HGET', K, 'ver')),
          table.concat(released, ','), 'EXISTING'}
end
if redis.call('HEXISTS', SOLD, hold_id) == 1 then return {'ERR', 'HOLD_ALREADY_SOLD', ''} end
if redis.call('HGET', K, 'status') ~= 'on_sale' then
  return {'ERR', 'DEPARTURE_STOPPED', redis.call('HGET', K, 'status')}
end
local segs = tonumber(redis.call('HGET', K, 'segs'))
if from < 0 or to > segs or from >= to then return {'ERR', 'BAD_SEGMENT', from .. '-' .. to} end
if redis.call('HEXISTS', ALLOC, 'x:' .. channel) == 1 then
  return {'ERR', 'CHANNEL_NOT_ALLOWED', channel}
end
local mask = seg_mask(from, to)
local occ, n = occupancy()
local free, nfree = {}, 0
for s = 1, n do
  if bit.band(occ[s], mask) == 0 then free[s] = true; nfree = nfree + 1 end
end
if count > nfree then return {'ERR', 'SOLD_OUT', tostring(nfree)} end

if limited then  -- the station's own window is never limited
  local used_me = tonumber(redis.call('HGET', ALLOC, 'u:' .. channel) or '0')
  local cap = redis.call('HGET', ALLOC, 'c:' .. channel)
  if cap and used_me + count > tonumber(cap) then
    return {'ERR', 'QUOTA_EXCEEDED', tostring(tonumber(cap) - used_me)}
  end
  local release_at = tonumber(redis.call('HGET', K, 'release_at') or '0')
  if now < release_at then  -- allotments still reserved for their channels
    local a = redis.call('HGETALL', ALLOC)
    local allot, used = {}, {}
    for i = 1, #a, 2 do
      local kind, ch = string.sub(a[i], 1, 1), string.sub(a[i], 3)
      if kind == 'a' then allot[ch] = tonumber(a[i + 1]) end
      if kind == 'u' then used[ch] = tonumber(a[i + 1]) end
    end
    local reserved_others = 0
    for ch, q in pairs(allot) do
      if ch ~= channel then
        local left = q - (used[ch] or 0)
        if left > 0 then reserved_others = reserved_others + left end
      end
    end
    if count > nfree - reserved_others then
      return {'ERR', 'ALLOTMENT_EXHAUSTED', tostring(math.max(0, nfree - reserved_others))}
    end
  end
end

local chosen = {}
local wanted = split(ARGV[8], ',')
if #wanted > 0 then
  if #wanted ~= count then return {'ERR', 'BAD_SEGMENT', 'seat count'} end
  for _, s in ipairs(wanted) do
    local seat = tonumber(s)
    if not seat or seat < 1 or seat > n or seat ~= math.floor(seat) then
      return {'ERR', 'NO_SUCH_SEAT', s}
    end
    if not free[seat] then return {'ERR', 'SEAT_TAKEN', s} end
    chosen[#chosen + 1] = seat
  end
else
  -- a group sits together: a run of adjacent numbers, preferring one that starts a pair
  -- (seats 2k-1, 2k sit side by side); a trip on part of the route prefers seats already
  -- used elsewhere on the route, so whole-route seats stay available (best fit)
  local function run_at(start)
    for s = start, start + count - 1 do if not free[s] then return false end end
    return true
  end
  local best = nil
  if count > 1 then
    for pass = 1, 2 do
      for start = 1, n - count + 1 do
        if (pass == 2 or start % 2 == 1) and run_at(start) then best = start; break end
      end
      if best then break end
    end
  end
  if best then
    for s = best, best + count - 1 do chosen[#chosen + 1] = s end
  else
    for pass = 1, 2 do
      for s = 1, n do
        if #chosen < count and free[s] and (pass == 2 or occ[s] ~= 0) then
          chosen[#chosen + 1] = s; free[s] = false
        end
      end
      if mask == seg_mask(0, segs) then break end  -- whole route: no best fit to look for
    end
    for s = 1, n do
      if #chosen < count and free[s] then chosen[#chosen + 1] = s; free[s] = false end
    end
  end
end

for _, s in ipairs(chosen) do
  redis.call('HSET', K, 's:' .. s, bit.bor(occ[s], mask))
end
redis.call('HINCRBY', ALLOC, 'u:' .. channel, count)
local exp = now + ttl
local seats_csv = table.concat(chosen, ',')
redis.call('HSET', HOLDS, hold_id, channel .. '|' .. exp .. '|' .. from .. '|' .. to .. '|' ..
           seats_csv)
redis.call('ZADD', HEXP, exp, hold_id)
keep_ttl()
local ver = publish('held', chosen, from, to)
return {'OK', seats_csv, exp, ver, table.concat(released, ','), 'NEW'}

-- @@SCRIPT release
-- ARGV: dep, hold_id
if redis.call('EXISTS', K) == 0 then return {'ERR', 'NOT_LOADED', ''} end
local v = redis.call('HGET', HOLDS, ARGV[2])
if not v then return {'OK', 0} end
local h = parse_hold(v)
free_seats(h.seats, seg_mask(h.from, h.to), h.channel)
redis.call('HDEL', HOLDS, ARGV[2])
redis.call('ZREM', HEXP, ARGV[2])
publish('released', h.seats, h.from, h.to)
return {'OK', 1}

-- @@SCRIPT sell
-- ARGV: dep, hold_id
if redis.call('EXISTS', K) == 0 then return {'ERR', 'NOT_LOADED', ''} end
local released = expire_due(now_ms())
local v = redis.call('HGET', HOLDS, ARGV[2])
if not v then
  local sold = redis.call('HGET', SOLD, ARGV[2])
  if sold then
    return {'OK', table.concat(parse_sale(sold).seats, ','), 'ALREADY', table.concat(released, ',')}
  end
  return {'ERR', 'HOLD_NOT_FOUND', table.concat(released, ',')}
end
local h = parse_hold(v)
redis.call('HDEL', HOLDS, ARGV[2])
redis.call('ZREM', HEXP, ARGV[2])
local seats_csv = table.concat(h.seats, ',')
redis.call('HSET', SOLD, ARGV[2], h.channel .. '|' .. h.from .. '|' .. h.to .. '|' .. seats_csv)
keep_ttl()
publish('sold', h.seats, h.from, h.to)
return {'OK', seats_csv, 'SOLD', table.concat(released, ',')}

-- @@SCRIPT unsell
-- ARGV: dep, sale_id, seats_csv: give sold seats back (a refund or a void)
if redis.call('EXISTS', K) == 0 then return {'ERR', 'NOT_LOADED', ''} end
local v = redis.call('HGET', SOLD, ARGV[2])
if not v then return {'OK', ''} end
local sale = parse_sale(v)
local giving, keep = {}, {}
local wanted = {}
for _, s in ipairs(split(ARGV[3], ',')) do wanted[s] = true end
for _, s in ipairs(sale.seats) do
  if wanted[s] then giving[#giving + 1] = s else keep[#keep + 1] = s end
end
if #giving == 0 then return {'OK', ''} end
free_seats(giving, seg_mask(sale.from, sale.to), sale.channel)
if #keep == 0 then
  redis.call('HDEL', SOLD, ARGV[2])
else
  redis.call('HSET', SOLD, ARGV[2], sale.channel .. '|' .. sale.from .. '|' .. sale.to .. '|' ..
             table.concat(keep, ','))
end
publish('returned', giving, sale.from, sale.to)
return {'OK', table.concat(giving, ',')}

-- @@SCRIPT expire
-- ARGV: dep. Releases due holds; returns their ids and the next expiry (0: none).
if redis.call('EXISTS', K) == 0 then return {'OK', '', 0} end
local released = expire_due(now_ms())
return {'OK', table.concat(released, ','), next_expiry()}

-- @@SCRIPT snapshot
-- ARGV: dep. Occupancy after releasing due holds: n, segs, status, ver, masks, held seats.
if redis.call('EXISTS', K) == 0 then return {'ERR', 'NOT_LOADED', ''} end
expire_due(now_ms())
local occ, n = occupancy()
local held = {}
local hv = redis.call('HVALS', HOLDS)
for _, v in ipairs(hv) do
  local h = parse_hold(v)
  for _, s in ipairs(h.seats) do held[#held + 1] = s .. ':' .. seg_mask(h.from, h.to) end
end
return {'OK', n, tonumber(redis.call('HGET', K, 'segs')), redis.call('HGET', K, 'status'),
        tonumber(redis.call('HGET', K, 'ver') or '0'), table.concat(occ, ','),
        table.concat(held, ','), tonumber(redis.call('HGET', K, 'release_at') or '0')}

-- @@SCRIPT configure
-- ARGV: dep, status, release_at, allotments json {ch: n}, caps json {ch: n}, closed json [ch]
if redis.call('EXISTS', K) == 0 then return {'ERR', 'NOT_LOADED', ''} end
redis.call('HSET', K, 'status', ARGV[2], 'release_at', ARGV[3])
local a = redis.call('HGETALL', ALLOC)
for i = 1, #a, 2 do
  if string.sub(a[i], 1, 2) ~= 'u:' then redis.call('HDEL', ALLOC, a[i]) end
end
for ch, q in pairs(cjson.decode(ARGV[4])) do redis.call('HSET', ALLOC, 'a:' .. ch, q) end
for ch, q in pairs(cjson.decode(ARGV[5])) do redis.call('HSET', ALLOC, 'c:' .. ch, q) end
for _, ch in ipairs(cjson.decode(ARGV[6])) do redis.call('HSET', ALLOC, 'x:' .. ch, 1) end
publish('configured', {}, 0, 0)
return {'OK', 1}

-- @@SCRIPT load
-- ARGV: dep, n, segs, status, release_at, expire_at_ms, allotments, caps, closed,
--       holds json [{id, channel, exp, from, to, seats}], sales json [{id, channel, from, to,
--       seats}]. Only when the departure is not loaded: of two loaders one wins, and the
--       loser changes nothing. Overlapping records are OR-ed: a seat any record claims
--       stays taken, so a rebuild can never sell a seat twice.
if redis.call('EXISTS', K) == 1 then return {'OK', 0} end
local n, segs = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local occ = {}
for s = 1, n do occ[s] = 0 end
local used = {}
local function claim(rec)
  local mask = seg_mask(rec.from, rec.to)
  for _, s in ipairs(rec.seats) do
    local seat = tonumber(s)
    if seat and seat >= 1 and seat <= n then occ[seat] = bit.bor(occ[seat], mask) end
  end
  used[rec.channel] = (used[rec.channel] or 0) + #rec.seats
end
for _, rec in ipairs(cjson.decode(ARGV[10])) do
  if rec.exp > now then
    claim(rec)
    redis.call('HSET', HOLDS, rec.id, rec.channel .. '|' .. rec.exp .. '|' .. rec.from .. '|' ..
               rec.to .. '|' .. table.concat(rec.seats, ','))
    redis.call('ZADD', HEXP, rec.exp, rec.id)
  end
end
for _, rec in ipairs(cjson.decode(ARGV[11])) do
  claim(rec)
  redis.call('HSET', SOLD, rec.id, rec.channel .. '|' .. rec.from .. '|' .. rec.to .. '|' ..
             table.concat(rec.seats, ','))
end
-- seq goes on from the topic's last kept event, so a client resuming never sees it go back
local last = redis.call('XREVRANGE', EV, '+', '-', 'COUNT', 1)
local ver = 0
if last[1] then ver = tonumber(last[1][2][2]) or 0 end
redis.call('HSET', K, 'n', n, 'segs', segs, 'status', ARGV[4], 'release_at', ARGV[5],
           'ver', ver)
for s = 1, n do redis.call('HSET', K, 's:' .. s, occ[s]) end
for ch, q in pairs(used) do redis.call('HSET', ALLOC, 'u:' .. ch, q) end
for ch, q in pairs(cjson.decode(ARGV[7])) do redis.call('HSET', ALLOC, 'a:' .. ch, q) end
for ch, q in pairs(cjson.decode(ARGV[8])) do redis.call('HSET', ALLOC, 'c:' .. ch, q) end
for _, ch in ipairs(cjson.decode(ARGV[9])) do redis.call('HSET', ALLOC, 'x:' .. ch, 1) end
local expire_at = tonumber(ARGV[6])
for _, key in ipairs({K, ALLOC, HOLDS, HEXP, SOLD, EV}) do
  if redis.call('EXISTS', key) == 1 then redis.call('PEXPIREAT', key, expire_at) end
end
return {'OK', 1}
