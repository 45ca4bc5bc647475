"""The runtimes this machine can run, by the name a bundle's manifest gives them.

An exporter target names the runtime that runs its artifacts (`runtime` in each manifest
entry); this table is the one place that name meets a runner class. A runtime that cannot run
here is listed in `UNAVAILABLE` with the reason, or has a stand-in (`STAND_INS`) that checks
as much as this machine can and names itself in the results.
"litert_gpu" is LiteRT's GPU accelerator, which runs every TFLite artifact a second time
(`runtime_bench.validate`); it needs a Vulkan device (`GpuUnavailable` says how to get one).
"""
from __future__ import annotations

import platform
from pathlib import Path

from .coreml_runner import CoreMlRunner, MilProgramRunner
from .executorch_runner import ExecutorchRunner
from .litert_gpu_runner import LiteRtGpuRunner
from .litert_runner import LiteRtRunner
from .onnxruntime_runner import OnnxRuntimeRunner
from .runner import Runner, RuntimeUnavailable

RUNNERS: dict[str, type[Runner]] = {runner.runtime: runner for runner in (OnnxRuntimeRunner, LiteRtRunner, LiteRtGpuRunner,
                                                                     ExecutorchRunner, CoreMlRunner)}
# Runtimes that cannot run on this system, and what checks their artifacts instead: Core ML
# predicts only on macOS, so elsewhere a package's saved MIL program is evaluated on the host
# (runtime "coreml_mil_host" in every result, never reported as Core ML parity).
STAND_INS: dict[str, type[Runner]] = {} if platform.system() == "Darwin" else {"coreml": MilProgramRunner}
UNAVAILABLE: dict[str, str] = {
    "nnapi": "NNAPI needs an Android device (adb)",
}


# How each runtime is told its CPU thread count (the runtime's default when none is given).
THREAD_ARGUMENTS = {"litert": "num_threads", "onnxruntime": "intra_op_threads"}


def _set_executorch_threads(threads: int) -> None:
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(threads)  # process-wide: every program loaded after this uses it


def make_runner(runtime: str, path: Path, threads: int | None = None) -> Runner:
    """A runner of `runtime` for the model at `path` (its stand-in where it cannot run here),
    with `threads` CPU threads where the runtime takes a count (ExecuTorch: its process-wide pool)."""
    if runtime in STAND_INS:
        return STAND_INS[runtime](path)
    if runtime in RUNNERS:
        if threads is not None and runtime in THREAD_ARGUMENTS:
            return RUNNERS[runtime](path, **{THREAD_ARGUMENTS[runtime]: threads})
        if threads is not None and runtime == "executorch":
            _set_executorch_threads(threads)
        return RUNNERS[runtime](path)
    reason = UNAVAILABLE.get(runtime, f"no runner is registered for it (known: {', '.join(RUNNERS)})")
    raise RuntimeUnavailable(f"cannot run {runtime!r} artifacts here: {reason}")
