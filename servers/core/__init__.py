"""The transport-agnostic chat core: an asyncio core behind a Broker interface.

It owns the protocol's meaning (commands, events, rooms, direct messages,
presence, auth, bounded per-connection outboxes, history and resume) and knows
no socket, no HTTP framework and no Redis: transports hand it decoded commands
and drain each connection's outbox; brokers (servers/fanout: memory, Redis)
implement the `Broker` interface of `types` (publish, subscribe, history) that
the hub awaits. The codec and cursor modules are plain functions over bytes and
dicts, tested without a loop.

- `types`: the contract every other part speaks (commands, events, limits,
  the `Broker` protocol);
- `hub`: the registry of connections, users and rooms; turns commands into
  events and broker messages into deliveries (with `catchup`, `heal`,
  `presence`, `subscriptions`, `streams`);
- `connection` and `outbox`: one client's state and its bounded queue;
- `codec`, `cursor`, `auth`, `errors`: wire forms, resume cursors, tokens and
  the error codes of docs/protocol.md section 6.
"""
