"""`Network`: two network namespaces (client side, server side) joined by a shaped link.

    with Network("wan") as net:
        redis = Popen(net.server_cmd(["redis-server", "--port", "6379"]))
        server = Popen(net.server_cmd(["rtbench", "serve", "--host", "0.0.0.0", ...]))
        net.call_in_server(http_get, "http://127.0.0.1:8001/healthz")   # from this process
        locust = Popen(net.client_cmd(["locust", ..., "--servers",
                                       f"http://{net.server_addr}:8001"]))
        meta["network"] = net.describe()

The `loopback` profile makes no namespace: the prefixes are empty, `server_addr` is
127.0.0.1 and `call_in_*` call directly, so a harness has one code path. Any other profile
needs root and namespaces (and TUN for delayd) and raises `NetworkUnavailable` without
them, never quietly running on loopback.

Lifetime: the namespaces exist while delayd (which holds a descriptor of each) or any
process inside them lives. delayd ends with this process however it ends; commands started
through `client_cmd`/`server_cmd` (nsexec.c) get SIGKILL when the thread that started them ends
(PR_SET_PDEATHSIG: start them from the main thread or another long-lived one, or pass
`die_with_parent=False` and stop them yourself). `close()` also ends (SIGTERM, then SIGKILL)
whatever still runs inside, so nothing outlives the `with` block; and `start()` ends
what an earlier, killed owner's commands left running (their environment names an element
that has ended: `namespaces.orphans`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from bench.harness.cpu import cpu_seconds
from bench.network import namespaces, netem
from bench.network.build import delayd_path, nsexec_path
from bench.network.element import Element
from bench.network.errors import ElementFailed, NetworkError, NetworkUnavailable
from bench.network.profiles import Profile, get_profile

T = TypeVar("T")
# in 127.0.0.0/8: across the link inside the two namespaces (delayd.c narrows their lo and
# sets route_localnet), local everywhere else, so a socket opened on the wrong side by
# mistake reaches that namespace's own loopback and never leaves the machine
CLIENT_ADDR, SERVER_ADDR = "127.18.0.1", "127.18.0.2"
MECHANISMS = ("auto", "netem", "delayd")
# delayd may write a packet this much before it is due: its timer wake-ups come 35-45 us
# late on the 2-core VM, so waking this much early centres the error (mean +1 to +16 us
# instead of +35 to +42 us, measured at 200 and 5,000 datagrams/s on lan and wan)
WAKE_EARLY_US = 30


def delayd_args(profile: Profile, seed: int = 1, early_us: int | None = None) -> list[str]:
    """`delayd serve` options for one direction of `profile` (both directions alike)."""
    early = WAKE_EARLY_US if early_us is None else early_us
    args = ["--delay-us", str(round(profile.delay_ms * 1000)), "--early-us", str(early),
            "--jitter-us", str(round(profile.jitter_ms * 1000)),
            "--loss-ppm", str(round(profile.loss_pct * 10_000)),
            "--seed", str(seed), "--client-addr", CLIENT_ADDR, "--server-addr", SERVER_ADDR]
    if profile.bandwidth_mbit is not None:
        queue_ms = profile.effective_queue_ms or 0.0
        args += ["--rate-bps", str(round(profile.bandwidth_mbit * 1e6)),
                 "--queue-us", str(round(queue_ms * 1000))]
    return args


def check_capable(profile: Profile, mechanism: str) -> None:
    """Raise NetworkUnavailable, saying why, if this process cannot build `profile`'s link."""
    why = None
    if os.geteuid() != 0:
        why = "it needs root (it makes network namespaces and TUN devices)"
    elif not os.path.exists("/proc/self/ns/net"):
        why = "this kernel has no network namespaces"
    elif mechanism == "delayd" and not os.path.exists("/dev/net/tun"):
        why = "there is no /dev/net/tun (load the tun module: modprobe tun)"
    if why:
        raise NetworkUnavailable(f"network profile {profile.name!r} cannot run here: {why}; "
                                 "use the loopback profile instead")


