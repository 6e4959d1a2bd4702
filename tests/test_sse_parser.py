"""The sans-I/O event-stream parser both SSE clients share, fed raw bytes."""

from __future__ import annotations

import pytest

from loadgen.sse_parser import SseError, SseParser

Event = tuple[bytes, bytes, int]

STREAM = (b": ping\n\n"
          b"event: welcome\ndata: {\"type\":\"welcome\"}\n\n"
          b"data: {\"a\":\ndata: 1}\n\n"
          b"event: message\nid: 7\ndata:no-space\n\n")
EXPECTED = [(b"welcome", b'{"type":"welcome"}'), (b"message", b'{"a":\n1}'),
            (b"message", b"no-space")]


def parse(*chunks: bytes) -> tuple[SseParser, list[Event]]:
    out: list[Event] = []
    p = SseParser(lambda event, data, recv_us: out.append((event, data, recv_us)))
    for i, chunk in enumerate(chunks):
        p.feed(chunk, i)
    return p, out


def events(*chunks: bytes) -> list[tuple[bytes, bytes]]:
    return [(e, d) for e, d, _ in parse(*chunks)[1]]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_split_point_gives_the_same_events(eol: bytes) -> None:
    stream = STREAM.replace(b"\n", eol)
    assert events(stream) == EXPECTED
    for cut in range(1, len(stream)):
        assert events(stream[:cut], stream[cut:]) == EXPECTED, cut
    assert events(*(stream[i:i + 1] for i in range(len(stream)))) == EXPECTED


def test_cr_ending_a_chunk_then_lf_is_one_line_end() -> None:
    # the LF opening the second chunk completes "data: a\r": not a blank line
    assert events(b"data: a\r", b"\ndata: b\r\n\r\n") == [(b"message", b"a\nb")]
    # a lone CR is a line end of its own: the event is complete without any LF
    assert events(b"data: a\r\r") == [(b"message", b"a")]


def test_event_completes_with_the_receive_time_of_its_last_chunk() -> None:
    _, out = parse(b"data: x", b"\n", b"\ndata: y\n\n")
    assert out == [(b"message", b"x", 2), (b"message", b"y", 2)]


def test_id_and_retry_fields() -> None:
    p, out = parse(b"id: 1\ndata: a\n\nretry: 2500\ndata: b\n\nid: x\0y\nretry: soon\ndata: c\n\n")
    assert [d for _, d, _ in out] == [b"a", b"b", b"c"]
    assert p.last_id == b"1"  # persists across events; an id with NUL is ignored
    assert p.retry_ms == 2500  # a non-numeric retry is ignored


def test_events_without_data_are_not_dispatched_and_reset_the_type() -> None:
    assert events(b"event: close\n\ndata: after\n\n") == [(b"message", b"after")]
    assert events(b"data\n\n") == [(b"message", b"")]  # a field name alone: empty value
    assert events(b"data:\ndata:\n\n") == [(b"message", b"\n")]


def test_comments_and_unknown_fields_are_ignored() -> None:
    assert events(b":\n: ping\nfoo: bar\nbaz\ndata: 1\n\n") == [(b"message", b"1")]


def test_a_leading_bom_is_skipped_even_when_split() -> None:
    bom = b"\xef\xbb\xbf"
    assert events(bom + b"data: 1\n\n") == [(b"message", b"1")]
    assert events(bom[:1], bom[1:2], bom[2:] + b"data: 1\n\n") == [(b"message", b"1")]
    # only at the start: a later BOM is part of a field name, an unknown field
    assert events(b"data: 1\n\n" + bom + b"data: 2\n\n") == [(b"message", b"1")]


def test_an_incomplete_event_is_not_dispatched() -> None:
    assert events(b"data: 1\n\ndata: 2\n") == [(b"message", b"1")]


def test_an_over_long_line_raises() -> None:
    p = SseParser(lambda *_: None, max_line=10)
    p.feed(b"data: 1234\n\n")  # 10 bytes: fine
    with pytest.raises(SseError):
        p.feed(b"data: 12345")


