"""The saturation detector's validation; the method and the CLI: `bench.validate_detector`."""
