"""Open-loop publishing: a fixed schedule that never waits for deliveries (wrk2's rule).

Send k is *intended* at ``start + k / rate`` and its payload stamp carries that
intended time, so latency is counted from when the message should have left.
If a send blocks (TCP buffer full, a paused server, every HTTP slot busy) the
schedule does not move: the late sends go out back to back as soon as possible
and their latency includes the wait. A stalled system cannot hide its own delay
by slowing the load down (coordinated omission).

Two kinds of lateness are recorded apart:
- `schedule_lag`: the loop slept until t_k and woke late. Only the load
  generator's own starvation does that; it feeds the saturation check.
- `publish_blocked`: time spent blocked in a send (or waiting for a free HTTP
  slot). That is backpressure from the system under test, not generator trouble.
"""

from __future__ import annotations

from collections.abc import Callable

import gevent
from gevent.event import Event
from gevent.pool import Pool

from loadgen.clients.base import ClientError
from loadgen.delivery import PublisherLog
from loadgen.measure import build_payload, now_us
from loadgen.recorder import Recorder

BLOCKED_MIN_US = 1_000  # sends quicker than this are not "blocked"
# gevent's timers fire up to ~1 ms late; the last stretch before a send is spent
# yielding in a loop instead (other greenlets still run), so the sub-millisecond
# latency floor is not swamped by timer slack. Only at intervals of SPIN_MIN_INTERVAL_US
# and more: at 250 sends/s the spin would keep the process busy 37 % of the time.
SPIN_US = 1_500
SPIN_MIN_INTERVAL_US = 10_000


class Schedule:
    """Intended send times in wall-clock microseconds: a rate that may change.

    Each `set_rate` starts a new segment at the first send not yet due under the
    old rate, so the schedule stays monotonic and never depends on what was sent
    (the capacity ramp raises the rate step by step; loadgen.steps).
    """

    __slots__ = ("_segments", "rate", "until_us")

    def __init__(self, start_us: int, rate: float, until_us: int = 1 << 62) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        # (first send k, its time, rate) per rate in force; a change only adds one
        self._segments: list[tuple[int, int, float]] = [(0, start_us, rate)]
        self.rate = rate  # sends per second now
        self.until_us = until_us  # no send is due at or after this

    @property
    def start_us(self) -> int:
        return self._segments[0][1]

    def intended(self, k: int) -> int:
        for k0, start, rate in reversed(self._segments):
            if k >= k0:
                return start + round((k - k0) * 1_000_000 / rate)
        raise ValueError(f"send {k} precedes the schedule")

    def set_rate(self, rate: float, at_us: int) -> None:
        """From `at_us` on, send at `rate`: sends due before `at_us` keep their times."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        k0, start, old = self._segments[-1]
        k = k0 + max(0, -(-(at_us - start) * old // 1_000_000))
        k = int(k)
        while k > k0 and self.intended(k - 1) >= at_us:  # rounding: the first due at or after
            k -= 1
        first = max(at_us, self.intended(k - 1) + 1) if k > 0 else max(at_us, start)
        if k == k0:
            self._segments[-1] = (k0, first if k0 > 0 else start, rate)
        else:
            self._segments.append((k, int(first), rate))
        self.rate = rate

    def stop_at(self, until_us: int) -> None:
        self.until_us = min(self.until_us, until_us)


Send = Callable[[bytes], None]


def publish_loop(send: Send, log: PublisherLog, recorder: Recorder, schedule: Schedule, *,
                 payload_bytes: int, stop: Event, until_us: int, max_sends: int,
                 inflight: int = 0) -> int:
    """Run the schedule until `stop`, `until_us` (or the schedule's own), or `max_sends`;
    returns the number of sends.

    `send(payload)` publishes one stamped payload. With `inflight` > 0 each send
    runs in its own greenlet, at most `inflight` at a time (HTTP transports,
    whose publish blocks for a reply).
    """
    pool = Pool(inflight) if inflight > 0 else None
    schedule.stop_at(until_us)
    k0 = k = len(log.send_us)  # a publisher that runs again keeps its sequence
    sent = 0
    try:
        while sent < max_sends and not stop.is_set():
            due = schedule.intended(k - k0)
            if due >= schedule.until_us:
                break
            now = now_us()
            if now < due:
                spin = SPIN_US if schedule.rate * SPIN_MIN_INTERVAL_US <= 1e6 else 0
                if due - now > spin and stop.wait((due - now - spin) / 1e6):
                    break
                if schedule.intended(k - k0) != due:  # the rate changed while we slept
                    continue
                while now_us() < due:
                    gevent.sleep(0)
                woke = now_us()
                recorder.lag("schedule_lag", woke - due, woke)
            payload = build_payload(log.id, k, due, payload_bytes)
            began = now_us()
            log.sent(k, began)
            if pool is not None:
                if pool.full():
                    pool.wait_available()
                    recorder.timing("publish_blocked", now_us() - began)
                pool.spawn(_send_counted, send, payload, recorder)
            else:
                _send_counted(send, payload, recorder)
                spent = now_us() - began
                if spent >= BLOCKED_MIN_US:
                    recorder.timing("publish_blocked", spent)
            k += 1
            sent += 1
    finally:
        if pool is not None:
            pool.join(timeout=5)
            pool.kill(block=True, timeout=1)
    return sent


def _send_counted(send: Send, payload: bytes, recorder: Recorder) -> None:
    try:
        send(payload)
        recorder.count("sent")
    except ClientError as exc:
        recorder.count("publish_errors")
        recorder.count(f"publish_error:{exc.code}")


def spawn_publisher(send: Send, log: PublisherLog, recorder: Recorder, rate: float, *,
                    payload_bytes: int, stop: Event, until_us: int, max_sends: int,
                    inflight: int = 0, start_us: int | None = None,
                    ) -> tuple[gevent.Greenlet, Schedule]:
    """`publish_loop` in its own greenlet, starting now (or at `start_us`); the schedule
    is returned so the rate can be changed (`Schedule.set_rate`) while it runs."""
    schedule = Schedule(now_us() if start_us is None else start_us, rate, until_us)
    g = gevent.spawn(publish_loop, send, log, recorder, schedule, payload_bytes=payload_bytes,
                     stop=stop, until_us=until_us, max_sends=max_sends, inflight=inflight)
    return g, schedule
