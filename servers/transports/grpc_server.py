"""gRPC streaming transport: `rtbench.v1.Chat` on grpc.aio, plus health and /metrics.

With --tls-cert/--tls-key the gRPC port speaks TLS (grpc.ssl_server_credentials); the
metrics port stays plain HTTP/1.1 (an operations endpoint, like the harness reads it).

Methods are registered without (de)serializers, so requests arrive as bytes and
responses leave as bytes: an undecodable frame becomes an `error` event (not a
dead stream), and every event is written as its cached protobuf encoding,
serialized once however many streams it goes to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # stubs lag

from servers import metrics
from servers.core.auth import TokenVerifier
from servers.core.connection import Connection
from servers.core.cursor import RESUME_METADATA, decode_cursor
from servers.core.errors import AuthError, BrokerUnavailable, ErrorCode, ProtocolError
from servers.core.hub import Hub
from servers.core.types import CloseReason, Event
from servers.settings import Settings
from servers.startup import StartupError, load_tls, start_hub
from servers.transports.grpc_codec import (
    FORMAT,
    encode_event,
    frame_command,
    parse_frame,
    parse_send,
)
from servers.transports.listen import server_socket

log = logging.getLogger("rtbench.grpc")

SERVICE = "rtbench.v1.Chat"
REAP_INTERVAL = 1.0  # seconds between checks for streams stuck behind a full HTTP/2 window
SHUTDOWN_GRACE = 5.0  # seconds streams get to end after SIGTERM before they are cancelled

# section 7.4: the status that ends a stream the server closes, with details naming the reason
STATUS: dict[CloseReason, tuple[grpc.StatusCode, str]] = {
    CloseReason.GOING_AWAY: (grpc.StatusCode.UNAVAILABLE, "going_away: server shutting down"),
    CloseReason.INTERNAL: (grpc.StatusCode.UNAVAILABLE, "internal: server error"),
    CloseReason.SLOW_CONSUMER: (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "slow_consumer: outbound queue full"),
}


_NOT_STUCK = (None, CloseReason.NORMAL)


def server_options(s: Settings) -> list[tuple[str, Any]]:
    """Channel arguments of the server (grpc/include/grpc/impl/channel_arg_names.h)."""
    opts: list[tuple[str, Any]] = [
        # a second replica started on a taken port must fail, not share it silently
        ("grpc.so_reuseport", 0),
        # the benchmark multiplexes thousands of idle streams over a few channels
        ("grpc.max_concurrent_streams", 1 << 20),
        # like the WebSocket hard limit: bigger frames end the stream (RESOURCE_EXHAUSTED);
        # frames between max_frame_bytes and this get a `too_large` error event
        ("grpc.max_receive_message_length", max(4 * s.max_frame_bytes, 1 << 20)),
    ]
    if s.heartbeat > 0:
        ms = int(s.heartbeat * 1000)
        opts += [
            # ping every `heartbeat` s, drop a peer that does not answer within `heartbeat` s
            ("grpc.keepalive_time_ms", ms),
            ("grpc.keepalive_timeout_ms", ms),
            ("grpc.keepalive_permit_without_calls", 1),
            # keep pinging idle streams (the default stops after 2 pings without data)
            ("grpc.http2.max_pings_without_data", 0),
            # let clients keep their channel alive as often as the server does
            ("grpc.http2.min_ping_interval_without_data_ms", max(1000, ms // 2)),
            # grpc core >= 1.5x waits for a keepalive ping's ack up to this (default
            # 60 s), whatever keepalive_timeout_ms says
            ("grpc.http2.ping_timeout_ms", ms),
        ]
    return opts


def _metadata(context: aio.ServicerContext[Any, Any], name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return None


def _token(context: aio.ServicerContext[Any, Any]) -> str | None:
    scheme, _, token = (_metadata(context, "authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return None


class ChatService:
    """The three methods of rtbench.v1.Chat over one hub."""

    def __init__(self, hub: Hub, verifier: TokenVerifier) -> None:
        self.hub = hub
        self.verifier = verifier
        # open streams -> the task running each (to end them on shutdown, or when stuck)
        self.live: dict[Connection, asyncio.Task[Any]] = {}
        self._kicked: set[Connection] = set()

    def handlers(self) -> dict[str, grpc.RpcMethodHandler[bytes, bytes]]:
        # no (de)serializers: requests and responses are bytes
        return {
            "Connect": grpc.stream_stream_rpc_method_handler(self.connect),
            "Subscribe": grpc.unary_stream_rpc_method_handler(self.subscribe),
            "Send": grpc.unary_unary_rpc_method_handler(self.send),
        }

    async def _user(self, context: aio.ServicerContext[Any, Any]) -> str:
        try:
            return self.verifier.verify(_token(context))
        except AuthError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)

    async def _open(self, context: aio.ServicerContext[Any, Any]) -> Connection:
        user = await self._user(context)
        resume = _metadata(context, RESUME_METADATA)
        try:
            cursor = decode_cursor(resume, self.hub.limits) if resume else None
            conn = await self.hub.open(user, FORMAT, cursor)
        except ProtocolError as exc:  # a bad resume cursor
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.code}: {exc.message}")
        except BrokerUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"unavailable: {exc}")
        task = asyncio.current_task()
        assert task is not None
        self.live[conn] = task
        return conn

    async def connect(
        self, requests: AsyncIterator[bytes], context: aio.ServicerContext[bytes, bytes]
    ) -> None:
        conn = await self._open(context)
        reader = asyncio.create_task(self._read(context, conn))
        try:
            reason = await self._pump(context, conn)
        finally:
            reader.cancel()
            await self._close(conn)
        _finish(context, reason)

    async def subscribe(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> None:
        conn = await self._open(context)
        try:
            reason = await self._pump(context, conn)
        finally:
            await self._close(conn)
        _finish(context, reason)

    async def _pump(self, context: aio.ServicerContext[bytes, bytes], conn: Connection
                    ) -> CloseReason:
        """Outbox -> stream until the outbox closes; returns why it closed."""
        outbox = conn.outbox
        write = context.write
        try:
            while True:
                events = await outbox.get()
                if not events:
                    break
                for ev in events:
                    await write(ev.encoded(FORMAT, encode_event))
                # an idle stream must not pin the events it last sent (each JSON encoding
                # made by orjson holds a 4 KiB buffer): welcome alone was ~4.5 KiB per stream
                del events, ev
        except asyncio.CancelledError:
            if conn not in self._kicked:
                raise  # the client went away
            # the reaper ended a write the client never made room for: end with the status
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        return outbox.close_reason or CloseReason.NORMAL

    async def send(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        user = await self._user(context)
        hub = self.hub
        try:
            conn_id, frame = parse_send(request, hub.limits)
            conn = hub.get(conn_id)
            if conn is None:
                reply = _error(str(ErrorCode.UNKNOWN_SESSION),
                               f"no connection {conn_id[:80]!r} (closed or never existed)")
            elif conn.user != user:
                # `forbidden` is not a core ErrorCode (section 5: session transports only)
                reply = _error("forbidden", "this connection belongs to another user")
            else:
                reply = await hub.execute(conn, frame_command(frame, hub.limits))
        except ProtocolError as exc:
            reply = Event(exc.body())
        except Exception:
            log.exception("Send failed")
            reply = _error(str(ErrorCode.INTERNAL), "internal server error")
        if reply.type == "error":
            hub.stats.errors += 1
        return reply.encoded(FORMAT, encode_event)

    async def _read(self, context: aio.ServicerContext[bytes, bytes], conn: Connection) -> None:
        """Frames -> hub, one at a time (per-publisher order); errors become events.

        `context.read` rather than the request iterator: its async generator cost
        1.4 KiB per idle stream.
        """
        hub = self.hub
        limits = hub.limits
        read = context.read
        eof = aio.EOF  # type: ignore[attr-defined]  # grpc-stubs 1.53 lacks it
        try:
            while (raw := await read()) is not eof:
                try:
                    cmd = parse_frame(raw, limits)
                except ProtocolError as exc:
                    # what hub.handle_raw does for a JSON frame that does not parse
                    hub.reply_error(conn, exc)
                    continue
                await hub.handle(conn, cmd)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("grpc connection %s failed", conn.id)
            conn.outbox.close(CloseReason.INTERNAL)
            return
        # client half-close: it has nothing more to say; the queued events still go out
        conn.outbox.close(CloseReason.NORMAL)

    async def _close(self, conn: Connection) -> None:
        self.live.pop(conn, None)
        self._kicked.discard(conn)
        await self.hub.close(conn)

    def drain(self, reason: CloseReason = CloseReason.GOING_AWAY) -> None:
        for conn in self.live:
            conn.outbox.close(reason)

    async def reap(self, interval: float = REAP_INTERVAL) -> None:
        """End streams whose outbox the server closed but whose pump is stuck in a write.

        A client that stops reading fills the HTTP/2 window; the pump then waits in
        `write` and never sees its outbox close (slow consumer). Such streams are
        cancelled one interval after the close is seen, so the hub connection goes
        and the client gets the status once it reads again. One task for all streams.
        """
        seen: set[Connection] = set()
        while True:
            await asyncio.sleep(interval)
            closed = {c for c in self.live if c.outbox.close_reason not in _NOT_STUCK}
            for conn in closed & seen:
                task = self.live.get(conn)
                if task is not None and not task.done():
                    log.info("ending stuck stream %s (%s)", conn.id, conn.outbox.close_reason)
                    self._kicked.add(conn)
                    task.cancel()
            seen = closed


def _error(code: str, message: str) -> Event:
    return Event({"type": "error", "code": code, "message": message})


def _finish(context: aio.ServicerContext[bytes, bytes], reason: CloseReason) -> None:
    status = STATUS.get(reason)
    if status is not None:
        context.set_code(status[0])
        context.set_details(status[1])


# ------------------------------------------------------------------ operations


async def _serve_metrics(
    hub: Hub, transport: str, host: str, port: int
) -> asyncio.Server:
    """`GET /metrics` (and `/healthz`) over plain HTTP/1.1, on the event loop the hub lives on."""
    registry = metrics.make_registry(hub, transport)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = [*head.split(b" ", 2), b""]
            path = path.split(b"?", 1)[0]
            status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            if method != b"GET":
                status, body = "405 Method Not Allowed", b"method not allowed\n"
            elif path == b"/metrics":
                status, ctype, body = "200 OK", metrics.CONTENT_TYPE, metrics.render(registry)
            elif path == b"/healthz":
                status, ctype = "200 OK", "application/json"
                body = orjson.dumps({"status": "ok", "transport": transport,
                                     "server": hub.server_id, "broker": hub.broker.name,
                                     "connections": hub.connection_count})
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: "
                         f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(answer, host, port)


def _exit_on_signal() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(s: Settings, hub: Hub) -> int:
    """Serve until SIGINT/SIGTERM; StartupError if a port or the broker is unusable."""
    stop = _exit_on_signal()
    metrics_port = s.metrics_port or s.port + 1000
    tls = load_tls(s)  # a bad certificate or key is one line (StartupError), not grpcio's
    # ports first, as the HTTP stacks do: grpcio would log its own bind error on stderr
    server_socket(s.host, s.port, 0).close()
    server_socket(s.host, metrics_port, 0, flag="--metrics-port").close()
    await start_hub(hub, s)
    service = ChatService(hub, TokenVerifier(s.secret))
    server = aio.server(options=server_options(s))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, service.handlers()),)
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    ops: asyncio.Server | None = None
    try:
        # the gRPC port last: once it accepts connections, everything is ready
        ops = await _serve_metrics(hub, "grpc", s.host, metrics_port)
        address = f"{s.host}:{s.port}"
        if tls is None:
            server.add_insecure_port(address)
        else:  # grpcio negotiates ALPN h2 itself
            server.add_secure_port(address, grpc.ssl_server_credentials(
                [(tls.key_pem, tls.cert_pem)]))
    except (OSError, RuntimeError) as exc:  # taken since the check above
        if ops is not None:
            ops.close()
        await hub.shutdown()
        raise StartupError(f"cannot listen on {s.host}:{s.port} (gRPC) and {s.host}:"
                           f"{metrics_port} (metrics): {' '.join(str(exc).split())}") from None
    await server.start()
    log.info("gRPC%s on %s:%d, metrics on :%d, broker %s", " over TLS" if tls else "",
             s.host, s.port, metrics_port, hub.broker.name)
    reaper = asyncio.create_task(service.reap())
    await stop.wait()

    # refuse new streams, tell the open ones to go away (UNAVAILABLE), then stop the broker
    await health.enter_graceful_shutdown()
    stopping = asyncio.ensure_future(server.stop(SHUTDOWN_GRACE))
    service.drain(CloseReason.GOING_AWAY)
    await stopping
    reaper.cancel()
    await hub.shutdown()
    ops.close()
    await ops.wait_closed()
    return 0


def run(settings: Settings, hub: Hub) -> int:
    """Serve until SIGINT/SIGTERM; the process exit code."""
    return asyncio.run(serve(settings, hub))
