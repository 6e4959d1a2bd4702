"""Drive the delay element (delayd.c) from Python: start it, wait until ready, read counters.

The process is its own session (a Ctrl-C to the harness's process group does not end it
before the harness has stopped what runs in the namespaces); it ends when its stdin pipe
closes, which happens when this process ends however it ends (SIGKILL included), and
PR_SET_PDEATHSIG is a second guard. Every wait here has a deadline.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.network.errors import ElementFailed, NetworkUnavailable


class Element:
    """One running `delayd serve`: the holder of the two namespaces (and, with TUN, the link)."""

    def __init__(self, binary: Path, args: list[str]) -> None:
        self.argv = [str(binary), "serve", *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self.ns_fds: tuple[int, int] = (-1, -1)
        self._buf = b""
        self.stderr = ""  # what delayd wrote there, once stopped

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the element is not running"
        return self.proc.pid

    def nsfile(self, side: int) -> str:
        """The path that enters side 0 (client) or 1 (server): a descriptor delayd holds open."""
        return f"/proc/{self.pid}/fd/{self.ns_fds[side]}"

    def start(self, timeout: float = 10.0) -> None:
        """Start delayd and wait for its "ready" line; NetworkUnavailable with its reason if not."""
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        try:
            line = self._readline(timeout)
        except ElementFailed as exc:
            err = self._stop_and_stderr()
            raise NetworkUnavailable(
                f"the delay element could not make the namespaces and TUN devices: "
                f"{err or exc}") from None
        parts = line.split()
        if len(parts) != 4 or parts[0] != "ready" or int(parts[1]) != self.proc.pid:
            self._stop_and_stderr()
            raise ElementFailed(f"delayd said {line!r}, expected 'ready PID FD FD'")
        self.ns_fds = (int(parts[2]), int(parts[3]))

    def _readline(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ElementFailed(f"delayd said nothing within {timeout} s")
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise ElementFailed("delayd ended")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """The element's counters per direction (rx, tx, drops, lateness; see delayd.c)."""
        assert self.proc is not None and self.proc.stdin is not None
        if self.proc.poll() is not None:
            raise ElementFailed(f"delayd has ended (exit {self.proc.returncode}): "
                                f"{self._stop_and_stderr()}")
        self.proc.stdin.write(b"stats\n")
        self.proc.stdin.flush()
        return json.loads(self._readline(timeout))  # type: ignore[no-any-return]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _stop_and_stderr(self) -> str:
        self.stop()
        return self.stderr

    def stop(self, timeout: float = 5.0) -> None:
        """End delayd (quit, then SIGKILL after `timeout`) and reap it; idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.write(b"quit\n")
                proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stderr is not None and not proc.stderr.closed:
            self.stderr = proc.stderr.read().decode(errors="replace").strip()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None and not f.closed:
                f.close()
