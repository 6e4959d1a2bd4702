"""How faithfully a network profile's link is made: requested against achieved RTT, bandwidth
and loss, and what the delay element costs in CPU.

    flock /tmp/rtbench-measure.lock python -m bench.experiments.netem_accuracy \\
        --json results/published/netem-accuracy-YYYYMMDD.json
    python -m bench.experiments.netem_accuracy --quick     # a few seconds per part: a check

Both ends of every probe run in this process, each socket opened in its side's namespace
(bench/network/probe.py), so the figures include this process's own scheduling; the
`ns0` case (namespaces and element, no delay) measures that floor. Parts:

- `rtt`: per case (ns0; lan and wan, each without and with jitter), an open-loop UDP echo
  (`--rate` datagrams/s, 64 bytes) and a TCP ping-pong (1 byte): p50/p90/p99/max of the
  achieved RTT against the requested one, and the element's own timing error (when
  delayd wrote each packet against its due time; its counters). With jitter the requested RTT is a
  range: each direction adds uniform(-jitter, +jitter), never reordering.
- `bandwidth`: bulk TCP for `--bulk-seconds` through `wan` (50 Mbit/s) and a 10 Mbit/s
  link without loss (`lossy`'s rate; under 1 % loss TCP itself cannot fill the link);
  receiver goodput after the first second against the rate's TCP payload share (1448 of
  1500 bytes per packet).
- `loss`: `lossy`'s 1 % per direction, UDP echo at `--loss-rate` datagrams/s: the element's
  one-way drop share (with its binomial 95 % interval; the element's generator is seeded,
  so a run draws the same sequence) and the round trips that survived against 0.99^2.
- `cpu`: the element's CPU seconds (its process CPU clock) per packet it forwarded, at a
  few UDP echo rates (each echo is two packets), and under the wan bulk transfer.

The mechanism is the one `Network` picks (delayd on a kernel without netem; `--mechanism`).
Run it on a quiet machine: other load delays the element's wake-ups and the probe's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.experiments.output import write_json
from bench.harness.cpu import cpu_clock
from bench.harness.runs import cpu_model, git_state
from bench.network import BUILTIN, Network, Profile
from bench.network.probe import summarize, tcp_goodput, tcp_rtts, udp_echo

RTT_CASES = [
    Profile("ns0", description="namespaces and element, no delay: the probe's floor"),
    BUILTIN["lan"],
    Profile("lan-jitter", delay_ms=0.5, jitter_ms=0.25, description="lan, +/-0.25 ms each way"),
    BUILTIN["wan"],
    Profile("wan-jitter", delay_ms=50.0, jitter_ms=10.0, bandwidth_mbit=50.0,
            description="wan, +/-10 ms each way"),
]
BANDWIDTH_CASES = [BUILTIN["wan"], Profile("10mbit", delay_ms=50.0, bandwidth_mbit=10.0,
                                           description="lossy's rate and RTT, no loss")]
DIRECTIONS = ("client_to_server", "server_to_client")
TCP_PAYLOAD_SHARE = 1448 / 1500  # MSS with timestamps over a 1500-byte IP packet


def _late(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The element's timing error over a window, both directions: when it wrote each packet
    against its due time (mean signed error, mean lateness, max, share over 100 us late)."""
    sent = late = early = over = 0
    worst = 0
    for d in DIRECTIONS:
        sent += after[d]["tx"] - before[d]["tx"]
        late += after[d]["late_ns_sum"] - before[d]["late_ns_sum"]
        early += after[d]["early_ns_sum"] - before[d]["early_ns_sum"]
        over += after[d]["late_over_100us"] - before[d]["late_over_100us"]
        worst = max(worst, after[d]["late_ns_max"])  # since the element started
    return {"packets": sent, "mean_error_us": (late - early) / sent / 1e3 if sent else None,
            "mean_us": late / sent / 1e3 if sent else None,
            "max_us_since_start": worst / 1e3,
            "share_over_100us": over / sent if sent else None}


def _requested(p: Profile, size: int = 0) -> dict[str, float]:
    """The RTT `p` asks for (ms), with serialisation of a `size`-byte packet each way."""
    ser = 2 * size * 8 / (p.bandwidth_mbit * 1e3) if p.bandwidth_mbit else 0.0
    return {"rtt_ms": p.rtt_ms + ser, "min_ms": max(0.0, 2 * (p.delay_ms - p.jitter_ms)) + ser,
            "max_ms": 2 * (p.delay_ms + p.jitter_ms) + ser}


