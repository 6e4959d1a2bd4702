"""Locust users for rtbench servers: one class per transport, one client API.

`RtbenchUser` holds any number of connections (`self.connect()`), listens on
channels (`self.listen()`: a delivery-accounting window per connection and
room/user) and publishes open-loop (`self.start_publisher()`). Every delivery is
timed losslessly in the process's HdrHistograms and also reported to Locust as a
request event (`<transport>` / `message` etc.) so the UI and CSV show the
traffic; Locust rounds those response times into buckets, the rtbench result
file does not.

The scenario locustfiles subclass `RtbenchUser`, whose transport comes from
`--transport`; `WebSocketUser`, `SseUser`, `LongPollUser` and `GrpcUser` pin it,
for locustfiles of your own.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import gevent
from locust import User, constant, task

from loadgen import hooks
from loadgen.clients import client_class
from loadgen.clients.base import Client, ClientError
from loadgen.delivery import PublisherLog, Window, room_channel, user_channel
from loadgen.measure import now_us
from loadgen.openloop import spawn_publisher
from servers.core.auth import make_token

log = logging.getLogger("rtbench.loadgen")

Windows = dict[str, Window]  # channel -> the window a connection is listening with


class RtbenchUser(User):
    """A Locust user holding rtbench connections; see the module docstring."""

    abstract = True
    transport: ClassVar[str | None] = None  # None: the --transport option
    wait_time = constant(1)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.rt = hooks.current()
        self.clients: list[Client] = []
        self.windows: list[Window] = []
        self.publishers: list[gevent.Greenlet] = []
        self.windows_of: dict[Client, Windows] = {}
        self.index = self.rt.next_index()

    @task
    def hold(self) -> None:
        """Everything happens in connection and publisher greenlets; the user just waits
        (in `wait`, so Locust can stop it at any time)."""
        self.wait()  # type: ignore[no-untyped-call]

    # ---------------------------------------------------------- connections

    def connect(self, user: str, server_index: int | None = None,
                windows: Windows | None = None) -> Client:
        """Open one connection as `user` (to replica `server_index`, default this user's).

        Deliveries are accounted in `windows` (channel -> Window; default: a new
        dict), which `reconnect` shares between successive connections of one
        logical receiver.
        """
        p = self.rt.p
        url = p.server_for(self.index if server_index is None else server_index)
        transport = self.transport or p.transport
        cls = client_class(transport, p.grpc_client)
        windows = {} if windows is None else windows
        client = cls(url, make_token(user, p.secret), self._on_event(windows, transport),
                     p.connect_timeout, tls_ca=p.ca_file)
        rec = self.rt.recorder
        self.rt.pace_connect()
        try:
            client.connect()
        except ClientError as exc:
            rec.count("connect_failures")
            rec.count(f"connect_failure:{exc.code}")
            self.rt.fire(transport, "connect", 0.0, 0, exc)
            raise
        rec.count("connects")
        rec.timing("connect", client.connect_us)
        self.rt.fire(transport, "connect", client.connect_us / 1000, 0)
        self.clients.append(client)
        self.rt.open_clients.add(client)
        self.windows_of[client] = windows
        gevent.spawn(self._watch_close, client, transport)
        return client

    def reconnect(self, client: Client) -> Client:
        """`client.resume()`, keeping its windows: the logical receiver stays the same.

        The new connection resumes from the old one's cursor: it gets what was missed
        and is already a member of the old one's rooms (no join needed)."""
        windows = self.windows_of[client]
        rec = self.rt.recorder
        try:
            fresh = client.resume()
        except ClientError:
            rec.count("reconnect_failures")
            raise
        rec.count("reconnects")
        self.clients.remove(client)
        self.rt.open_clients.discard(client)
        del self.windows_of[client]
        self.clients.append(fresh)
        self.rt.open_clients.add(fresh)
        self.windows_of[fresh] = windows
        gevent.spawn(self._watch_close, fresh, fresh.transport)
        return fresh

    def listen(self, client: Client, room: str | None, receiver: str | None = None) -> Window:
        """Join `room` (or, with None, listen for direct messages to the client's user) and
        account deliveries from the moment membership is effective (join ack / welcome)."""
        channel = room_channel(room) if room is not None else user_channel(client.welcome["user"])
        windows = self.windows_of[client]
        w = windows.get(channel)
        if w is None:
            w = self.rt.recorder.open_window(receiver or client.conn_id, channel, 1 << 62)
            windows[channel] = w
            self.windows.append(w)
            fresh = True
        else:
            fresh = False
        if room is not None:
            client.join(room)
        if fresh:
            w.start_us = now_us()
        return w

    def start_publisher(self, client: Client, pub_id: str, room: str | None, to: str | None = None,
                        start_us: int | None = None) -> PublisherLog:
        """Publish open-loop to `room` (or direct to user `to`) at --publish-rate."""
        p = self.rt.p
        channel = room_channel(room) if room is not None else user_channel(str(to))
        pub = self.rt.recorder.publisher(pub_id, channel)
        if room is not None:
            def send(payload: bytes) -> None:
                client.publish(room, payload)
        else:
            def send(payload: bytes) -> None:
                client.direct(str(to), payload)
        inflight = 8 if client.publish_blocks else 0
        g, schedule = spawn_publisher(
            send, pub, self.rt.recorder, self.rt.publish_rate or p.publish_rate,
            payload_bytes=p.payload_bytes, stop=self.rt.stop, until_us=self.rt.publish_until_us,
            max_sends=p.max_messages, inflight=inflight, start_us=start_us)
        self.publishers.append(g)
        self.rt.schedules.append(schedule)
        return pub

    def on_stop(self) -> None:
        gevent.killall(self.publishers, block=True, timeout=5)
        end = now_us()
        for w in self.windows:
            self.rt.recorder.close_window(w, end)
        for client in self.clients:
            client.close()
            self.rt.open_clients.discard(client)
        self.clients = []
        self.windows_of = {}

    # ------------------------------------------------------------ delivery

    def _on_event(self, windows: Windows, transport: str) -> Any:
        """The client's `on_event`: account and time each delivery (the load generator's
        hot path: one call into the recorder, then Locust's batch, per delivery)."""
        rt = self.rt
        rec = rt.recorder
        deliver = rec.deliver

        def on_event(ev: dict[str, Any], nbytes: int, recv_us: int) -> None:
            kind = ev.get("type")
            if kind == "message":
                channel = "room:" + str(ev.get("room"))
            elif kind == "direct":
                channel = "user:" + str(ev.get("to"))
            else:
                if kind == "error":
                    rec.count("errors")
                    rec.count(f"error:{ev.get('code')}")
                    rt.fire(transport, "error", 0.0, nbytes, ClientError(str(ev.get("code")),
                                                                         str(ev.get("message"))))
                return
            latency = deliver(windows.get(channel), kind, ev.get("data"), recv_us, nbytes,
                              ev.get("ts"))
            if latency is not None:
                batch = rt.batch  # set in batched mode (loadgen/locuststats.py)
                if batch is not None:
                    batch.add(transport, kind, latency / 1000, nbytes)
                else:
                    rt.fire(transport, kind, latency / 1000, nbytes)

        return on_event

    def _watch_close(self, client: Client, transport: str) -> None:
        client.closed.wait()
        if client.close_code not in (1000, 0) and not self.rt.stop.is_set():
            rec = self.rt.recorder
            rec.count("closed_by_server")
            rec.count(f"close:{client.close_code}")
            self.rt.fire(transport, "closed", 0.0, 0,
                          ClientError(str(client.close_code), client.close_reason))


class WebSocketUser(RtbenchUser):
    abstract = True
    transport = "ws"


class SseUser(RtbenchUser):
    abstract = True
    transport = "sse"


class LongPollUser(RtbenchUser):
    abstract = True
    transport = "longpoll"


class GrpcUser(RtbenchUser):
    abstract = True
    transport = "grpc"
