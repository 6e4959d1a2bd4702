"""rtbench's benchmark side: the `rtbench` command and what it runs.

- `bench.cli`: the `rtbench` entry point, one verb per subcommand.
- `bench.harness`: `rtbench run`: the plan, server clusters and Locust processes,
  process stats, progress, run directories (`rtbench ls`).
- `bench.report`: `rtbench report`: a run directory's tables, plots and HTML page.
- `bench.regress`: `rtbench compare`, `regress` and `baseline`: the statistics and
  the CI perf check, with its validation.
- `bench.experiments`: standalone measurements (`python -m bench.experiments.NAME`):
  fanout, memory, latency, latency floor, ingest, guarantees, the detector validation.
"""

from pathlib import Path

# the repository: servers and Locust run from here (`python -m servers.serve`, loadgen/*.py)
ROOT = Path(__file__).resolve().parents[1]
