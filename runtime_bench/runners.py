"""The runtimes this machine can run, by the name a bundle's manifest gives them.

An exporter target names the runtime that runs its artifacts (`runtime` in each manifest
entry); this table is the one place that name meets a runner class. A runtime that cannot run
here (Core ML needs macOS, NNAPI a phone) is listed in `UNAVAILABLE` with the reason.
"litert_gpu" is LiteRT's GPU accelerator, which runs every TFLite artifact a second time
(`runtime_bench.validate`); it needs a Vulkan device (`GpuUnavailable` says how to get one).
"""
from __future__ import annotations

from pathlib import Path

from .litert_gpu_runner import LiteRtGpuRunner
from .litert_runner import LiteRtRunner
from .onnxruntime_runner import OnnxRuntimeRunner
from .runner import Runner, RuntimeUnavailable

RUNNERS: dict[str, type[Runner]] = {runner.runtime: runner for runner in (OnnxRuntimeRunner, LiteRtRunner, LiteRtGpuRunner)}
UNAVAILABLE: dict[str, str] = {
    "coreml": "Core ML prediction needs macOS",
    "nnapi": "NNAPI needs an Android device (adb)",
}


def make_runner(runtime: str, path: Path) -> Runner:
    """A runner of `runtime` for the model at `path`."""
    if runtime in RUNNERS:
        return RUNNERS[runtime](path)
    reason = UNAVAILABLE.get(runtime, f"no runner is registered for it (known: {', '.join(RUNNERS)})")
    raise RuntimeUnavailable(f"cannot run {runtime!r} artifacts here: {reason}")
