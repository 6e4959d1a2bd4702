"""rtbench servers: one transport-agnostic chat core, one fanout layer, four thin adapters."""
