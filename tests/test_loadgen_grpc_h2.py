"""The h2-based gRPC client of the load generator (`loadgen.clients.grpc_h2`).

The sans-I/O part (`grpcframes`: gRPC message framing, HTTP/2 by h2 with a fast
path for DATA frames) runs here against an h2 server connection; the gevent
client runs in subprocesses (Locust's monkey-patching would break the asyncio
tests) against real server processes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, PingFrame

from loadgen.clients.grpcframes import (
    ACK_BYTES,
    RECV_WINDOW,
    STREAM_ID,
    GrpcFrameError,
    GrpcStream,
    MessageReader,
    encode_message,
)
from servers.testing import ServerProcess, free_port
from tests.test_loadgen_e2e import assert_all_delivered, locust, servers

ROOT = Path(__file__).resolve().parents[1]
PATH = "/rtbench.v1.Chat/Connect"
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def pair(server_window: int | None = None) -> tuple[GrpcStream, h2.connection.H2Connection,
                                                   list[tuple[bytes, bytes]]]:
    """A client stream and an h2 server that accepted it (settings exchanged)."""
    client = GrpcStream("127.0.0.1:1", PATH, [("authorization", "Bearer tok")])
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None))
    if server_window is not None:
        server.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: server_window})
    server.initiate_connection()
    (request,) = [ev for ev in server.receive_data(client.start())
                  if isinstance(ev, h2.events.RequestReceived)]
    assert client.receive(server.data_to_send()) == []
    server.receive_data(client.data_to_send())  # settings ack
    return client, server, list(request.headers or ())


def respond(server: h2.connection.H2Connection) -> bytes:
    server.send_headers(STREAM_ID, RESPONSE)
    return server.data_to_send()


def test_request_headers() -> None:
    _, _, headers = pair()
    h = dict(headers)
    assert h[b":method"] == b"POST" and h[b":path"] == PATH.encode()
    assert h[b"content-type"] == b"application/grpc" and h[b"te"] == b"trailers"
    assert h[b"authorization"] == b"Bearer tok"


def test_message_reader_splits_and_batches() -> None:
    msgs = [b"a" * 3, b"", b"b" * 300, b"c"]
    wire = b"".join(encode_message(m) for m in msgs)
    whole = MessageReader()
    assert whole.feed(wire) == msgs  # several in one chunk
    bytewise = MessageReader()
    got = [m for i in range(len(wire)) for m in bytewise.feed(wire[i:i + 1])]
    assert got == msgs and bytewise.buffered == 0


@pytest.mark.parametrize("bad", [b"\x01\x00\x00\x00\x01x", b"\x00\xff\xff\xff\xff"])
def test_message_reader_refuses_compressed_and_huge(bad: bytes) -> None:
    with pytest.raises(GrpcFrameError):
        MessageReader().feed(bad)


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_messages_split_across_data_frames_and_several_per_frame(chunk: int) -> None:
    client, server, _ = pair()
    msgs = [b"m1" * 10, b"m2" * 40, b"m3", b"m4" * 5]
    wire = b"".join(encode_message(m) for m in msgs)
    cut = len(encode_message(msgs[0])) + 7  # frame 1: m1 and part of m2
    server.send_headers(STREAM_ID, RESPONSE)
    server.send_data(STREAM_ID, wire[:cut])
    server.send_data(STREAM_ID, wire[cut:], pad_length=4)  # padded: h2's path, not the fast one
    server.send_data(STREAM_ID, encode_message(b"last"))
    data = server.data_to_send()
    got = [m for i in range(0, len(data), chunk) for m in client.receive(data[i:i + chunk])]
    assert got == [*msgs, b"last"]
    assert client.ended is None


def test_trailers_end_the_stream_with_status_and_decoded_message() -> None:
    client, server, _ = pair()
    server.send_headers(STREAM_ID, RESPONSE)
    server.send_data(STREAM_ID, encode_message(b"x"))
    server.send_headers(STREAM_ID, [(b"grpc-status", b"8"),
                                    (b"grpc-message", b"slow_consumer: queue%20full")],
                        end_stream=True)
    assert client.receive(server.data_to_send()) == [b"x"]
    assert client.ended == (8, "slow_consumer: queue full")


def test_trailers_only_response() -> None:
    client, server, _ = pair()
    server.send_headers(STREAM_ID, [*RESPONSE, (b"grpc-status", b"16"),
                                    (b"grpc-message", b"bad token")], end_stream=True)
    assert client.receive(server.data_to_send()) == []
    assert client.ended == (16, "bad token")


def test_non_grpc_http_status() -> None:
    client, server, _ = pair()
    server.send_headers(STREAM_ID, [(b":status", b"503")], end_stream=True)
    client.receive(server.data_to_send())
    assert client.ended is not None and client.ended[0] == 14  # UNAVAILABLE


def test_ping_is_answered() -> None:
    client, server, _ = pair()
    client.receive(respond(server))
    server.ping(b"8 bytes!")
    client.receive(server.data_to_send())
    acks = [ev for ev in server.receive_data(client.data_to_send())
            if isinstance(ev, h2.events.PingAckReceived)]
    assert [a.ping_data for a in acks] == [b"8 bytes!"]


def test_receive_windows_are_given_back() -> None:
    client, server, _ = pair()
    client.receive(respond(server))
    assert server.local_flow_control_window(STREAM_ID) == RECV_WINDOW
    assert server.outbound_flow_control_window == RECV_WINDOW  # the connection's, too
    sent = 0
    while sent <= ACK_BYTES:
        block = encode_message(b"z" * 16000)
        server.send_data(STREAM_ID, block)
        sent += len(block)
    assert len(client.receive(server.data_to_send())) == sent // len(block)
    assert server.local_flow_control_window(STREAM_ID) == RECV_WINDOW - sent
    server.receive_data(client.data_to_send())
    assert server.local_flow_control_window(STREAM_ID) == RECV_WINDOW
    assert server.outbound_flow_control_window == RECV_WINDOW


def test_send_waits_for_the_servers_window() -> None:
    client, server, _ = pair(server_window=8)
    client.receive(respond(server))
    assert client.send(b"q" * 20) is False  # 25 bytes on the wire, 8 fit
    got = b""
    for ev in server.receive_data(client.data_to_send()):
        if isinstance(ev, h2.events.DataReceived):
            got += ev.data
    assert len(got) == 8 and client.pending
    server.increment_flow_control_window(100, STREAM_ID)
    client.receive(server.data_to_send())
    assert client.window_opened and not client.pending
    for ev in server.receive_data(client.data_to_send()):
        if isinstance(ev, h2.events.DataReceived):
            got += ev.data
    assert got == encode_message(b"q" * 20)


@pytest.mark.parametrize(("error", "status"), [(h2.errors.ErrorCodes.REFUSED_STREAM, 14),
                                               (h2.errors.ErrorCodes.INTERNAL_ERROR, 13)])
def test_stream_reset_maps_to_a_status(error: h2.errors.ErrorCodes, status: int) -> None:
    client, server, _ = pair()
    client.receive(respond(server))
    server.reset_stream(STREAM_ID, error)
    client.receive(server.data_to_send())
    assert client.ended is not None and client.ended[0] == status


def test_goaway_ends_only_streams_it_drops() -> None:
    client, server, _ = pair()
    client.receive(respond(server))
    server.close_connection(last_stream_id=STREAM_ID)  # graceful: our stream goes on
    client.receive(server.data_to_send())
    assert client.ended is None
    other, server2, _ = pair()
    other.receive(respond(server2))
    server2.close_connection(error_code=h2.errors.ErrorCodes.INTERNAL_ERROR)
    other.receive(server2.data_to_send())
    assert other.ended is not None and other.ended[0] == 14


def test_a_graceful_shutdown_after_goaway_still_ends_with_its_status() -> None:
    # grpcio's shutdown: GOAWAY(all streams), PING, DATA, trailers. h2 takes no frame
    # after a GOAWAY, so the stream reads these itself.
    client, server, _ = pair()
    client.receive(respond(server))
    server.close_connection(last_stream_id=2**31 - 1)
    assert client.receive(server.data_to_send()) == [] and client.ended is None
    assert not client.accepting and client.send(b"late") is False
    block = server.encoder.encode([(b"grpc-status", b"14"),
                                   (b"grpc-message", b"going_away: server%20shutting down")])
    head = HeadersFrame(STREAM_ID, data=block[:5], flags=["END_STREAM"])
    rest = ContinuationFrame(STREAM_ID, data=block[5:], flags=["END_HEADERS"])
    frames = [PingFrame(0, opaque_data=b"opaque!!"),
              DataFrame(STREAM_ID, data=encode_message(b"one")),
              DataFrame(STREAM_ID, data=encode_message(b"two"), pad_length=3,
                        flags=["PADDED"]), head, rest]
    wire = b"".join(f.serialize() for f in frames)
    got = [m for i in range(0, len(wire), 5) for m in client.receive(wire[i:i + 5])]
    assert got == [b"one", b"two"]
    assert client.ended == (14, "going_away: server shutting down")
    assert PingFrame(0, opaque_data=b"opaque!!", flags=["ACK"]).serialize() in (
        client.data_to_send())


def test_cancel_resets_the_stream_and_closes() -> None:
    client, server, _ = pair()
    client.receive(respond(server))
    kinds = {type(ev) for ev in server.receive_data(client.cancel())}
    assert {h2.events.StreamReset, h2.events.ConnectionTerminated} <= kinds
    assert client.send(b"late") is False


# ------------------------------------------------------------ real servers


NO_HANG = """
import sys
from gevent import monkey; monkey.patch_all()
import gevent
from loadgen.clients import client_class
from loadgen.clients.base import ClientError
from loadgen.measure import build_payload, now_us
from servers.core.auth import DEV_SECRET, make_token

