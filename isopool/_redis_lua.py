"""The Lua scripts of RedisQueue: each state change of a job is one atomic script.

Kept apart from ``_redis_queue`` (the client API) because they are the protocol: every
script first checks the queue's epoch, and the ones a worker calls check that it still
owns the job's stream entry. The older scripts (start, renew, finish, requeue) still
compute some keys from the prefix; enqueue, promote, cancel and the schedule scripts
declare every key in KEYS, as Redis Cluster needs.
"""

from __future__ import annotations

from typing import Final

from ._schedules import SCHEDULE_SCRIPTS

__all__ = ["SCRIPTS"]

# -- the server-side steps ------------------------------------------------------------
# Every script first checks the epoch (the server still has this queue's state), and
# the ones a worker calls check that it owns the job's entry in the pending list.

_LUA_PRELUDE = """
local prefix = ARGV[1]
local epoch = redis.call('GET', prefix .. ':epoch')
if epoch ~= ARGV[2] then return redis.error_reply('ISOPOOL_EPOCH queue state lost') end
local function owns(stream, entry, consumer)
  local p = redis.call('XPENDING', stream, 'workers', entry, entry, 1)
  return p[1] ~= nil and p[1][2] == consumer
end
local function drop(stream, entry)
  redis.call('XACK', stream, 'workers', entry)
  redis.call('XDEL', stream, entry)
end
local function notify(id)
  local key = prefix .. ':done:' .. id
  redis.call('RPUSH', key, '1')
  redis.call('EXPIRE', key, 300)
end
local function dead(job, id, reason, now)
  redis.call('HSET', job, 'status', 'dead', 'reason', reason, 'ended', now)
  redis.call('XADD', prefix .. ':dead', '*', 'id', id, 'reason', reason, 'at', now)
  notify(id)
end
"""

# The scripts below declare every key they touch in KEYS (Redis Cluster routes by them,
# and strict servers refuse undeclared keys); the client reads what it must first.
_LUA_EPOCH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('ISOPOOL_EPOCH queue state lost')
end
"""

# KEYS: epoch job stream(band) scheduled [unique held-job]
# ARGV: epoch id payload name band options now due_ms held unique_for_ms key
# A unique key holds the id of the job that owns it; the caller passes the id it read
# (``held``) and that job's hash, and the script takes the key only if it still holds
# that id and the holder is over: final, and ended at least unique_for ago.
_LUA_ENQUEUE = (
    _LUA_EPOCH
    + """
local id, now, due = ARGV[2], tonumber(ARGV[7]), tonumber(ARGV[8])
if #KEYS >= 5 then
  local held = redis.call('GET', KEYS[5]) or ''
  if held ~= ARGV[9] then return {'retry', held} end
  if held ~= '' then
    local v = redis.call('HMGET', KEYS[6], 'status', 'ended', 'unique_for')
    if v[1] then
      local final = v[1] == 'done' or v[1] == 'failed' or v[1] == 'dead' or v[1] == 'cancelled'
      if not final then return {'exists', held} end
      if tonumber(v[2] or 0) + tonumber(v[3] or 0) > now then return {'exists', held} end
    end
  end
  redis.call('SET', KEYS[5], id)
end
redis.call('HSET', KEYS[2], 'payload', ARGV[3], 'name', ARGV[4], 'band', ARGV[5],
  'options', ARGV[6], 'status', 'queued', 'deliveries', 0, 'attempts', 0, 'created', now,
  'unique_for', ARGV[10], 'key', ARGV[11])
if due > now then
  redis.call('HSET', KEYS[2], 'status', 'scheduled', 'due', due)
  redis.call('ZADD', KEYS[4], due, id)
  return {'scheduled', id}
end
local entry = redis.call('XADD', KEYS[3], '*', 'id', id)
redis.call('HSET', KEYS[2], 'entry', entry)
return {'queued', id}
"""
)

# ARGV: prefix epoch band entry consumer max_deliveries now claim_min_idle_ms(-1: no claim)
_LUA_START = (
    _LUA_PRELUDE
    + """
local stream = prefix .. ':jobs:' .. ARGV[3]
local entry, consumer = ARGV[4], ARGV[5]
if tonumber(ARGV[8]) >= 0 then
  local got = redis.call('XCLAIM', stream, 'workers', consumer, ARGV[8], entry)
  if #got == 0 then return {'lost'} end
