"""Enter a network namespace from Python, and find the processes inside one.

Python 3.11 has no `os.setns`; libc's `setns(2)` through ctypes moves one *thread* into a
network namespace, and every socket that thread creates belongs to that namespace for
the socket's whole life, whichever thread uses it afterwards. `call_in` runs a callable in
a fresh thread that entered the namespace first, so the caller's own thread never moves.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from bench.network.errors import ElementFailed

CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def setns_current_thread(nsfile: str) -> None:
    """Move the calling thread into the network namespace `nsfile` (/proc/PID/fd/N, ns/net)."""
    fd = os.open(nsfile, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({nsfile}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in(nsfile: str, fn: Callable[..., T], args: tuple[Any, ...] = (),
            kwargs: dict[str, Any] | None = None, timeout: float | None = 60.0) -> T:
    """`fn(*args, **kwargs)` in a thread inside namespace `nsfile`; its result or its exception.

    Sockets `fn` creates (a listening socket, a connection, an HTTP request's) belong to the
    namespace and may be used from any thread afterwards. Raises TimeoutError if `fn` has
    not returned within `timeout` seconds (the thread is then left to finish by itself).
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            setns_current_thread(nsfile)
            box["result"] = fn(*args, **(kwargs or {}))
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"netns:{os.path.basename(nsfile)}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{getattr(fn, '__name__', fn)!s} did not return within {timeout} s "
                           f"in namespace {nsfile}")
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def ns_inode(nsfile: str) -> int:
    """The namespace's inode number: what `/proc/PID/ns/net` of its processes points at."""
    try:
        return os.stat(nsfile).st_ino
    except OSError as exc:
        raise ElementFailed(f"the network namespace {nsfile} is gone: {exc.strerror}") from exc


def pids_in(inodes: set[int], exclude: Collection[int] = ()) -> list[int]:
    """Live processes whose network namespace is one of `inodes` (zombies hold none)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                found.append(int(entry))
        except OSError:  # ended meanwhile, or a kernel thread
            continue
    return found


def holders_of(inodes: set[int]) -> list[int]:
    """Processes holding a descriptor of one of the namespaces `inodes` open (as delayd does)."""
    names = {f"net:[{i}]" for i in inodes}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in names:
                    found.append(int(entry))
                    break
            except OSError:
                continue
    return found


ELEMENT_MARK = b"RTBENCH_NET_ELEMENT="


def _is_element(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return len(argv) > 1 and os.path.basename(argv[0]).startswith(b"delayd") and argv[1] == b"serve"


def orphans() -> list[int]:
    """Processes started inside a network (by nsexec) whose delay element has ended.

    Their namespace outlived its owner (a command started with die_with_parent=False, or a
    child it forked, when the owner was killed); nsexec marks each command's
    environment with RTBENCH_NET_ELEMENT=<element pid>, inherited by its children (nsexec.c).
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        start = env.find(ELEMENT_MARK)
        if start < 0 or (start > 0 and env[start - 1] != 0):
            continue
        value = env[start + len(ELEMENT_MARK):].split(b"\0", 1)[0]
        if value.isdigit() and not _is_element(int(value)):
            found.append(int(entry))
    return found
