"""The saturation detector's validation; the method and the CLI:
`bench.experiments.validate_detector`."""
