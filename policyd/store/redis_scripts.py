"""The Redis store's server-side steps, in Lua: each write is one script, run atomically by Redis.

Every script touches only keys of one stream (one hash tag, one cluster slot),
all passed in ``KEYS``; they share the helpers of :data:`_COMMON`, prepended to
each. Time is the server's (``TIME``): Redis 5 and later replicate a script's
effects, not the script, so reading the clock before writing is allowed and a
replica sees exactly what the primary did.

The window model (see ``redis.py``): ``sec`` holds each second that counted
anything (score = the second), ``cum`` holds the stream's running total at the
end of each such second (member = the second), ``meta.floor`` the running total
before the oldest second kept. A window's count is the total minus the running
total at the last second before the window; the running totals grow with the
second, so "when has enough left the window" is one ``ZRANGEBYSCORE`` on them.

Replies are arrays ``{outcome, hour, day, room_at or nil, server_sec, server_usec}``
for the checks; integers for the records.
"""

from __future__ import annotations

_COMMON = r"""
local function num(v)
  if not v then return 0 end
  return tonumber(v)
end

local function cap(v)
  if v == '' then return nil end
  return tonumber(v)
end

-- The running total at the end of the last second before second w (the window's first).
local function base_before(sec, cum, meta, w)
  local r = redis.call('ZREVRANGEBYSCORE', sec, '(' .. w, '-inf', 'LIMIT', 0, 1)
  if #r == 0 then return num(redis.call('HGET', meta, 'floor')) end
  return tonumber(redis.call('ZSCORE', cum, r[1]))
end

local function stream_total(cum, meta)
  local r = redis.call('ZRANGE', cum, -1, -1, 'WITHSCORES')
  if #r == 0 then return num(redis.call('HGET', meta, 'floor')) end
  return tonumber(r[2])
end

-- Second s is in a window of span seconds at server second t while s >= t - span: every
-- message of the last span seconds is in, plus at most the rest of one second (never fewer).
local function window(sec, cum, meta, t, hour, day)
  local total = stream_total(cum, meta)
  return total, base_before(sec, cum, meta, t - hour), base_before(sec, cum, meta, t - day)
end

-- The first instant at which the seconds holding `need` recipients past `base` have left
-- a window of `span` seconds (false: the window does not hold that many).
local function room(cum, base, need, span)
  local r = redis.call('ZRANGEBYSCORE', cum, base + need, '+inf', 'LIMIT', 0, 1)
  if #r == 0 then return false end
  return tonumber(r[1]) + 1 + span
end

-- Drop the seconds that have left the day: the running total before what is kept moves to floor.
local function trim(sec, cum, meta, first_kept)
  local old = redis.call('ZREVRANGEBYSCORE', sec, '(' .. first_kept, '-inf', 'LIMIT', 0, 1)
  if #old > 0 then
    local floor = redis.call('ZSCORE', cum, old[1])
    redis.call('HSET', meta, 'floor', floor)
    redis.call('ZREMRANGEBYSCORE', sec, '-inf', '(' .. first_kept)
    redis.call('ZREMRANGEBYSCORE', cum, '-inf', floor)
  end
end

local function at_text(t, us)
  return string.format('%d.%06d', t, us)
end

-- Check both windows and count n recipients if they fit: the heart of admit and claim.
-- KEYS 1-3 are sec, cum, meta; the caps are '' for none.
local function check_add(n, hcap, dcap, hour, day, ttl)
  local clock = redis.call('TIME')
  local t, us = tonumber(clock[1]), tonumber(clock[2])
  local sec, cum, meta = KEYS[1], KEYS[2], KEYS[3]
  local total, bh, bd = window(sec, cum, meta, t, hour, day)
  local h, d = total - bh, total - bd
  if (hcap == nil or h + n <= hcap) and (dcap == nil or d + n <= dcap) then
    trim(sec, cum, meta, t - day)
    if n > 0 then
      redis.call('ZADD', sec, t, t)
      redis.call('ZADD', cum, total + n, t)
    end
    -- Nothing counted for a day: every window is empty, so the stream's keys may go.
    redis.call('EXPIRE', sec, ttl)
    redis.call('EXPIRE', cum, ttl)
    redis.call('EXPIRE', meta, ttl)
    return {'counted', h + n, d + n, false, t, us}
  end
  -- A cap of 0 (a paused ramp step) is over cap, not too large: it will open again.
  if (hcap and hcap > 0 and n > hcap) or (dcap and dcap > 0 and n > dcap) then
    return {'too_large', h, d, false, t, us}
  end
  if hcap and h + n > hcap then
    return {'over_hourly', h, d, room(cum, bh, h + n - hcap, hour), t, us}
  end
  return {'over_daily', h, d, room(cum, bd, d + n - dcap, day), t, us}
end

local function counts_now(hour, day)
  local clock = redis.call('TIME')
  local t, us = tonumber(clock[1]), tonumber(clock[2])
  local total, bh, bd = window(KEYS[1], KEYS[2], KEYS[3], t, hour, day)
  return total - bh, total - bd, t, us
end
"""

#: KEYS sec, cum, meta, record, queued (the queue id's stream mark); ARGV recipients, hourly cap,
#: daily cap, hour, day, window ttl, record ttl, queue id.
ADMIT = (
    _COMMON
    + r"""
local state = redis.call('HGET', KEYS[4], 'state')
local hour, day = tonumber(ARGV[4]), tonumber(ARGV[5])
if state then
  local h, d, t, us = counts_now(hour, day)
  local outcome = 'already_held'
  if state == 'counted' then outcome = 'already_counted' end
  return {outcome, h, d, false, t, us}
end
local n = tonumber(ARGV[1])
local r = check_add(n, cap(ARGV[2]), cap(ARGV[3]), hour, day, tonumber(ARGV[6]))
if r[1] == 'counted' then
  redis.call('HSET', KEYS[4], 'state', 'counted', 'recipients', n, 'at', at_text(r[5], r[6]), 'queue_id', ARGV[8])
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[7]))
  if ARGV[8] ~= '' then redis.call('SET', KEYS[5], '1', 'EX', tonumber(ARGV[7])) end
end
return r
"""
)