def measure_rtt(p: Profile, mechanism: str, seconds: float, rate: float, pings: int
                ) -> dict[str, Any]:
    with Network(p, mechanism=mechanism) as net:
        tcp = [s * 1e3 for s in tcp_rtts(net, pings, interval=0.01)]
        before = net.stats()
        udp = udp_echo(net, rate, seconds, size=64)
        after = net.stats()
        out: dict[str, Any] = {
            "case": p.name, "profile": p.to_dict(), "mechanism": net.mechanism,
            "requested": _requested(p, 92),  # 64-byte payload + UDP/IP headers
            "udp": {"rate_per_s": rate, "sent": udp["sent"], "received": udp["received"],
                    "rtt_ms": summarize([s * 1e3 for s in udp["rtts"]])},
            "tcp": {"round_trips": pings, "rtt_ms": summarize(tcp)},
            "element_late": _late(before, after) if before and after else None,
        }
    req = out["requested"]["rtt_ms"]
    out["udp"]["p50_minus_requested_ms"] = out["udp"]["rtt_ms"]["p50"] - req
    out["tcp"]["p50_minus_requested_ms"] = out["tcp"]["rtt_ms"]["p50"] - req
    return out


def measure_bandwidth(p: Profile, mechanism: str, seconds: float) -> dict[str, Any]:
    with Network(p, mechanism=mechanism) as net:
        pid = net.element.pid if net.element else None
        clock = cpu_clock(pid) if pid and net.mechanism == "delayd" else None
        before, cpu0 = net.stats(), clock() if clock else 0.0
        r = tcp_goodput(net, seconds)
        after, cpu1 = net.stats(), clock() if clock else 0.0
    assert p.bandwidth_mbit is not None
    goodput = r["bits_per_s"] / 1e6 if r["bits_per_s"] else None
    expected = p.bandwidth_mbit * TCP_PAYLOAD_SHARE
    out: dict[str, Any] = {
        "case": p.name, "requested_mbit": p.bandwidth_mbit, "goodput_mbit": goodput,
        "expected_goodput_mbit": expected,
        "goodput_ratio": goodput / expected if goodput else None,
        "window_s": r.get("window_s")}
    if before and after:
        packets = sum(after[d]["tx"] - before[d]["tx"] for d in DIRECTIONS)
        out["element"] = {
            "packets": packets,
            "drop_queue": sum(after[d]["drop_queue"] - before[d]["drop_queue"]
                              for d in DIRECTIONS),
            "cpu_s": cpu1 - cpu0,
            "cpu_us_per_packet": (cpu1 - cpu0) / packets * 1e6 if packets else None}
    return out


def measure_loss(mechanism: str, seconds: float, rate: float) -> dict[str, Any]:
    p = BUILTIN["lossy"]
    with Network(p, mechanism=mechanism) as net:
        before = net.stats()
        udp = udp_echo(net, rate, seconds, size=64)
        after = net.stats()
    out: dict[str, Any] = {"case": p.name, "requested_pct_each_way": p.loss_pct,
                           "udp_rate_per_s": rate, "sent": udp["sent"],
                           "received": udp["received"],
                           "round_trip_survival": udp["received"] / udp["sent"],
                           "expected_round_trip_survival": (1 - p.loss_pct / 100) ** 2}
    if before and after:
        out["element_drop_pct"], out["element_drop_pct_95ci"] = {}, {}
        for d in DIRECTIONS:
            n = max(1, after[d]["rx"] - before[d]["rx"])
            share = (after[d]["drop_loss"] - before[d]["drop_loss"]) / n
            half = 1.96 * math.sqrt(share * (1 - share) / n)  # binomial, normal approximation
            out["element_drop_pct"][d] = 100 * share
            out["element_drop_pct_95ci"][d] = [100 * (share - half), 100 * (share + half)]
    return out


def measure_cpu(mechanism: str, seconds: float, rates: Sequence[float]) -> list[dict[str, Any]]:
    out = []
    with Network(BUILTIN["lan"], mechanism=mechanism) as net:
        if net.mechanism != "delayd" or net.element is None:
            return []
        clock = cpu_clock(net.element.pid)
        for rate in rates:
            before, cpu0, t0 = net.stats(), clock(), time.monotonic()
            udp = udp_echo(net, rate, seconds, size=64, linger=0.2)
            after, cpu1, t1 = net.stats(), clock(), time.monotonic()
            assert before is not None and after is not None
            packets = sum(after[d]["tx"] - before[d]["tx"] for d in DIRECTIONS)
            out.append({"udp_rate_per_s": rate, "achieved_packets_per_s": packets / (t1 - t0),
                        "echo_send_seconds": udp["send_seconds"], "packets": packets,
                        "cpu_s": cpu1 - cpu0,
                        "cpu_us_per_packet": (cpu1 - cpu0) / packets * 1e6 if packets else None,
                        "cpu_share_of_a_core": (cpu1 - cpu0) / (t1 - t0)})
    return out


