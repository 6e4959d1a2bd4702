"""Sans-I/O parts of the load generator: histograms, stamps, delivery ledger, merge, result.

No gevent or locust here (they monkey-patch the process): these modules are
plain Python on purpose.
"""

from __future__ import annotations

import random
from array import array

import orjson
import pytest

from loadgen import result as result_mod
from loadgen.delivery import PublisherLog, StreamTracker, Window, judge
from loadgen.measure import HIGHEST_US, Histogram, build_payload, parse_stamp
from loadgen.recorder import Collector, Recorder
from loadgen.saturation import Thresholds, check


def test_hdr_merge_is_exact_through_encoding() -> None:
    rng = random.Random(7)
    parts = [Histogram() for _ in range(3)]
    whole = Histogram()
    for i in range(30_000):
        v = int(rng.lognormvariate(7, 2)) + 1
        parts[i % 3].record(v)
        whole.record(v)
    merged = Histogram()
    for part in parts:  # what the master does with worker reports
        merged.merge(Histogram.decode(part.encode(), part.clamped))
    assert merged.count == whole.count == 30_000
    assert merged.equals(whole)
    for p in (50, 90, 99, 99.9, 100):
        assert merged.percentile(p) == whole.percentile(p)
    again = Histogram.from_dict(merged.to_dict())
    assert again.equals(whole)


def test_hdr_clamps_instead_of_dropping() -> None:
    h = Histogram()
    h.record(-5)  # a receiver clock behind the publisher's
    h.record(HIGHEST_US * 10)
    assert h.count == 2 and h.clamped == 2
    assert Histogram.from_dict(h.to_dict()).clamped == 2


@pytest.mark.parametrize("size", [0, 61, 100, 1000, 4096])
def test_payload_stamp_round_trip_and_size(size: int) -> None:
    raw = build_payload("pub-host-1", 42, 1_795_000_000_000_000, size)
    data = orjson.loads(raw)
    assert data["p"] == "pub-host-1" and data["s"] == 42 and data["t"] == 1_795_000_000_000_000
    assert set(data) == {"p", "s", "t", "x"}
    if size >= 100:
        assert len(raw) == size
    stamp = parse_stamp(data)
    assert stamp is not None and (stamp.publisher, stamp.seq) == ("pub-host-1", 42)


def test_payload_escapes_publisher_id() -> None:
    data = orjson.loads(build_payload('a"b\\c', 0, 1, 80))
    assert data["p"] == 'a"b\\c'


@pytest.mark.parametrize("data", [None, 1, "x", [], {"p": 1, "s": 0, "t": 0},
                                  {"p": "a", "s": -1, "t": 0}, {"p": "a", "s": True, "t": 0},
                                  {"p": "a", "s": 0}])
def test_parse_stamp_rejects_foreign_data(data: object) -> None:
    assert parse_stamp(data) is None


def test_tracker_counts_duplicates_reordering_and_holes() -> None:
    t = StreamTracker()
    for s in (3, 4, 5, 7, 9, 6, 6, 2, 3, 8):
        t.add(s)
    # distinct: 2..9 -> 8; dups: 6, 3; out of order: 6 (after 9), 2, 8
    assert t.distinct == 8
    assert t.dups == 2
    assert t.ooo == 3
    assert t.holes == 0
    assert t.received_in(0, 100) == 8
    assert t.received_in(0, 4) == 2  # 2, 3
    assert t.received_in(5, 8) == 3
    back = StreamTracker.from_list(orjson.loads(orjson.dumps(t.to_list())))
    assert back.received_in(0, 100) == 8 and back.dups == 2


def test_tracker_holes_are_the_live_loss_signal() -> None:
    t = StreamTracker()
    for s in (0, 1, 4, 5):
        t.add(s)
    assert t.holes == 2
    t.add(2)
    assert t.holes == 1


def test_a_hole_is_a_loss_signal_once_it_outlived_a_report_interval() -> None:
    r = Recorder("h")
    w = r.open_window("x", "room:r", 0)

    def got(*seqs: int) -> None:
        for s in seqs:
            r.deliver(w, "message", {"p": "a", "s": s, "t": 10}, 20, 1)

    got(0, 1, 3)  # 2 overtaken by 3
    assert r.holes() == 0  # no earlier call: nothing has outlived an interval yet
    got(2, 5)  # 2 arrived late (reordered): not a loss; 4 overtaken now
    assert r.holes() == 0
    got(6)  # 4 never comes
    assert r.holes() == 1
    assert w.streams["a"].missing_upto(6) == 1 and w.streams["a"].missing_upto(3) == 0
    got(4)
    assert r.holes() == 0


