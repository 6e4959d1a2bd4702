"""Connections: open idle connections at the spawn rate (-r) up to -u, or until they fail
(`--max-connect-failures` failed connects end the run; in a distributed run each
worker stops its own users).

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
            self.connect(self.rt.user_name("idle", self.index))
        except ClientError as exc:
            log.debug("connection %d failed: %s", self.index, exc)
            failures = self.rt.recorder.counters["connect_failures"]
            runner = self.environment.runner
            if failures == self.rt.p.max_connect_failures and runner is not None:
                log.warning("rtbench connections: %d connects failed; stopping at %d users",
                            failures, runner.user_count)
                # from another greenlet: stopping kills this user's greenlet
                gevent.spawn(runner.stop if type(runner).__name__ == "WorkerRunner"
                             else runner.quit)


_scraper: list[scrape.Scraper] = []


def _start(r: hooks.Run) -> None:
    env = r.env
    if env is None or env.runner is None or type(env.runner).__name__ == "WorkerRunner":
        return
    s = scrape.Scraper(scrape.metrics_urls(r.p.servers, r.p.transport, r.p.metrics_urls))
    _scraper[:] = [s]
    greenlet = gevent.spawn(s.loop, r.stop)
    r.extras.append(lambda _r: _finish(s, greenlet))


def _finish(s: scrape.Scraper, greenlet: Any) -> dict[str, Any]:
    greenlet.kill(block=True, timeout=2)
    return {"servers": s.summary(), "scraped_at_us": now_us()}


run.on_start.append(_start)
