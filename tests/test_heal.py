"""The hub heals its streams after the broker's subscription broke (servers/core/heal.py).

MemoryBroker.cut()/restore() stand in for a broken and re-established Redis
subscriber connection: publishes meanwhile are recorded and acked but reach nobody.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from servers.core import heal
from servers.core.connection import Connection
from servers.core.errors import BrokerUnavailable
from servers.core.hub import Hub
from servers.core.types import CloseReason, Direct, History, Join, Limits, Position, Publish
from servers.fanout.memory import MemoryBroker


class GatedHistory(MemoryBroker):
    """history() answers only once `gate` is set, with what it read when called (a slow
    round trip)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.called = asyncio.Event()  # set when history() has read

    async def history(self, topic: str, after: int, epoch: str, limit: int) -> History:
        hist = await super().history(topic, after, epoch, limit)
        self.called.set()
        await self.gate.wait()
        return hist


async def make(broker: MemoryBroker, **limits: int) -> Hub:
    hub = Hub(broker, Limits(**limits), server_id="t")
    await hub.start()
    return hub


async def settle(hub: Hub) -> None:
    for _ in range(100):
        if not hub._background:
            return
        await asyncio.gather(*list(hub._background), return_exceptions=True)


async def member(hub: Hub, user: str, room: str) -> Connection:
    conn = await hub.open(user)
    await hub.handle(conn, Join(room))
    conn.outbox.take()
    return conn


def events(conn: Connection) -> list[dict[str, Any]]:
    return [e.body for e in conn.outbox.take() if e.type in ("message", "direct", "gap")]


def summary(evs: list[dict[str, Any]]) -> list[Any]:
    return [e["data"] if e["type"] != "gap" else ("gap", e["reason"], e.get("offset"))
            for e in evs]


async def heal_waiting_on_history() -> tuple[GatedHistory, Hub, Connection, Connection]:
    """alice and bob in room r; alice published 1 during a cut; the subscription is back
    and the heal has read [1] from history, and waits for the answer (`gate`)."""
    broker = GatedHistory()
    hub = await make(broker)
    alice, bob = await member(hub, "alice", "r"), await member(hub, "bob", "r")
    broker.cut()
    await hub.handle(alice, Publish("r", 1))
    broker.gate.clear()
    broker.restore()
    await broker.called.wait()
    return broker, hub, alice, bob


async def test_missed_room_and_inbox_messages_are_replayed_once_in_order() -> None:
    broker = MemoryBroker()
    hub = await make(broker)
    alice, bob = await member(hub, "alice", "r"), await member(hub, "bob", "r")
    await hub.handle(alice, Publish("r", 0))
    assert summary(events(bob)) == [0] == summary(events(alice))
    broker.cut()
    for k in (1, 2, 3):
        await hub.handle(alice, Publish("r", k))
    await hub.handle(alice, Direct("bob", "d1"))
    assert events(bob) == []  # lost for now
    before = hub.stats.deliveries
    broker.restore()
    await hub.handle(alice, Publish("r", 4))  # live during the heal: held, then in order
    await settle(hub)
    # replayed: 1-3 to both and d1 to bob; held, then released: 4 to both
    assert hub.stats.deliveries - before == 3 * 2 + 1 + 2 * 1
    got = events(bob)
    rooms = [e for e in got if e["type"] == "message"]
    assert [e["data"] for e in rooms] == [1, 2, 3, 4]
    assert [e["offset"] for e in rooms] == [2, 3, 4, 5]
    assert [e["data"] for e in got if e["type"] == "direct"] == ["d1"]
    assert summary(events(alice)) == [1, 2, 3, 4]
    await hub.handle(alice, Publish("r", 5))
    assert summary(events(bob)) == [5]  # live again
    broker.cut()
    broker.restore()  # nothing missed: nothing replayed
    await settle(hub)
    assert events(bob) == []
    await hub.shutdown()


async def test_new_epoch_gives_a_gap_then_the_new_epoch_from_its_start() -> None:
    broker = MemoryBroker()
    hub = await make(broker)
    alice, bob = await member(hub, "alice", "r"), await member(hub, "bob", "r")
    await hub.handle(alice, Publish("r", 0))
    events(bob)
    broker.cut()
    broker._streams.clear()  # the broker lost its data (a Redis restart)
    broker.epoch = "e2"
    await hub.handle(alice, Publish("r", 1))
    await hub.handle(alice, Publish("r", 2))
    broker.restore()
    await settle(hub)
    got = events(bob)
    # the inbox lost its life too: it continues from the new epoch's start
    assert {"type": "gap", "inbox": True, "from": 0, "reason": "epoch",
            "offset": 0, "epoch": "e2"} in got
    got = [e for e in got if "inbox" not in e]
    assert got[0] == {"type": "gap", "room": "r", "from": 1, "reason": "epoch",
                      "offset": 0, "epoch": "e2"}
    assert [(e["data"], e["offset"], e["epoch"]) for e in got[1:]] == [(1, 1, "e2"), (2, 2, "e2")]
    await hub.shutdown()


async def test_trimmed_history_gives_a_gap_to_the_current_position() -> None:
    broker = MemoryBroker()
    hub = await make(broker, history_size=2)
    alice, bob = await member(hub, "alice", "r"), await member(hub, "bob", "r")
    broker.cut()
    for k in range(5):
        await hub.handle(alice, Publish("r", k))
    broker.restore()
    await settle(hub)
    assert events(bob) == [{"type": "gap", "room": "r", "from": 0, "reason": "trimmed",
                            "offset": 5, "epoch": broker.epoch}]
    await hub.shutdown()


