"""Delivery accounting: which stamped messages each receiver had to get, and did.

Sans-I/O. Publishers log the wall time at which each send *began* (seq =
index). Receivers open a *window* on a channel (a room, or a user for direct
messages) once membership is effective (join `ack`, or `welcome` for direct)
and close it when they stop listening. A message is *expected* by a window if
its send began inside ``[start, end - grace)``: the protocol guarantees delivery
of everything published after the join ack, and `grace` leaves in-flight
messages at the end of a run out of the verdict instead of calling them lost.

Per (window, publisher) a `StreamTracker` keeps the received sequence numbers
in O(1) space while delivery is in order, so duplicates, reordering and holes
are exact at any rate.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def room_channel(room: str) -> str:
    return "room:" + room


def user_channel(user: str) -> str:
    return "user:" + user


class StreamTracker:
    """Sequence numbers received from one publisher in one window."""

    __slots__ = ("ahead", "base", "below", "dups", "high", "next", "ooo")

    def __init__(self) -> None:
        self.base = -1  # first seq received; every seq in [base, next) was received
        self.next = -1
        self.high = -1  # highest seq received
        self.ahead: set[int] = set()  # received seqs > next (after a hole)
        self.below: set[int] = set()  # received seqs < base (arrived after a later one)
        self.dups = 0
        self.ooo = 0  # arrivals after a higher seq from the same publisher

    def add(self, s: int) -> bool:
        """Record seq `s`; False if it is a duplicate."""
        if self.next < 0:
            self.base, self.next, self.high = s, s + 1, s
            return True
        if s == self.next:
            n = s + 1
            ahead = self.ahead
            while ahead and n in ahead:
                ahead.remove(n)
                n += 1
            self.next = n
        elif s > self.next:
            if s in self.ahead:
                self.dups += 1
                return False
            self.ahead.add(s)
        elif s >= self.base or s in self.below:
            self.dups += 1
            return False
        else:
            self.below.add(s)
        if s < self.high:
            self.ooo += 1
        else:
            self.high = s
        return True

    @property
    def distinct(self) -> int:
        return (self.next - self.base if self.next >= 0 else 0) + len(self.ahead) + len(self.below)

    @property
    def holes(self) -> int:
        """Seqs between the first and the highest received that have not arrived (yet)."""
        return self.high - self.next + 1 - len(self.ahead) if self.high >= self.next else 0

    def missing_upto(self, bound: int) -> int:
        """Seqs from the first received up to `bound` that have not arrived (yet)."""
        if self.next < 0 or bound < self.next:
            return 0
        return bound - self.next + 1 - sum(1 for a in self.ahead if a <= bound)

    def received_in(self, lo: int, hi: int) -> int:
        """How many distinct seqs in [lo, hi) were received."""
        if hi <= lo or self.next < 0:
            return 0
        n = max(0, min(self.next, hi) - max(self.base, lo))
        n += sum(1 for a in self.ahead if lo <= a < hi)
        n += sum(1 for b in self.below if lo <= b < hi)
        return n

    def to_list(self) -> list[Any]:
        return [self.base, self.next, self.high, sorted(self.ahead), sorted(self.below),
                self.dups, self.ooo]

    @classmethod
    def from_list(cls, v: list[Any]) -> StreamTracker:
        t = cls()
        t.base, t.next, t.high = int(v[0]), int(v[1]), int(v[2])
        t.ahead, t.below = set(v[3]), set(v[4])
        t.dups, t.ooo = int(v[5]), int(v[6])
        return t


@dataclass(slots=True)
class PublisherLog:
    """One publisher stream: the wall time (µs) at which the send of seq i began."""

    id: str
    channel: str
    host: str
    send_us: array[int] = field(default_factory=lambda: array("q"))

    def sent(self, seq: int, at_us: int) -> None:
        if seq != len(self.send_us):
            raise ValueError(f"publisher {self.id}: seq {seq} logged out of order")
        self.send_us.append(at_us)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "channel": self.channel, "host": self.host,
                "send_us": self.send_us.tobytes()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PublisherLog:
        log = cls(d["id"], d["channel"], d["host"])
        log.send_us.frombytes(d["send_us"])
        return log


@dataclass(slots=True, eq=False)  # identity: windows live in sets
class Window:
    """One receiver listening on one channel from `start_us` until `end_us`."""

    receiver: str
    channel: str
    host: str
    start_us: int
    end_us: int | None = None
    streams: dict[str, StreamTracker] = field(default_factory=dict)
    unstamped: int = 0

    def receive(self, publisher: str, seq: int) -> bool:
        """Record a delivery; False if it is a duplicate."""
        t = self.streams.get(publisher)
        if t is None:
            t = self.streams[publisher] = StreamTracker()
        return t.add(seq)

    def to_dict(self) -> dict[str, Any]:
        return {"receiver": self.receiver, "channel": self.channel, "host": self.host,
                "start_us": self.start_us, "end_us": self.end_us, "unstamped": self.unstamped,
                "streams": {p: t.to_list() for p, t in self.streams.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Window:
        return cls(d["receiver"], d["channel"], d["host"], int(d["start_us"]),
                   None if d["end_us"] is None else int(d["end_us"]),
                   {p: StreamTracker.from_list(v) for p, v in d["streams"].items()},
                   int(d.get("unstamped", 0)))


@dataclass(slots=True)
class Verdict:
    """Delivery totals over every window of a run."""

    published: int = 0  # messages sent by publishers
    expected: int = 0  # (message, window) pairs that had to be delivered
    delivered: int = 0  # of those, delivered at least once
    missing: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    unjudged: int = 0  # distinct deliveries outside every judged range (before join, in grace)
    unknown_publisher: int = 0  # deliveries from a publisher with no log (another run?)
    windows: int = 0
    cross_host: bool = False  # a publisher and a receiver on different hosts: clocks differ

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in self.__slots__}
        d["missing_ratio"] = self.missing / self.expected if self.expected else 0.0
        return d


def judge(publishers: Iterable[PublisherLog], windows: Iterable[Window], grace_us: int,
          now_us: int) -> Verdict:
    """Compare every window with the publishers of its channel; see the module docstring."""
    by_channel: dict[str, dict[str, PublisherLog]] = {}
    v = Verdict()
    for log in publishers:
        by_channel.setdefault(log.channel, {})[log.id] = log
        v.published += len(log.send_us)
    for w in windows:
        v.windows += 1
        pubs = by_channel.get(w.channel, {})
        end = (now_us if w.end_us is None else w.end_us) - grace_us
        judged_received = 0
        for log in pubs.values():
            lo = bisect_left(log.send_us, w.start_us)
            hi = bisect_left(log.send_us, end)
            if hi <= lo:
                continue
            v.expected += hi - lo
            t = w.streams.get(log.id)
            got = t.received_in(lo, hi) if t is not None else 0
            v.delivered += got
            judged_received += got
            v.missing += hi - lo - got
            if log.host != w.host:
                v.cross_host = True
        total = 0
        for pub, t in w.streams.items():
            v.duplicates += t.dups
            v.out_of_order += t.ooo
            if pub in pubs:
                total += t.distinct
            else:
                v.unknown_publisher += t.distinct
        v.unjudged += total - judged_received
    return v