#: KEYS sec, cum, meta; ARGV hour, day. Reply {hour count, day count}.
WINDOWS = (
    _COMMON
    + r"""
local h, d = counts_now(tonumber(ARGV[1]), tonumber(ARGV[2]))
return {h, d}
"""
)

#: KEYS record, fam, famn, queued; ARGV queue id, rule, record ttl, day, window ttl, queued ttl.
#: Reply 1: first mark.
FAMILY_HOLD = (
    _COMMON
    + r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local clock = redis.call('TIME')
local t, us = tonumber(clock[1]), tonumber(clock[2])
redis.call('HSET', KEYS[1], 'state', 'family_hold', 'recipients', 0, 'at', at_text(t, us),
  'queue_id', ARGV[1], 'reason', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
if ARGV[1] ~= '' then redis.call('SET', KEYS[4], '1', 'EX', tonumber(ARGV[6])) end
-- The per-second family counts keep one day (what status shows); older seconds go one by one,
-- as a long idle gap can leave more of them than Lua may unpack at once.
local first_kept = t - tonumber(ARGV[4])
for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. first_kept)) do
  redis.call('HDEL', KEYS[3], s)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. first_kept)
redis.call('ZADD', KEYS[2], t, t)
redis.call('HINCRBY', KEYS[3], t, 1)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[5]))
return 1
"""
)

#: KEYS fam, famn; ARGV since (epoch seconds). Reply: family holds in the seconds from since on.
FAMILY_COUNT = r"""
local total = 0
local since = math.floor(tonumber(ARGV[1]))
for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf')) do
  total = total + tonumber(redis.call('HGET', KEYS[2], s) or '0')
end
return total
"""

#: KEYS record, held, heldrec, heldq; ARGV recipients, queue id, instance, host, heldq field, reason,
#: operators. Reply 1: first record.
RECORD_HOLD = (
    _COMMON
    + r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local clock = redis.call('TIME')
local at = at_text(tonumber(clock[1]), tonumber(clock[2]))
-- No expiry: mail on hold does not expire in Postfix, so neither does its record while held.
redis.call('HSET', KEYS[1], 'state', 'held', 'recipients', ARGV[1], 'at', at, 'queue_id', ARGV[2], 'host', ARGV[4],
  'reason', ARGV[6])
redis.call('ZADD', KEYS[2], at, ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3],
  'held\t' .. ARGV[2] .. '\t' .. ARGV[1] .. '\t' .. ARGV[4] .. '\t' .. ARGV[6] .. '\t' .. ARGV[7])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[4], ARGV[5], ARGV[3]) end
return 1
"""
)

#: KEYS sec, cum, meta, record, heldrec; ARGV queue id, instance, hourly cap, daily cap, hour, day,
#: window ttl, host.
CLAIM_RELEASE = (
    _COMMON
    + r"""
local hour, day = tonumber(ARGV[5]), tonumber(ARGV[6])
local state = redis.call('HGET', KEYS[4], 'state')
local queue_id, host = unpack(redis.call('HMGET', KEYS[4], 'queue_id', 'host'))
if queue_id ~= ARGV[1] or host ~= ARGV[8] or (state ~= 'held' and state ~= 'releasing') then
  local h, d, t, us = counts_now(hour, day)
  return {'not_held', h, d, false, t, us}
end
if state == 'releasing' then
  local h, d, t, us = counts_now(hour, day)
  return {'already_counted', h, d, false, t, us}
end
local n = tonumber(redis.call('HGET', KEYS[4], 'recipients'))
local r = check_add(n, cap(ARGV[3]), cap(ARGV[4]), hour, day, tonumber(ARGV[7]))
if r[1] == 'counted' then
  redis.call('HSET', KEYS[4], 'state', 'releasing')
  -- Only the state changes: the rest (queue id, recipients, host, reason, operators) stays.
  local rest = string.match(redis.call('HGET', KEYS[5], ARGV[2]) or '', '^[^\t]*(\t.*)$')
  if not rest then rest = '\t' .. ARGV[1] .. '\t' .. n .. '\t' .. ARGV[8] end
  redis.call('HSET', KEYS[5], ARGV[2], 'releasing' .. rest)
end
return r
"""
)

#: KEYS record, held, heldrec, heldq, queued; ARGV queue id, instance, final state, record ttl, host,
#: heldq field. Reply 1 when a held or releasing record was closed.
FINISH_RELEASE = r"""
local state, queue_id, host = unpack(redis.call('HMGET', KEYS[1], 'state', 'queue_id', 'host'))
if queue_id ~= ARGV[1] or host ~= ARGV[5] or (state ~= 'held' and state ~= 'releasing') then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
if redis.call('HGET', KEYS[4], ARGV[6]) == ARGV[2] then redis.call('HDEL', KEYS[4], ARGV[6]) end
-- Released mail is delivered from now on: the watcher still finds its stream (heldq no longer has it).
if ARGV[3] == 'released' and ARGV[1] ~= '' then redis.call('SET', KEYS[5], '1', 'EX', tonumber(ARGV[4])) end
return 1
"""
