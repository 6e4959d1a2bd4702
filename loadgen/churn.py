"""Churn: subscribers disconnect and come back every --churn-interval while a publisher
publishes; the result says how many messages that lost, duplicated, and how long a
subscriber took to be back (`timings_us.rejoin`: from closing the old connection to
the `welcome` of the resumed one, when it is a member of the room again).

    locust -f loadgen/churn.py --headless -u 21 -r 20 -t 30s --churn-interval 2

Each subscriber is one logical receiver across its reconnects, so a message
published while it was away counts as missing unless the new connection gets it.
Reconnects resume with the client's cursor (docs/protocol.md 4.1): the server
replays what was missed, then the live stream, so a run with history on (the
default) must report nothing missing and nothing duplicated; a `gap` (history
trimmed or lost) shows up as missing messages and an invalid run.
"""

from __future__ import annotations

import random

import gevent

from loadgen import hooks
from loadgen.clients.base import Client, ClientError
from loadgen.measure import now_us
from loadgen.roles import RoomPublisher
from loadgen.users import RtbenchUser

run = hooks.install("churn")
ROOM = "churn"


class Publisher(RoomPublisher):
    room = ROOM


class Churner(RtbenchUser):
    def on_start(self) -> None:
        client = self.connect(self.rt.user_name("churn", self.index))
        self.listen(client, ROOM)
        self.publishers.append(gevent.spawn(self._churn, client))

    def _churn(self, client: Client) -> None:
        p = self.rt.p
        rec = self.rt.recorder
        stop = self.rt.stop
        current = client
        # jitter: subscribers must not all leave at once
        while not stop.wait(p.churn_interval * random.uniform(0.5, 1.5)):
            if now_us() >= self.rt.publish_until_us:
                return  # leave the drain period alone: the verdict needs it quiet
            t0 = now_us()
            try:
                current = self.reconnect(current)
                if ROOM not in current.tracker.rooms:  # resumed connections are members
                    self.listen(current, ROOM)
            except ClientError:
                continue  # counted by reconnect(); try again next interval
            rec.timing("rejoin", now_us() - t0)