def test_the_servers_shape_and_its_variants_give_the_spec_events() -> None:
    # the fast path (event + one data line, or one data line) and the line rules agree
    stream = (b"\n\nevent: a\ndata: 1\n\n\n\nevent: \ndata: 2\n\nevent:b\ndata:3\n\n"
              b"data: 4\n\nevent: c\ndata: 5\ndata: 6\n\nevent: d\n\ndata: 7\nevent: e\n\n"
              b"event: f\n: note\ndata: 8\n\n")
    expected = [(b"a", b"1"), (b"message", b"2"), (b"b", b"3"), (b"message", b"4"),
                (b"c", b"5\n6"), (b"e", b"7"), (b"f", b"8")]
    assert events(stream) == expected
    for cut in range(1, len(stream)):
        assert events(stream[:cut], stream[cut:]) == expected, cut


def test_a_long_event_split_over_many_chunks() -> None:
    data = b"x" * 100_000
    stream = b"event: big\ndata: " + data + b"\n\n"
    assert events(*(stream[i:i + 4096] for i in range(0, len(stream), 4096))) == [
        (b"big", data)]


def test_last_id_moves_at_the_blank_line_ending_its_block() -> None:
    p, out = parse(b"id: 1\ndata: a\n\nid: 2\nevent: message\n")
    assert [d for _, d, _ in out] == [b"a"]
    assert p.last_id == b"1"  # event 2 is not complete: resuming from 1 gets it again
    p.feed(b"data: b\n\nid: 3\n\n")
    assert p.last_id == b"3"  # an id-only block (no data) still sets it


# --------------------------------------------- the fast path against the line rules

def _observe(chunks: list[bytes]) -> tuple[list[Event], list[tuple[bytes, bytes]]]:
    """Events and (last_id, pending id) after each chunk."""
    out: list[Event] = []
    p = SseParser(lambda event, data, recv_us: out.append((event, data, recv_us)))
    ids = []
    for i, chunk in enumerate(chunks):
        p.feed(chunk, i)
        ids.append((p.last_id, p._id))
    return out, ids


def _by_lines(stream: bytes, cuts: list[int]) -> tuple[list[Event], list[tuple[bytes, bytes]]]:
    """The same cuts, each piece fed a byte at a time: too few lines for the fast path."""
    out: list[Event] = []
    p = SseParser(lambda event, data, recv_us: out.append((event, data, recv_us)))
    ids = []
    for i, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(stream)], strict=True)):
        for k in range(a, b):
            p.feed(stream[k:k + 1], i)
        ids.append((p.last_id, p._id))
    return out, ids


SERVER_BLOCK = b'id: c%d\nevent: message\ndata: {"type":"message","s":%d}\n\n'
ODD_BLOCKS = [b"id: j%d\n\n", b": ping %d\n\n", b"data: %d\n\n", b"id: %d\ndata: x\n\n",
              b"event: e%d\ndata: 1\ndata: 2\n\n", b"data:%d\nid: z\n\n", b"id: a\0%d\ndata: 1\n\n",
              b"retry: 1%d\n\n", b"data: %d\nevent: message\nid: q\n\n", b"event: \ndata: %d\n\n",
              b"id: %d\nevent: other\ndata: 1\n\n", b"\n%d\n"]


@pytest.mark.parametrize("seed", range(40))
def test_fast_path_gives_exactly_what_the_line_rules_give(seed: int) -> None:
    import random

    rng = random.Random(seed)
    blocks = []
    for i in range(rng.randrange(5, 120)):
        if rng.random() < 0.85:  # runs of the server's shape, broken by anything else
            blocks.append(SERVER_BLOCK % (i, i))
        else:
            blocks.append(rng.choice(ODD_BLOCKS) % i)
    stream = b"".join(blocks)
    cuts = sorted(rng.sample(range(1, len(stream)), rng.randrange(0, 12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert _observe(chunks) == _by_lines(stream, cuts)


def test_fast_path_takes_a_run_of_the_servers_blocks() -> None:
    stream = b"".join(SERVER_BLOCK % (i, i) for i in range(50))
    p, out = parse(stream)
    assert [d for _, d, _ in out] == [b'{"type":"message","s":%d}' % i for i in range(50)]
    assert {e for e, _, _ in out} == {b"message"} and p.last_id == b"c49"
    # a block still open at the end of a chunk: its id is pending, not the last id yet
    p.feed(b'id: c50\nevent: message\ndata: {"s":50}\n')
    assert p.last_id == b"c49" and p._id == b"c50"
    p.feed(b"\n" + stream)
    assert p.last_id == b"c49" and len(out) == 101 and out[50][1] == b'{"s":50}'
