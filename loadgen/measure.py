"""Lossless latency histograms and the payload stamp every published message carries.

Sans-I/O: no gevent, no locust; the pytest process and the asyncio benchmarks
import this module directly.

Payload stamp (shared contract with bench/): the `data` of every published
message is the JSON object
``{"p": "<publisher id>", "s": <seq>, "t": <intended send time, µs>, "x": "<padding>"}``
where `s` counts from 0 per publisher and `t` is wall-clock microseconds since
the epoch. Latency = receive wall time (µs) - `t`.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import orjson
from hdrh.histogram import HdrHistogram

# 1 µs .. 1 hour at 3 significant digits: every latency we can meet, 0.1 % resolution.
LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIG_FIGS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99, 100.0)
# HdrHistogram's sub-bucket count for 3 significant digits and a lowest value of 1:
# 2 x 10^3 rounded up to a power of two; values below it are exact, above it a bucket
# spans 2^(bit_length - 11) values
SUB_BUCKET_BITS = 11
SUB_BUCKETS = 1 << SUB_BUCKET_BITS


def now_us() -> int:
    """Wall-clock microseconds since the epoch (the unit of stamps and `ts`)."""
    return time.time_ns() // 1000


class Histogram:
    """An HdrHistogram in microseconds whose merge and (de)serialization are exact.

    Values below 1 µs are recorded as 1 and values above one hour as one hour
    (counted in `clamped`), so a sample is never dropped.

    `record` only counts the exact value in a dict (hdrh's own `record_value` is
    ~2 µs of Python per call, too slow for a load generator's hot path); values
    go into the HdrHistogram, one call per distinct value, when it is read.
    """

    __slots__ = ("_h", "_pending", "clamped")

    def __init__(self) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIG_FIGS)
        self._pending: dict[int, int] = {}
        self.clamped = 0

    def record(self, value_us: int, count: int = 1) -> None:
        if value_us >= SUB_BUCKETS:
            # the lowest value of its HdrHistogram bucket (identical once recorded): at most
            # ~1,000 keys per power of two instead of one per distinct µs, so merging and
            # flushing a step of 136,000 deliveries cost 6.6 ms, not 94 (74,000 keys;
            # results/published/loadgen-stalls-20261202.json)
            shift = value_us.bit_length() - SUB_BUCKET_BITS
            value_us = value_us >> shift << shift
        pending = self._pending
        pending[value_us] = pending.get(value_us, 0) + count

    def _flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        record = self._h.record_value
        for value, n in pending.items():
            if value < LOWEST_US:
                value = LOWEST_US
                self.clamped += n
            elif value > HIGHEST_US:
                value = HIGHEST_US
                self.clamped += n
            record(value, n)

    @property
    def _hist(self) -> HdrHistogram:
        self._flush()
        return self._h

    def count_pending(self) -> int:
        """Samples held, without flushing them into the HdrHistogram (cheap)."""
        return int(self._h.get_total_count()) + sum(self._pending.values())

    @property
    def count(self) -> int:
        return int(self._hist.get_total_count())

    def merge(self, other: Histogram) -> None:
        """Add every sample of `other` (bucket by bucket: exact). Samples `other` has not
        put into its HdrHistogram yet are added as they are, unflushed: a merge in the
        load generator's loop costs a dict update per distinct value, not ~2 µs each."""
        pending = self._pending
        for value, n in other._pending.items():
            pending[value] = pending.get(value, 0) + n
        if other._h.get_total_count():
            self._h.add(other._h)
        self.clamped += other.clamped

    def reset(self) -> None:
        self._pending = {}
        self._h.reset()
        self.clamped = 0

    def percentile(self, p: float) -> int:
        return int(self._hist.get_value_at_percentile(p)) if self.count else 0

    def encode(self) -> str:
        """Compressed, base64 HdrHistogram V2 encoding (what HdrHistogram tools read)."""
        return str(self._hist.encode().decode("ascii"))

    @classmethod
    def decode(cls, text: str | bytes, clamped: int = 0) -> Histogram:
        hist = cls()
        if text:
            raw = text.encode("ascii") if isinstance(text, str) else text
            hist._h.decode_and_add(raw)
        hist.clamped = clamped
        return hist

    def to_dict(self) -> dict[str, Any]:
        """Summary plus the exact encoding; `from_dict` restores it."""
        h = self._hist
        n = self.count
        # one pass for every percentile (hdrh's mean walks every bucket: too slow at the end
        # of a run, so there is none; the encoding lets a reader compute it)
        values = h.get_percentile_to_value_dict(list(PERCENTILES)) if n else {}
        return {
            "unit": "us",
            "count": n,
            "min": int(h.get_min_value()) if n else 0,
            "max": int(h.get_max_value()) if n else 0,
            "percentiles": {f"p{p:g}": int(values.get(p, 0)) for p in PERCENTILES},
            "clamped": self.clamped,
            "hdr": self.encode() if n else "",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        return cls.decode(d.get("hdr", ""), int(d.get("clamped", 0)))

    def equals(self, other: Histogram) -> bool:
        """Same count in every bucket."""
        return bool(self._hist.equals(other._hist)) and self.clamped == other.clamped

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, p50={self.percentile(50)}us)"


# ------------------------------------------------------------------ stamp


class Stamp(NamedTuple):
    """A parsed payload stamp (a tuple: built once per delivery, so it must be cheap)."""

    publisher: str
    seq: int
    intended_us: int


_PAD_OVERHEAD = len(b'{"p":"","s":,"t":,"x":""}')


def build_payload(publisher: str, seq: int, intended_us: int, size: int = 0) -> bytes:
    """The JSON encoding of a stamped `data` object, padded to `size` bytes when possible.

    The result is at least the unpadded stamp (about 60 bytes): a smaller `size`
    cannot be honoured and is ignored rather than truncating the stamp.
    """
    pub = orjson.dumps(publisher)  # quoted and escaped
    core = len(pub) - 2 + len(str(seq)) + len(str(intended_us)) + _PAD_OVERHEAD
    pad = size - core if size > core else 0
    return b'{"p":%s,"s":%d,"t":%d,"x":"%s"}' % (pub, seq, intended_us, b"x" * pad)


def parse_stamp(data: Any) -> Stamp | None:
    """The stamp of a decoded `data` value, or None if it carries no valid stamp."""
    if type(data) is not dict:
        return None
    get = data.get
    p, s, t = get("p"), get("s"), get("t")
    if type(p) is not str or type(s) is not int or type(t) is not int or s < 0:
        return None
    return Stamp(p, s, t)
