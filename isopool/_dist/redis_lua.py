"""The Lua scripts of RedisQueue: each state change of a job is one atomic script.

Kept apart from ``_redis_queue`` (the client API) because they are the protocol: every
script first checks the queue's epoch, and the ones a worker calls check that it still
owns the job's stream entry.

Every key a script touches is declared in KEYS; no script builds a key name. Redis
Cluster routes a script by its KEYS (and a script that touches another key is wrong
there: it may be on another node, and strict servers refuse it), and the tests run every
script behind a Lua prelude that refuses any command on an undeclared key. All of a
queue's keys share the hash tag ``{NAME}``, so every script's keys are in one slot. Where
a key depends on data only the server holds, the client reads first and the script
re-checks, or the script declares every candidate:

- START needs the job id of a stream entry, to name the job's hash. ``XREADGROUP``
  returns it with the entry; a claim of a stale entry reads it with ``XRANGE``. Stream
  entries are immutable, so the id cannot change in between; the script checks it
  anyway and refuses a mismatch.
- PROMOTE moves jobs whose ids the client read from the delayed and scheduled sets
  (``ZRANGEBYSCORE``); the script re-checks each id's score and status, so a job
  cancelled or promoted by another worker in between is skipped. A job's band is in its
  hash, so the script declares all ten band streams.
- REQUEUE likewise declares all ten band streams; a released job (FINISH) goes back to
  the stream its entry came from, which is always its band's.
- ENQUEUE with a unique key reads the key's holder first and passes the holder's hash;
  the script retries the read if the holder changed.
"""

from __future__ import annotations

from typing import Final

from .redis_common import LUA_EPOCH_CHECK
from .schedules import SCHEDULE_SCRIPTS

__all__ = ["SCRIPTS"]

# -- the server-side steps ------------------------------------------------------------
# Every script first checks the epoch (the server still has this queue's state), and
# the ones a worker calls check that it owns the job's entry in the pending list.
# Every script starts with KEYS[1] = the epoch key and ARGV[1] = the epoch.

_LUA_EPOCH = LUA_EPOCH_CHECK

# The helpers of the worker's scripts; they take every key they touch as an argument.
_LUA_WORKER = (
    _LUA_EPOCH
    + """
local function owns(stream, entry, consumer)
  local p = redis.call('XPENDING', stream, 'workers', entry, entry, 1)
  return p[1] ~= nil and p[1][2] == consumer
end
local function drop(stream, entry)
  redis.call('XACK', stream, 'workers', entry)
  redis.call('XDEL', stream, entry)
end
local function notify(done)
  redis.call('RPUSH', done, '1')
  redis.call('EXPIRE', done, 300)
end
local function dead(job, deadletters, done, id, reason, now)
  redis.call('HSET', job, 'status', 'dead', 'reason', reason, 'ended', now)
  redis.call('XADD', deadletters, '*', 'id', id, 'reason', reason, 'at', now)
  notify(done)
end
"""
)

