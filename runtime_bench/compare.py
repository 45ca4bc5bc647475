"""Comparators: how far an artifact's output is from the reference, and the thresholds that gate it.

PSNR takes its peak from the *reference* range (max - min), so it means the same for images in
[-1, 1], masks in [0, 1], UV grids and flat parameter vectors. Thresholds live here and only here;
`validate` prints them beside the results.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Minimum PSNR (dB) of the gated outputs, per precision. Frame graphs gate on `image`, identity
# graphs on `texture` (what the user sees); every other output is reported.
THRESHOLDS_DB = {
    "fp32": 60.0,
    "fp16": 40.0,
    "int8_dynamic": 30.0,
    "int8": 30.0,
}
GATED_OUTPUTS = {"frame": ("image",), "baked_frame": ("image",), "identity": ("texture",)}
# Maximum mean UV error (output pixels) of frame graphs. The warp is where quantization fails
# first: int8 sampling coordinates move texels by ~1 px (measured: full int8 0.87-0.96 px,
# CONV/FC-only int8 0.28 px), and the image PSNR of such a failure can sit close to its gate.
MAX_UV_ERROR_PX = {
    "fp32": 0.01,
    "fp16": 0.05,
    "int8_dynamic": 0.5,
    "int8": 0.5,
}


def psnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB with the peak taken from the reference's range; inf when identical."""
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape} vs test {test.shape}")
    mse = float(np.mean((reference - test) ** 2))
    peak = float(reference.max() - reference.min()) or 1.0
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def cosine(reference: np.ndarray, test: np.ndarray) -> float:
    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(test, dtype=np.float64).ravel()
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    if denom == 0:  # a zero vector: similar only to itself
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(a @ b / denom)


def uv_error_px(reference_uv: np.ndarray, test_uv: np.ndarray, image_size: int) -> float:
    """Mean distance, in output pixels, between two grid_sample grids (x, y in [-1, 1])."""
    diff = (np.asarray(reference_uv, np.float64) - np.asarray(test_uv, np.float64)) * (image_size / 2)
    return float(np.linalg.norm(diff, axis=-1).mean())


@dataclass
class OutputComparison:
    name: str
    psnr_db: float
    max_abs: float
    cosine: float
    uv_error_px: float | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        if math.isinf(d["psnr_db"]):
            d["psnr_db"] = "inf"
        return d


def compare_output(name: str, reference: np.ndarray, test: np.ndarray, image_size: int | None = None) -> OutputComparison:
    """All metrics of one output (UV error in pixels for grids named `uv`)."""
    test = np.asarray(test, dtype=np.float64)
    return OutputComparison(
        name=name,
        psnr_db=psnr_db(reference, test),
        max_abs=float(np.abs(np.asarray(reference, np.float64) - test).max()),
        cosine=cosine(reference, test),
        uv_error_px=uv_error_px(reference, test, image_size) if name == "uv" and image_size else None,
    )