kind, term_url, kill_url = sys.argv[1:4]
C = client_class("grpc", kind)
try:
    C(term_url, "not-a-token", None, 5.0).connect()
    print("AUTH accepted", flush=True)
except ClientError as exc:
    print("AUTH", exc.code, flush=True)
got = []
many = [C(term_url, make_token(f"m{i}", DEV_SECRET), lambda e, n, t: got.append(e), 5.0)
        for i in range(24)]
gevent.joinall([gevent.spawn(m.connect) for m in many], raise_error=True, timeout=15)
gevent.joinall([gevent.spawn(m.join, "many") for m in many], raise_error=True, timeout=15)
many[0].publish("many", build_payload("m0", 0, now_us(), 80))
deadline = now_us() + 5_000_000
while len(got) < 24 and now_us() < deadline:
    gevent.sleep(0.01)
print("FANOUT", len(got), flush=True)
gevent.joinall([gevent.spawn(m.close) for m in many], timeout=10)
print("CLOSED", sum(m.closed.is_set() for m in many), many[0].close_code, flush=True)
term = C(term_url, make_token("t", DEV_SECRET), None, 5.0)
kill = C(kill_url, make_token("k", DEV_SECRET), None, 5.0)
term.connect(); kill.connect()
print("READY", flush=True)
sys.stdin.readline()  # the test stops one server and kills the other now
for name, c in (("TERM", term), ("KILL", kill)):
    print(name, c.closed.wait(timeout=10), c.close_code, c.close_reason, flush=True)
