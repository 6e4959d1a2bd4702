"""bench.network.Network on real namespaces (delayd: this kernel has no netem): TCP echo across
`lan` and a 100 ms RTT link, loss, what a process inside sees, refusal without root, and
teardown after a normal exit, an exception and a SIGKILL of the process that owned it.

Skipped, saying why, only where this process is not root or has no TUN device.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from bench import ROOT
from bench.network import (
    BUILTIN,
    CLIENT_ADDR,
    SERVER_ADDR,
    Network,
    NetworkUnavailable,
    Profile,
    get_profile,
)
from bench.network.build import delayd_path, nsexec_path
from bench.network.element import Element
from bench.network.namespaces import call_in, holders_of, pids_in
from bench.network.netem import setup_commands
from bench.network.probe import tcp_rtts, udp_echo

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and TUN need root"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun here"),
]

# one-way delay; 100 ms RTT, the wan latency without its bandwidth limit
HUNDRED_MS = Profile("rtt100", delay_ms=50.0)


def gone(pid: int) -> bool:
    """The process has ended (a zombie counts: it holds no namespace and runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_for(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def nothing_left(delayd: int, inodes: tuple[int, int], *pids: int) -> bool:
    return (all(gone(p) for p in (delayd, *pids)) and not pids_in(set(inodes))
            and not holders_of(set(inodes)))


def test_tcp_echo_across_lan_and_a_100ms_link() -> None:
    with Network("lan", mechanism="delayd") as lan:
        rtts = sorted(tcp_rtts(lan, 20))
        assert 0.0009 <= rtts[len(rtts) // 2] <= 0.02, rtts  # 1 ms requested
        assert lan.mechanism == "delayd" and lan.server_addr == "127.18.0.2"
    with Network(HUNDRED_MS, mechanism="delayd") as far:
        rtts = sorted(tcp_rtts(far, 5))
        assert rtts[0] >= 0.099 and rtts[len(rtts) // 2] <= 0.15, rtts
        meta = far.describe(rtt_samples=3)
        assert meta["mechanism"] == "delayd" and meta["requested_rtt_ms"] == 100.0
        assert 99.0 <= meta["achieved_rtt_ms"]["p50"] <= 150.0
        assert meta["element"]["client_to_server"]["tx"] > 0


def test_loss_drops_about_the_requested_share() -> None:
    profile = Profile("drop20", delay_ms=0.2, loss_pct=20.0)
    with Network(profile, mechanism="delayd") as net:
        r = udp_echo(net, rate=2000, seconds=0.2, linger=0.3)
        stats = net.stats()
    assert stats is not None and stats["cpu_s"] > 0
    there = stats["client_to_server"]
    assert 0.10 <= there["drop_loss"] / there["rx"] <= 0.30, there
    # a datagram survives both ways with probability 0.8 * 0.8
    assert 0.45 <= r["received"] / r["sent"] <= 0.80, r


def test_processes_inside_see_the_other_side_and_callables_run_there() -> None:
    with Network("lan", mechanism="delayd") as net:
        listener = net.call_in_server(socket.create_server, ("0.0.0.0", 0))
        with listener:
            port = listener.getsockname()[1]
            script = (f"import socket; s = socket.create_connection(('{net.server_addr}', "
                      f"{port}), 5); s.sendall(b'hi'); print(s.getsockname()[0])")
            child = subprocess.run(net.client_cmd([sys.executable, "-c", script]),
                                   capture_output=True, text=True, timeout=20, check=True)
            conn, peer = listener.accept()
            conn.close()
        assert child.stdout.strip() == net.client_addr == peer[0]
        # the server side has its own loopback (servers reach their Redis on 127.0.0.1)
        inside = subprocess.run(net.server_cmd(["cat", "/proc/net/dev"]), capture_output=True,
                                text=True, timeout=20, check=True).stdout
        assert "lo:" in inside and "rtb0:" in inside
        # the root namespace's interfaces are not visible inside; keywords reach fn
        assert net.call_in_server(socket.if_nameindex) != socket.if_nameindex()
        assert net.call_in_server(int, "ff", base=16) == 255
        # from the wrong side (here: this thread), the server's address is this namespace's
        # own loopback: refused, never the server, never off the machine
        there = net.call_in_server(socket.create_server, ("0.0.0.0", 0))
        with there, pytest.raises(ConnectionRefusedError):
            socket.create_connection((net.server_addr, there.getsockname()[1]), 2).close()


def test_loopback_makes_no_namespace() -> None:
    with Network("loopback") as net:
        assert net.client_cmd(["true"]) == ["true"] == net.server_cmd(["true"])
        assert net.server_addr == "127.0.0.1" and net.element is None
        assert net.call_in_server(os.getpid) == os.getpid()
        assert net.call_in_server(int, "ff", base=16) == 255
        assert net.describe()["mechanism"] == "loopback"


def test_refuses_clearly_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NetworkUnavailable, match="'wan' cannot run here: it needs root"):
        Network("wan").start()
    Network("loopback").start()  # loopback needs nothing


def test_refuses_clearly_without_tun(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: p != "/dev/net/tun" and real(p))
    with pytest.raises(NetworkUnavailable, match=r"'lan' cannot run here: there is no "
                                                 r"/dev/net/tun \(load the tun module"):
        Network("lan", mechanism="delayd").start()


def test_teardown_after_a_normal_exit() -> None:
    with Network("lan", mechanism="delayd") as net:
        assert net.element is not None
        delayd, inodes = net.element.pid, net.inodes
        sleeper = subprocess.Popen(net.server_cmd(["sleep", "60"]))
        assert wait_for(lambda: sleeper.pid in pids_in(set(inodes)))
    # close() ended the process still inside, then delayd
    assert sleeper.wait(5) == -signal.SIGTERM
    assert net.swept == [sleeper.pid]
    assert wait_for(lambda: nothing_left(delayd, inodes))


def test_teardown_after_an_exception() -> None:
    with pytest.raises(RuntimeError, match="boom"), Network("lan", mechanism="delayd") as net:
        assert net.element is not None
        delayd, inodes = net.element.pid, net.inodes
        sleeper = subprocess.Popen(net.client_cmd(["sleep", "60"]))
        assert wait_for(lambda: sleeper.pid in pids_in(set(inodes)))
        raise RuntimeError("boom")
    assert sleeper.wait(5) == -signal.SIGTERM
    assert wait_for(lambda: nothing_left(delayd, inodes))


_OWNER = """
import json, subprocess, sys
from bench.network import Network
net = Network("lan", mechanism="delayd").__enter__()
inside = subprocess.Popen(net.server_cmd(["sleep", "60"]))
print(json.dumps({"delayd": net.element.pid, "inodes": net.inodes, "inside": inside.pid}),
      flush=True)
sys.stdin.read()  # until killed
"""


def test_teardown_when_the_owner_is_killed() -> None:
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert owner.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(owner.stdout, selectors.EVENT_READ)
            assert sel.select(30), "the owner did not report its network"
        line = owner.stdout.readline()
        assert line, owner.stderr.read() if owner.stderr else ""
        info = json.loads(line)
        inodes = tuple(info["inodes"])
        assert not gone(info["delayd"])
        assert wait_for(lambda: info["inside"] in pids_in(set(inodes)))
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        assert wait_for(lambda: nothing_left(info["delayd"], inodes, info["inside"])), (
            pids_in(set(inodes)), holders_of(set(inodes)))
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
        for f in (owner.stdin, owner.stdout, owner.stderr):
            if f is not None:
                f.close()


def test_a_profile_name_reaches_the_element() -> None:
    assert get_profile("lossy").loss_pct == 1.0
    cpu = min(os.sched_getaffinity(0))
    with Network("lossy", mechanism="delayd", element_cpus=[cpu]) as net:
        assert net.element is not None
        assert os.sched_getaffinity(net.element.pid) == {cpu}
        with open(f"/proc/{net.element.pid}/cmdline") as f:
            argv = f.read().split("\0")
        assert argv[argv.index("--loss-ppm") + 1] == "10000"
        assert argv[argv.index("--rate-bps") + 1] == "10000000"


def test_a_start_ends_what_a_dead_owners_network_left_running() -> None:
    with Network("lan", mechanism="delayd") as net:
        element, inodes = net.element, net.inodes
        assert element is not None and element.proc is not None
        # a command that would not die with its parent, and a child of it
        left = subprocess.Popen(net.server_cmd(["sh", "-c", "sleep 60 & wait"],
                                               die_with_parent=False))
        assert wait_for(lambda: len(pids_in(set(inodes), exclude={element.pid})) == 2)
        element.proc.kill()  # the owner's end, as on SIGKILL
        element.proc.wait(5)
        assert len(pids_in(set(inodes))) == 2  # the namespace lives on through them
        with Network("lan", mechanism="delayd") as other:
            assert len(other.reaped) == 2 and left.pid in other.reaped
        assert left.wait(5) == -signal.SIGTERM
        assert wait_for(lambda: not pids_in(set(inodes)))


@pytest.mark.skipif(shutil.which("ip") is None, reason="the netem mechanism needs iproute2's ip")
def test_the_netem_mechanisms_veth_link_without_its_qdisc() -> None:
    """This kernel has no netem: check the rest of that path (anchor, veth pair, addresses)."""
    element = Element(delayd_path(), ["--no-tun", "--client-addr", CLIENT_ADDR,
                                      "--server-addr", SERVER_ADDR])
    element.start()
    try:
        for side, argv in setup_commands(BUILTIN["lan"], element.pid, (CLIENT_ADDR, SERVER_ADDR)):
            if argv[0] != "tc":
                subprocess.run([str(nsexec_path()), element.nsfile(side), "--", *argv],
                               check=True, capture_output=True, timeout=20)
        listener = call_in(element.nsfile(1), socket.create_server, ((SERVER_ADDR, 0),))
        with listener:
            client = call_in(element.nsfile(0), socket.create_connection,
                             ((SERVER_ADDR, listener.getsockname()[1]), 5))
            conn, peer = listener.accept()
            with client, conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping" and peer[0] == CLIENT_ADDR
    finally:
        element.stop()
