"""Every export target, registered here and nowhere else.

To add a target (Core ML, ExecuTorch, ...): write one module with a `Target` subclass
(`export.target`) and add an instance below; if its runtime is new, register a runner in
`runtime_bench.runners`.
"""
from __future__ import annotations

from .onnx_export import OnnxTarget
from .target import Target
from .tflite import TfliteTarget

TARGETS: dict[str, Target] = {t.name: t for t in (OnnxTarget(), TfliteTarget())}
# Named in the design, not built yet (recorded in manifests so that users see what is missing).
PLANNED_TARGETS: dict[str, str] = {
    "coreml": "not built yet",
    "executorch": "not built yet",
    "nnapi": "not built yet (an NNAPI delegate profile of the TFLite artifacts)",
}