end
local fields = redis.call('XRANGE', stream, entry, entry)
if #fields == 0 then redis.call('XACK', stream, 'workers', entry) return {'gone'} end
local id = fields[1][2][2]
local job = prefix .. ':job:' .. id
local status = redis.call('HGET', job, 'status')
if not status or redis.call('HGET', job, 'entry') ~= entry or status == 'cancelled' then
  drop(stream, entry)
  return {'gone', id}
end
if redis.call('HGET', job, 'cancel') then
  drop(stream, entry)
  redis.call('HSET', job, 'status', 'cancelled', 'ended', ARGV[7])
  notify(id)
  return {'gone', id}
end
-- A delivery that ended in a committed retry (the job raised) is not a crash: only
-- the others (the worker died, the lease expired) spend the crash budget.
local deliveries = redis.call('HINCRBY', job, 'deliveries', 1)
local retries = tonumber(redis.call('HGET', job, 'retries') or 0)
if deliveries - retries > tonumber(ARGV[6]) then
  drop(stream, entry)
  local lost = deliveries - retries - 1
  dead(job, id, 'delivery-limit: ' .. lost .. ' deliveries lost to crashes', ARGV[7])
  return {'dead', id}
end
local attempts = redis.call('HINCRBY', job, 'attempts', 1)
redis.call('HSET', job, 'status', 'running', 'owner', consumer, 'started', ARGV[7])
local v = redis.call('HMGET', job, 'payload', 'options', 'name')
return {'run', id, v[1], v[2], v[3], tostring(attempts), tostring(retries)}
"""
)

# ARGV: prefix epoch band entry consumer id
_LUA_RENEW = (
    _LUA_PRELUDE
    + """
local stream = prefix .. ':jobs:' .. ARGV[3]
if not owns(stream, ARGV[4], ARGV[5]) then return 0 end
redis.call('XCLAIM', stream, 'workers', ARGV[5], 0, ARGV[4], 'JUSTID')
if redis.call('HGET', prefix .. ':job:' .. ARGV[6], 'cancel') then return 2 end
return 1
"""
)

# ARGV: prefix epoch band entry consumer id status kind result ttl retry_ms now reason
# status: done | failed | dead | cancelled | retry | release
_LUA_FINISH = (
    _LUA_PRELUDE
    + """
local stream = prefix .. ':jobs:' .. ARGV[3]
local entry, consumer, id, status = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if not owns(stream, entry, consumer) then return 0 end
drop(stream, entry)
local job = prefix .. ':job:' .. id
if status == 'retry' then
  -- reason 'raised': the job's own failure, retried; 'crashed': a lost delivery.
  if ARGV[13] == 'raised' then redis.call('HINCRBY', job, 'retries', 1) end
  redis.call('HSET', job, 'status', 'delayed', 'owner', '')
  redis.call('ZADD', prefix .. ':delayed', tonumber(ARGV[12]) + tonumber(ARGV[11]), id)
  return 1
end
if status == 'release' then
  redis.call('HINCRBY', job, 'deliveries', -1)
  redis.call('HINCRBY', job, 'attempts', -1)
  if tonumber(ARGV[11]) > 0 then
    -- handed back after retry_ms (signed with a key this worker lacks): not at the
    -- tail of the stream at once, where the same worker would fetch it in a hot loop
    redis.call('HSET', job, 'status', 'delayed', 'owner', '')
    redis.call('ZADD', prefix .. ':delayed', tonumber(ARGV[12]) + tonumber(ARGV[11]), id)
    return 1
  end
  local band = redis.call('HGET', job, 'band')
  local new = redis.call('XADD', prefix .. ':jobs:' .. band, '*', 'id', id)
  redis.call('HSET', job, 'status', 'queued', 'owner', '', 'entry', new)
  return 1
end
redis.call('HSET', job, 'kind', ARGV[8], 'result', ARGV[9], 'owner', '', 'ended', ARGV[12])
if status == 'dead' then
  dead(job, id, ARGV[13], ARGV[12])
else
  redis.call('HSET', job, 'status', status)
  notify(id)
