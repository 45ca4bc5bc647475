"""The machine's fp32 matrix-multiply rate: the reference rate every host latency is compared with.

A dense single-precision GEMM at a size large enough to reach the BLAS's peak is about the
fastest this CPU does fp32 multiply-accumulates in practice, so a network's `FLOPs / rate` is
the time it would take if every layer ran as well as a large GEMM (its "GEMM limit"). It is a
reference, not a strict bound: a well-blocked convolution can match or slightly exceed it, and
int8 kernels beat it by design. It is measured with numpy (OpenBLAS) and torch (its own BLAS)
at the benchmark's thread count, at a few sizes, best of several repeats (the first call of
each is untimed: thread pools start then), and the higher figure is the rate. The benchmark
measures it before and after the timed runs, so a machine that changed speed shows it.
"""
from __future__ import annotations

import time

import numpy as np
import torch

SIZES = (1024, 2048)  # 2048 reached the peak here (3072 gave the same rate)


def _best_seconds(fn, repeats: int) -> float:
    fn()  # the first call allocates and warms the caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def sgemm_gflops(threads: int, sizes: tuple[int, ...] = SIZES, repeats: int = 5) -> dict:
    """numpy and torch SGEMM GFLOP/s at `threads` threads: per size, the best of each, and the
    ceiling (the highest figure)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    per_size = []
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            for n in sizes:
                a = rng.standard_normal((n, n), dtype=np.float32)
                b = rng.standard_normal((n, n), dtype=np.float32)
                ta, tb = torch.from_numpy(a), torch.from_numpy(b)
                flops = 2.0 * n ** 3
                per_size.append({"n": n, "numpy_gflops": round(flops / _best_seconds(lambda: a @ b, repeats) / 1e9, 1),
                                 "torch_gflops": round(flops / _best_seconds(lambda: ta @ tb, repeats) / 1e9, 1)})
    finally:
        torch.set_num_threads(previous)
    numpy_best = max(s["numpy_gflops"] for s in per_size)
    torch_best = max(s["torch_gflops"] for s in per_size)
    return {"threads": threads, "sizes": per_size, "numpy_gflops": numpy_best, "torch_gflops": torch_best,
            "ceiling_gflops": max(numpy_best, torch_best)}


def gemm_limit_ms(macs: int, ceiling_gflops: float) -> float:
    """The fastest a graph of `macs` multiply-accumulates can run in fp32 at the GEMM rate."""
    return 2.0 * macs / (ceiling_gflops * 1e9) * 1e3
