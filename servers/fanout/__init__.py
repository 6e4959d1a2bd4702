"""Fanout layer: the Broker implementations (in-memory, Redis) behind servers.core.types.Broker."""

from __future__ import annotations

from servers.core.types import Broker


def make_broker(kind: str, redis_url: str | None = None, namespace: str = "rtb") -> Broker:
    """Build the broker named by `kind` ("memory" or "redis")."""
    if kind == "memory":
        from servers.fanout.memory import MemoryBroker

        return MemoryBroker()
    if kind == "redis":
        from servers.fanout.redis import RedisBroker

        if not redis_url:
            raise ValueError("the redis broker needs a URL (--redis-url / RTBENCH_REDIS_URL)")
        return RedisBroker(redis_url, namespace=namespace)
    raise ValueError(f"unknown broker {kind!r}; expected 'memory' or 'redis'")