def reap_orphans(grace: float = 2.0) -> list[int]:
    """End what a killed owner's networks left running (see `namespaces.orphans`)."""
    found = left = namespaces.orphans()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while left and time.monotonic() < deadline:
            left = [p for p in left if _running(p)]
            if left:
                time.sleep(0.01)
        if not left:
            break
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class Network:
    """A context manager: the namespaces and link of one profile (see the module docstring)."""

    def __init__(self, profile: Profile | str, *, mechanism: str = "auto", seed: int = 1,
                 ready_timeout: float = 10.0, element_cpus: Sequence[int] | None = None,
                 ) -> None:
        if mechanism not in MECHANISMS:
            raise NetworkError(f"mechanism must be one of {', '.join(MECHANISMS)}, "
                               f"got {mechanism!r}")
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.requested_mechanism = mechanism
        self.mechanism = "loopback" if self.profile.loopback else ""
        self.seed = seed
        self.ready_timeout = ready_timeout
        self.element_cpus = element_cpus  # where delayd runs (None: wherever it is put)
        self.call_timeout = 60.0  # call_in_*: TimeoutError if fn has not returned by then
        self.element: Element | None = None
        self.inodes: tuple[int, int] = (0, 0)
        self.swept: list[int] = []  # processes close() had to end
        self.reaped: list[int] = []  # earlier networks' leftovers start() ended
        self._binary = ""
        self._nsexec = ""
        self._rtt: dict[str, Any] | None = None

    @property
    def server_addr(self) -> str:
        """Where clients reach servers (which listen on it or 0.0.0.0 in the server side)."""
        return "127.0.0.1" if self.profile.loopback else SERVER_ADDR

    @property
    def client_addr(self) -> str:
        return "127.0.0.1" if self.profile.loopback else CLIENT_ADDR

    # ------------------------------------------------------------------ lifetime

    def __enter__(self) -> Network:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Make the namespaces and the link; NetworkUnavailable if this machine cannot."""
        if self.profile.loopback or self.element is not None:
            return
        mechanism = self.requested_mechanism
        if mechanism == "auto":
            mechanism = "netem" if os.geteuid() == 0 and netem.netem_available() else "delayd"
        check_capable(self.profile, mechanism)
        self.reaped = reap_orphans()
        if mechanism == "netem" and not netem.netem_available():
            raise NetworkUnavailable("the netem mechanism was asked for, but this kernel has "
                                     "no netem qdisc")
        self.mechanism = mechanism
        self._binary = str(delayd_path())
        self._nsexec = str(nsexec_path())
        args = (delayd_args(self.profile, self.seed) if mechanism == "delayd"
                else ["--no-tun", "--client-addr", CLIENT_ADDR, "--server-addr", SERVER_ADDR])
        self.element = Element(Path(self._binary), args)
        self.element.start(self.ready_timeout)
        try:
            if self.element_cpus is not None:
                os.sched_setaffinity(self.element.pid, set(self.element_cpus))
            self.inodes = (namespaces.ns_inode(self.element.nsfile(0)),
                           namespaces.ns_inode(self.element.nsfile(1)))
            if mechanism == "netem":
                netem.set_up(self.profile, self.element.pid, (CLIENT_ADDR, SERVER_ADDR),
                             lambda side, argv: self._cmd(side, argv, die_with_parent=True))
        except BaseException:
            self.close()
            raise

    def close(self, grace: float = 3.0) -> None:
        """End what still runs inside (SIGTERM, SIGKILL after `grace` s), then delayd."""
        element = self.element
        if element is None:
            return
        try:
            if self.inodes != (0, 0):
                self._sweep(grace)
        finally:
            element.stop()
            self.element = None
        # a command started just before close() may have entered after the first sweep;
        # with delayd gone nothing new can enter, so this one is the last
        if self.inodes != (0, 0):
            self._sweep(grace)

    def _sweep(self, grace: float) -> None:
        own = {os.getpid()} | ({self.element.pid} if self.element is not None else set())
        pids = namespaces.pids_in(set(self.inodes), exclude=own)
        if not pids:
            return
        self.swept.extend(pids)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                pids = namespaces.pids_in(set(self.inodes), exclude=own)
                if not pids:
                    return
                time.sleep(0.01)

    # ------------------------------------------------------------------ using it

    def _nsfile(self, side: int) -> str:
        if self.element is None or not self.element.alive():
            raise ElementFailed(f"the {self.profile.name!r} network is not running "
                                "(used outside its with block, or delayd ended)")
        return self.element.nsfile(side)

    def _cmd(self, side: int, argv: Sequence[str], die_with_parent: bool) -> list[str]:
        if self.profile.loopback:
            return list(argv)
        flags = ["--die-with-parent"] if die_with_parent else []
        return [self._nsexec, self._nsfile(side), *flags, "--", *argv]

    def client_cmd(self, argv: Sequence[str], *, die_with_parent: bool = True) -> list[str]:
        """`argv` prefixed to run in the client side (argv itself on loopback)."""
        return self._cmd(0, argv, die_with_parent)

    def server_cmd(self, argv: Sequence[str], *, die_with_parent: bool = True) -> list[str]:
        """`argv` prefixed to run in the server side (argv itself on loopback)."""
        return self._cmd(1, argv, die_with_parent)

    def _call(self, side: int, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        if self.profile.loopback:
            return fn(*args, **kwargs)
        return namespaces.call_in(self._nsfile(side), fn, args, kwargs, self.call_timeout)

    def call_in_server(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` with the server side's network (sockets it opens stay there).

        How this process reaches a server's /healthz or /metrics:
        `net.call_in_server(http_get, "http://127.0.0.1:8001/metrics")`.
        """
        return self._call(1, fn, args, kwargs)

    def call_in_client(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` with the client side's network."""
        return self._call(0, fn, args, kwargs)

    def stats(self) -> dict[str, Any] | None:
        """delayd's counters per direction (packets, drops, lateness) and its CPU seconds so
        far (`cpu_s`: count it beside the load generator); None on other mechanisms."""
        if self.mechanism != "delayd" or self.element is None:
            return None
        out = self.element.stats()
        out["cpu_s"] = cpu_seconds(self.element.pid)
        return out

    def rtt(self, count: int = 10) -> dict[str, Any]:
        """The achieved RTT of a TCP ping-pong across the link (ms), sampled once and kept."""
        if self._rtt is None:
            from bench.network.probe import summarize, tcp_rtts

            samples = tcp_rtts(self, count)
            self._rtt = {"method": f"TCP ping-pong, 1 byte, {count} round trips",
                         **summarize([s * 1e3 for s in samples])}
        return self._rtt

    def describe(self, rtt_samples: int = 10) -> dict[str, Any]:
        """What meta.json records: the profile, the mechanism and an achieved RTT sample."""
        out: dict[str, Any] = {"profile": self.profile.to_dict(), "mechanism": self.mechanism,
                               "client_addr": self.client_addr, "server_addr": self.server_addr,
                               "element_cpus": (None if self.element_cpus is None
                                                else sorted(self.element_cpus))}
        if not self.profile.loopback and self.element is not None:
            out["requested_rtt_ms"] = self.profile.rtt_ms
            out["achieved_rtt_ms"] = self.rtt(rtt_samples)
            out["element"] = self.stats()
        return out
