"""`rtbench run`: what runs and how it is measured.

run (the command), plan (scenarios and profiles), cluster (server replicas and a
private Redis as pinned child processes; the other packages use it too), procs
(signals, process groups), sampler (servers' CPU/RSS during a scenario), cpu (a
process's ns CPU clock), progress (the progress line), runs (run directories,
their metadata, `rtbench ls`).
"""
