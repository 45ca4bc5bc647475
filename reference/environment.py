"""The versions of the toolchain's packages: one list, for the bundle's record of what converted
its artifacts and for the machine record of what ran them."""
from __future__ import annotations

import importlib.metadata
import sys

TOOLCHAIN_PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "onnxslim", "litert-torch", "ai-edge-litert",
                      "ai-edge-quantizer", "tensorflow", "executorch", "coremltools")


def toolchain_versions() -> dict[str, str]:
    """Python's version and each toolchain package's installed version ("not installed")."""
    versions = {"python": sys.version.split()[0]}
    for dist in TOOLCHAIN_PACKAGES:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions
