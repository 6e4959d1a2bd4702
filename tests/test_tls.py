"""TLS end to end: real handshakes between real server processes (`--tls-cert/--tls-key`)
and every client family, on every transport and server stack (tests/cluster.py TARGETS).

One set of TLS servers (memory broker) for the module, certificates from
bench.harness.tls. The asyncio clients (loadgen.aio) and the gevent clients
(loadgen.clients, in a gevent subprocess: Locust's monkey-patching would break the
asyncio tests) must deliver over TLS when they trust the servers' CA, and be refused
with "certificate verify failed" when they trust another CA only. A certificate or
key the server cannot use is one line and exit 2.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cryptography import x509

from bench.harness.tls import CertPaths, make_certs
from loadgen.aio import ClientError, connect
from loadgen.scrape import metrics_urls
from servers.testing import ServerProcess, free_port
from tests.cluster import TARGETS, Target, server, start_all, stop_all, tls_args, tls_url, token
from tests.test_serve_cli import _one_line, _ports, _serve

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[1]
WAIT = 5.0
VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"  # OpenSSL's reason, in every client's error


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA of another throwaway set: it did not sign the servers' certificate."""
    return make_certs(tmp_path_factory.mktemp("other")).ca


@pytest.fixture(scope="module")
def tls_servers(certs: CertPaths) -> Iterator[dict[Target, ServerProcess]]:
    procs = {t: server(t.transport, ["--broker", "memory", *tls_args(certs.cert, certs.key)],
                       t.stack) for t in TARGETS}
    start_all(list(procs.values()))
    try:
        yield procs
    finally:
        stop_all(list(procs.values()))


# ------------------------------------------------------------------- certificates


def test_make_certs_covers_loopback_and_extra_names(tmp_path: Path) -> None:
    paths = make_certs(tmp_path / "c", ["10.1.2.3", "bench.example"])
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(n.value) for n in san}
    assert names == {"127.0.0.1", "::1", "localhost", "10.1.2.3", "bench.example"}
    assert paths.key.stat().st_mode & 0o077 == 0  # the key is the owner's only
    ssl.create_default_context(cafile=str(paths.ca))  # the CA file loads as a trust anchor


def test_metrics_urls_keep_tls_except_grpcs_plain_metrics_port() -> None:
    assert metrics_urls(("https://127.0.0.1:8443",), "sse") == ["https://127.0.0.1:8443/metrics"]
    assert metrics_urls(("wss://h:9",), "ws") == ["https://h:9/metrics"]
    assert metrics_urls(("grpcs://h:9000",), "grpc") == ["http://h:10000/metrics"]


# ---------------------------------------------------------------- asyncio clients


@pytest.mark.parametrize("target", TARGETS, ids=str)
async def test_aio_clients_deliver_over_tls(tls_servers: dict[Target, ServerProcess],
                                            certs: CertPaths, target: Target) -> None:
    url = tls_url(tls_servers[target])
    ca = str(certs.ca)
    sub = await connect(target.transport, url, token("sub"), tls_ca=ca)
    pub = await connect(target.transport, url, token("pub"), tls_ca=ca)
    try:
        await sub.join("tls")
        await pub.join("tls")
        await pub.publish("tls", {"n": 1})
        got = await sub.next_event("message", WAIT)
        assert got.body["data"] == {"n": 1} and got.body["from"] == "pub"
        assert await pub.ping() >= 0  # a command's reply over TLS too
    finally:
        await asyncio.gather(sub.close(), pub.close())


@pytest.mark.parametrize("target", TARGETS, ids=str)
async def test_aio_client_trusting_another_ca_is_refused(
        tls_servers: dict[Target, ServerProcess], other_ca: Path, target: Target) -> None:
    url = tls_url(tls_servers[target])
    with pytest.raises(ClientError) as refused:
        client = await connect(target.transport, url, token("eve"), tls_ca=str(other_ca),
                               timeout=WAIT)
        await client.close()
    assert VERIFY_FAILED in str(refused.value).upper().replace(" ", "_"), refused.value


