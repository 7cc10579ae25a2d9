"""Benchmarks: `make bench` (`python -m bench`) and `python -m bench.platform_latency`.

Not part of `make test`."""
