"""Fanout layer: the Broker implementations (in-memory, Redis) behind servers.core.types.Broker."""

from __future__ import annotations

from servers.core.types import Broker


def make_broker(kind: str, redis_url: str | None = None, namespace: str = "rtb",
                inject_work_us: float | None = None, presence_ttl: float = 30.0) -> Broker:
    """Build the broker named by `kind` ("memory" or "redis").

    `presence_ttl`: seconds after which a dead replica's presence counts expire (Redis;
    0: never). See docs/protocol.md 6.1.

    `inject_work_us` (None: the RTBENCH_INJECT_WORK_US setting) is the perf-regression
    detector's slowdown knob (servers/fanout/slowdown.py); 0 leaves the broker as is.
    """
    from servers.fanout.slowdown import wrap

    if inject_work_us is None:
        from servers.settings import from_env

        inject_work_us = from_env().inject_work_us
    return wrap(_make(kind, redis_url, namespace, presence_ttl), inject_work_us)


def _make(kind: str, redis_url: str | None, namespace: str, presence_ttl: float) -> Broker:
    if kind == "memory":
        from servers.fanout.memory import MemoryBroker

        return MemoryBroker()
    if kind == "redis":
        from servers.fanout.redis import RedisBroker

        if not redis_url:
            raise ValueError("the redis broker needs a URL (--redis-url / RTBENCH_REDIS_URL)")
        return RedisBroker(redis_url, namespace=namespace, presence_ttl=presence_ttl)
    raise ValueError(f"unknown broker {kind!r}; expected 'memory' or 'redis'")
