"""Minimal reference fanout: plain asyncio `websockets` server, `broadcast()`, no framework,
no Redis, no auth, no per-connection queues.

It speaks just enough of docs/protocol.md (welcome, join, publish -> message, ack by id)
for rtbench's own WebSocket client to drive it, so the fanout benchmark measures
rtbench's servers against the cheapest fanout Python can do, side by side.

    python -m bench.experiments.reference_fanout --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
import sys
import time
from collections.abc import Sequence

import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve

ROOMS: dict[str, set[ServerConnection]] = {}
_ids = itertools.count(1)


async def handler(ws: ServerConnection) -> None:
    await ws.send(orjson.dumps({"type": "welcome", "conn": f"ref-{next(_ids)}"}).decode())
    joined: set[str] = set()
    try:
        async for frame in ws:
            cmd = orjson.loads(frame)
            kind = cmd.get("type")
            if kind == "join":
                ROOMS.setdefault(cmd["room"], set()).add(ws)
                joined.add(cmd["room"])
            elif kind == "publish":
                body = {"type": "message", "room": cmd["room"], "from": "ref",
                        "data": cmd["data"], "ts": time.time_ns() // 1000}
                broadcast(ROOMS.get(cmd["room"], ()), orjson.dumps(body).decode())
            if "id" in cmd:
                await ws.send(orjson.dumps({"type": "ack", "ref": cmd["id"]}).decode())
    finally:
        for room in joined:
            ROOMS.get(room, set()).discard(ws)


async def amain(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(handler, host, port, ping_interval=None, max_size=1 << 20,
                     compression=None, backlog=4096):
        await stop


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.experiments.reference_fanout")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            import uvloop

            uvloop.run(amain(args.host, args.port))
        except ImportError:
            asyncio.run(amain(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
