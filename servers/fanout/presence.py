"""Presence counters in Redis that heal when a replica dies: per-replica shares that expire.

A counter (`count_add(key, member, delta)`: how many connections of `member` a
replica holds in set `key`) is the sum of every replica's share. All keys share one
hash tag, so that every script below touches a single Redis Cluster slot:

    <ns>:{presence}:n:<key>      hash member -> total over the replicas (field deleted at 0)
    <ns>:{presence}:c:<replica>  hash "<key>\\n<member>" -> this replica's share
    <ns>:{presence}:replicas     sorted set replica id -> expiry time (Redis clock, ms)

Invariant, kept by every script: a total is the sum of the shares. A replica
refreshes its expiry every `ttl / 3`; every replica reaps those past their
expiry (`REAP`): in one script the dead replica leaves the set (so exactly one
reaper takes it), its shares are subtracted from the totals and deleted, and the
(key, member) pairs whose total reached zero are returned, for the reaper to
announce. A replica that was reaped while alive (cut from Redis, or frozen, for
longer than `ttl`; or Redis lost its data) notices it, as its refresh or its next
count finds its entry gone, and writes its shares again from its own record of
them (`SYNC`), which returns the pairs that came back.

Costs (measured on a busy 2-core machine): a count is one EVALSHA of about 9 us of
Redis CPU (4 us for the plain counter of presence_ttl 0); reaping a
replica is one script, O(its shares): about 0.1-0.2 s of Redis for 20 000 shares,
once per dead replica. The scripts reach keys they compute (the totals named in a
share's field): fine on one Redis, and on a Cluster only because every presence
key is in one slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NamedTuple

from servers.core.errors import BrokerUnavailable
from servers.core.types import CountChange, OnCountChange
from servers.fanout.redis_history import Script
from servers.fanout.resp import NoScriptError

log = logging.getLogger("rtbench.redis")

REAP_BATCH = 16  # dead replicas one reap script takes at most

# a Redis command through the broker's pipeline (RedisBroker._call)
Call = Callable[..., Awaitable[Any]]

SEP = "\n"  # between key and member in a share's field (no key or name contains it)

_NOW_MS = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

# KEYS total, share, replicas; ARGV member, delta, field, replica, ttl (ms).
# Returns {new total or -1, 1 if the replica is registered else 0}. A share never
# goes below zero: what it does not hold is not taken from the total (which other
# replicas' shares make up), and -1 says a decrement found nothing of this replica's
# (it was reaped meanwhile). An unregistered replica registers again and is told (0),
# so that it writes its other shares back.
COUNT_ADD = """
local delta = tonumber(ARGV[2])
local share = redis.call('HINCRBY', KEYS[2], ARGV[3], delta)
local applied = delta
if share <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[3])
  applied = delta - share
end
local n = -1
if applied ~= 0 or delta >= 0 then
  n = redis.call('HINCRBY', KEYS[1], ARGV[1], applied)
  if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) n = 0 end
end
if redis.call('ZSCORE', KEYS[3], ARGV[4]) then return {n, 1} end
""" + _NOW_MS + """
redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[5]), ARGV[4])
return {n, 0}
"""

# KEYS replicas; ARGV replica, ttl (ms). Returns 1 if it was registered, 0 if not
# (first call, reaped, or Redis lost it); registered until now + ttl either way.
REFRESH = """
local had = redis.call('ZSCORE', KEYS[1], ARGV[1])
""" + _NOW_MS + """
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
if had then return 1 end
return 0
"""

# KEYS replicas; ARGV presence prefix, max replicas per call, the caller (never reaped
# by itself: a replica whose own commands lag finds out at its next refresh).
# Returns {replicas reaped, field, field, ...}: the pairs whose total reached zero.
_SPLIT = """
local function split(f)
  local i = string.find(f, '\\n', 1, true)
  return string.sub(f, 1, i - 1), string.sub(f, i + 1)
