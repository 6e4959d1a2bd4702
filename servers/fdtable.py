"""Grow this process's file-descriptor table once, before it is timed.

Linux grows a process's descriptor table by doubling when a new descriptor does
not fit, and in a process with more than one thread (gevent's resolver pool and
monitor, grpcio's pollers, asyncio's executor) each growth waits for an RCU
grace period (`expand_fdtable` -> `synchronize_rcu`). Measured here with one
extra thread: `socket()` took 5-18 ms at the 256th, 512th, 1,024th and 2,048th
descriptor, under 1 ms otherwise; after `grow()`, one call over 1 ms (1.4 ms) in two runs
(results/published/fdtable-20261202.json, `python -m servers.fdtable`). A load
generator opening 2,000 connections, or a server accepting them, would show
those stalls as latency of the thing measured. The table never shrinks, so
growing it once to the open-files limit (a 20,000-entry table is ~160 KiB)
moves the stall to start-up.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
import threading
import time

CAP = 1 << 20  # never reserve more than this many entries (RLIM_INFINITY)


def grow(limit: int | None = None) -> int:
    """Size the descriptor table for `limit` descriptors (default: the soft
    open-files limit, at most `CAP`); returns the highest descriptor it fits, or -1
    when the table already holds it or the limit is too small to matter."""
    if limit is None:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        limit = CAP if soft == resource.RLIM_INFINITY else min(int(soft), CAP)
    top = limit - 1
    if top < 64:
        return -1
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        if fd >= top:
            return -1
        os.dup2(fd, top, inheritable=False)  # the kernel sizes the table to fit `top`
        os.close(top)
    finally:
        os.close(fd)
    return top


def _slow_sockets(count: int, threshold_s: float) -> list[tuple[int, float]]:
    """Open `count` sockets; (descriptor, ms) of each `socket()` slower than threshold."""
    socks: list[socket.socket] = []
    slow: list[tuple[int, float]] = []
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            s = socket.socket()
            dt = time.perf_counter() - t0
            socks.append(s)
            if dt > threshold_s:
                slow.append((s.fileno(), round(dt * 1e3, 2)))
    finally:
        for s in socks:
            s.close()
    return slow


def main() -> int:
    """Measure the stalls with and without `grow()`, each in a fresh process."""
    if len(sys.argv) > 1 and sys.argv[1] in ("plain", "grow"):
        done = threading.Event()
        threading.Thread(target=done.wait, daemon=True).start()  # share the table
        t0 = time.perf_counter()
        top = grow() if sys.argv[1] == "grow" else -1
        grow_ms = round((time.perf_counter() - t0) * 1e3, 2)
        count = min(4000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 100)
        print(json.dumps({"mode": sys.argv[1], "grow_ms": grow_ms, "table_top": top,
                          "sockets": count, "slow_over_1ms": _slow_sockets(count, 0.001)}))
        done.set()
        return 0
    import subprocess

    for mode in ("plain", "grow", "plain", "grow"):
        subprocess.run([sys.executable, "-m", "servers.fdtable", mode], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
