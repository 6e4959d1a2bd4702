"""Transport-agnostic chat core: no sockets, no Redis, no framework.

`types` is the contract every other part speaks; `hub` holds the registry of
connections, users and rooms and turns commands into events.
"""
