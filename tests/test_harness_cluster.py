"""bench/harness/cluster.py with real server processes: the stack a cluster is asked for is
the stack its replicas run, carried in their environment (never as a --stack flag, which a
`rtbench regress` base revision may not know), and checked in their `Server` header."""

from __future__ import annotations

import pytest

from bench.harness.cluster import Cluster


def _cmd(cluster: Cluster) -> list[str]:
    return [str(a) for a in cluster.nodes[0].proc.args]  # type: ignore[union-attr]


def test_a_cluster_runs_the_stack_it_was_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTBENCH_STACK", "aiohttp")  # the caller's environment says aiohttp
    with Cluster("ws", broker="memory", cpu=None, stack="starlette") as cluster:
        assert "uvicorn" in (cluster.nodes[0].server or "")
        assert "--stack" not in _cmd(cluster)
    monkeypatch.delenv("RTBENCH_STACK")
    with Cluster("sse", broker="memory", cpu=None, stack="aiohttp") as cluster:
        assert "aiohttp/" in (cluster.nodes[0].server or "")
        assert "--stack" not in _cmd(cluster)


def test_without_a_stack_the_environment_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTBENCH_STACK", "aiohttp")
    with Cluster("longpoll", broker="memory", cpu=None) as cluster:
        assert "aiohttp/" in (cluster.nodes[0].server or "")


def test_grpc_runs_on_grpcio_whatever_the_stack_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTBENCH_STACK", raising=False)
    with Cluster("grpc", broker="memory", cpu=None, stack="grpcio") as cluster:
        assert cluster.nodes[0].url.startswith("grpc://")
        assert cluster.nodes[0].proc.poll() is None


def test_a_replica_on_another_stack_is_refused_not_mislabelled() -> None:
    # the flag wins over the environment: the replica runs aiohttp while starlette was asked
    cluster = Cluster("ws", broker="memory", cpu=None, stack="starlette",
                      server_args=["--stack", "aiohttp"])
    with pytest.raises(RuntimeError, match="not the starlette stack"):
        cluster.start()
    assert cluster.nodes == []  # and nothing left running
