"""The numeric precisions an artifact can be exported at: defined here once.

Every target maps each precision to its own recipe (export/onnx_export.py, export/tflite.py);
`runtime_bench.compare` holds one parity gate per shipping precision, keyed by these names,
which are also what manifests and the command line use.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Precision:
    """One precision: its name, whether it needs calibration data, whether it ships."""

    name: str
    calibrated: bool
    shipping: bool
    description: str


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", False, True, "float32 as converted"),
    Precision("fp16", False, True, "float16 weights (and activations where the target runs them)"),
    Precision("int8_dynamic", False, True, "8-bit weights, activations quantized at run time"),
    Precision("int8", True, True, "calibrated static 8-bit on the MAC-heavy ops; the warp stays float"),
    # Static 8-bit of every op, the warp's sampling coordinates included: for tests and reports
    # that show what the parity gate catches. Never shipped, so it has no gate of its own.
    Precision("int8_full", True, False, "diagnostic: static 8-bit of every op, warp included"),
)}
SHIPPING_PRECISIONS: tuple[str, ...] = tuple(name for name, p in PRECISIONS.items() if p.shipping)
DEFAULT_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
# The identity graph runs once per identity (seconds are fine there): float only.
IDENTITY_PRECISIONS: tuple[str, ...] = ("fp32", "fp16")


def needs_calibration(precision: str) -> bool:
    """Whether exporting at `precision` needs calibration feeds."""
    return PRECISIONS[precision].calibrated