@pytest.mark.parametrize("transport", ["ws", "grpc"])
async def test_a_plain_client_gets_nothing_from_a_tls_server(
        tls_servers: dict[Target, ServerProcess], transport: str) -> None:
    proc = tls_servers[Target(transport)]
    with pytest.raises(ClientError):  # the server speaks TLS only
        client = await connect(transport, proc.url, token("plain"), timeout=WAIT)
        await client.close()


# ----------------------------------------------------------------- gevent clients

GEVENT_SCRIPT = """
import sys
from gevent import monkey; monkey.patch_all()
import gevent
from gevent.event import Event
from loadgen.clients import client_class
from loadgen.clients.base import ClientError
from loadgen.measure import build_payload, now_us, parse_stamp
from servers.core.auth import DEV_SECRET, make_token

ca, other = sys.argv[1:3]
for spec in sys.argv[3:]:
    name, transport, grpc_client, url = spec.split(",")
    C = client_class(transport, grpc_client)
    got, arrived = [], Event()

    def on_event(ev, nbytes, recv_us):
        if ev.get("type") == "message":
            got.append(parse_stamp(ev["data"]).seq)
            arrived.set()

    def wait_for(n):
        deadline = now_us() + 5_000_000
        while len(got) < n and now_us() < deadline:
            arrived.clear()
            arrived.wait(0.5)
        return got[:]

    try:
        pub = C(url, make_token("pub", DEV_SECRET), None, 5.0, tls_ca=ca)
        pub.connect()
        pub.join("r")
        sub = C(url, make_token("sub", DEV_SECRET), on_event, 5.0, tls_ca=ca)
        sub.connect()
        sub.join("r")
        for k in range(3):
            pub.publish("r", build_payload("pub", k, now_us(), 80))
        live = wait_for(3)
        sub = sub.resume()  # a second TLS connection, with the first one's cursor
        pub.publish("r", build_payload("pub", 3, now_us(), 80))
        seqs = wait_for(4)
        sub.close()
        pub.close()
        print("OK", name, *seqs, flush=True)
    except Exception as exc:
        print("FAILED", name, repr(exc), flush=True)
    try:
        C(url, make_token("eve", DEV_SECRET), None, 5.0, tls_ca=other).connect()
        print("REFUSED", name, "no", flush=True)
    except ClientError as exc:
        print("REFUSED", name, exc.code, "CERTIFICATE_VERIFY_FAILED" in str(exc).upper()
              .replace(" ", "_"), flush=True)
"""

GEVENT_CASES = [(str(t), t, "h2") for t in TARGETS] + [("grpc-grpcio", Target("grpc"), "grpcio")]
# how each client says its connect was refused: grpcio's channel ends the call UNAVAILABLE,
# which every gRPC client maps to 1001 (loadgen.grpc_codec.status_close)
REFUSED_CODE = {"grpc-grpcio": "1001"}


