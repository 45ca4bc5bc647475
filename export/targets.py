"""Every export target, registered here and nowhere else.

To add a target: write one module with a `Target` subclass
(`export.target`) and add an instance below; if its runtime is new, register a runner in
`runtime_bench.runners`.
"""
from __future__ import annotations

from .coreml import CoremlTarget
from .executorch_export import ExecutorchTarget
from .nnapi import NnapiTarget
from .onnx_export import OnnxTarget
from .target import Target
from .tflite import TfliteTarget

TARGETS: dict[str, Target] = {t.name: t for t in (OnnxTarget(), TfliteTarget(), CoremlTarget(),
                                                        ExecutorchTarget(), NnapiTarget())}
# Named in the design, not built yet (recorded in manifests so that users see what is missing).
PLANNED_TARGETS: dict[str, str] = {}