end
redis.call('EXPIRE', job, tonumber(ARGV[10]))
return 1
"""
)

# KEYS: epoch delayed scheduled stream0..stream9 job(id1) job(id2) ...
# ARGV: epoch now id1 id2 ...   (the ids the caller found due in either set)
# Retries (delayed) and scheduled jobs wait in two sets, so that each is counted apart;
# both become queued the same way, at the tail of their band.
_LUA_PROMOTE = (
    _LUA_EPOCH
    + """
local now, moved = tonumber(ARGV[2]), 0
for i = 3, #ARGV do
  local id, job = ARGV[i], KEYS[11 + i]
  local score = redis.call('ZSCORE', KEYS[2], id) or redis.call('ZSCORE', KEYS[3], id)
  if score and tonumber(score) <= now then
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    local v = redis.call('HMGET', job, 'status', 'band')
    if v[1] == 'delayed' or v[1] == 'scheduled' then
      local entry = redis.call('XADD', KEYS[4 + tonumber(v[2])], '*', 'id', id)
      redis.call('HSET', job, 'status', 'queued', 'entry', entry)
      moved = moved + 1
    end
  end
end
return moved
"""
)

# KEYS: epoch job delayed scheduled done
# ARGV: epoch id now
# A waiting job ends at once (and is kept for its result_ttl); a running one is flagged,
# and the worker that runs it sees the flag within a second and stops its process.
_LUA_CANCEL = (
    _LUA_EPOCH
    + """
local job = KEYS[2]
local status = redis.call('HGET', job, 'status')
if not status then return 'missing' end
if status == 'queued' or status == 'delayed' or status == 'scheduled' then
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('ZREM', KEYS[4], ARGV[2])
  redis.call('HSET', job, 'status', 'cancelled', 'ended', ARGV[3])
  local ok, options = pcall(cjson.decode, redis.call('HGET', job, 'options') or '{}')
  local ttl = ok and tonumber(options['result_ttl']) or 86400
  redis.call('EXPIRE', job, math.max(1, math.floor(ttl)))
  redis.call('RPUSH', KEYS[5], '1')
  redis.call('EXPIRE', KEYS[5], 300)
  return 'cancelled'
end
if status == 'running' then
  redis.call('HSET', job, 'cancel', '1')
  return 'cancelling'
end
return status
"""
)

# ARGV: prefix epoch id
_LUA_REQUEUE = (
    _LUA_PRELUDE
    + """
local id = ARGV[3]
local job = prefix .. ':job:' .. id
local status = redis.call('HGET', job, 'status')
if status ~= 'dead' and status ~= 'failed' and status ~= 'cancelled' then return 0 end
local band = redis.call('HGET', job, 'band')
local entry = redis.call('XADD', prefix .. ':jobs:' .. band, '*', 'id', id)
redis.call('HDEL', job, 'result', 'kind', 'reason', 'cancel', 'owner')
redis.call('HSET', job, 'status', 'queued', 'entry', entry, 'deliveries', 0, 'attempts', 0,
  'retries', 0)
redis.call('PERSIST', job)
return 1
"""
)

# KEYS: epoch unique job   ARGV: epoch id now
# Tidying only (the enqueue script's check is what decides): once the key's job is
# final, let the key expire when its unique_for ends, so keys do not pile up.
_LUA_UNIQUE_RELEASE = (
    _LUA_EPOCH
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
local v = redis.call('HMGET', KEYS[3], 'status', 'ended', 'unique_for')
local final = v[1] == 'done' or v[1] == 'failed' or v[1] == 'dead' or v[1] == 'cancelled'
if v[1] and not final then return 0 end
local left = tonumber(v[2] or 0) + tonumber(v[3] or 0) - tonumber(ARGV[3])
if not v[1] or left <= 0 then return redis.call('DEL', KEYS[2]) end
return redis.call('PEXPIRE', KEYS[2], math.floor(left))
"""
)

SCRIPTS: Final = {
    "enqueue": _LUA_ENQUEUE,
    "start": _LUA_START,
    "renew": _LUA_RENEW,
    "finish": _LUA_FINISH,
    "promote": _LUA_PROMOTE,
    "cancel": _LUA_CANCEL,
    "unique_release": _LUA_UNIQUE_RELEASE,
    "requeue": _LUA_REQUEUE,
    **SCHEDULE_SCRIPTS,
}
