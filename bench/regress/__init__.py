"""`rtbench compare`, `rtbench regress` and `rtbench baseline`: is a change slower?

compare (sample sets, thresholds, verdict tables; the `compare` command), stats (ratio,
CI, rank tests, verdicts), samples (the fanout signal regress measures), check (the
`regress` command: base and head interleaved), baseline (the `baseline update`
command), validate (the check's power and false-alarm rate).
"""