def _log(pub: str, channel: str, times: list[int], host: str = "h") -> PublisherLog:
    return PublisherLog(pub, channel, host, array("q", times))


def test_judge_counts_only_what_the_window_had_to_get() -> None:
    pub = _log("p", "room:r", [100, 200, 300, 400, 500, 600])
    early = Window("a", "room:r", "h", start_us=150, end_us=1000)  # joined after seq 0
    for s in (1, 2, 4, 5):  # seq 3 lost
        early.receive("p", s)
    late = Window("b", "room:r", "h", start_us=0, end_us=450)  # left: judged up to 450 - grace
    for s in (0, 1, 2, 3):
        late.receive("p", s)
    other = Window("c", "room:x", "h", start_us=0, end_us=1000)
    v = judge([pub], [early, late, other], grace_us=100, now_us=2000)
    # early: seqs 1..5 (send 200..600 < 900) -> 5 expected, 4 got; late: 0..2 (< 350)
    assert v.expected == 5 + 3
    assert v.delivered == 4 + 3
    assert v.missing == 1
    assert v.unjudged == 1  # late got seq 3, sent inside its grace period
    assert v.published == 6 and v.windows == 3 and not v.cross_host


def test_judge_flags_cross_host_clocks_and_unknown_publishers() -> None:
    w = Window("a", "room:r", "rx", start_us=0, end_us=1000)
    w.receive("p", 0)
    w.receive("ghost", 0)
    v = judge([_log("p", "room:r", [10], host="tx")], [w], grace_us=0, now_us=1000)
    assert v.cross_host and v.delivered == 1 and v.unknown_publisher == 1


def test_recorder_deltas_merge_exactly_in_the_collector() -> None:
    a, b, c = Recorder("h1"), Recorder("h2"), Collector()
    wa = a.open_window("ra", "room:r", 0)
    pub = a.publisher("p", "room:r")
    for seq in range(10):
        pub.sent(seq, 10 + seq)
    for seq in range(10):
        a.delivered(wa, "message", parse_stamp({"p": "p", "s": seq, "t": 0}), 1000 + seq, 50)
    c.add_delta(a.take_delta())
    wb = b.open_window("rb", "room:r", 0)
    for seq in (0, 1, 1):  # one duplicate, seqs 2..9 missing
        b.delivered(wb, "message", parse_stamp({"p": "p", "s": seq, "t": 0}), 2000, 50)
    c.add_delta(b.take_delta())
    c.add_ledger(a.take_ledger())
    c.add_ledger(b.take_ledger())
    assert c.hist("message").count == 12  # duplicates are not timed twice
    assert set(c.by_host) == {"h1", "h2"}
    assert c.counters["received"] == 13 and c.counters["duplicates"] == 1
    v = c.verdict(grace_us=0)
    assert (v.expected, v.delivered, v.missing, v.duplicates) == (20, 12, 8, 1)
    assert a.take_delta()["counters"] == {}  # deltas reset


def test_saturation_check_thresholds() -> None:
    calm, busy = Histogram(), Histogram()
    for _ in range(100):
        calm.record(500)
        busy.record(80_000)
    _, ok = check({"h/1": [20.0, 30.0, 25.0]}, calm, calm, Thresholds())
    assert ok == []
    _, bad = check({"h/1": [99.0, 98.0, 97.0]}, busy, calm, Thresholds())
    assert any("CPU" in r for r in bad) and any("canary" in r for r in bad)


def test_result_file_round_trip(tmp_path: object) -> None:
    c = Collector()
    r = Recorder("h")
    w = r.open_window("x", "room:r", 0)
    r.publisher("p", "room:r").sent(0, 5)
    r.delivered(w, "message", parse_stamp({"p": "p", "s": 0, "t": 1}), 900, 40)
    c.add_delta(r.take_delta())
    c.add_ledger(r.take_ledger())
    v = c.verdict(0)
    res = result_mod.build(scenario="broadcast", params={"transport": "ws"}, collector=c,
                           verdict=v, saturation={}, saturation_reasons=[], started_us=0,
                           ended_us=10**6, hosts=[result_mod.host_metadata()])
    path = result_mod.write(f"{tmp_path}/r.json", res)
    back = result_mod.load(path)
    assert back["version"] == result_mod.VERSION and back["validity"]["valid"]
    assert Histogram.from_dict(back["latency_us"]["message"]).percentile(50) == 899
    assert back["wire_bytes_per_delivery"] == 40.0


