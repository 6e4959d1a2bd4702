"""One greenlet reads every event stream of the process: epoll plus non-blocking reads.

With a reader greenlet per connection, every read is a round trip through
gevent's hub: the reader waits on its socket's watcher, the hub polls, switches
to the reader, the reader reads and switches back. Profiled at 71,000 WebSocket
deliveries/s (200 subscribers, py-spy, 2026-12-02), that machinery (`Hub.run`
and `SocketMixin.recv` waiting) took about half of the load generator's CPU
(results/published/loadgen-stalls-20261202.json),
which then saturated before a WebSocket server core did (load generator 99 % at
105,000 deliveries/s, the two server replicas 90 %); at SSE's 32,000/s it was
96 % against the servers' 76 %. Here one greenlet waits on one epoll
descriptor, and for every ready stream reads it (`os.readv`: the socket is
already non-blocking under gevent) and hands the bytes to the stream's `Reader`;
while streams stay ready it polls again at once, and only goes back to the hub
when none is (or every `YIELD_US`, so timers and other greenlets run). The same-run
comparison with the per-connection readers, for long-poll: results/published/
longpoll-client-20261202.json (load-generator CPU per delivery 101 -> 43 µs,
canary p99 12.0 -> 1.8 ms at 5,000 deliveries/s).

A reader must not block for long: everything runs in the reactor's greenlet.
Sends from a handler (a WebSocket pong, HTTP/2 acks) are small; when one does
block, only reading pauses, other greenlets go on. A batch that has run for
`YIELD_US` lets the other greenlets (publishers, the canary) run before it goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
from typing import Any, Protocol

import gevent
from gevent.hub import get_hub
from gevent.monkey import get_original, is_module_patched

from loadgen.measure import now_us

log = logging.getLogger("rtbench.loadgen")

RECV_BYTES = 64 * 1024  # bounds one read's parsing (~500 small frames, ~2.5 ms): see YIELD_US
MAX_EVENTS = 1024
YIELD_US = 2_000


class Reader(Protocol):
    def data_received(self, data: bytes, recv_us: int) -> bool:
        """Bytes read from the stream at `recv_us`; False: stop reading it (it ended)."""

    def connection_lost(self, exc: Exception | None) -> None:
        """The stream ended: the peer closed it (None) or reading failed."""


class Reactor:
    """Reads the registered streams (`add`/`remove`) in one greenlet while any is open."""

    def __init__(self) -> None:
        self._ep: Any = None
        self._readers: dict[int, Reader] = {}
        self._greenlet: gevent.Greenlet | None = None

    def __len__(self) -> int:
        return len(self._readers)

    def add(self, fd: int, reader: Reader) -> None:
        if self._ep is None:
            # gevent's monkey-patching takes epoll out of `select`: the original it is
            epoll = get_original("select", "epoll") if is_module_patched("select") \
                else select.epoll
            self._ep = epoll()
        if fd in self._readers:
            raise ValueError(f"fd {fd} is read already")
        self._readers[fd] = reader
        self._ep.register(fd, select.EPOLLIN)
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    def remove(self, fd: int) -> None:
        """Stop reading `fd` (before closing it: the number may be reused); idempotent."""
        if self._readers.pop(fd, None) is not None and self._ep is not None:
            # closed already: the kernel dropped it from the epoll set
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(fd)

    def _run(self) -> None:
        ep = self._ep
        hub = get_hub()
        watcher = hub.loop.io(ep.fileno(), 1)
        readers = self._readers
        # one buffer for every read, copied out at the read's length: os.read(fd, 256 KiB)
        # allocates 256 KiB per call, 14.2 µs against 2.7 for readv into this (timeit,
        # 300-byte reads on a socketpair, 2026-12-02); gevent's recv pays the same
        buf = bytearray(RECV_BYTES)
        view = memoryview(buf)
        bufs = [buf]
        readv = os.readv
        try:
            began = now_us()
            while readers:
                ready = ep.poll(0, MAX_EVENTS)  # 0: never blocks
                if not ready:
                    hub.wait(watcher)  # nothing to read: the hub runs until a stream is
                    began = now_us()
                    continue
                for fd, _ in ready:
                    reader = readers.get(fd)
                    if reader is None:
                        continue
                    try:
                        n = readv(fd, bufs)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        self.remove(fd)
                        self._lost(reader, exc)
                        continue
                    t = now_us()
                    if not n:
                        self.remove(fd)
                        self._lost(reader, None)
                        continue
                    try:
                        keep = reader.data_received(view[:n].tobytes(), t)
                    except Exception as exc:  # a reader's bug must not stop the others
                        log.exception("stream reader failed; dropping fd %d", fd)
                        keep = False
                        self._lost(reader, exc)
                    if not keep:
                        self.remove(fd)
                    if t - began > YIELD_US:
                        # idle(), not sleep(0): sleep(0) resumes before timers run, so a
                        # canary due 10 ms later woke only 10 times in a second of such
                        # yields (worst lag 104 ms); with idle() 100 times, worst 2.2 ms
                        gevent.idle()
                        began = now_us()
        finally:
            watcher.close()
            self._greenlet = None

    @staticmethod
    def _lost(reader: Reader, exc: Exception | None) -> None:
        try:
            reader.connection_lost(exc)
        except Exception:
            log.exception("stream reader's connection_lost failed")


_reactor: Reactor | None = None


def reactor() -> Reactor:
    """This process's reactor."""
    global _reactor
    if _reactor is None:
        _reactor = Reactor()
    return _reactor
