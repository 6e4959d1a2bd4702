"""The netem mechanism: a veth pair between the two namespaces, shaped by netem on each end.

Used where the kernel has the netem qdisc (`netem_available()` tries it once per process in
a throwaway namespace: `unshare --net tc qdisc add dev lo root netem delay 1ms`). The two
namespaces are still made and held by delayd (`serve --no-tun`, no packet handling), so they
end with it exactly as in the delayd mechanism. netem reorders jittered packets unless it
also paces them, so a jittered profile without a bandwidth gets a 10 Gbit/s rate.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Callable

from bench.network.errors import ElementFailed
from bench.network.profiles import Profile

DEVICES = ("rtb0", "rtb1")  # client side, server side
_UNORDERED_RATE_BPS = 10_000_000_000


@functools.cache
def netem_available() -> bool:
    """Whether this kernel has netem (tried once, in a namespace that vanishes right after)."""
    unshare, tc = shutil.which("unshare"), shutil.which("tc")
    if unshare is None or tc is None:
        return False
    try:
        proc = subprocess.run([unshare, "--net", "--", tc, "qdisc", "add", "dev", "lo", "root",
                               "netem", "delay", "1ms"], capture_output=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def netem_args(profile: Profile) -> list[str]:
    """`tc qdisc add dev DEV root` + these: one direction of `profile`."""
    args = ["netem", "delay", f"{round(profile.delay_ms * 1000)}us"]
    if profile.jitter_ms:
        args += [f"{round(profile.jitter_ms * 1000)}us", "distribution", "uniform"]
    if profile.loss_pct:
        args += ["loss", "random", f"{profile.loss_pct:g}%"]
    rate_bps = (profile.bandwidth_mbit * 1e6 if profile.bandwidth_mbit is not None
                else _UNORDERED_RATE_BPS if profile.jitter_ms else None)
    if rate_bps is not None:
        args += ["rate", f"{round(rate_bps)}bit"]
    args += ["limit", str(limit_packets(profile))]
    return args


def limit_packets(profile: Profile) -> int:
    """Packets netem may hold: the delay line at full rate plus the bottleneck buffer."""
    if profile.bandwidth_mbit is None:
        return 10_000
    queue_ms = profile.effective_queue_ms or 0.0
    packets_per_ms = profile.bandwidth_mbit * 1e3 / (8 * 1500)
    return max(1000, round(packets_per_ms * (profile.delay_ms + profile.jitter_ms + queue_ms)))


def setup_commands(profile: Profile, anchor_pid: int, addrs: tuple[str, str],
                   ) -> list[tuple[int, list[str]]]:
    """(side, argv) to run in order: the veth pair, its addresses, netem on both ends."""
    client, server = DEVICES
    cmds: list[tuple[int, list[str]]] = [
        # made in the client namespace; its peer goes to the anchor's own (the server side)
        (0, ["ip", "link", "add", "name", client, "type", "veth", "peer", "name", server,
             "netns", str(anchor_pid)]),
    ]
    for side, dev in enumerate(DEVICES):
        cmds += [
            (side, ["ip", "addr", "add", addrs[side], "peer", f"{addrs[1 - side]}/32",
                    "dev", dev]),
            (side, ["ip", "link", "set", dev, "up"]),
            (side, ["tc", "qdisc", "add", "dev", dev, "root", *netem_args(profile)]),
        ]
    return cmds


def set_up(profile: Profile, anchor_pid: int, addrs: tuple[str, str],
           cmd_in: Callable[[int, list[str]], list[str]]) -> None:
    """Run `setup_commands` through `cmd_in(side, argv)` (the namespace prefix)."""
    for side, argv in setup_commands(profile, anchor_pid, addrs):
        proc = subprocess.run(cmd_in(side, argv), capture_output=True, text=True, timeout=20,
                              check=False)
        if proc.returncode != 0:
            raise ElementFailed(f"netem setup failed: {' '.join(argv)}: "
                                f"{proc.stderr.strip() or proc.returncode}")