def test_recorder_deliver_is_delivered_of_parse_stamp() -> None:
    """The hot path (`deliver`: one call) accounts exactly like `delivered(parse_stamp(..))`."""
    rng = random.Random(3)
    datas: list[object] = [None, "text", {"p": "q", "s": -1, "t": 5}, {"p": "q", "s": 1}]
    cases = [(rng.choice(("a", "b")), rng.randrange(0, 40), rng.randrange(0, 2000))
             for _ in range(400)]  # duplicates, reordering, warm-up (t < 1000)
    slow, fast = Recorder("h"), Recorder("h")
    for r in (slow, fast):
        r.warmup_until_us = 1000
    ws, wf = slow.open_window("x", "room:r", 0), fast.open_window("x", "room:r", 0)
    for i, (p, s, t) in enumerate(cases):
        data = datas[i % 40] if i % 40 < len(datas) else {"p": p, "s": s, "t": t, "x": "y"}
        window = (ws, wf) if i % 7 else (None, None)
        stamp = parse_stamp(data)
        kept = slow.delivered(window[0], "message", stamp, 5000 + i, 80 + i)
        latency = fast.deliver(window[1], "message", data, 5000 + i, 80 + i)
        assert latency == (5000 + i - stamp.intended_us if kept and stamp else None), i
    assert fast.counters == slow.counters and fast.counters["duplicates"] > 0
    assert (fast.received, fast.wire_bytes) == (slow.received, slow.wire_bytes) == (
        len(cases), sum(80 + i for i in range(len(cases))))
    assert fast.counters["warmup_deliveries"] > 0 and fast.counters["unstamped"] > 0
    assert fast.hists["message"].equals(slow.hists["message"])
    assert wf.to_dict() == ws.to_dict()


def test_the_server_leg_is_timed_from_the_servers_ts_after_warm_up() -> None:
    r = Recorder("h")
    r.warmup_until_us = 1000
    w = r.open_window("x", "room:r", 0)
    r.deliver(w, "message", {"p": "a", "s": 0, "t": 2000}, 2600, 10, 2150)  # leg 450 us
    r.deliver(w, "message", {"p": "a", "s": 1, "t": 500}, 900, 10, 600)  # warm-up: not timed
    r.deliver(w, "message", {"p": "a", "s": 1, "t": 500}, 950, 10, 600)  # duplicate
    r.deliver(w, "message", {"p": "a", "s": 2, "t": 3000}, 3500, 10, None)  # no ts
    r.deliver(w, "message", {"p": "a", "s": 3, "t": 4000}, 4500, 10, 9000)  # ts after receipt
    leg = r.hists["server_leg"]
    assert leg.count == 1 and 440 <= leg.percentile(50) <= 450
    assert r.hists["message"].count == 3


def test_record_keys_by_bucket_yet_equals_exact_recording() -> None:
    """Histogram.record keeps the lowest value of each HdrHistogram bucket; the histogram
    must equal one fed value by value through hdrh itself."""
    import random

    from hdrh.histogram import HdrHistogram

    from loadgen.measure import HIGHEST_US, LOWEST_US, SIG_FIGS

    rng = random.Random(7)
    values = [rng.randint(1, 3_000_000) for _ in range(20_000)] + [2047, 2048, 2049, 4097]
    ours = Histogram()
    exact = HdrHistogram(LOWEST_US, HIGHEST_US, SIG_FIGS)
    for v in values:
        ours.record(v)
        exact.record_value(v)
    assert len(ours._pending) < len(set(values)) / 2  # bucketed: far fewer keys
    for p in (50, 90, 99, 99.9, 100):
        assert ours.percentile(p) == exact.get_value_at_percentile(p)
    assert ours.count == exact.get_total_count()
    assert ours._hist.equals(exact)


def test_merge_of_unflushed_samples_is_exact() -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    for v in range(1, 50_000, 7):
        a.record(v)
        both.record(v)
    b.record(123_456)
    both.record(123_456)
    b.percentile(50)  # b's samples are in its HdrHistogram, a's still pending
    a.merge(b)
    assert a.equals(both)
