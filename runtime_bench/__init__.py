"""Runs bundle artifacts in their real runtimes: numerical parity gates and latency benchmarks."""
