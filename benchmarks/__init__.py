"""Benchmarks for tieredmem; run e.g. `python -m benchmarks.bench_engine --quick`."""