end
"""
REAP = _SPLIT + _NOW_MS + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {0}
for _, replica in ipairs(dead) do
  if replica ~= ARGV[3] then
    out[1] = out[1] + 1
    redis.call('ZREM', KEYS[1], replica)
    local shares = ARGV[1] .. 'c:' .. replica
    local fields = redis.call('HGETALL', shares)
    for i = 1, #fields, 2 do
      local key, member = split(fields[i])
      local total = ARGV[1] .. 'n:' .. key
      local n = redis.call('HINCRBY', total, member, -tonumber(fields[i + 1]))
      if n <= 0 then
        redis.call('HDEL', total, member)
        out[#out + 1] = fields[i]
      end
    end
    redis.call('DEL', shares)
  end
end
return out
"""

# KEYS replicas, share; ARGV presence prefix, replica, ttl (ms), then field, count
# pairs: the replica's shares as they should be. Sets the shares to them, moves each
# total by the difference, registers the replica. Returns {field, 1 (total became
# positive) or 0 (total reached zero), ...}.
SYNC = _SPLIT + _NOW_MS + """
local diff = {}
local have = redis.call('HGETALL', KEYS[2])
for i = 1, #have, 2 do diff[have[i]] = -tonumber(have[i + 1]) end
for i = 4, #ARGV, 2 do diff[ARGV[i]] = (diff[ARGV[i]] or 0) + tonumber(ARGV[i + 1]) end
local out = {}
for f, d in pairs(diff) do
  if d ~= 0 then
    local key, member = split(f)
    local total = ARGV[1] .. 'n:' .. key
    local n = redis.call('HINCRBY', total, member, d)
    if n <= 0 then
      redis.call('HDEL', total, member)
      if n - d > 0 then out[#out + 1] = f out[#out + 1] = 0 end
    elseif n - d <= 0 then
      out[#out + 1] = f out[#out + 1] = 1
    end
  end
end
redis.call('DEL', KEYS[2])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[2])
return out
"""


_COUNT_ADD = Script.of(COUNT_ADD)


class Keys(NamedTuple):
    """The presence keys of one namespace (`prefix` is `<ns>:`)."""

    base: str  # <ns>:{presence}:

    @classmethod
    def of(cls, prefix: str) -> Keys:
        return cls(prefix + "{presence}:")

    def total(self, key: str) -> str:
        return self.base + "n:" + key

    def shares(self, replica: str) -> str:
        return self.base + "c:" + replica

    @property
    def replicas(self) -> str:
        return self.base + "replicas"


def field(key: str, member: str) -> str:
    return key + SEP + member


def unfield(raw: bytes | str) -> tuple[str, str]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    key, _, member = text.partition(SEP)
    return key, member


