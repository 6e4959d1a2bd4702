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
from dataclasses import dataclass

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
# latency floor is not swamped by timer slack.
SPIN_US = 1_500


@dataclass(slots=True, frozen=True)
class Schedule:
    """Intended send times in wall-clock microseconds."""

    start_us: int
    rate: float  # sends per second

    def intended(self, k: int) -> int:
        return self.start_us + round(k * 1_000_000 / self.rate)


Send = Callable[[bytes], None]


def publish_loop(send: Send, log: PublisherLog, recorder: Recorder, schedule: Schedule, *,
                 payload_bytes: int, stop: Event, until_us: int, max_sends: int,
                 inflight: int = 0) -> int:
    """Run the schedule until `stop`, `until_us` or `max_sends`; returns the number of sends.

    `send(payload)` publishes one stamped payload. With `inflight` > 0 each send
    runs in its own greenlet, at most `inflight` at a time (HTTP transports,
    whose publish blocks for a reply).
    """
    pool = Pool(inflight) if inflight > 0 else None
    k0 = k = len(log.send_us)  # a publisher that runs again keeps its sequence
    sent = 0
    try:
        while sent < max_sends and not stop.is_set():
            due = schedule.intended(k - k0)
            if due >= until_us:
                break
            now = now_us()
            if now < due:
                if due - now > SPIN_US and stop.wait((due - now - SPIN_US) / 1e6):
                    break
                while now_us() < due:
                    gevent.sleep(0)
                recorder.timing("schedule_lag", now_us() - due)
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
                    inflight: int = 0, start_us: int | None = None) -> gevent.Greenlet:
    """`publish_loop` in its own greenlet, starting now (or at `start_us`)."""
    schedule = Schedule(now_us() if start_us is None else start_us, rate)
    return gevent.spawn(publish_loop, send, log, recorder, schedule, payload_bytes=payload_bytes,
                        stop=stop, until_us=until_us, max_sends=max_sends, inflight=inflight)
