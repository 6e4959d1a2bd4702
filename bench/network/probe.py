"""Measure a `Network` from this process: TCP ping-pong RTT, UDP echo, TCP bulk goodput.

Both ends run here: the server end's socket is opened in the server side
(`net.call_in_server`), the client end's in the client side, and each probe's echo or sink
runs in a thread. Every wait has a socket timeout and every loop a count or a deadline.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import struct
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.network.network import Network

_UDP = struct.Struct("!Qd")  # sequence number, send time (perf_counter)
# struct tcp_info (linux/tcp.h): tcpi_rtt (us) at offset 68, tcpi_bytes_acked at 120
_TCP_INFO_RTT = struct.Struct("=68xI")
_TCP_INFO_ACKED = struct.Struct("=120xQ")


def _tcp_state(sock: socket.socket) -> tuple[int, int]:
    """The connection's congestion state (0: open) and the bytes acknowledged so far."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return info[1], int(_TCP_INFO_ACKED.unpack_from(info)[0])


def summarize(values: list[float]) -> dict[str, Any]:
    """count, min, p50, p90, p99, max and mean of `values` (None when empty)."""
    if not values:
        return {"count": 0, "min": None, "p50": None, "p90": None, "p99": None, "max": None,
                "mean": None}
    s = sorted(values)

    def pct(q: float) -> float:
        return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]

    return {"count": len(s), "min": s[0], "p50": statistics.median(s), "p90": pct(0.90),
            "p99": pct(0.99), "max": s[-1], "mean": statistics.fmean(s)}


@contextlib.contextmanager
def _thread(target: Any) -> Iterator[None]:
    t = threading.Thread(target=target, daemon=True)
    t.start()
    try:
        yield
    finally:
        t.join(10)


def tcp_rtts(net: Network, count: int, payload: int = 1, interval: float = 0.0,
             timeout: float = 10.0) -> list[float]:
    """`count` round trips of `payload` bytes over one TCP connection, in seconds each."""
    listener = net.call_in_server(socket.create_server, (net.server_addr, 0))
    port = listener.getsockname()[1]
    listener.settimeout(timeout)

    def echo() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(timeout)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for _ in range(count + 1):
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)

    rtts: list[float] = []
    with listener, _thread(echo):
        client = net.call_in_client(socket.create_connection, (net.server_addr, port), timeout)
        with client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            message = b"x" * payload
            for _ in range(count):
                t0 = time.perf_counter()
                client.sendall(message)
                got = 0
                while got < payload:
                    chunk = client.recv(payload - got)
                    if not chunk:
                        raise ConnectionError("the echo closed the connection")
                    got += len(chunk)
                rtts.append(time.perf_counter() - t0)
                if interval:
                    time.sleep(interval)
    return rtts


def udp_echo(net: Network, rate: float, seconds: float, size: int = 64,
             linger: float | None = None) -> dict[str, Any]:
    """Open-loop UDP echo: `rate` datagrams/s for `seconds`; RTTs (s) of those that came back.

    Each datagram carries its sequence number and send time, so a lost one is simply
    missing; `linger` (default: 1 s + 3x the requested RTT) waits for the last echoes.
    """
    if linger is None:
        linger = 1.0 + 3 * net.profile.rtt_ms / 1e3
    size = max(size, _UDP.size)
    server = net.call_in_server(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((net.server_addr, 0))
    server.settimeout(0.2)
    client = net.call_in_client(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    client.connect((net.server_addr, server.getsockname()[1]))
    client.settimeout(0.2)
    stop = threading.Event()
    rtts: list[float] = []
    seen: set[int] = set()

    def echo() -> None:
        while not stop.is_set():
            try:
                data, addr = server.recvfrom(65536)
                server.sendto(data, addr)
            except TimeoutError:
                continue
            except OSError:
                return

    def receive() -> None:
        while not stop.is_set():
            try:
                data = client.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.perf_counter()
            seq, sent = _UDP.unpack_from(data)
            if seq not in seen:
                seen.add(seq)
                rtts.append(now - sent)

    total = max(1, round(rate * seconds))
    pad = b"\0" * (size - _UDP.size)
    with server, client, _thread(echo), _thread(receive):
        start = time.perf_counter()
        try:
            for seq in range(total):
                due = start + seq / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                client.send(_UDP.pack(seq, time.perf_counter()) + pad)
            wall = time.perf_counter() - start
            deadline = time.monotonic() + linger
            while len(seen) < total and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
    return {"sent": total, "received": len(seen), "lost": total - len(seen),
            "send_seconds": wall, "rtts": rtts}


def tcp_goodput(net: Network, seconds: float, skip: float = 1.0) -> dict[str, Any]:
    """Bulk TCP client -> server for `seconds`: payload bits/s acknowledged in a steady window.

    Counted by the sender's kernel (TCP_INFO's bytes_acked), not by the receiving
    application, whose read backlog (up to its socket buffer) would shift bytes between
    windows; and only between moments when the connection is not recovering from a loss
    (after slow start overflows the bottleneck's queue, the data held beyond a hole is
    acknowledged all at once when the hole is filled). The window starts after `skip` s.
    """
    listener = net.call_in_server(socket.create_server, (net.server_addr, 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    got = [0]

    def sink() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                deadline = time.monotonic() + seconds + 10
                while time.monotonic() < deadline:
                    n = len(conn.recv(1 << 20))
                    if not n:
                        return
                    got[0] += n

    block = b"\0" * (1 << 16)
    first: tuple[float, int] | None = None
    last: tuple[float, int] | None = None
    with listener, _thread(sink):
        client = net.call_in_client(socket.create_connection, (net.server_addr, port), 10)
        with client:
            client.settimeout(10)
            start = time.perf_counter()
            end = start + max(seconds, skip + 1.0)
            while time.perf_counter() < end:
                client.sendall(block)
                now = time.perf_counter()
                if now - start < skip:
                    continue
                state, acked = _tcp_state(client)
                if state == 0:  # TCP_CA_Open: no holes at the receiver, nothing in recovery
                    if first is None:
                        first = (now, acked)
                    last = (now, acked)
            srtt = _TCP_INFO_RTT.unpack_from(client.getsockopt(socket.IPPROTO_TCP,
                                                                 socket.TCP_INFO, 256))[0]
    marks = [m for m in (first, last) if m is not None]
    if len(marks) < 2:
        return {"bits_per_s": None, "bytes": got[0]}
    (t0, b0), (t1, b1) = marks
    if t1 - t0 < 0.5:
        return {"bits_per_s": None, "bytes": got[0]}
    return {"bits_per_s": (b1 - b0) * 8 / (t1 - t0), "bytes": got[0], "window_s": t1 - t0,
            "smoothed_rtt_ms": srtt / 1e3}
