"""Prometheus metrics, read from the hub's plain counters at scrape time.

The hot path only bumps ints on `HubStats`; this collector turns them into
metric families when /metrics is scraped, so metrics cost nothing per delivery.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from servers.core.hub import Hub

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HubCollector(Collector):
    def __init__(self, hub: Hub, transport: str) -> None:
        self.hub = hub
        self.transport = transport

    def collect(self) -> Iterator[Metric]:
        hub, st, labels = self.hub, self.hub.stats, [self.transport]

        def counter(name: str, doc: str, value: int) -> CounterMetricFamily:
            c = CounterMetricFamily(f"rtbench_{name}", doc, labels=["transport"])
            c.add_metric(labels, value)
            return c

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(f"rtbench_{name}", doc, labels=["transport"])
            g.add_metric(labels, value)
            return g

        yield gauge("connections", "Connections currently open", hub.connection_count)
        yield gauge("rooms", "Rooms with at least one local member", hub.room_count)
        yield gauge("queued_events", "Events waiting in outboxes", hub.queued_events())
        yield counter("connections_opened", "Connections opened", st.connections_opened)
        yield counter("connections_closed", "Connections closed", st.connections_closed)
        yield counter("commands", "Commands received (events in)", st.commands)
        yield counter("errors", "Error events sent to clients", st.errors)
        yield counter("published", "Messages published to the broker", st.published)
        yield counter("broker_messages", "Messages received from the broker", st.broker_messages)
        yield counter("deliveries", "Events queued to client connections", st.deliveries)
        yield counter("slow_consumers", "Connections dropped for a full outbox", st.slow_consumers)
        presence = getattr(hub.broker, "presence", None)  # replica liveness: Redis broker only
        if presence is not None:
            yield counter("presence_replicas_reaped",
                          "Dead replicas whose presence counts this replica cleared",
                          presence.reaped)
            yield counter("presence_resyncs",
                          "Times this replica wrote its presence counts back (after it was "
                          "taken for dead, or Redis lost them)", presence.resyncs)


def make_registry(hub: Hub, transport: str) -> CollectorRegistry:
    """A registry with the hub collector plus process metrics (CPU, RSS, fds)."""
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub, transport))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