"""


@pytest.mark.parametrize(("kind", "killed_code"), [("h2", "1006"), ("grpcio", "1001")])
def test_auth_fanout_close_and_no_hang(kind: str, killed_code: str, tmp_path: Path) -> None:
    script = tmp_path / "no_hang.py"
    script.write_text(NO_HANG)
    procs = [ServerProcess("grpc", free_port(), args=[
        "--broker", "memory", "--metrics-port", str(free_port())]) for _ in range(2)]
    try:
        for p in procs:
            p.start()
        with subprocess.Popen([sys.executable, str(script), kind, procs[0].url, procs[1].url],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) as proc:
            assert proc.stdout is not None and proc.stdin is not None
            try:
                lines: list[str] = []
                while not (line := proc.stdout.readline().decode()).startswith("READY"):
                    assert line, "".join(lines) + proc.stdout.read().decode()
                    lines.append(line)
                procs[0].stop()  # SIGTERM: the server says going_away
                assert procs[1].proc is not None
                procs[1].proc.kill()  # SIGKILL: the connection just drops
                procs[1].proc.wait(5)
                proc.stdin.write(b"go\n")
                proc.stdin.flush()
                out, _ = proc.communicate(timeout=20)
            finally:
                if proc.poll() is None:
                    proc.kill()
    finally:
        for p in procs:
            p.stop()
    text = "".join(lines) + out.decode()
    said = {ln.split()[0]: ln.split()[1:] for ln in text.splitlines() if ln.strip()}
    assert said.get("AUTH") == ["4401"], text
    assert said.get("FANOUT") == ["24"], text
    assert said.get("CLOSED") == ["24", "1000"], text
    assert said.get("TERM", [])[:3] == ["True", "1001", "going_away:"], text
    assert said.get("KILL", [])[:2] == ["True", killed_code], text
    assert proc.returncode == 0, text


def test_broadcast_over_grpc_h2_delivers_everything(tmp_path: Path) -> None:
    with servers("grpc") as procs:
        o = locust("broadcast", procs, tmp_path, "--grpc-client", "h2", transport="grpc",
                   users=4, rate=50)
    assert o.result["parameters"]["grpc_client"] == "h2"
    assert_all_delivered(o, min_expected=4 * 100)
    assert o.counter("connects") == 4 and o.counter("connect_failures") == 0
    assert o.result["wire_bytes_per_delivery"] > 100


SLOW = """
import sys
from gevent import monkey; monkey.patch_all()
import gevent
from loadgen.clients import client_class
from servers.core.auth import DEV_SECRET, make_token