class Shares:
    """What this replica holds, as it should be in Redis: key -> member -> count.

    Updated when a count is issued (before Redis answers), so that it is the
    truth a SYNC writes back; pipelined in issue order, a SYNC's snapshot and
    the counts around it agree.
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, dict[str, int]] = {}

    def add(self, key: str, member: str, delta: int) -> None:
        members = self._counts.get(key)
        if members is None:
            if delta <= 0:
                return
            members = self._counts[key] = {}
        n = members.get(member, 0) + delta
        if n > 0:
            members[member] = n
        else:
            members.pop(member, None)
            if not members:
                del self._counts[key]

    def get(self, key: str, member: str) -> int:
        return self._counts.get(key, {}).get(member, 0)

    def flat(self) -> Iterator[str | int]:
        """field, count, field, count, ... (SYNC's arguments)."""
        for key, members in self._counts.items():
            for member, n in members.items():
                yield field(key, member)
                yield n

    def __len__(self) -> int:
        return sum(map(len, self._counts.values()))


class ReplicaPresence:
    """One replica's presence counts in Redis: its shares, its liveness entry, the reaper.

    `call` sends one command through the broker's pipeline (in call order, so that a
    SYNC's snapshot of the shares and the counts issued around it agree).
    """

    def __init__(self, call: Call, prefix: str, ttl: float) -> None:
        self._call = call
        self.keys = Keys.of(prefix)
        self.replica = uuid.uuid4().hex[:16]
        self.ttl = ttl
        self._ttl_ms = str(max(1, int(ttl * 1000)))
        self._shares = Shares()
        self._resync = False  # write the shares back at the next round
        self._wake = asyncio.Event()  # run the next round now
        self._task: asyncio.Task[None] | None = None
        self.on_counts: OnCountChange | None = None
        self.reaped = 0  # dead replicas this one reaped
        self.resyncs = 0  # times this replica wrote its shares back

    async def start(self) -> None:
        """Register (before any count), then refresh and reap every ttl / 3."""
        await self._call("SCRIPT", "LOAD", COUNT_ADD)
        await self._call("EVAL", REFRESH, 1, self.keys.replicas, self.replica, self._ttl_ms)
        self._task = asyncio.create_task(self._loop(), name="presence-liveness")

    async def stop(self, grace: float) -> None:
        """Stop refreshing and expire now: a peer reaps whatever shares are left (the
        hub closed its connections first; normally none) and announces them."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(BrokerUnavailable, TimeoutError):
            async with asyncio.timeout(grace):  # Redis may be down
                await self._call("ZADD", self.keys.replicas, "XX", 0, self.replica)

    async def count_add(self, key: str, member: str, delta: int) -> int:
        keys = self.keys
        self._shares.add(key, member, delta)
        args = (3, keys.total(key), keys.shares(self.replica), keys.replicas, member, delta,
                field(key, member), self.replica, self._ttl_ms)
        try:
            try:
                # EVALSHA: 8 us of Redis CPU per count instead of 11 (the script unhashed)
                n, registered = await self._call("EVALSHA", _COUNT_ADD.sha, *args)
            except NoScriptError:  # a restarted Redis: EVAL caches it again
                # the retry may land after a later count of the same member: SYNC settles it
                self._resync = True
                n, registered = await self._call("EVAL", _COUNT_ADD.text, *args)
        except BrokerUnavailable:
            self._resync = True  # it may or may not have been applied: SYNC knows
            raise
        if not registered:  # taken for dead (and reaped) while alive
            self._resync = True
            self._wake.set()
        return int(n)

    async def _loop(self) -> None:
        interval = self.ttl / 3  # a live replica misses two rounds before it expires
        while True:
            self._wake.clear()
            try:
                await self.round()
            except BrokerUnavailable as exc:
                log.debug("presence liveness round failed: %s", exc)
            except Exception:
                log.exception("presence liveness round failed")
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that
            # arrives as the wait ends, and stop() would then wait on this task forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()

    async def round(self) -> None:
        """Refresh this replica's expiry; write its shares back if it was taken for dead
        (or a count failed); reap the dead."""
        registered = await self._call("EVAL", REFRESH, 1, self.keys.replicas, self.replica,
                                      self._ttl_ms)
        if not registered or self._resync:
            await self.sync()
        await self.reap()

    async def sync(self) -> None:
        """Write this replica's shares as it holds them; announce the counters that moved."""
        keys = self.keys
        self._resync = False
        try:
            out = await self._call(
                "EVAL", SYNC, 2, keys.replicas, keys.shares(self.replica), keys.base,
                self.replica, self._ttl_ms, *self._shares.flat())
        except BaseException:
            self._resync = True
            raise
        self.resyncs += 1
        self._notify([CountChange(*unfield(out[i]), bool(out[i + 1]))
                      for i in range(0, len(out), 2)])

    async def reap(self) -> None:
        """Take dead replicas' shares off the counters; announce those that reached zero."""
        for _ in range(64):  # bounded: REAP_BATCH dead replicas per script
            reaped, *zeroed = await self._call("EVAL", REAP, 1, self.keys.replicas,
                                               self.keys.base, REAP_BATCH, self.replica)
            self.reaped += reaped
            self._notify([CountChange(*unfield(f), False) for f in zeroed])
            if reaped < REAP_BATCH - 1:  # (one of the batch may be this replica)
                return

    def _notify(self, changes: list[CountChange]) -> None:
        if changes and self.on_counts is not None:
            try:
                self.on_counts(changes)
            except Exception:
                log.exception("count-change callback failed")