# KEYS: epoch job stream(band) scheduled [unique held-job]
# ARGV: epoch id payload name band options now due_ms held unique_for_ms key
# A unique key holds the id of the job that owns it; the caller passes the id it read
# (``held``) and that job's hash, and the script takes the key only if it still holds
# that id and the holder is over: final, and ended at least unique_for ago.
_LUA_ENQUEUE = (
    _LUA_EPOCH
    + """
local id, now, due = ARGV[2], tonumber(ARGV[7]), tonumber(ARGV[8])
-- a client that lost the reply of its first try tries again: the job is in already
if redis.call('EXISTS', KEYS[2]) == 1 then return {'again', id} end
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

# KEYS: epoch stream job delayed dead done   (stream: the entry's band; job, done: its
# id's; the same KEYS as FINISH, though START touches no delayed set)
# ARGV: epoch entry consumer max_deliveries now claim_min_idle_ms(-1: no claim) id
# The caller read the job id from the entry (XREADGROUP gives it; a claim reads it with
# XRANGE first): stream entries never change, and the script checks it is the same.
# A run replies {'run', id, payload, options, name, attempts, retries}; only deliveries
# not ended by a committed retry (deliveries - retries) spend max_deliveries.
_LUA_START = (
    _LUA_WORKER
    + """
local stream, job, done = KEYS[2], KEYS[3], KEYS[6]
local entry, consumer, id, now = ARGV[2], ARGV[3], ARGV[7], ARGV[5]
if tonumber(ARGV[6]) >= 0 then
  local got = redis.call('XCLAIM', stream, 'workers', consumer, ARGV[6], entry)
  if #got == 0 then return {'lost'} end
end
local fields = redis.call('XRANGE', stream, entry, entry)
if #fields == 0 then redis.call('XACK', stream, 'workers', entry) return {'gone'} end
if fields[1][2][2] ~= id then
  return redis.error_reply('ISOPOOL_KEYS entry ' .. entry .. ' holds job ' .. fields[1][2][2])
end
local status = redis.call('HGET', job, 'status')
if not status or redis.call('HGET', job, 'entry') ~= entry or status == 'cancelled' then
  drop(stream, entry)
  return {'gone', id}
end
if redis.call('HGET', job, 'cancel') then
  drop(stream, entry)
  redis.call('HSET', job, 'status', 'cancelled', 'ended', now)
  notify(done)
  return {'gone', id}
end
-- A delivery that ended in a committed retry (the job raised) is not a crash: only
-- the others (the worker died, the lease expired) spend the crash budget.
local deliveries = redis.call('HINCRBY', job, 'deliveries', 1)
local retries = tonumber(redis.call('HGET', job, 'retries') or 0)
if deliveries - retries > tonumber(ARGV[4]) then
  drop(stream, entry)
  local lost = deliveries - retries - 1
  dead(job, KEYS[5], done, id, 'delivery-limit: ' .. lost .. ' deliveries lost to crashes', now)
  return {'dead', id}
end
local attempts = redis.call('HINCRBY', job, 'attempts', 1)
redis.call('HSET', job, 'status', 'running', 'owner', consumer, 'started', now)
local v = redis.call('HMGET', job, 'payload', 'options', 'name')
return {'run', id, v[1], v[2], v[3], tostring(attempts), tostring(retries)}
"""
)

# KEYS: epoch stream job   ARGV: epoch entry consumer
_LUA_RENEW = (
    _LUA_WORKER
    + """
if not owns(KEYS[2], ARGV[2], ARGV[3]) then return 0 end
redis.call('XCLAIM', KEYS[2], 'workers', ARGV[3], 0, ARGV[2], 'JUSTID')
if redis.call('HGET', KEYS[3], 'cancel') then return 2 end
return 1
"""
)

# KEYS: epoch stream job delayed dead done
# ARGV: epoch entry consumer id status kind result ttl retry_ms now reason
# status: done | failed | dead | cancelled | retry | release
# A released job goes back to the tail of the stream it came from: its band's.
_LUA_FINISH = (
    _LUA_WORKER
    + """
local stream, job, done = KEYS[2], KEYS[3], KEYS[6]
local entry, consumer, id, status = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not owns(stream, entry, consumer) then return 0 end
drop(stream, entry)
if status == 'retry' then
  -- reason 'raised': the job's own failure, retried; 'crashed': a lost delivery.
  if ARGV[11] == 'raised' then redis.call('HINCRBY', job, 'retries', 1) end
  redis.call('HSET', job, 'status', 'delayed', 'owner', '')
  redis.call('ZADD', KEYS[4], tonumber(ARGV[10]) + tonumber(ARGV[9]), id)
  return 1
end
if status == 'release' then
  redis.call('HINCRBY', job, 'deliveries', -1)
  redis.call('HINCRBY', job, 'attempts', -1)
  if tonumber(ARGV[9]) > 0 then
    -- handed back after retry_ms (signed with a key this worker lacks): not at the
    -- tail of the stream at once, where the same worker would fetch it in a hot loop
    redis.call('HSET', job, 'status', 'delayed', 'owner', '')
    redis.call('ZADD', KEYS[4], tonumber(ARGV[10]) + tonumber(ARGV[9]), id)
    return 1
  end
  local new = redis.call('XADD', stream, '*', 'id', id)
  redis.call('HSET', job, 'status', 'queued', 'owner', '', 'entry', new)
  return 1
end
redis.call('HSET', job, 'kind', ARGV[6], 'result', ARGV[7], 'owner', '', 'ended', ARGV[10])
if status == 'dead' then
  dead(job, KEYS[5], done, id, ARGV[11], ARGV[10])
else
  redis.call('HSET', job, 'status', status)
  notify(done)
end
redis.call('EXPIRE', job, tonumber(ARGV[8]))
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

# KEYS: epoch job stream0..stream9   ARGV: epoch id
# The job's band is only known server-side, so all ten band streams are declared.
_LUA_REQUEUE = (
    _LUA_EPOCH
    + """
local job = KEYS[2]
local status = redis.call('HGET', job, 'status')
if status ~= 'dead' and status ~= 'failed' and status ~= 'cancelled' then return 0 end
local band = tonumber(redis.call('HGET', job, 'band'))
local entry = redis.call('XADD', KEYS[3 + band], '*', 'id', ARGV[2])
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