async def test_history_off_gives_a_disabled_gap() -> None:
    broker = MemoryBroker()
    hub = await make(broker, history_size=0)
    alice, bob = await member(hub, "alice", "r"), await member(hub, "bob", "r")
    broker.cut()
    await hub.handle(alice, Publish("r", 1))
    broker.restore()
    got = events(bob)
    assert {"type": "gap", "room": "r", "from": 0, "reason": "disabled"} in got
    assert {"type": "gap", "inbox": True, "from": 0, "reason": "disabled"} in got
    assert len(got) == 2
    await hub.handle(alice, Publish("r", 2))
    assert summary(events(bob)) == [2]
    await hub.shutdown()


async def test_a_member_joining_during_the_heal_gets_only_what_follows_its_join() -> None:
    broker, hub, alice, bob = await heal_waiting_on_history()
    await hub.handle(alice, Publish("r", 2))  # held by the heal
    carol = await hub.open("carol")
    await hub.handle(carol, Join("r", ref=1))  # joins at offset 2, registered mid-heal
    (ack,) = [e.body for e in carol.outbox.take() if e.type == "ack"]
    assert ack["offset"] == 2
    await hub.handle(alice, Publish("r", 3))
    assert events(bob) == [] and events(carol) == []  # nothing live while healing
    broker.gate.set()
    await settle(hub)
    assert summary(events(bob)) == [1, 2, 3]
    assert summary(events(carol)) == [3]
    await hub.handle(alice, Publish("r", 4))
    assert summary(events(bob)) == [4] and summary(events(carol)) == [4]
    await hub.shutdown()


async def test_heal_position_of_a_member_that_received_nothing_is_its_join_position() -> None:
    broker = MemoryBroker()
    hub = await make(broker)
    alice = await hub.open("alice")
    for k in range(3):  # before bob joins: not his
        await broker.publish_recorded("room:r", b'{"type":"message","data":%d}' % k)
    bob = await member(hub, "bob", "r")
    await hub.handle(alice, Join("r"))
    broker.cut()
    await hub.handle(alice, Publish("r", 3))
    broker.restore()
    await settle(hub)
    got = events(bob)
    assert summary(got) == [3] and got[0]["offset"] == 4
    assert hub._last["room:r"] != Position(3, broker.epoch)  # moved to the event delivered
    await hub.shutdown()


async def test_a_second_cut_during_the_heal_is_healed_too() -> None:
    broker, hub, alice, bob = await heal_waiting_on_history()
    broker.cut()
    await hub.handle(alice, Publish("r", 2))  # neither held nor, yet, read
    broker.restore()
    await hub.handle(alice, Publish("r", 3))
    broker.gate.set()
    await settle(hub)
    assert summary(events(bob)) == [1, 2, 3]
    assert summary(events(alice)) == [1, 2, 3]
    await hub.shutdown()


class FailingHistory(MemoryBroker):
    async def history(self, topic: str, after: int, epoch: str, limit: int) -> History:
        raise BrokerUnavailable("redis is down (test)")


async def test_members_are_closed_when_history_cannot_be_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heal, "RETRY_DELAY", 0.01)
    broker = FailingHistory()
    hub = await make(broker)
    alice, bob = await member(hub, "alice", "r"), await member(hub, "bob", "r")
    carol = await member(hub, "carol", "other")
    broker.cut()
    await hub.handle(alice, Publish("r", 1))
    broker.restore()
    await settle(hub)
    # every stream of theirs failed (rooms and inboxes): closed, to resume with the cursor
    assert alice.outbox.close_reason == bob.outbox.close_reason == CloseReason.INTERNAL
    assert carol.outbox.close_reason == CloseReason.INTERNAL  # its inbox too
    assert hub._catchup.holding == {} and hub._catchup.suspended == set()
    await hub.shutdown()


class LateDelivery(MemoryBroker):
    """Records publishes at once but delivers them only on `deliver()`: a message the
    history or position already holds is still on its way on the subscription (with
    Redis they are separate connections)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[str, bytes]] = []

    async def start(self, on_message: Any, retention: Any = None) -> None:
        await super().start(lambda t, p: self.pending.append((t, p)), retention or self.retention)
        self.deliver_to = on_message

    def deliver(self) -> None:
        pending, self.pending = self.pending, []
        for topic, payload in pending:
            self.deliver_to(topic, payload)


async def test_an_event_read_from_history_and_arriving_late_live_is_not_repeated() -> None:
    broker = LateDelivery()
    hub = await make(broker)
    alice = await hub.open("alice")
    await hub.handle(alice, Join("r"))
    broker.deliver()
    alice.outbox.take()
    await hub.handle(alice, Publish("r", 1))  # recorded (offset 1), on its way
    bob = await hub.open("bob")
    await hub.handle(bob, Join("r", since=Position(0, broker.epoch)))  # history: [1]
    carol = await hub.open("carol")
    await hub.handle(carol, Join("r", ref=7))  # its ack says offset 1: 1 is not its
    broker.deliver()  # 1 arrives live now
    await hub.handle(alice, Publish("r", 2))
    broker.deliver()
    assert summary(events(alice)) == [1, 2]
    assert summary(events(bob)) == [1, 2]  # once
    assert summary(events(carol)) == [2]
    assert hub._catchup.fences == {}  # lifted by the first event past them (none at 0)
    await hub.shutdown()
