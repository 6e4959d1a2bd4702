"""Transport logic, framework-free: what the HTTP stacks' adapters share.

`context.py` (hub, settings, token and subprotocol rules, exit signal), `replies.py`
(HTTP answers as data), `sessions.py` (SSE/long-poll sessions and their command
endpoint), `ws.py`, `sse.py` and `longpoll.py` (each transport's rules, framing and
pumps), `listen.py` (the listening socket). The stacks in servers/stacks/ route
requests of their framework onto these; the gRPC adapter (`grpc_server.py`,
`grpc_codec.py`) has its own server and speaks to the hub directly.
"""
