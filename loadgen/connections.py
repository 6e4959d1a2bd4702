"""Connections: open idle connections at the spawn rate (-r) up to -u, or until a limit
stops the ramp, then hold them to the end of -t.

The limits, checked every second (the first one met ends spawning; the
connections already open stay open, so memory per connection is measured on a
plateau): `--max-connect-failures` failed connects (the reason names the open-files
limit when the failures say "Too many open files": the load generator's
RLIMIT_NOFILE, 20,000 on the 2-core test machine, is reported in the result),
connect time (p99 of the last second's connects over `--max-connect-ms`), or a
server replica's resident memory over `--max-server-rss-mb`. Which one, if any,
is `extra.connections_stop`. In a distributed run each worker stops its own users.

    locust -f loadgen/connections.py --headless -u 5000 -r 200 -t 60s \\
        --servers http://127.0.0.1:8001 --transport ws

Records connect time and failures (`timings_us.connect`, `counters`), and from
the servers' `/metrics` (scraped every second by the master or local process):
resident memory per held connection and the servers' CPU while the connections
sit idle, in `extra.servers`. gRPC servers serve /metrics on their metrics port
(default port + 1000); pass `--metrics-urls` when it differs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import gevent

from loadgen import hooks, scrape
from loadgen.clients.base import ClientError
from loadgen.measure import now_us
from loadgen.users import RtbenchUser

run = hooks.install("connections")
run.judge_spawn = True  # connect times while spawning are what this scenario measures
log = logging.getLogger("rtbench.loadgen")


class Idle(RtbenchUser):
    def on_start(self) -> None:
        try:
            client = self.connect(self.rt.user_name("idle", self.index))
        except ClientError as exc:
            log.debug("connection %d failed: %s", self.index, exc)
            _limits.failed(str(exc))
            if _limits.failures == self.rt.p.max_connect_failures:
                _limits.stop_spawning(self.rt, _limits.check(self.rt.p, None))
            return
        _limits.connected(client.connect_us)


class Limits:
    """What ends the ramp (see the module docstring): fed by the users, checked every
    second by `watch`."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.failures = 0
        self.first_failure = ""
        self.recent: list[int] = []  # connect times (µs) since the last check
        self.spawn_rate = 1.0

    def failed(self, message: str) -> None:
        self.failures += 1
        if not self.first_failure:
            self.first_failure = message

    def connected(self, connect_us: int) -> None:
        self.recent.append(connect_us)

    def check(self, p: Any, scraper: scrape.Scraper | None) -> str | None:
        """The limit met now, if any."""
        soft, hard = _nofile()
        held = _open_fds()
        # keep descriptors for what else must connect (the scraper, a second's spawning)
        reserve = 64 + int(1.5 * self.spawn_rate)
        if held is not None and held >= soft - reserve:
            return (f"open-files limit: {held} descriptors open, load generator "
                    f"RLIMIT_NOFILE {soft}/{hard} (spawning stops {reserve} short of it)")
        if self.failures >= p.max_connect_failures:
            why = self.first_failure
            if "Too many open files" in why:
                soft, hard = _nofile()
                return (f"open-files limit: {self.failures} connects failed with 'Too many "
                        f"open files' (load generator RLIMIT_NOFILE {soft}/{hard})")
            return f"{self.failures} connects failed (first: {why[:200]})"
        recent, self.recent = self.recent, []
        if len(recent) >= 10:
            recent.sort()
            p99 = recent[min(len(recent) - 1, int(len(recent) * 0.99))] / 1000
            if p99 > p.max_connect_ms:
                return f"connect time p99 {p99:.0f} ms > {p.max_connect_ms:g} ms"
        if scraper is not None:
            for url, samples in scraper.samples.items():
                if samples and samples[-1].rss > p.max_server_rss_mb * 2**20:
                    return (f"server memory: {url} at {samples[-1].rss / 2**20:.0f} MB > "
                            f"{p.max_server_rss_mb:g} MB")
        return None

    def watch(self, r: hooks.Run, scraper: scrape.Scraper | None) -> None:
        """Every second until the run stops or a limit is met."""
        while self.reason is None and not r.stop.wait(1.0):
            reason = self.check(r.p, scraper)
            if reason is not None:
                self.stop_spawning(r, reason)

    def stop_spawning(self, r: hooks.Run, reason: str | None) -> None:
        """A limit was met: spawn no more users; the connections open stay open."""
        if self.reason is not None or reason is None:
            return
        self.reason = reason
        runner = r.env.runner if r.env is not None else None
        log.warning("rtbench connections: %s; holding %s users", reason,
                    getattr(runner, "user_count", "?"))
        if runner is not None and type(runner).__name__ != "MasterRunner":
            # re-target at the users there are: spawning stops, connections stay
            gevent.spawn(runner.start, runner.user_count, self.spawn_rate)


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _nofile() -> tuple[int, int]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


_limits = Limits()
_scraper: list[scrape.Scraper] = []


def _start(r: hooks.Run) -> None:
    global _limits
    _limits = Limits()
    env = r.env
    if env is None or env.runner is None:
        return
    _limits.spawn_rate = float(getattr(env.parsed_options, "spawn_rate", 0) or 1)
    s: scrape.Scraper | None = None
    if type(env.runner).__name__ != "WorkerRunner":
        s = scrape.Scraper(scrape.metrics_urls(r.p.servers, r.p.transport, r.p.metrics_urls))
        _scraper[:] = [s]
        greenlet = gevent.spawn(s.loop, r.stop)
        r.extras.append(lambda _r: _finish(s, greenlet))
    gevent.spawn(_limits.watch, r, s)


def _finish(s: scrape.Scraper, greenlet: Any) -> dict[str, Any]:
    greenlet.kill(block=True, timeout=2)
    soft, hard = _nofile()
    return {"servers": s.summary(), "scraped_at_us": now_us(),
            "connections_stop": {"reason": _limits.reason or "cap (-u) reached or run ended",
                                 "limit_reached": _limits.reason is not None,
                                 "failures": _limits.failures,
                                 "first_failure": _limits.first_failure[:300]},
            "nofile_limit": {"soft": soft, "hard": hard}}


run.on_start.append(_start)