@pytest.fixture(scope="module")
def gevent_said(tls_servers: dict[Target, ServerProcess], certs: CertPaths, other_ca: Path,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """What the gevent script said, per case: `OK <name> <seqs>`, `REFUSED <name> ...`."""
    script = tmp_path_factory.mktemp("gevent") / "tls_clients.py"
    script.write_text(GEVENT_SCRIPT)
    specs = [f"{name},{t.transport},{kind},{tls_url(tls_servers[t])}"
             for name, t, kind in GEVENT_CASES]
    run = subprocess.run([sys.executable, str(script), str(certs.ca), str(other_ca), *specs],
                         cwd=ROOT, capture_output=True, text=True, timeout=50)
    said: dict[str, list[str]] = {}
    for line in run.stdout.splitlines():
        word, name, *rest = line.split()
        said[f"{word} {name}"] = rest
    said["_output"] = [run.stdout + run.stderr]
    return said


@pytest.mark.parametrize("name", [c[0] for c in GEVENT_CASES])
def test_gevent_clients_deliver_over_tls_and_refuse_another_ca(
        gevent_said: dict[str, list[str]], name: str) -> None:
    out = gevent_said["_output"][0]
    assert gevent_said.get(f"OK {name}") == ["0", "1", "2", "3"], out
    code = REFUSED_CODE.get(name, "connect_failed")
    assert gevent_said.get(f"REFUSED {name}") == [code, "True"], out


# ------------------------------------------------------------------- start-up errors


@pytest.mark.parametrize(("transport", "stack"), [("ws", "starlette"), ("sse", "aiohttp"),
                                                  ("grpc", None)])
def test_an_unreadable_certificate_is_one_line_exit_2(
        certs: CertPaths, tmp_path: Path, transport: str, stack: str | None) -> None:
    missing = tmp_path / "missing.pem"
    run = _serve("--transport", transport, *(["--stack", stack] if stack else []),
                 "--broker", "memory", "--port", str(free_port()), *_ports(transport),
                 *tls_args(missing, certs.key))
    assert run.returncode == 2 and run.stdout == ""
    assert _one_line(run.stderr) == (
        f"rtbench serve: --tls-cert {missing}: cannot read it (No such file or directory); "
        "pass a readable PEM file (or RTBENCH_TLS_CERT / RTBENCH_TLS_KEY)")


def test_a_key_that_does_not_match_is_one_line_exit_2(certs: CertPaths,
                                                       tmp_path: Path) -> None:
    other = make_certs(tmp_path / "other")
    run = _serve("--transport", "ws", "--broker", "memory", "--port", str(free_port()),
                 *tls_args(certs.cert, other.key))
    assert run.returncode == 2 and run.stdout == ""
    line = _one_line(run.stderr)
    assert line.startswith(f"rtbench serve: --tls-cert {certs.cert} and --tls-key {other.key}: "
                           "not a PEM certificate chain and its private key ("), line


def test_a_certificate_without_its_key_is_refused() -> None:
    run = _serve("--transport", "ws", "--broker", "memory", "--tls-cert", "cert.pem")
    assert run.returncode == 2
    assert "pass both --tls-cert and --tls-key" in _one_line(run.stderr)


# ------------------------------------------------------------------ rtbench run --tls


@pytest.mark.timeout(120)
def test_run_tls_smoke_serves_and_verifies_over_tls(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_run_e2e import Harness

    tmp = tmp_path / "tmp"  # where the harness keeps the throwaway CA and key
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    h = Harness(tmp_path / "run", "--smoke", "--tls", "--transports", "sse", "--scenarios",
                "chat", "--duration", "2", "--no-report")
    rc, out, err = h.finish(90)
    assert rc == 0, out[-3000:] + err[-3000:]
    assert not h.survivors(), "processes left behind"
    assert not list(tmp.iterdir())  # the certificates went with the run
    run = tmp_path / "run"
    meta = orjson.loads((run / "meta.json").read_bytes())
    assert meta["tls"] is True and meta["parameters"]["tls"] is True
    (step,) = [orjson.loads(x) for x in (run / "steps.jsonl").read_bytes().splitlines()]
    assert all(r["url"].startswith("https://127.0.0.1:") for r in step["replicas"]), step
    servers = step["locust_cmd"][step["locust_cmd"].index("--servers") + 1]
    assert servers == ",".join(r["url"] for r in step["replicas"])
    assert step["status"] == "ok", step
    # /metrics read over TLS by the harness: 20 connections opened, all over TLS
    assert step["metrics_delta"]["rtbench_connections_opened_total"] == 20, step
    result = orjson.loads((run / step["result_file"]).read_bytes())
    delivery = result["delivery"]
    assert delivery["delivered"] == delivery["expected"] > 0, delivery
    assert result["validity"]["valid"] and result["parameters"]["tls_ca"], result["validity"]
