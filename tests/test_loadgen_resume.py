"""The gevent clients' resume and close codes against real servers, on every transport.

A gevent script (Locust's monkey-patching would break the asyncio tests, so it runs
in a subprocess) closes a subscriber, has messages published while it is away,
reconnects with the old connection's cursor, and must get exactly the missed
messages and then the live ones, without joining again; then the server is stopped
(SIGTERM) under it and the client must see `going_away` (1001).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_loadgen_e2e import TRANSPORTS, servers

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
from gevent import monkey; monkey.patch_all()
import gevent
from loadgen.clients import client_class
from loadgen.measure import build_payload, now_us, parse_stamp
from servers.core.auth import DEV_SECRET, make_token

transport, url = sys.argv[1:3]
C = client_class(transport)
got = []

def on_event(ev, nbytes, recv_us):
    if ev.get("type") == "message":
        got.append((parse_stamp(ev["data"]).seq, nbytes))

def wait_for(n):
    deadline = now_us() + 5_000_000
    while len(got) < n and now_us() < deadline:
        gevent.sleep(0.01)
    return [s for s, _ in got]

pub = C(url, make_token("pub", DEV_SECRET), None, 5.0)
pub.connect()
pub.join("r")
sub = C(url, make_token("sub", DEV_SECRET), on_event, 5.0)
sub.connect()
sub.join("r")
for k in range(3):
    pub.publish("r", build_payload("pub", k, now_us(), 80))
print("LIVE", *wait_for(3), flush=True)
deadline = now_us() + 5_000_000  # SSE: the cursor lags until the stream's id: arrives
while sub.cursor["rooms"].get("r", [0])[0] < 3 and now_us() < deadline:
    gevent.sleep(0.01)
print("CURSOR", sub.cursor["rooms"]["r"][0], flush=True)
sub.close()
for k in range(3, 5):  # while the subscriber is away
    pub.publish("r", build_payload("pub", k, now_us(), 80))
back = C(url, make_token("sub", DEV_SECRET), on_event, 5.0, sub.cursor)
back.connect()  # no join: the cursor's rooms are joined again from their positions
pub.publish("r", build_payload("pub", 5, now_us(), 80))
print("RESUMED", *wait_for(6), flush=True)
print("BYTES", min(n for _, n in got), flush=True)
fresh = back.resume()  # close + connect with the cursor in one call
pub.publish("r", build_payload("pub", 6, now_us(), 80))
print("AGAIN", *wait_for(7), flush=True)
pub.close()
print("READY", flush=True)
sys.stdin.readline()  # the test stops the server now
print("ENDED", fresh.closed.wait(timeout=10), fresh.close_code, flush=True)
"""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_resume_gets_what_was_missed_then_live(transport: str, tmp_path: Path) -> None:
    script = tmp_path / "resume.py"
    script.write_text(SCRIPT)
    with servers(transport) as procs, subprocess.Popen(
        [sys.executable, str(script), transport, procs[0].url], cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            lines: list[str] = []
            while not (line := proc.stdout.readline().decode()).startswith("READY"):
                assert line, "".join(lines) + proc.stdout.read().decode()
                lines.append(line)
            procs[0].stop()  # SIGTERM: the server says going_away
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            out, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = "".join(lines) + out.decode()
    said = {ln.split()[0]: ln.split()[1:] for ln in text.splitlines() if ln.strip()}
    assert said.get("LIVE") == ["0", "1", "2"], text
    assert said.get("CURSOR") == ["3"], text  # offsets of a fresh room: 1, 2, 3
    # exactly what was missed, in order, then the live message: nothing lost or repeated
    assert said.get("RESUMED") == [str(k) for k in range(6)], text
    assert said.get("AGAIN") == [str(k) for k in range(7)], text
    assert int(said["BYTES"][0]) > 80, text  # payload plus framing on the wire
    assert said.get("ENDED") == ["True", "1001"], text
