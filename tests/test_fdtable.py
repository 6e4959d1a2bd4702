"""servers.fdtable: the descriptor table is sized once, without holding a descriptor."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from servers import fdtable


def fd_size(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("FDSize:"):
            return int(line.split()[1])
    raise AssertionError("no FDSize in /proc/<pid>/status")


def run_child(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=30)
    return out.stdout.strip()


def test_grow_sizes_the_table_and_leaves_no_descriptor_open() -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limit = min(soft, 4096)
    code = (
        "import os; from servers import fdtable; from tests.test_fdtable import fd_size\n"
        "before = fd_size(); n = len(os.listdir('/proc/self/fd'))\n"
        f"top = fdtable.grow({limit})\n"
        "print(before, fd_size(), top, len(os.listdir('/proc/self/fd')) - n)\n"
    )
    before, after, top, extra = map(int, run_child(code).split())
    assert before < limit <= after
    assert top == limit - 1
    assert extra == 0


def test_grow_defaults_to_the_open_files_limit() -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    top = fdtable.grow()
    assert top in (-1, min(soft, fdtable.CAP) - 1)
    assert fd_size() >= min(soft, fdtable.CAP)
    assert not os.path.exists(f"/proc/self/fd/{min(soft, fdtable.CAP) - 1}")


def test_grow_does_nothing_below_a_useful_size() -> None:
    assert fdtable.grow(10) == -1


def test_a_server_grows_its_table_at_start(redis_server: object) -> None:
    """`rtbench serve` sizes its table before it accepts anything (FDSize of the process)."""
    from servers.testing import ServerProcess, free_port

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    proc = ServerProcess("ws", free_port(), args=["--broker", "memory"]).start()
    try:
        assert proc.proc is not None
        assert fd_size(proc.proc.pid) >= min(soft, fdtable.CAP)
    finally:
        proc.stop()
