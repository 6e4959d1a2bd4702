"""Transport adapters: thin pumps between a framework and the hub.

Each HTTP adapter module exposes `routes(ctx) -> list[BaseRoute]`; `http.py`
assembles them into one Starlette app with /healthz and /metrics. The gRPC
adapter (`grpc_server.py`) has its own server. A second HTTP stack (aiohttp)
would add its own `http_aiohttp.py` beside these, reusing `auth_token` rules
and the hub; nothing in servers/core changes.
"""
