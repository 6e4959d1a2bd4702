"""bench.network.build: the C helpers are compiled once into the cache, reused while their
source is unchanged, and a missing compiler is a clear BuildError (no namespaces needed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench.network import BuildError, NetworkUnavailable
from bench.network.build import binary, compiler

pytestmark = pytest.mark.timeout(60)


def test_compiled_once_then_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        compiler()
    except BuildError:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = binary("nsexec")
    assert first.parent == tmp_path / "rtbench" and first.name.startswith("nsexec-")
    stamp = first.stat().st_mtime_ns
    assert binary("nsexec") == first and first.stat().st_mtime_ns == stamp
    usage = subprocess.run([str(first)], capture_output=True, text=True, timeout=10, check=False)
    assert usage.returncode == 2 and "usage: nsexec" in usage.stderr
    assert [p.name for p in (tmp_path / "rtbench").iterdir()] == [first.name]  # no temp left


def test_no_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-cc")
    with pytest.raises(BuildError, match=r"no C compiler found .*apt-get install gcc") as info:
        binary("delayd")
    assert isinstance(info.value, NetworkUnavailable)  # the CLI's exit 2
    assert not any(os.scandir(tmp_path / "rtbench"))