C = client_class("grpc", "h2")
stalled = []


def on_event(ev, nbytes, recv_us):
    if not stalled:  # the client stops reading for 4 s: windows, buffers and the outbox fill
        stalled.append(ev)
        # (off the reactor, not by sleeping in it: that would stop every stream's reads,
        # the publisher's flow-control updates too)
        fd = slow._read_fd
        slow._stop_reading()
        gevent.spawn_later(4, slow._start_reading, fd)


slow = C(sys.argv[1], make_token("slow", DEV_SECRET), on_event, 5.0)
slow.connect()
slow.join("r")
pub = C(sys.argv[1], make_token("pub", DEV_SECRET), None, 5.0)
pub.connect()
pub.join("r")
big = b'"' + b"x" * 30000 + b'"'
for i in range(1200):  # 36 MB: more than the 16 MiB window, socket buffers and outbox
    if slow.closed.is_set():
        break
    pub.publish("r", big)
print("SLOW", slow.closed.wait(15), slow.close_code, slow.close_reason, flush=True)
pub.close()
"""


def test_slow_consumer_ends_with_4408(tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text(SLOW)
    server = ServerProcess("grpc", free_port(), args=[
        "--broker", "memory", "--metrics-port", str(free_port()), "--outbox-max-events", "50"])
    try:
        server.start()
        done = subprocess.run([sys.executable, str(script), server.url], cwd=ROOT,
                              capture_output=True, text=True, timeout=40)
    finally:
        server.stop()
    assert "SLOW True 4408 slow_consumer:" in done.stdout, done.stdout[-2000:] + done.stderr[
        -2000:]
