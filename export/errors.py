"""Errors of the export step (under the toolchain's one root, `BilayerError`)."""
from __future__ import annotations

from ..reference.errors import BilayerError


class ExportError(BilayerError):
    """An export option is invalid, or the data an export needs is missing or short."""


class ConversionError(ExportError):
    """A converter (torch.onnx, onnxslim, onnxruntime's quantizer, litert-torch,
    ai-edge-quantizer) failed on a graph, or produced a model that does not check."""
