"""The runtimes this machine can run, by the name a bundle's manifest gives them.

An exporter target names the runtime that runs its artifacts (`runtime` in each manifest
entry); this table is the one place that name meets a runner class. A runtime that cannot run
here (Core ML needs macOS, NNAPI a phone) is listed in `UNAVAILABLE` with the reason.
"""
from __future__ import annotations

from pathlib import Path

from ..reference.errors import BilayerError
from .litert_runner import LiteRtRunner
from .onnxruntime_runner import OnnxRuntimeRunner
from .runner import Runner

RUNNERS: dict[str, type[Runner]] = {runner.runtime: runner for runner in (OnnxRuntimeRunner, LiteRtRunner)}
UNAVAILABLE: dict[str, str] = {
    "coreml": "Core ML prediction needs macOS",
    "nnapi": "NNAPI needs an Android device (adb)",
}


class RuntimeUnavailable(BilayerError):
    """No runner on this machine for a runtime a bundle names."""


def make_runner(runtime: str, path: Path) -> Runner:
    """A runner of `runtime` for the model at `path`."""
    if runtime in RUNNERS:
        return RUNNERS[runtime](path)
    reason = UNAVAILABLE.get(runtime, f"no runner is registered for it (known: {', '.join(RUNNERS)})")
    raise RuntimeUnavailable(f"cannot run {runtime!r} artifacts here: {reason}")
