"""Standalone measurements, each `python -m bench.experiments.NAME --help`.

fanout (server CPU per delivery vs reference_fanout, a plain `websockets` broadcast),
memory (per idle connection), latency (idle, across replicas), latency_floor (with
latency_roles: p50 at 1 msg/s vs a raw Redis round trip), ingest (the load generator's
ceiling), guarantees (history on vs off, catch-up after an outage), validate_detector
(with detector/: the load generator's saturation detector checked). output holds what
they share.
"""
