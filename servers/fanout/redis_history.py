"""Stream history in Redis: one Lua script per operation, so each is atomic.

Per stream (a topic such as `room:lobby` or `user:alice`), three keys sharing a
hash tag, so that a Redis Cluster keeps them on one node:

    <ns>:{<topic>}:seq     the stream's last offset
    <ns>:{<topic>}:hist    Stream of the recorded events (fields o=offset, d=event JSON),
                           trimmed to about `size` entries (XADD MAXLEN ~) and to
                           `ttl` of age (XTRIM MINID ~, from the server's TIME)
    <ns>:{<topic>}:epoch   random string naming this life of the stream

When a script finds no epoch, Redis lost the stream (restart without persistence,
eviction, expiry): it creates a fresh epoch and starts offsets again from zero, so
positions of the old life are recognisably stale. `hist` expires after `ttl` of
inactivity; `seq` and `epoch` after META_TTL (at least `ttl`): a stream idle that
long starts a new epoch, and a client resuming it gets a `gap` instead of a replay
of nothing. Offsets are contiguous (every offset has its XADD in the same script), so
the entries after `after` are the last `top - after` ones; the oldest one's `o`
field is checked anyway.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

META_TTL = 86_400  # seconds an idle stream keeps its offset counter and epoch

# KEYS seq hist epoch; ARGV epoch-if-missing, meta ttl (s)
_EPOCH = """
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('SET', KEYS[3], epoch, 'EX', ARGV[2])
end
"""

_NOW_MS = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

# ARGV[3..]: channel, event JSON object, size, ttl (ms). Returns {offset, epoch}.
# Scripts are not rolled back on error: the XADD, the one command that can fail
# (memory, a key of the wrong type), goes first, so a failed publish changes nothing.
PUBLISH = _EPOCH + _NOW_MS + """
local offset = tonumber(redis.call('GET', KEYS[1]) or '0') + 1
local payload = string.sub(ARGV[4], 1, -2) .. ',"offset":' .. offset ..
  ',"epoch":"' .. epoch .. '"}'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'o', offset, 'd', payload)
redis.call('SET', KEYS[1], offset, 'EX', ARGV[2])
redis.call('XTRIM', KEYS[2], 'MINID', '~', now_ms - tonumber(ARGV[6]))
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('PUBLISH', ARGV[3], payload)
return {offset, epoch}
"""

# Returns {offset, epoch}.
POSITION = _EPOCH + """
return {tonumber(redis.call('GET', KEYS[1]) or '0'), epoch}
"""

# ARGV[3..]: after, client epoch, limit, ttl (ms).
# Returns {top, epoch, gap reason or '', entries oldest first...}.
HISTORY = _EPOCH + """
local top = tonumber(redis.call('GET', KEYS[1]) or '0')
local after = tonumber(ARGV[3])
if epoch ~= ARGV[4] or after > top then return {top, epoch, 'epoch'} end
local n = top - after
if n == 0 then return {top, epoch, ''} end
if n > tonumber(ARGV[5]) then return {top, epoch, 'trimmed'} end
local got = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', n)
if #got < n or tonumber(got[n][2][2]) ~= after + 1 then return {top, epoch, 'trimmed'} end
""" + _NOW_MS + """
if tonumber(string.match(got[n][1], '^%d+')) < now_ms - tonumber(ARGV[6]) then
  return {top, epoch, 'trimmed'}
end
local out = {top, epoch, ''}
for i = n, 1, -1 do out[#out + 1] = got[i][2][4] end
return out
"""


@dataclass(frozen=True, slots=True)
class Script:
    text: str
    sha: str

    @classmethod
    def of(cls, text: str) -> Script:
        return cls(text, hashlib.sha1(text.encode()).hexdigest())


SCRIPTS = {name: Script.of(text) for name, text in
           (("publish", PUBLISH), ("position", POSITION), ("history", HISTORY))}


def stream_keys(prefix: str, topic: str) -> tuple[str, str, str]:
    """seq, hist and epoch keys of `topic`'s stream (one hash tag: one Cluster slot)."""
    base = f"{prefix}{{{topic}}}:"
    return base + "seq", base + "hist", base + "epoch"
