"""`rtbench run`: what runs and how it is measured.

run (the command), plan (targets - a transport on a server stack -, scenarios and
profiles), harness (the processes of a run and the loop over its steps), step (one
Locust scenario against a cluster, and its record), cluster (server replicas and a
private Redis as pinned child processes; the other packages use it too), procs
(signals, process groups), sampler (servers' CPU/RSS during a scenario), cpu (a
process's ns CPU clock), progress (the progress line), runs (run directories,
their metadata, `rtbench ls`).
"""
