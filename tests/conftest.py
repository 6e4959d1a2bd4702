"""Shared fixtures: a private redis-server on a free port for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from servers.testing import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server (never the shared one on 6379), started by the fixture."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