def _print_rtt(r: dict[str, Any]) -> None:
    req, u, t = r["requested"], r["udp"]["rtt_ms"], r["tcp"]["rtt_ms"]
    late = r["element_late"] or {}
    print(f"rtt {r['case']:<11} requested {req['rtt_ms']:8.3f} ms [{req['min_ms']:.2f}, "
          f"{req['max_ms']:.2f}]  udp p50 {u['p50']:8.3f} p99 {u['p99']:8.3f} "
          f"max {u['max']:8.3f}  tcp p50 {t['p50']:8.3f} p99 {t['p99']:8.3f}  element error "
          f"mean {late.get('mean_error_us') or 0:+.1f} us", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.experiments.netem_accuracy",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="UDP echo seconds per RTT case")
    p.add_argument("--rate", type=float, default=50.0, help="UDP echo datagrams/s (RTT)")
    p.add_argument("--pings", type=int, default=100, help="TCP round trips per RTT case")
    p.add_argument("--bulk-seconds", type=float, default=8.0)
    p.add_argument("--loss-seconds", type=float, default=20.0)
    p.add_argument("--loss-rate", type=float, default=2000.0)
    p.add_argument("--cpu-rates", default="500,2000,5000", help="UDP echo rates for the cost")
    p.add_argument("--cpu-seconds", type=float, default=5.0)
    p.add_argument("--mechanism", default="auto", choices=("auto", "delayd", "netem"))
    p.add_argument("--quick", action="store_true", help="a few seconds per part (a check)")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.pings, args.bulk_seconds = 2.0, 10, 3.0
        args.loss_seconds, args.cpu_seconds = 2.0, 1.0
    rates = [float(r) for r in args.cpu_rates.split(",")]
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    results: dict[str, Any] = {
        "experiment": "netem_accuracy", "started_utc": started.isoformat(timespec="seconds"),
        "git": git_state("bench/network"), "kernel": platform.release(),
        "cpu_model": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
        "parameters": {k: v for k, v in vars(args).items() if k != "json"},
        "rtt": [], "bandwidth": [],
    }
    for case in RTT_CASES:
        r = measure_rtt(case, args.mechanism, args.seconds, args.rate, args.pings)
        results["rtt"].append(r)
        _print_rtt(r)
    for case in BANDWIDTH_CASES:
        b = measure_bandwidth(case, args.mechanism, args.bulk_seconds)
        results["bandwidth"].append(b)
        print(f"bandwidth {b['case']:<6} requested {b['requested_mbit']:.1f} Mbit/s  goodput "
              f"{b['goodput_mbit'] or 0:.2f} (expected {b['expected_goodput_mbit']:.2f}, ratio "
              f"{b['goodput_ratio'] or 0:.3f})  element "
              f"{(b.get('element') or {}).get('cpu_us_per_packet') or 0:.2f} us CPU/packet",
              flush=True)
    loss = measure_loss(args.mechanism, args.loss_seconds, args.loss_rate)
    results["loss"] = loss
    drops = ", ".join(f"{d} {v:.3f} % (95 % CI {ci[0]:.3f}-{ci[1]:.3f})" for (d, v), ci in zip(
        loss.get("element_drop_pct", {}).items(),
        loss.get("element_drop_pct_95ci", {}).values(), strict=True))
    print(f"loss lossy requested {loss['requested_pct_each_way']} % each way: element {drops}; "
          f"round trips survived {loss['round_trip_survival']:.4f} (expected "
          f"{loss['expected_round_trip_survival']:.4f}) of {loss['sent']}", flush=True)
    results["cpu"] = measure_cpu(args.mechanism, args.cpu_seconds, rates)
    for c in results["cpu"]:
        print(f"cpu at {c['achieved_packets_per_s']:7.0f} packets/s: "
              f"{c['cpu_us_per_packet'] or 0:.2f} us CPU/packet, "
              f"{100 * c['cpu_share_of_a_core']:.1f} % of a core", flush=True)
    results["loadavg"] = [round(x, 2) for x in (*load_before, *os.getloadavg())]
    results["wall_seconds"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
    print(f"load average {results['loadavg'][0]:.2f} -> {results['loadavg'][3]:.2f}, "
          f"{results['wall_seconds']} s")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
